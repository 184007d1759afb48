"""The backward pass's KKT solves (:mod:`qpdsl.diff.kkt`) compiled per batch element, for float64
host arrays (numpy, torch on the CPU).

The same method as the batched array code in :mod:`qpdsl.diff.kkt`, element by element and in
parallel over the batch: ``H = P + d I + G_J' G_J / d`` gathers only the rows in the system
(where the batched code multiplies every row by its 0/1 mask), and each element stops refining
as soon as its own residual is at rounding level. The factor is the upper triangle ``U`` of
``H = U'U`` in the layout of the ``cpu`` backend's kernels, whose factorisation this reuses.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import cache  # noqa: F401  (registers the cache locator first)
from .linalg import KERNEL, cho_solve, cholesky, gram_upper, matvec, rmatvec
from .runtime import run as run_kernel
from .runtime import thread_count

EPS = float(np.finfo(np.float64).eps)


@njit(**KERNEL)
def _factor_one(P, G, a, d, U) -> bool:
    """``U`` (upper) with ``U'U = P + d I + G_J' G_J / d``; False where H is not positive definite."""
    n = P.shape[0]
    use = a != 0.0
    gram_upper(U, G, 0, G.shape[0], use)
    inv_d = 1.0 / d
    for i in range(n):
        for j in range(i, n):
            U[i, j] = U[i, j] * inv_d + 0.5 * (P[i, j] + P[j, i])
        U[i, i] += d
        for j in range(i):
            U[i, j] = 0.0
    return cholesky(U)


@njit(**KERNEL)
def _largest(M) -> float:
    out = 0.0
    for i in range(M.shape[0]):
        for j in range(M.shape[1]):
            out = max(out, abs(M[i, j]))
    return out


@njit(**KERNEL)
def _factor_or_retry(P, G, a, rel, retry, scale, d, U, ok, e) -> None:
    """Factor element ``e`` into ``U[e]`` with ``d[e] = rel * scale[e]``, ``scale[e]`` the largest of
    1, |P| and |G|; where that fails, retry with ``retry`` times more regularisation (and update
    ``d[e]``); where that fails too, ``U[e] = I`` and ``ok[e]`` False."""
    n = P.shape[1]
    scale[e] = max(1.0, _largest(P[e]), _largest(G[e]))
    d[e] = rel * scale[e]
    good = _factor_one(P[e], G[e], a[e], d[e], U[e])
    if not good:
        good = _factor_one(P[e], G[e], a[e], d[e] * retry, U[e])
        if good:
            d[e] *= retry
    if not good:
        U[e][:, :] = 0.0
        for i in range(n):
            U[e][i, i] = 1.0
    ok[e] = good


@njit(parallel=True, **KERNEL)
def factor_batch(P, G, a, rel, retry, scale, d, U, ok) -> None:
    """Factor every element in place of ``U`` (B, n, n), in parallel (see :func:`_factor_or_retry`)."""
    for e in prange(P.shape[0]):
        _factor_or_retry(P, G, a, rel, retry, scale, d, U, ok, e)


@njit(**KERNEL)
def factor_batch_serial(P, G, a, rel, retry, scale, d, U, ok) -> None:
    """:func:`factor_batch` in the calling thread."""
    for e in range(P.shape[0]):
        _factor_or_retry(P, G, a, rel, retry, scale, d, U, ok, e)


@njit(**KERNEL)
def _apply(P, G, a, w, out, Gw, tmp) -> None:
    """``out = K w`` (see :mod:`qpdsl.diff.kkt`)."""
    n, k = P.shape[0], G.shape[0]
    wx, wv = w[:n], w[n:]
    matvec(P, wx, out[:n])
    for i in range(k):
        tmp[i] = a[i] * wv[i]
    rmatvec(G, tmp, Gw)
    for j in range(n):
        out[j] += Gw[j]
    matvec(G, wx, tmp)
    for i in range(k):
        out[n + i] = a[i] * tmp[i] - (1.0 - a[i]) * wv[i]


@njit(**KERNEL)
def _precondition(G, a, d, U, r, out, Gw, tmp) -> None:
    """``out = K_d^{-1} r`` through the factor of the Schur complement."""
    n, k = U.shape[0], G.shape[0]
    inv_d = 1.0 / d
    for i in range(k):
        tmp[i] = a[i] * r[n + i]
    rmatvec(G, tmp, Gw)
    wx = out[:n]
    for j in range(n):
        wx[j] = r[j] + Gw[j] * inv_d
    cho_solve(U, wx)
    matvec(G, wx, tmp)
    for i in range(k):
        out[n + i] = a[i] * (tmp[i] - r[n + i]) * inv_d - (1.0 - a[i]) * r[n + i]


@njit(**KERNEL)
def _settled(rhs, w, r, scale, tol) -> bool:
    size = 0.0
    big_w = 0.0
    for i in range(rhs.shape[0]):
        size = max(size, abs(rhs[i]))
        big_w = max(big_w, abs(w[i]))
    bound = tol * EPS * (size + scale * big_w)
    for i in range(r.shape[0]):
        if not abs(r[i]) <= bound:
            return False
    return True


@njit(**KERNEL)
def _refined_solve(P, G, a, d, U, scale, rhs, steps, tol, w) -> bool:
    """``w = K^{-1} rhs`` for one element: preconditioned, then refined against ``K`` for at most
    ``steps`` steps until the residual is within ``tol`` rounding units of ``|rhs| + scale |w|``;
    whether it got there."""
    n, k = P.shape[0], G.shape[0]
    Gw, tmp = np.empty(n), np.empty(max(k, 1))[:k]
    r, dw = np.empty(n + k), np.empty(n + k)
    _precondition(G, a, d, U, rhs, w, Gw, tmp)
    for step in range(steps + 1):
        _apply(P, G, a, w, r, Gw, tmp)
        for i in range(n + k):
            r[i] = rhs[i] - r[i]
        if _settled(rhs, w, r, scale, tol):
            return True
        if step == steps:
            break
        _precondition(G, a, d, U, r, dw, Gw, tmp)
        for i in range(n + k):
            w[i] += dw[i]
    return False


@njit(parallel=True, **KERNEL)
def refined_solve_batch(P, G, a, d, U, scale, rhs, steps, tol, w, settled) -> None:
    """:func:`_refined_solve` for every element, in parallel; ``settled`` (B,) its answers."""
    for e in prange(P.shape[0]):
        settled[e] = _refined_solve(P[e], G[e], a[e], d[e], U[e], scale[e], rhs[e], steps, tol, w[e])


@njit(**KERNEL)
def refined_solve_batch_serial(P, G, a, d, U, scale, rhs, steps, tol, w, settled) -> None:
    """:func:`refined_solve_batch` in the calling thread."""
    for e in range(P.shape[0]):
        settled[e] = _refined_solve(P[e], G[e], a[e], d[e], U[e], scale[e], rhs[e], steps, tol, w[e])


def factor(
    P: np.ndarray, G: np.ndarray, a: np.ndarray, rel: float, retry: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The upper factors ``U`` (B, n, n), ``ok``, ``scale`` and ``d`` (B,) of :func:`factor_batch`."""
    batch, n = P.shape[0], P.shape[-1]
    U, ok = np.empty((batch, n, n)), np.empty(batch, dtype=bool)
    scale, d = np.empty(batch), np.empty(batch)
    args = (P, G, a, rel, retry, scale, d, U, ok)
    run_kernel(factor_batch, factor_batch_serial, args, thread_count(None))
    return U, ok, scale, d


def refined_solve(
    P: np.ndarray,
    G: np.ndarray,
    a: np.ndarray,
    d: np.ndarray,
    U: np.ndarray,
    scale: np.ndarray,
    rhs: np.ndarray,
    steps: int,
    tol: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``w`` (B, n + k) and ``settled`` (B,) of :func:`refined_solve_batch`."""
    w, settled = np.empty_like(rhs), np.empty(rhs.shape[0], dtype=bool)
    args = (P, G, a, d, U, scale, rhs, steps, tol, w, settled)
    run_kernel(refined_solve_batch, refined_solve_batch_serial, args, thread_count(None))
    return w, settled
