"""Dense linear algebra for one batch element: products with the data, Cholesky factor, updates.

The factor is stored as the upper triangle ``U`` of ``H = U'U`` in a row-major array (``U = L'``,
the lower factor by columns). Every loop then runs along contiguous memory without a
loop-carried dependency, which LLVM vectorises: the factorisation accumulates axpys of row
tails, the rank-one update sweeps row tails, the forward solve is a sequence of axpys and the
backward solve a sequence of dot products.
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
def add_outer_upper(M: np.ndarray, g: np.ndarray, scale: float) -> None:
    """``M += scale g g'`` on the upper triangle."""
    n = M.shape[0]
    for a in range(n):
        f = scale * g[a]
        if f != 0.0:
            Ma, ga = M[a, a:], g[a:]
            for b in range(n - a):
                Ma[b] += f * ga[b]


@njit(**FAST)
def gram_upper(M: np.ndarray, GT: np.ndarray, first: int, last: int, use: np.ndarray, W: np.ndarray) -> None:
    """``M = G_S' G_S`` on the upper triangle, ``S`` the rows ``first <= i < last`` with ``use[i]``.

    ``GT`` is ``G'`` (n, k); the columns of ``S`` are gathered into the work array ``W`` (n, k) so
    that every entry is a dot product of two contiguous rows.
    """
    n = GT.shape[0]
    count = 0
    for i in range(first, last):
        if use[i]:
            for a in range(n):
                W[a, count] = GT[a, i]
            count += 1
    for a in range(n):
        Wa, Ma = W[a, :count], M[a]
        for b in range(a, n):
            Wb = W[b, :count]
            acc = 0.0
            for t in range(count):
                acc += Wa[t] * Wb[t]
            Ma[b] = acc


@njit(**FAST)
def cholesky(U: np.ndarray) -> bool:
    """Factor ``H = U'U`` in place (``U`` holds ``H`` on its upper triangle); False unless H > 0.

    Row ``i`` of ``U`` is ``H[i, i:]`` minus the axpys of the tails of the rows above it, then
    scaled by its pivot.
    """
    n = U.shape[0]
    for i in range(n):
        Ui = U[i, i:]
        t = 0
        while t + 4 <= i:  # four rows at a time: a quarter of the loads and stores of row i
            f0, f1, f2, f3 = U[t, i], U[t + 1, i], U[t + 2, i], U[t + 3, i]
            U0, U1, U2, U3 = U[t, i:], U[t + 1, i:], U[t + 2, i:], U[t + 3, i:]
            for j in range(n - i):
                Ui[j] -= f0 * U0[j] + f1 * U1[j] + f2 * U2[j] + f3 * U3[j]
            t += 4
        while t < i:
            f = U[t, i]
            Ut = U[t, i:]
            for j in range(n - i):
                Ui[j] -= f * Ut[j]
            t += 1
        s = Ui[0]
        if not (0.0 < s < np.inf):
            return False
        r = math.sqrt(s)
        inv = 1.0 / r
        for j in range(n - i):
            Ui[j] *= inv
        Ui[0] = r
    return True


@njit(**FAST)
def rank_one(U: np.ndarray, x: np.ndarray, sign: float) -> bool:
    """Update ``U'U`` to ``U'U + sign x x'`` in place (``x`` is overwritten).

    Returns False when a downdate (``sign < 0``) would lose positive definiteness or most of
    a pivot's digits; ``U`` is then unusable and must be refactorised.
    """
    n = U.shape[0]
    for k in range(n):
        xk = x[k]
        if xk == 0.0:
            continue
        ukk = U[k, k]
        r2 = ukk * ukk + sign * xk * xk
        if sign < 0.0 and not (r2 > DOWNDATE_MIN * ukk * ukk):
            return False
        r = math.sqrt(r2)
        c = r / ukk
        s = xk / ukk
        inv_c = 1.0 / c
        ss = sign * s
        U[k, k] = r
        Uk, xk_ = U[k, k + 1 :], x[k + 1 :]
        for i in range(n - k - 1):
            uki = (Uk[i] + ss * xk_[i]) * inv_c
            Uk[i] = uki
            xk_[i] = c * xk_[i] - s * uki
    return True


@njit(**FAST)
def cho_solve(U: np.ndarray, g: np.ndarray) -> None:
    """``g = (U'U)^-1 g`` in place."""
    n = U.shape[0]
    for i in range(n):  # U' h = g, by axpys of the rows of U
        hi = g[i] / U[i, i]
        g[i] = hi
        if hi != 0.0:
            Ui, gi = U[i, i + 1 :], g[i + 1 :]
            for t in range(n - i - 1):
                gi[t] -= hi * Ui[t]
    for i in range(n - 1, -1, -1):  # U x = h, by dot products with the rows of U
        Ui, gi = U[i, i + 1 :], g[i + 1 :]
        s = g[i]
        for t in range(n - i - 1):
            s -= Ui[t] * gi[t]
        g[i] = s / U[i, i]
