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

from .linalg import FAST


@njit(**FAST)
def equilibrate(K: np.ndarray, n: int, D: np.ndarray, E: np.ndarray, iterations: int, tol: float) -> None:
    """Scale ``K = [P; G]`` ((n + k, n), in place) by Ruiz sweeps; return the scalings in ``D``, ``E``.

    The KKT matrix's rows and columns are those of ``K`` (its other blocks are ``G'`` and
    zeros): a variable's norm is its column's in ``K``, a constraint's is its row's. Each
    sweep divides them by the square roots of their infinity norms; the sweeps stop once
    every factor is within ``tol`` of 1.
    """
    rows = K.shape[0]
    k = rows - n
    D[:] = 1.0
    E[:] = 1.0
    d = np.empty(n)
    e = np.empty(k)
    for _ in range(iterations):
        d[:] = 0.0
        change = 0.0
        for i in range(rows):
            row_max = 0.0
            for j in range(n):
                a = abs(K[i, j])
                if a > d[j]:
                    d[j] = a
                if a > row_max:
                    row_max = a
            if i >= n:
                e[i - n] = 1.0 / math.sqrt(row_max) if row_max > 0.0 else 1.0
                change = max(change, abs(1.0 - e[i - n]))
        for j in range(n):
            d[j] = 1.0 / math.sqrt(d[j]) if d[j] > 0.0 else 1.0
            change = max(change, abs(1.0 - d[j]))
        for i in range(rows):
            s = d[i] if i < n else e[i - n]
            for j in range(n):
                K[i, j] *= s * d[j]
        for j in range(n):
            D[j] *= d[j]
        for i in range(k):
            E[i] *= e[i]
        if change <= tol:
            break


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
