"""Exact line search on the piecewise-quadratic proximal augmented Lagrangian of one element.

Along ``x + a dx`` the subproblem's merit is convex and piecewise quadratic in ``a``; its
derivative is piecewise linear and nondecreasing, with a kink wherever an inequality row
``w_i + a v_i`` (``w = C x + mu_in z_prox``, ``v = C dx``) crosses ``l_i`` or ``u_i``. The
derivative is followed from kink to kink, in increasing order, until it turns nonnegative.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .linalg import KERNEL

SELECT_FIRST = 16  # kinks taken by selection (linear scans) before sorting the remaining ones


@njit(**KERNEL)
def exact_step(
    quad: float,
    lin: float,
    w: np.ndarray,
    v: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    mu_in: float,
    t: np.ndarray,
    delta: np.ndarray,
) -> float:
    """The minimiser ``a >= 0`` of the merit along a direction (0 if it is not a descent direction).

    Parameters
    ----------
    quad
        Curvature of the smooth part along the direction, ``dx'(P + rho I)dx + ||A dx||² / mu_eq``.
    lin
        Derivative of the merit at ``a = 0``.
    w, v, lo, hi
        ``C x + mu_in z_prox``, ``C dx`` and the bounds of the inequality rows (±inf allowed).
    mu_in
        Inequality penalty.
    t, delta
        Work arrays of at least ``2 m`` entries.
    """
    m = w.shape[0]
    count = 0
    base = quad
    for i in range(m):
        c2 = v[i] * v[i] / mu_in
        # Each side of the row as an upper bound: s = w - hi (rate v) and s = lo - w (rate -v); the
        # side is active where s > 0 and has a kink where s + a * rate crosses zero.
        for side in range(2):
            s = w[i] - hi[i] if side == 0 else lo[i] - w[i]
            rate = v[i] if side == 0 else -v[i]
            if s > 0.0 or (s == 0.0 and rate > 0.0):
                base += c2
            if rate != 0.0:
                kink = -s / rate
                if 0.0 < kink < np.inf:
                    t[count] = kink
                    delta[count] = c2 if rate > 0.0 else -c2  # entering adds its curvature
                    count += 1
    slope, offset = base, 0.0
    # The root usually lies before the first few kinks: select them one by one (each a linear
    # scan), and sort the rest only when many are passed.
    taken = 0
    while count > 0 and taken < SELECT_FIRST:
        j = 0
        for i in range(1, count):
            if t[i] < t[j]:
                j = i
        tj = t[j]
        if lin + slope * tj - offset >= 0.0:
            count = 0
            break
        slope += delta[j]
        offset += delta[j] * tj
        count -= 1
        t[j], delta[j] = t[count], delta[count]
        taken += 1
    if count > 0:
        order = np.argsort(t[:count])
        for i in range(count):
            tj = t[order[i]]
            if lin + slope * tj - offset >= 0.0:
                break
            slope += delta[order[i]]
            offset += delta[order[i]] * tj
    # Rounding in the sums may push the slope below the smooth curvature it never undercuts.
    slope = max(slope, quad)
    if not slope > 0.0:
        return 0.0
    return max((offset - lin) / slope, 0.0)
