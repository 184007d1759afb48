"""Exact line search on the piecewise-quadratic proximal augmented Lagrangian.

Along ``x + a dx`` the merit of the inner problem is convex and piecewise quadratic in ``a``;
its derivative is piecewise linear and nondecreasing, with a kink wherever an inequality
row ``w_i + a v_i`` (``w = C x + mu_in z_prox``, ``v = C dx``) crosses ``l_i`` or ``u_i``.
Sorting the kinks and accumulating the slope changes gives the derivative at every kink
in O(m log m); the minimiser is the root on the first interval where it turns nonnegative.
"""

from __future__ import annotations

from typing import Any

from ..._array import namespace


def _first_order_terms(xp: Any, w: Any, v: Any, l: Any, u: Any, mu_in: Any) -> tuple[Any, Any, Any]:
    """Kinks of the derivative, the slope change at each, and the slope of the rows active at 0+."""
    w_u, w_l = w - u, w - l
    t = xp.concat([-w_u / v, -w_l / v], axis=-1)
    valid = xp.isfinite(t) & (t > 0)
    v2 = v * v / mu_in[:, None]
    sign = xp.sign(v)
    delta = xp.where(valid, xp.concat([sign * v2, -sign * v2], axis=-1), xp.zeros_like(t))
    active0 = (w_u > 0) | ((w_u == 0) & (v > 0)) | (w_l < 0) | ((w_l == 0) & (v < 0))
    slope0 = xp.sum(xp.where(active0, v2, xp.zeros_like(v2)), axis=-1)
    t = xp.where(valid, t, xp.full_like(t, float("inf")))
    return t, delta, slope0


def exact_step(quad: Any, lin: Any, w: Any, v: Any, l: Any, u: Any, mu_in: Any) -> Any:
    """The minimiser ``a >= 0`` of the merit along a direction, per batch element.

    Parameters
    ----------
    quad
        (B,) curvature of the smooth part along the direction,
        ``dx'(P + rho I)dx + ||A dx||² / mu_eq`` (positive unless ``dx = 0``).
    lin
        (B,) derivative of the merit at ``a = 0`` (the subproblem gradient times ``dx``).
    w, v, l, u
        (B, m) ``C x + mu_in z_prox``, ``C dx`` and the bounds (±inf allowed).
    mu_in
        (B,) inequality penalty.

    Returns
    -------
    (B,) step length; 0 where the direction is not a descent direction.
    """
    xp = namespace(quad)
    t, delta, slope0 = _first_order_terms(xp, w, v, l, u, mu_in)
    order = xp.argsort(t, axis=-1)
    t = xp.take_along_axis(t, order, axis=-1)
    delta = xp.take_along_axis(delta, order, axis=-1)
    zero = xp.zeros_like(quad)[:, None]
    points = xp.concat([zero, t], axis=-1)
    # Rounding in the running sum may push the slope below the smooth curvature it never undercuts.
    slopes = xp.maximum(
        quad[:, None] + slope0[:, None] + xp.concat([zero, xp.cumulative_sum(delta, axis=-1)], axis=-1),
        quad[:, None],
    )
    finite = xp.isfinite(points)
    widths = xp.where(
        finite[:, 1:], points[:, 1:] - xp.where(finite[:, :-1], points[:, :-1], zero), xp.zeros_like(t)
    )
    derivs = lin[:, None] + xp.concat([zero, xp.cumulative_sum(slopes[:, :-1] * widths, axis=-1)], axis=-1)
    below = (derivs < 0) & finite
    last = xp.sum(xp.astype(below, xp.int64), axis=-1, keepdims=True) - 1
    idx = xp.clip(last, 0, None)
    a0 = xp.take_along_axis(points, idx, axis=-1)[:, 0]
    g0 = xp.take_along_axis(derivs, idx, axis=-1)[:, 0]
    s0 = xp.take_along_axis(slopes, idx, axis=-1)[:, 0]
    safe = s0 > 0
    step = a0 - g0 / xp.where(safe, s0, xp.ones_like(s0))
    return xp.where((last[:, 0] >= 0) & safe, step, xp.zeros_like(step))
