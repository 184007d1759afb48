"""Derivative of the closest-feasible shift s* (DESIGN §5) and its adjoint.

Where the set V of violated inequality rows is locally constant, the shift on the rows of
``M = [A; C_V]`` is the least-squares residual ``s = M x - c`` with ``c = [b; h_V]``
(``h = u`` on upper-violated rows, ``l`` on lower-violated ones), i.e. ``s = -Pi_perp c``
with ``Pi_perp`` the projector onto null(M'). Differentiating the projector::

    ds = Pi_perp (dM x - dc) - (M^+)' dM' s

Any x with ``M x = c + s`` gives the same ``ds`` along perturbations that keep the rank
of M (the only ones along which s is differentiable), so the solution x of the shifted QP
is used. The shift is zero off the rows of M.
"""

from __future__ import annotations

from typing import Any

from .._array import matvec, rmatvec
from .linearize import Linearization


def shift_jvp(lin: Linearization, dA: Any, db: Any, dC: Any, dh: Any) -> tuple[Any, Any]:
    """Tangent ``(ds_eq, ds_in)`` of the shift; ``dh`` is the tangent of the active bound per row."""
    xp, p = lin.xp, lin.p
    if lin.Pi is None:  # no violated row, A of full row rank: the shift stays zero nearby
        return xp.zeros_like(db), xp.zeros_like(dh)
    e = xp.concat([matvec(dA, lin.x) - db, (matvec(dC, lin.x) - dh) * lin.viol_f], axis=1)
    t = rmatvec(dA, lin.s_eq) + rmatvec(dC, lin.s_in)
    ds = e - matvec(lin.Pi, e) - rmatvec(lin.M_pinv, t)
    return ds[:, :p], ds[:, p:] * lin.viol_f


def shift_vjp(lin: Linearization, g_eq: Any, g_in: Any) -> tuple[Any, Any]:
    """Adjoint of :func:`shift_jvp` in factored form, from the gradients ``(g_eq, g_in)`` on the shift.

    Returns
    -------
    g_perp, w
        (B, p + m) and (B, n): the gradients are ``dM = g_perp x' - s w'`` (rows of A, then of
        C), ``db = -g_perp[:, :p]`` and ``dh = -g_perp[:, p:]``; ``g_perp`` is zero off the rows
        of M. Kept as vectors so that the caller forms each outer product once.
    """
    xp, p = lin.xp, lin.p
    if lin.Pi is None:  # the shift is identically zero nearby (see shift_jvp)
        return xp.zeros_like(xp.concat([g_eq, g_in], axis=1)), xp.zeros_like(lin.x)
    g = xp.concat([g_eq, g_in * lin.viol_f], axis=1)
    g_perp = g - matvec(lin.Pi, g)
    w = matvec(lin.M_pinv, g)
    return xp.concat([g_perp[:, :p], g_perp[:, p:] * lin.viol_f], axis=1), w
