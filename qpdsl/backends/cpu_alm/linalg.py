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
from numba import njit, prange

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
def add_outers_upper(M: np.ndarray, G: np.ndarray, rows: np.ndarray, signs: np.ndarray, count: int) -> None:
    """``M += sum_t signs[t] g_t g_t'`` on the upper triangle, ``g_t = G[rows[t]]``, ``t < count``.

    Four rows at a time: each pass over ``M`` adds four outer products, a quarter of the loads
    and stores of adding them one by one.
    """
    n = M.shape[0]
    t = 0
    while t + 4 <= count:
        g0, g1, g2, g3 = G[rows[t]], G[rows[t + 1]], G[rows[t + 2]], G[rows[t + 3]]
        s0, s1, s2, s3 = signs[t], signs[t + 1], signs[t + 2], signs[t + 3]
        for a in range(n):
            f0, f1, f2, f3 = s0 * g0[a], s1 * g1[a], s2 * g2[a], s3 * g3[a]
            Ma = M[a, a:]
            h0, h1, h2, h3 = g0[a:], g1[a:], g2[a:], g3[a:]
            for b in range(n - a):
                Ma[b] += f0 * h0[b] + f1 * h1[b] + f2 * h2[b] + f3 * h3[b]
        t += 4
    while t < count:
        add_outer_upper(M, G[rows[t]], signs[t])
        t += 1


@njit(**FAST)
def gram_upper(M: np.ndarray, G: np.ndarray, first: int, last: int, use: np.ndarray) -> None:
    """``M = G_S' G_S`` on the upper triangle, ``S`` the rows ``first <= i < last`` of ``G`` (k, n)
    with ``use[i]``."""
    n = M.shape[0]
    for a in range(n):
        M[a, a:] = 0.0
    rows = np.empty(max(last - first, 1), dtype=np.int64)
    count = 0
    for i in range(first, last):
        if use[i]:
            rows[count] = i
            count += 1
    add_outers_upper(M, G, rows, np.ones(max(count, 1)), count)


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
def rank_updates(U: np.ndarray, X: np.ndarray, signs: np.ndarray, count: int) -> bool:
    """Update ``U'U`` by ``signs[t] x_t x_t'`` for ``x_t = X[t]``, ``t < count``, in that order
    (``X`` is overwritten).

    Row by row of ``U``: the rotations of all updates for row ``k`` depend only on its pivot and
    on ``x_t[k]``, so they are computed first and then applied to the row's tail together, four
    at a time, reading and writing the row once per four updates. The result is that of the
    updates one after the other. Returns False when a downdate would lose positive definiteness
    or most of a pivot's digits; ``U`` is then unusable and must be refactorised.
    """
    n = U.shape[0]
    c, s, ss, inv_c = np.empty(count), np.empty(count), np.empty(count), np.empty(count)
    for k in range(n):
        ukk = U[k, k]
        for t in range(count):
            xk = X[t, k]
            if xk == 0.0:  # the identity rotation
                c[t], s[t], ss[t], inv_c[t] = 1.0, 0.0, 0.0, 1.0
                continue
            r2 = ukk * ukk + signs[t] * xk * xk
            if signs[t] < 0.0 and not (r2 > DOWNDATE_MIN * ukk * ukk):
                return False
            r = math.sqrt(r2)
            c[t] = r / ukk
            s[t] = xk / ukk
            inv_c[t] = ukk / r
            ss[t] = signs[t] * s[t]
            ukk = r
        U[k, k] = ukk
        Uk = U[k, k + 1 :]
        m = n - k - 1
        t = 0
        while t + 4 <= count:
            x0, x1, x2, x3 = X[t, k + 1 :], X[t + 1, k + 1 :], X[t + 2, k + 1 :], X[t + 3, k + 1 :]
            a0, a1, a2, a3 = ss[t], ss[t + 1], ss[t + 2], ss[t + 3]
            b0, b1, b2, b3 = inv_c[t], inv_c[t + 1], inv_c[t + 2], inv_c[t + 3]
            c0, c1, c2, c3 = c[t], c[t + 1], c[t + 2], c[t + 3]
            s0, s1, s2, s3 = s[t], s[t + 1], s[t + 2], s[t + 3]
            for i in range(m):
                u = (Uk[i] + a0 * x0[i]) * b0
                x0[i] = c0 * x0[i] - s0 * u
                u = (u + a1 * x1[i]) * b1
                x1[i] = c1 * x1[i] - s1 * u
                u = (u + a2 * x2[i]) * b2
                x2[i] = c2 * x2[i] - s2 * u
                u = (u + a3 * x3[i]) * b3
                x3[i] = c3 * x3[i] - s3 * u
                Uk[i] = u
            t += 4
        while t < count:
            xt = X[t, k + 1 :]
            at, bt, ct, st = ss[t], inv_c[t], c[t], s[t]
            for i in range(m):
                u = (Uk[i] + at * xt[i]) * bt
                xt[i] = ct * xt[i] - st * u
                Uk[i] = u
            t += 1
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


@njit(**FAST)
def _cholesky_lower(M: np.ndarray, L: np.ndarray) -> bool:
    """``L`` lower with ``L L' = M`` (its lower triangle read, as LAPACK does); False unless M > 0."""
    n = M.shape[0]
    U = np.empty_like(L)
    for i in range(n):
        for j in range(i, n):
            U[i, j] = M[j, i]
    ok = cholesky(U)
    for i in range(n):
        for j in range(n):
            L[i, j] = U[j, i] if j <= i else 0.0
    return ok


@njit(parallel=True, **KERNEL)
def cholesky_lower_batch(M: np.ndarray, L: np.ndarray, ok: np.ndarray) -> None:
    """:func:`_cholesky_lower` of every (n, n) matrix of ``M`` (B, n, n), in parallel."""
    for e in prange(M.shape[0]):
        ok[e] = _cholesky_lower(M[e], L[e])


@njit(**KERNEL)
def cholesky_lower_batch_serial(M: np.ndarray, L: np.ndarray, ok: np.ndarray) -> None:
    """:func:`cholesky_lower_batch` in the calling thread."""
    for e in range(M.shape[0]):
        ok[e] = _cholesky_lower(M[e], L[e])


def cholesky_batch(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower Cholesky factors ``L`` (B, n, n) and ``ok`` (B,) of float32 or float64 matrices ``M``.

    ``ok[e]`` is False where ``M[e]`` is not numerically positive definite (``L[e]`` is then
    meaningless); NaN entries fail too. In the matrices' dtype, parallel over the batch.
    """
    from .runtime import run, thread_count

    M = np.ascontiguousarray(M)
    L, ok = np.empty_like(M), np.empty(M.shape[0], dtype=bool)
    run(cholesky_lower_batch, cholesky_lower_batch_serial, (M, L, ok), thread_count(None))
    return L, ok


@njit(**FAST)
def _not_psd_one(M: np.ndarray, rel: float) -> bool:
    """Whether ``(M + M')/2 + rel max|(M + M')/2| I`` has no Cholesky factor (False for a zero
    matrix and for a matrix with a non-finite entry)."""
    n = M.shape[0]
    U = np.empty((n, n), dtype=M.dtype)
    scale = 0.0
    for i in range(n):
        for j in range(i, n):
            a, b = M[i, j], M[j, i]
            if not (np.isfinite(a) and np.isfinite(b)):
                return False
            s = 0.5 * (a + b)
            U[i, j] = s
            scale = max(scale, abs(s))
    if scale == 0.0:
        return False
    for i in range(n):
        U[i, i] += rel * scale
    return not cholesky(U)


@njit(parallel=True, **KERNEL)
def not_psd_batch_kernel(M: np.ndarray, rel: float, out: np.ndarray) -> None:
    """:func:`_not_psd_one` of every (n, n) matrix of ``M`` (B, n, n), in parallel."""
    for e in prange(M.shape[0]):
        out[e] = _not_psd_one(M[e], rel)


@njit(**KERNEL)
def not_psd_batch_kernel_serial(M: np.ndarray, rel: float, out: np.ndarray) -> None:
    """:func:`not_psd_batch_kernel` in the calling thread."""
    for e in range(M.shape[0]):
        out[e] = _not_psd_one(M[e], rel)


def not_psd_batch(M: np.ndarray, rel: float) -> np.ndarray:
    """(B,) True where the symmetric part of ``M[e]`` (float32 or float64, (B, n, n)) shifted by
    ``rel`` times its largest entry has no Cholesky factor; False for zero matrices and for
    matrices with a non-finite entry. In the matrices' dtype, parallel over the batch."""
    from .runtime import run, thread_count

    M = np.ascontiguousarray(M)
    out = np.empty(M.shape[0], dtype=bool)
    run(not_psd_batch_kernel, not_psd_batch_kernel_serial, (M, float(rel), out), thread_count(None))
    return out


@njit(**FAST)
def _abs_matvec_one(M: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """``out = |M| @ x`` for one (r, c) matrix."""
    for i in range(M.shape[0]):
        row = M[i]
        s = 0.0
        for j in range(M.shape[1]):
            s += abs(row[j]) * x[j]
        out[i] = s


@njit(**FAST)
def _abs_rmatvec_one(M: np.ndarray, v: np.ndarray, out: np.ndarray) -> None:
    """``out = |M|' @ v`` for one (r, c) matrix."""
    out[:] = 0.0
    for i in range(M.shape[0]):
        vi = v[i]
        row = M[i]
        for j in range(M.shape[1]):
            out[j] += abs(row[j]) * vi


@njit(parallel=True, **KERNEL)
def _abs_matvec_kernel(M: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    for e in prange(M.shape[0]):
        _abs_matvec_one(M[e], x[e], out[e])


@njit(**KERNEL)
def _abs_matvec_serial(M: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    for e in range(M.shape[0]):
        _abs_matvec_one(M[e], x[e], out[e])


@njit(parallel=True, **KERNEL)
def _abs_rmatvec_kernel(M: np.ndarray, v: np.ndarray, out: np.ndarray) -> None:
    for e in prange(M.shape[0]):
        _abs_rmatvec_one(M[e], v[e], out[e])


@njit(**KERNEL)
def _abs_rmatvec_serial(M: np.ndarray, v: np.ndarray, out: np.ndarray) -> None:
    for e in range(M.shape[0]):
        _abs_rmatvec_one(M[e], v[e], out[e])


def abs_matvec(M: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``|M| @ x`` for (B, r, c) and (B, c) arrays of one float dtype, without forming ``|M|``;
    parallel over the batch."""
    from .runtime import run, thread_count

    if M.ndim != 3 or x.shape != (M.shape[0], M.shape[2]):
        raise ValueError(f"abs_matvec takes (B, r, c) and (B, c) arrays, got {M.shape} and {x.shape}")
    M, x = np.ascontiguousarray(M), np.ascontiguousarray(x)
    out = np.empty(M.shape[:2], dtype=M.dtype)
    run(_abs_matvec_kernel, _abs_matvec_serial, (M, x, out), thread_count(None))
    return out


def abs_rmatvec(M: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``|M|' @ v`` for (B, r, c) and (B, r) arrays of one float dtype, without forming ``|M|``;
    parallel over the batch."""
    from .runtime import run, thread_count

    if M.ndim != 3 or v.shape != M.shape[:2]:
        raise ValueError(f"abs_rmatvec takes (B, r, c) and (B, r) arrays, got {M.shape} and {v.shape}")
    M, v = np.ascontiguousarray(M), np.ascontiguousarray(v)
    out = np.empty((M.shape[0], M.shape[2]), dtype=M.dtype)
    run(_abs_rmatvec_kernel, _abs_rmatvec_serial, (M, v, out), thread_count(None))
    return out
