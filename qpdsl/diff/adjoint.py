"""Reverse (:func:`qp_vjp`) and forward (:func:`qp_jvp`) derivatives of the QP solution map.

At a feasible solution with active set J the solution is differentiated through the KKT
system of the equality-constrained QP on J; for a closest-feasible solution
the shifted QP is differentiated the same way, its bounds moving with the shift, whose
own derivative comes from :mod:`qpdsl.diff.shift`. Both functions apply the same
linear map (and its transpose), so ``<v, qp_jvp(t)> = <qp_vjp(v), t>``.

Dual derivatives are defined modulo multipliers that the data do not determine
(dependent constraint rows, always the case for a shifted QP); the parts along
null([A; C_V]') are projected out, which keeps every output finite and the map symmetric.

Float32 solutions are differentiated in float64 (where the array library has it: JAX only with
``jax_enable_x64``) and the derivatives returned in float32: the adjoint system of a QP is as
ill-conditioned as its KKT matrix, and in float32 arithmetic the gradients of random dense
QPs came out with relative errors near 1, while float64 arithmetic on the same float32
solutions gives about 1e-7 relative to the exact ones.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .._array import concrete_any, device, framework, matvec, namespace, outer_sum, rmatvec, values_known
from ..qp import QPData, QPResult
from .linearize import Linearization, linearize
from .shift import shift_jvp, shift_vjp


@dataclass(frozen=True)
class QPGrads:
    """Gradients with respect to the standard-form data: dense arrays shaped like the data."""

    P: Any
    q: Any
    A: Any
    b: Any
    C: Any
    l: Any
    u: Any
    ok: Any = None  # (B,) bool: status ok and the adjoint system solved (else the gradients are zero)
    all_solved: bool | None = None  # known on the host: ``ok`` holds everywhere (None: not read)


def qp_vjp(
    data: QPData,
    result: QPResult,
    grad_x: Any,
    grad_y: Any = None,
    grad_z: Any = None,
    grad_shift_eq: Any = None,
    grad_shift_in: Any = None,
    *,
    active_tol: float | None = None,
    shiftable: Any = None,
    flags: tuple[bool, bool] | None = None,
) -> QPGrads:
    """Pull gradients on the solution back to the QP data.

    Parameters
    ----------
    data
        Dense batched QP data (numpy, torch or jax arrays): P (B, n, n), q (B, n),
        A (B, p, n), b (B, p), C (B, m, n), l, u (B, m).
    result
        The :class:`~qpdsl.qp.QPResult` a backend returned for ``data``.
    grad_x, grad_y, grad_z, grad_shift_eq, grad_shift_in
        Gradients of a scalar loss with respect to x (B, n), y (B, p), z (B, m) and the
        shift (B, p), (B, m); ``None`` means zero.
    active_tol
        Tolerance that decides activity: row i is upper-active when
        ``C_i x + z_i >= u_i - (active_tol + 1e-6 |C_i x|)`` (and likewise lower). Defaults to
        1e-6 for a float64 solution, 1e-4 for a float32 one (about ten times its accuracy).
    shiftable
        The rows the closest feasible QP may shift (:class:`~qpdsl.solve.closest.Shiftable`).
    flags
        ``(all_ok, any_closest)`` when the caller has read them already: whether every status
        is ok and whether some element is closest feasible (saves a host read; see
        :func:`~qpdsl.diff.linearize.linearize`).

    Returns
    -------
    QPGrads
        Gradients with respect to P, q, A, b, C, l, u (P's is symmetric, to rounding; l's and u's are
        zero on inactive rows). Elements whose status is not ok get zeros.
    """
    promoted = _in_float64(data, result)
    if promoted is not None:
        data64, result64, wide, narrow = promoted
        grads = qp_vjp(
            data64,
            result64,
            *(None if g is None else wide(g) for g in (grad_x, grad_y, grad_z, grad_shift_eq, grad_shift_in)),
            active_tol=FLOAT32_ACTIVE_TOL if active_tol is None else active_tol,
            shiftable=shiftable,
            flags=flags,
        )
        narrowed = {k: narrow(getattr(grads, k)) for k in "PqAbClu"}
        return QPGrads(**narrowed, ok=grads.ok, all_solved=grads.all_solved)  # type: ignore[arg-type]
    lin = linearize(data, result, active_tol, shiftable, flags)
    xp, n, p = lin.xp, lin.n, lin.p
    gx, gy, gz, gse, gsi = (
        _cotangent(lin, g, shape)
        for g, shape in (
            (grad_x, data.q),
            (grad_y, data.b),
            (grad_z, data.l),
            (grad_shift_eq, data.b),
            (grad_shift_in, data.l),
        )
    )
    g_dual = lin.project_duals(xp.concat([gy, gz * lin.act_f], axis=1))
    rhs = xp.concat([gx, g_dual], axis=1)
    w, failed = lin.solve_checked(rhs)
    solved = lin.ok & ~failed
    w = -w
    w_x, w_y, w_z = w[:, :n], w[:, n : n + p], w[:, n + p :] * lin.act_f

    g_c, v_s, weights = shift_vjp(lin, gse - w_y, gsi - w_z)
    u_y, u_z = w_y - g_c[:, :p], w_z - g_c[:, p:]
    rights = [w_x, lin.x, -v_s] if lin.shifted else [w_x, lin.x]
    grad_A = outer_sum([lin.y, u_y, weights[:, :p]][: len(rights)], rights)
    grad_C = outer_sum([lin.z_act, u_z, weights[:, p:]][: len(rights)], rights)
    zero = xp.zeros_like(u_z)
    grads = QPGrads(
        P=outer_sum([w_x, lin.x], [0.5 * lin.x, 0.5 * w_x]),
        q=w_x,
        A=grad_A,
        b=-u_y,
        C=grad_C,
        l=xp.where(lin.lower, -u_z, zero),
        u=xp.where(lin.upper, -u_z, zero),
    )
    masked = {k: _mask(lin, getattr(grads, k)) for k in "PqAbClu"}
    if values_known(solved) and not concrete_any(~solved):  # nothing to zero, no full-size copies
        return QPGrads(**masked, ok=solved, all_solved=True)
    kept = {
        k: xp.where(xp.reshape(solved, (-1,) + (1,) * (v.ndim - 1)), v, xp.zeros_like(v))
        for k, v in masked.items()
    }
    return QPGrads(**kept, ok=solved, all_solved=False if values_known(solved) else None)


def qp_jvp(
    data: QPData, result: QPResult, tangents: QPData, shiftable: Any = None
) -> tuple[Any, Any, Any, Any, Any]:
    """Push tangents of the QP data forward to the solution.

    Linear in ``tangents`` and built from matmuls with primal matrices and primal masks
    only, so JAX can transpose it (the JAX adapter uses it as a ``custom_jvp`` rule).

    Parameters
    ----------
    data, result
        As for :func:`qp_vjp`.
    tangents
        Dense :class:`~qpdsl.qp.QPData` of tangents shaped like ``data`` (``r`` is ignored).
        Entries of dl, du on infinite bounds are ignored.

    Returns
    -------
    dx, dy, dz, dshift_eq, dshift_in
        Tangents of the solution (B, n), duals (B, p), (B, m) and shift (B, p), (B, m);
        zero for elements whose status is not ok.
    """
    promoted = _in_float64(data, result)
    if promoted is not None:
        data64, result64, wide, narrow = promoted
        outs = _qp_jvp(data64, result64, tangents.dense().map_arrays(wide), shiftable, FLOAT32_ACTIVE_TOL)
        return tuple(narrow(o) for o in outs)  # type: ignore[return-value]
    return _qp_jvp(data, result, tangents, shiftable, None)


def _qp_jvp(
    data: QPData, result: QPResult, tangents: QPData, shiftable: Any, active_tol: float | None
) -> tuple[Any, Any, Any, Any, Any]:
    lin = linearize(data, result, active_tol, shiftable)
    xp, n, p = lin.xp, lin.n, lin.p
    t = tangents.dense()
    dP, dq, dA, db, dC, dl, du = (_tangent(lin, a) for a in (t.P, t.q, t.A, t.b, t.C, t.l, t.u))
    zero = xp.zeros_like(lin.act_f)
    dh = xp.where(lin.upper, du, zero) + xp.where(lin.lower, dl, zero)

    ds_eq, ds_in = shift_jvp(lin, dA, db, dC, dh)
    rhs_x = -(
        0.5 * matvec(dP + xp.matrix_transpose(dP), lin.x) + dq + rmatvec(dA, lin.y) + rmatvec(dC, lin.z_act)
    )
    rhs_y = db + ds_eq - matvec(dA, lin.x)
    rhs_z = (dh + ds_in - matvec(dC, lin.x)) * lin.act_f
    rhs = xp.concat([rhs_x, rhs_y, rhs_z], axis=1)
    sol, failed = lin.solve_checked(rhs)
    # Traced, ``failed`` depends on the primal data only (a failed factorisation): zero those tangents.
    solved = ~failed
    sol = xp.where(solved[:, None], sol, xp.zeros_like(sol))
    duals = lin.project_duals(sol[:, n:])
    outs = (sol[:, :n], duals[:, :p], duals[:, p:] * lin.act_f, ds_eq, ds_in)
    return tuple(_mask(lin, o) for o in outs)  # type: ignore[return-value]


# Activity tolerance for a float32 solution differentiated in float64: about ten times the
# accuracy of a float32 solve (1e-3 let rows 1e-4 away from their bound into the active set).
FLOAT32_ACTIVE_TOL = 1e-4


def _in_float64(data: QPData, result: QPResult) -> tuple[QPData, QPResult, Any, Any] | None:
    """``(data, result, widen, narrow)`` in float64 when the data are float32 and their library
    computes in float64 (JAX only with ``jax_enable_x64``), else None. ``widen`` casts more arrays
    to float64, ``narrow`` casts results back to float32."""
    q = data.q
    xp = namespace(q)
    if q.dtype != xp.float32:
        return None
    if framework(q) == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            return None

    def widen(v: Any) -> Any:
        return xp.astype(xp.asarray(v, device=device(q)), xp.float64)

    def narrow(v: Any) -> Any:
        return xp.astype(v, xp.float32)

    point = {f: widen(getattr(result, f)) for f in ("x", "y", "z", "shift_eq", "shift_in")}
    return data.dense().map_arrays(widen), replace(result, **point), widen, narrow


def _cotangent(lin: Linearization, g: Any, like: Any) -> Any:
    """An incoming gradient in the data's dtype, zero where None or where the element failed."""
    xp = lin.xp
    ref = lin.x
    shape = (ref.shape[0], like.shape[1])
    if g is None:
        return xp.zeros(shape, dtype=ref.dtype, device=device(ref))
    return _mask(lin, xp.astype(xp.asarray(g, device=device(ref)), ref.dtype))


def _tangent(lin: Linearization, t: Any) -> Any:
    return _mask(lin, lin.xp.astype(t, lin.x.dtype))


def _mask(lin: Linearization, a: Any) -> Any:
    """Zero the elements whose status is not ok (``where``, so NaN there never leaks)."""
    xp = lin.xp
    if not lin.any_failed:
        return a
    ok = xp.reshape(lin.ok, (-1,) + (1,) * (a.ndim - 1))
    return xp.where(ok, a, xp.zeros_like(a))
