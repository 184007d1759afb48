"""Derivative of the closest-feasible shift s* and its adjoint.

Only the user's rows are shifted (set S: shiftable equality rows and shifted inequality rows);
the compiler's rows are hard (set H: hard equality rows and hard inequality rows active at the
solution). Where these sets are locally constant, the shift solves the least-squares problem

    minimize ||G_S x - c_S||²   subject to   G_H x = c_H,

with ``G = [A; C]`` and ``c`` the right-hand side of each row (``b``, or the active bound of an
inequality row). With ``s = G_S x - c_S`` and ``lam`` the multipliers of the hard rows, its
optimality conditions are::

    G_S x - s = c_S,    G_H x = c_H,    G_S' s + G_H' lam = 0.

Differentiating them gives a linear system in ``(dx, ds, dlam)`` whose matrix ``K`` is singular
along directions that leave ``s`` unchanged (``x`` and ``lam`` need not be unique); ``ds`` is
unique and is read off the minimum-norm solution ``pinv(K) rhs``::

    K = [[D_SH G, -D_S, 0  ],        rhs = [D_SH (dc - dG x)          ]
         [0,      G'D_S, G'D_H]]              [-dG' (D_S s + D_H lam)  ]

with ``D_S``, ``D_H`` the 0/1 row masks and ``D_SH = D_S + D_H``. Without hard rows this is the
derivative of the plain least-squares residual.
"""

from __future__ import annotations

from typing import Any

from .._array import device, matvec, outer, rmatvec


def shift_jvp(lin: Any, dA: Any, db: Any, dC: Any, dh: Any) -> tuple[Any, Any]:
    """Tangent ``(ds_eq, ds_in)`` of the shift; ``dh`` is the tangent of the active bound per row."""
    xp, p = lin.xp, lin.p
    if lin.K_pinv is None:  # no element is closest-feasible: the shift stays zero nearby
        return xp.zeros_like(db), xp.zeros_like(dh)
    n, k = lin.n, lin.S.shape[1]
    dG = xp.concat([dA, dC], axis=1)
    dc = xp.concat([db, dh], axis=1)
    SH = lin.S + lin.H
    top = SH * (dc - matvec(dG, lin.x))
    bottom = -rmatvec(dG, lin.shift_weights)
    sol = matvec(lin.K_pinv, xp.concat([top, bottom], axis=1))
    ds = sol[:, n : n + k] * lin.S * lin.closest_f[:, None]
    return ds[:, :p], ds[:, p:]


def shift_vjp(lin: Any, g_eq: Any, g_in: Any) -> tuple[Any, Any, Any]:
    """Adjoint of :func:`shift_jvp` in factored form, from the gradients ``(g_eq, g_in)`` on the shift.

    Returns
    -------
    g_c, v, weights
        (B, p + m), (B, n), (B, p + m): the gradients are ``dG = -g_c x' - weights v'`` (rows of A,
        then of C), ``db = g_c[:, :p]`` and ``dh = g_c[:, p:]``. Kept as vectors so that the caller
        forms each outer product once.
    """
    xp = lin.xp
    k = lin.S.shape[1] if lin.S is not None else g_eq.shape[1] + g_in.shape[1]
    if lin.K_pinv is None:
        zeros = xp.zeros_like(xp.concat([g_eq, g_in], axis=1))
        return zeros, xp.zeros_like(lin.x), zeros
    n = lin.n
    g = xp.concat([g_eq, g_in], axis=1) * lin.S * lin.closest_f[:, None]
    batch, dev = g.shape[0], device(g)
    zeros_x = xp.zeros((batch, n), dtype=g.dtype, device=dev)
    e = xp.concat([zeros_x, g, xp.zeros((batch, k), dtype=g.dtype, device=dev)], axis=1)
    u = rmatvec(lin.K_pinv, e)  # pinv(K)' e, (B, k + n)
    g_c = (lin.S + lin.H) * u[:, :k]
    return g_c, u[:, k:], lin.shift_weights


def shift_system(xp: Any, G: Any, x: Any, s: Any, S: Any, H: Any) -> tuple[Any, Any]:
    """``pinv(K)`` (B, n + 2k, k + n) of the module docstring, and the weights ``D_S s + D_H lam``.

    Parameters
    ----------
    G
        (B, k, n) the rows ``[A; C]``.
    x
        (B, n) the solution of the shifted QP (it solves the least-squares problem's constraints).
    s
        (B, k) the shift, zero off S.
    S, H
        (B, k) 0/1 masks of the shifted and hard rows.
    """
    batch, k, n = G.shape
    dtype = G.dtype
    dev = device(G)
    eye = xp.eye(k, dtype=dtype, device=dev)[None]
    GS, GH = G * S[:, :, None], G * H[:, :, None]
    # multipliers of the hard rows: the least-squares solution of G_H' lam = -G_S' s
    lam = matvec(xp.linalg.pinv(xp.matrix_transpose(GH)), -rmatvec(GS, s))
    weights = S * s + H * lam
    top = xp.concat(
        [G * (S + H)[:, :, None], -eye * S[:, None, :], xp.zeros((batch, k, k), dtype=dtype, device=dev)],
        axis=2,
    )
    bottom = xp.concat(
        [xp.zeros((batch, n, n), dtype=dtype, device=dev), xp.matrix_transpose(GS), xp.matrix_transpose(GH)],
        axis=2,
    )
    K = xp.concat([top, bottom], axis=1)
    return xp.linalg.pinv(K), weights


__all__ = ["outer", "shift_jvp", "shift_system", "shift_vjp"]
