"""Batched Ruiz equilibration of a dense QP, and the maps back to the original problem.

With ``x = D x~`` and rows scaled by ``E``, the scaled problem is::

    P~ = c D P D,  q~ = c D q,  A~ = E_eq A D,  b~ = E_eq b,  C~ = E_in C D,  l~, u~ = E_in (l, u)

so that ``y = E_eq y~ / c``, ``z = E_in z~ / c``, a primal residual maps back as ``E^-1 r~``
and a dual residual as ``D^-1 r~ / c``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import array_api_compat

from ..._array import namespace


class Problem(NamedTuple):
    """A dense batched QP (standard form) as a pytree of arrays."""

    P: Any  # (B, n, n)
    q: Any  # (B, n)
    A: Any  # (B, p, n)
    b: Any  # (B, p)
    C: Any  # (B, m, n)
    l: Any  # (B, m), may hold -inf
    u: Any  # (B, m), may hold +inf


class Scaling(NamedTuple):
    """Diagonal scalings of variables (D), equality rows (E_eq), inequality rows (E_in), cost (c)."""

    D: Any  # (B, n)
    E_eq: Any  # (B, p)
    E_in: Any  # (B, m)
    c: Any  # (B,)


def check_shapes(prob: Problem) -> None:
    """Raise unless the arrays form one batch: q (B, n), b (B, p), l and u (B, m), P (B, n, n), ...

    Raises
    ------
    ParameterError
        Naming the first array whose shape does not follow from q, b and l.
    """
    from ...errors import ParameterError

    q, b, l = prob.q, prob.b, prob.l
    if q.ndim != 2 or b.ndim != 2 or l.ndim != 2:
        raise ParameterError(
            f"q, b, l must be (B, n), (B, p), (B, m) arrays, got shapes {tuple(q.shape)}, "
            f"{tuple(b.shape)}, {tuple(l.shape)}"
        )
    batch, n = q.shape
    p, m = b.shape[1], l.shape[1]
    expected = {
        "P": (batch, n, n),
        "A": (batch, p, n),
        "b": (batch, p),
        "C": (batch, m, n),
        "l": (batch, m),
        "u": (batch, m),
    }
    for name, shape in expected.items():
        got = tuple(getattr(prob, name).shape)
        if got != shape:
            raise ParameterError(
                f"{name} has shape {got}, expected {shape} "
                f"from q {tuple(q.shape)}, b {tuple(b.shape)}, l {tuple(l.shape)}"
            )


def amax(xp: Any, a: Any, axis: int) -> Any:
    """``max`` over ``axis`` that gives 0 for an empty axis (p or m may be 0)."""
    if a.shape[axis] == 0:
        shape = tuple(s for i, s in enumerate(a.shape) if i != axis % a.ndim)
        return xp.zeros(shape, dtype=a.dtype, device=array_api_compat.device(a))
    return xp.max(a, axis=axis)


def _inv_sqrt(xp: Any, norms: Any) -> Any:
    return 1.0 / xp.sqrt(xp.where(norms > 0, norms, xp.ones_like(norms)))


def equilibrate(prob: Problem, iterations: int = 10, loop: Any = None) -> tuple[Problem, Scaling]:
    """Ruiz-equilibrate the KKT matrix of every element, then scale the cost.

    Parameters
    ----------
    prob
        The batch of QPs (finite P, q, A, b, C).
    iterations
        Number of Ruiz sweeps; each divides every row and column of the KKT matrix by the
        square root of its infinity norm.
    loop
        ``loop(sweep, iterations, carry)`` applies ``sweep`` ``iterations`` times to a tuple
        of arrays (a framework may pass its own, e.g. one that compiles the sweep once);
        None: a Python loop.

    Returns
    -------
    scaled, scaling
        The scaled problem and the scaling that produced it.
    """
    xp = namespace(prob.q)
    n, p = prob.q.shape[1], prob.b.shape[1]

    # The KKT matrix's rows and columns are those of K = [P; A; C] (its other blocks are A', C'
    # and zeros): a variable's column norm is K's column norm, a constraint's is its row's.
    def sweep(carry: tuple[Any, Any]) -> tuple[Any, Any]:
        K, scale = carry
        abs_K = xp.abs(K)
        d = _inv_sqrt(xp, amax(xp, abs_K, -2))
        s = xp.concat([d, _inv_sqrt(xp, amax(xp, abs_K[:, n:, :], -1))], axis=-1)
        return s[:, :, None] * K * d[:, None, :], scale * s

    K = xp.concat([prob.P, prob.A, prob.C], axis=1)
    carry = (K, xp.ones_like(K[:, :, 0]))
    if loop is None:
        for _ in range(iterations):
            carry = sweep(carry)
    else:
        carry = loop(sweep, iterations, carry)
    K, scale = carry
    P, A, C = K[:, :n, :], K[:, n : n + p, :], K[:, n + p :, :]
    D, E_eq, E_in = scale[:, :n], scale[:, n : n + p], scale[:, n + p :]
    q = D * prob.q
    cost = xp.maximum(xp.mean(amax(xp, xp.abs(P), -1), axis=-1), amax(xp, xp.abs(q), -1))
    c = 1.0 / xp.clip(xp.where(cost > 0, cost, xp.ones_like(cost)), 1e-6, 1e6)
    scaled = Problem(c[:, None, None] * P, c[:, None] * q, A, E_eq * prob.b, C, E_in * prob.l, E_in * prob.u)
    return scaled, Scaling(D, E_eq, E_in, c)


def unscale_primal(scaling: Scaling, x: Any) -> Any:
    """Original variables from scaled ones."""
    return scaling.D * x


def scale_primal(scaling: Scaling, x: Any) -> Any:
    """Scaled variables from original ones."""
    return x / scaling.D


def unscale_duals(scaling: Scaling, y: Any, z: Any) -> tuple[Any, Any]:
    """Original multipliers from scaled ones."""
    c = scaling.c[:, None]
    return scaling.E_eq * y / c, scaling.E_in * z / c


def scale_duals(scaling: Scaling, y: Any, z: Any) -> tuple[Any, Any]:
    """Scaled multipliers from original ones."""
    c = scaling.c[:, None]
    return c * y / scaling.E_eq, c * z / scaling.E_in
