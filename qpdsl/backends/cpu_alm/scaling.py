"""Ruiz equilibration of one element's KKT matrix, and the cost scaling.

With ``x = D x~`` and the constraint rows scaled by ``E``, the scaled problem is
``P~ = c D P D``, ``q~ = c D q``, ``G~ = E G D`` and bounds ``E lo``, ``E hi``; so that
multipliers map back as ``E v~ / c``, primal residuals as ``r~ / E`` and dual residuals as
``r~ / (c D)``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .linalg import FAST, KERNEL

# The data are finite when these run (checked before): max reductions may then be vectorised.
FINITE = dict(KERNEL, fastmath={"reassoc", "contract", "nnan", "ninf"})


@njit(**FINITE)
def _maxima(K: np.ndarray, n: int, d: np.ndarray, e: np.ndarray) -> None:
    """Column maxima of ``|K|`` into ``d`` (n), maxima of its constraint rows into ``e`` (k)."""
    d[:] = 0.0
    for i in range(K.shape[0]):
        row = K[i]
        row_max = 0.0
        for j in range(n):
            a = abs(row[j])
            d[j] = max(d[j], a)
            row_max = max(row_max, a)
        if i >= n:
            e[i - n] = row_max


@njit(**FINITE)
def _scale_and_maxima(
    K: np.ndarray, n: int, d: np.ndarray, e: np.ndarray, dn: np.ndarray, en: np.ndarray
) -> None:
    """Scale ``K`` by ``diag([d; e]) K diag(d)`` and return the next sweep's maxima in ``dn``, ``en``."""
    dn[:] = 0.0
    for i in range(K.shape[0]):
        s = d[i] if i < n else e[i - n]
        row = K[i]
        row_max = 0.0
        for j in range(n):
            a = row[j] * (s * d[j])
            row[j] = a
            a = abs(a)
            dn[j] = max(dn[j], a)
            row_max = max(row_max, a)
        if i >= n:
            en[i - n] = row_max


@njit(**KERNEL)
def _factors(m: np.ndarray) -> float:
    """Maxima to Ruiz factors ``1 / sqrt(max)`` in place (1 for a zero line); the largest ``|1 - factor|``."""
    change = 0.0
    for j in range(m.shape[0]):
        m[j] = 1.0 / math.sqrt(m[j]) if m[j] > 0.0 else 1.0
        change = max(change, abs(1.0 - m[j]))
    return change


@njit(**KERNEL)
def equilibrate(K: np.ndarray, n: int, D: np.ndarray, E: np.ndarray, iterations: int, tol: float) -> None:
    """Scale ``K = [P; G]`` ((n + k, n), in place) by Ruiz sweeps; return the scalings in ``D``, ``E``.

    The KKT matrix's rows and columns are those of ``K`` (its other blocks are ``G'`` and
    zeros): a variable's norm is its column's in ``K``, a constraint's is its row's. Each
    sweep divides them by the square roots of their infinity norms; the sweeps stop once
    every factor is within ``tol`` of 1. One pass over ``K`` per sweep: the scaling of a
    sweep also takes the maxima of the next.
    """
    k = K.shape[0] - n
    D[:] = 1.0
    E[:] = 1.0
    d, e, dn, en = np.empty(n), np.empty(k), np.empty(n), np.empty(k)
    if iterations <= 0:
        return
    _maxima(K, n, d, e)
    for _ in range(iterations):
        change = max(_factors(d), _factors(e))
        _scale_and_maxima(K, n, d, e, dn, en)
        for j in range(n):
            D[j] *= d[j]
        for i in range(k):
            E[i] *= e[i]
        if change <= tol:
            break
        d, dn = dn, d
        e, en = en, e


@njit(**FAST)
def cost_scale(K: np.ndarray, n: int, q_scaled: np.ndarray) -> float:
    """The cost factor ``c`` for the equilibrated ``P`` (rows ``:n`` of ``K``) and ``D q``."""
    mean_row = 0.0
    for i in range(n):
        row_max = 0.0
        for j in range(n):
            row_max = max(row_max, abs(K[i, j]))
        mean_row += row_max
    cost = mean_row / n if n else 0.0
    for j in range(n):
        cost = max(cost, abs(q_scaled[j]))
    if cost == 0.0:
        return 1.0
    return 1.0 / min(max(cost, 1e-6), 1e6)
