"""Dense linear algebra for one batch element: products with the data, Cholesky factor, updates.

The factor is the lower triangle ``L`` of ``H = L L'`` in a row-major array: the
factorisation and the forward solve are dot products of row prefixes (which LLVM
vectorises), the backward solve runs by rows too.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# Options of every kernel: cached to disk, no GIL, IEEE division (x / 0 gives inf, not an error).
KERNEL = dict(cache=True, nogil=True, error_model="numpy")
# Reassociation lets LLVM vectorise the dot products; no flag that assumes finite values.
FAST = dict(KERNEL, fastmath={"reassoc", "contract"})
# A downdate that cancels more than this fraction of a pivot's square loses too many digits.
DOWNDATE_MIN = 1e-6


@njit(**FAST)
def matvec(M: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """``out = M @ x``."""
    for i in range(M.shape[0]):
        s = 0.0
        row = M[i]
        for j in range(M.shape[1]):
            s += row[j] * x[j]
        out[i] = s


@njit(**FAST)
def rmatvec(M: np.ndarray, a: np.ndarray, out: np.ndarray) -> None:
    """``out = M' a``."""
    out[:] = 0.0
    for i in range(M.shape[0]):
        ai = a[i]
        if ai != 0.0:
            row = M[i]
            for j in range(M.shape[1]):
                out[j] += ai * row[j]


@njit(**FAST)
def add_gram_lower(
    H: np.ndarray, GT: np.ndarray, first: int, last: int, use: np.ndarray, scale: float, W: np.ndarray
) -> None:
    """``H += scale² G_S' G_S`` on the lower triangle, ``S`` the rows ``first <= i < last`` with ``use[i]``.

    ``GT`` is ``G'`` (n, k); the columns of ``S`` are gathered into the work array ``W`` (n, k) so
    that every entry is a dot product of two contiguous rows.
    """
    n = GT.shape[0]
    count = 0
    for i in range(first, last):
        if use[i]:
            for a in range(n):
                W[a, count] = GT[a, i] * scale
            count += 1
    if count == 0:
        return
    for a in range(n):
        Wa, Ha = W[a], H[a]
        for b in range(a + 1):
            Wb = W[b]
            acc = 0.0
            for t in range(count):
                acc += Wa[t] * Wb[t]
            Ha[b] += acc


@njit(**FAST)
def cholesky(L: np.ndarray) -> bool:
    """Factor ``H = L L'`` in place (``L`` holds ``H`` on its lower triangle); False unless H > 0."""
    n = L.shape[0]
    for i in range(n):
        Li = L[i]
        for j in range(i + 1):
            Lj = L[j]
            s = Li[j]
            for t in range(j):
                s -= Li[t] * Lj[t]
            if i == j:
                if not (0.0 < s < np.inf):
                    return False
                Li[i] = math.sqrt(s)
            else:
                Li[j] = s / Lj[j]
    return True


@njit(**FAST)
def rank_one(L: np.ndarray, x: np.ndarray, sign: float) -> bool:
    """Update ``L L'`` to ``L L' + sign x x'`` in place (``x`` is overwritten).

    Returns False when a downdate (``sign < 0``) would lose positive definiteness or most of
    a pivot's digits; ``L`` is then unusable and must be refactorised.
    """
    n = L.shape[0]
    for k in range(n):
        xk = x[k]
        if xk == 0.0:
            continue
        lkk = L[k, k]
        r2 = lkk * lkk + sign * xk * xk
        if sign < 0.0 and not (r2 > DOWNDATE_MIN * lkk * lkk):
            return False
        r = math.sqrt(r2)
        c = r / lkk
        s = xk / lkk
        L[k, k] = r
        for i in range(k + 1, n):
            lik = (L[i, k] + sign * s * x[i]) / c
            L[i, k] = lik
            x[i] = c * x[i] - s * lik
    return True


@njit(**FAST)
def cho_solve(L: np.ndarray, g: np.ndarray) -> None:
    """``g = (L L')^-1 g`` in place."""
    n = L.shape[0]
    for i in range(n):  # L h = g
        Li = L[i]
        s = g[i]
        for t in range(i):
            s -= Li[t] * g[t]
        g[i] = s / Li[i]
    for i in range(n - 1, -1, -1):  # L' x = h, by rows of L
        Li = L[i]
        g[i] /= Li[i]
        f = g[i]
        if f != 0.0:
            for t in range(i):
                g[t] -= f * Li[t]
