"""Independent verification of a backend's answer on the unscaled standard-form data.

A backend's status is a claim. Before an element is reported ``solved`` or
``solved_closest_feasible``, its point ``(x, y, z)`` with shift ``(s_eq, s_in)`` is checked on
the data the user gave (the shifted bounds ``b + s_eq``, ``l + min(s_in, 0)``,
``u + max(s_in, 0)`` for a closest-feasible element), row by row:

- primal residual of every equality and inequality row;
- dual residual ``P x + q + A'y + C'z`` of every variable;
- complementarity of every inequality row (``z_i > 0`` only where row i is at its upper
  bound, ``z_i < 0`` only at its lower bound, never on an infinite side). A multiplier whose
  whole contribution to the gradient, ``|z_i|`` times the row's absolute sum, is within
  ``eps_abs`` is zero at the dual residual's resolution: on a row off the bound its sign
  points at (an infinite side is always off) it is read as zero, every test is made with it
  so, and that is the multiplier returned;
- the duality gap ``x'Px + q'x + b'y + u'[z]_+ - l'[z]_-`` of the element.

Each quantity passes when it is within ``eps_abs + eps_rel * scale + 10 * u * scale``, where
``scale`` is the sum of the magnitudes of the terms that make it up (for a row, that row's own
terms only) and ``u`` the unit roundoff of the dtype: a large number in one row can neither
hide nor fake an error in another, and a point correct to rounding is never condemned. On a
primal row whose terms exceed the size of its value by more than ``1/sqrt(u)`` (a point far
out whose huge terms cancel) the scale stops there: rounding decides such a residual, which
then verifies nothing. Bounds of magnitude 1e20 or more are infinite.

The code uses only array-API operations without host synchronisation, so the same check runs
on numpy, torch (CPU or CUDA) and JAX arrays, eagerly and under ``jax.jit``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np

from .._array import device, framework, host_float, host_kernels, is_traced, namespace
from ..qp import QPData, QPResult, Settings, SparseBatch, Status

INFINITE_BOUND = 1e20
ROUNDING = 10.0  # rounding allowance, in units of roundoff times the scale of the terms


class Check(NamedTuple):
    """Per-element outcome of :func:`check_point` (all (B,) arrays)."""

    passed: Any  # bool
    prim_res: Any  # largest primal residual (absolute)
    dual_res: Any  # largest dual residual
    compl_res: Any  # largest complementarity violation
    gap: Any  # |duality gap|
    z: Any  # (B, m): the multipliers checked (negligible ones on rows off their bound read as zero)


def check_point(
    data: QPData,
    x: Any,
    y: Any,
    z: Any,
    s_eq: Any,
    s_in: Any,
    eps_abs: float,
    eps_rel: float,
    solved_bounds: tuple[Any, Any] | None = None,
) -> Check:
    """Check ``(x, y, z)`` as a solution of the QPs ``data`` with constraint shifts ``(s_eq, s_in)``.

    Parameters
    ----------
    data
        The batch (dense arrays of any framework, or numpy :class:`~qpdsl.qp.SparseBatch` matrices).
    x, y, z
        The point, (B, n), (B, p), (B, m).
    s_eq, s_in
        Shifts of the equality and inequality rows, (B, p), (B, m) (zeros for a plain solve).
    eps_abs, eps_rel
        The requested tolerances.
    solved_bounds
        ``(lo, hi)``, (B, m): the inequality bounds of the QP that was solved when they contain the
        shifted ones (a closest-feasible QP whose rows were widened to contain the least-squares
        point, by no more than the shift that reads zero there). The point is checked against
        them: the rows' residuals and the duality gap of that QP.

    Returns
    -------
    Check
        Whether every residual of the element is within its tolerance, and the residuals.
        Non-finite points fail.
    """
    xp = namespace(x)
    dtype = x.dtype
    u = float(xp.finfo(dtype).eps) / 2.0
    rel = float(eps_rel) + ROUNDING * u

    def within(value: Any, scale: Any) -> Any:
        return value <= eps_abs + rel * scale

    def row_all(mask: Any) -> Any:
        return (
            xp.all(mask, axis=1)
            if mask.shape[1]
            else xp.ones(mask.shape[0], dtype=xp.bool, device=device(mask))
        )

    def row_max(a: Any) -> Any:
        if a.shape[1] == 0:
            return xp.zeros(a.shape[0], dtype=a.dtype, device=device(a))
        return xp.max(a, axis=1)

    abs_x = xp.abs(x)
    # Products with |M|: compiled without forming |M| for host arrays; else through |M|, formed once.
    host = _host_dense(data, x)
    P_abs, A_abs, C_abs = (M if host else magnitude(M, xp, dtype) for M in (data.P, data.A, data.C))
    ax, ax_abs = _matvec(data.A, x), _matvec(A_abs, abs_x, absolute=host)
    cx, cx_abs = _matvec(data.C, x), _matvec(C_abs, abs_x, absolute=host)
    b = xp.asarray(data.b, dtype=dtype)
    l, up = xp.asarray(data.l, dtype=dtype), xp.asarray(data.u, dtype=dtype)
    zero_in = xp.zeros_like(s_in)
    lo = l + xp.minimum(s_in, zero_in)
    hi = up + xp.maximum(s_in, zero_in)
    # A shifted row holds with equality at every point of the shifted feasible set (its residual is
    # the least possible): its multiplier may take either sign.
    moved = s_in != 0
    target = xp.where(s_in > 0, hi, lo)
    lo, hi = xp.where(moved, target, lo), xp.where(moved, target, hi)
    if solved_bounds is not None:
        lo = xp.minimum(lo, xp.asarray(solved_bounds[0], dtype=dtype))
        hi = xp.maximum(hi, xp.asarray(solved_bounds[1], dtype=dtype))
    lo_inf, hi_inf = lo <= -INFINITE_BOUND, hi >= INFINITE_BOUND
    lo_f = xp.where(lo_inf, zero_in, lo)
    hi_f = xp.where(hi_inf, zero_in, hi)

    # primal residuals, row by row. Where a row's terms exceed the size of its value by more than
    # 1/sqrt(u) (a point far out, e.g. 1e18, whose huge terms cancel), rounding decides the
    # residual and it says nothing: the rounding allowance stops at that size.
    cancellation = 1.0 / np.sqrt(u)
    b_s = b + s_eq
    r_eq = xp.abs(ax - b_s)
    eq_value = xp.maximum(xp.abs(ax), xp.abs(b_s))
    eq_scale = xp.minimum(ax_abs + xp.abs(b) + xp.abs(s_eq), cancellation * eq_value)
    ok_eq = row_all(within(r_eq, eq_scale))
    viol = xp.where(hi_inf, zero_in, xp.maximum(cx - hi_f, zero_in)) + xp.where(
        lo_inf, zero_in, xp.maximum(lo_f - cx, zero_in)
    )
    abs_lo, abs_hi = xp.abs(lo_f), xp.abs(hi_f)
    bound_max = xp.maximum(abs_lo, abs_hi)
    bound_scale = bound_max + xp.abs(s_in)
    in_value = xp.maximum(xp.abs(cx), bound_max)
    ok_in = row_all(within(viol, xp.minimum(cx_abs + bound_scale, cancellation * in_value)))

    # A multiplier whose whole contribution to the gradient (|z_i| times the row's absolute sum) is
    # within the absolute tolerance is zero at the dual residual's resolution: on a row off its
    # bound it is read as zero (interior-point solvers leave such multipliers on inactive rows).
    # Every test below, the dual residual included, is made on those multipliers, which are the
    # ones :func:`verify` returns.
    # The distance from the bound the multiplier's sign points at: a row at its upper bound is
    # not off it because its lower bound is far below. A sign pointing at an infinite side is
    # judged by the other, finite side: at that bound the multiplier is sign noise, which the
    # complementarity test bounds; zeroing it would move the dual residual by up to eps_abs per row.
    below_hi, above_lo = xp.maximum(hi_f - cx, zero_in), xp.maximum(cx - lo_f, zero_in)
    off_bound = xp.where(
        z > 0,
        xp.where(hi_inf, xp.where(lo_inf, zero_in, above_lo), below_hi),
        xp.where(z < 0, xp.where(lo_inf, xp.where(hi_inf, zero_in, below_hi), above_lo), zero_in),
    )
    row_abs = _matvec(C_abs, xp.ones_like(x), absolute=host)
    abs_z = xp.abs(z)
    negligible = (abs_z * row_abs <= eps_abs) & (off_bound * abs_z > eps_abs)
    z = xp.where(negligible, zero_in, z)
    abs_z = xp.abs(z)

    # dual residual, variable by variable
    px, px_abs = _matvec(data.P, x), _matvec(P_abs, abs_x, absolute=host)
    q = xp.asarray(data.q, dtype=dtype)
    grad = px + q + _rmatvec(data.A, y) + _rmatvec(data.C, z)
    grad_scale = px_abs + xp.abs(q) + _rmatvec(A_abs, xp.abs(y), absolute=host)
    grad_scale = grad_scale + _rmatvec(C_abs, abs_z, absolute=host)
    r_dual = xp.abs(grad)
    ok_dual = row_all(within(r_dual, grad_scale))

    # complementarity, row by row: a multiplier only where its side is active and finite
    z_up, z_lo = xp.maximum(z, zero_in), xp.maximum(-z, zero_in)
    z_size = row_max(abs_z)
    wrong_side = xp.where(hi_inf, z_up, zero_in) + xp.where(lo_inf, z_lo, zero_in)
    ok_sign = row_all(within(wrong_side, z_size[:, None] + zero_in))
    slack = xp.where(hi_inf, zero_in, z_up * below_hi) + xp.where(lo_inf, zero_in, z_lo * above_lo)
    one = xp.ones_like(z)
    compl_tol = (eps_abs + rel * (cx_abs + bound_scale)) * xp.maximum(abs_z, one)
    ok_compl = row_all(slack <= compl_tol)

    # duality gap of the element
    q_x = q * x
    xpx = xp.sum(x * px, axis=1)
    qx = xp.sum(q_x, axis=1)
    by = xp.sum(b_s * y, axis=1)
    support = xp.sum(xp.where(hi_inf, zero_in, hi_f * z_up) - xp.where(lo_inf, zero_in, lo_f * z_lo), axis=1)
    gap = xp.abs(xpx + qx + by + support)
    # A shifted bound is a sum (b + s, u + s): its rounding is that of its terms, which may be far
    # larger than the bound itself (a zero row shifted onto 0).
    abs_s_in = xp.abs(s_in)
    gap_scale = (
        xp.sum(abs_x * px_abs, axis=1)
        + xp.sum(xp.abs(q_x), axis=1)
        + xp.sum((xp.abs(b) + xp.abs(s_eq)) * xp.abs(y), axis=1)
        + xp.sum(
            xp.where(hi_inf, zero_in, (abs_hi + abs_s_in) * z_up)
            + xp.where(lo_inf, zero_in, (abs_lo + abs_s_in) * z_lo),
            axis=1,
        )
    )
    ok_gap = within(gap, gap_scale)

    finite = row_all(xp.isfinite(x)) & row_all(xp.isfinite(y)) & row_all(xp.isfinite(z))
    passed = finite & ok_eq & ok_in & ok_dual & ok_sign & ok_compl & ok_gap
    prim = xp.maximum(row_max(r_eq), row_max(viol))
    compl = xp.maximum(row_max(slack), row_max(wrong_side))
    return Check(passed, prim, row_max(r_dual), compl, gap, z)


def verify(data: QPData, result: QPResult, settings: Settings, solved: QPData | None = None) -> QPResult:
    """``result`` with every ok claim that fails :func:`check_point` downgraded to ``inaccurate``.

    ``solved``, when given, is the QP the backend was given for the closest-feasible elements:
    the shifted QP with each row widened to contain the least-squares point (on a row whose
    shift reads zero, by at most that shift). Those elements are checked on its bounds, the QP
    the point is feasible and optimal for. Other statuses are kept as reported. The residuals
    measured on ``data`` replace the backend's own (``prim_res``, ``dual_res``) and are added
    (``compl_res``, ``gap``) for the elements with an ok claim; the others keep what the
    backend reported.
    """
    xp = namespace(result.x)
    dtype = result.x.dtype
    status = result.status
    claimed = (status == int(Status.SOLVED)) | (status == int(Status.SOLVED_CLOSEST_FEASIBLE))
    closest = status == int(Status.SOLVED_CLOSEST_FEASIBLE)
    rows = closest[:, None]
    s_eq = xp.where(rows, result.shift_eq, xp.zeros_like(result.shift_eq))
    s_in = xp.where(rows, result.shift_in, xp.zeros_like(result.shift_in))

    # Elements that claim nothing are checked on zeros: finite arithmetic, result ignored.
    def clean(a: Any) -> Any:
        return xp.where(claimed[:, None], a, xp.zeros_like(a))

    solved_bounds = None
    if solved is not None:
        zero_in = xp.zeros_like(s_in)
        solved_bounds = (
            xp.where(rows, xp.asarray(solved.l, dtype=dtype), data.l + xp.minimum(s_in, zero_in)),
            xp.where(rows, xp.asarray(solved.u, dtype=dtype), data.u + xp.maximum(s_in, zero_in)),
        )
    check = check_point
    if framework(result.x) == "jax" and not is_traced(result.x) and not data.is_sparse:
        check = _jitted_check()  # eagerly, one compiled program instead of ~100 dispatched operations
    chk = check(
        data,
        clean(result.x),
        clean(result.y),
        clean(result.z),
        s_eq,
        s_in,
        settings.tolerance(dtype),
        settings.eps_rel,
        solved_bounds,
    )
    failed = claimed & ~chk.passed
    new_status = xp.where(failed, xp.full_like(status, int(Status.INACCURATE)), status)

    def keep(mine: Any, theirs: Any) -> Any:
        if theirs is None:
            theirs = xp.full(mine.shape, float("nan"), dtype=dtype, device=device(mine))
        return xp.where(
            claimed, xp.astype(mine, dtype), xp.astype(xp.asarray(theirs, device=device(mine)), dtype)
        )

    return replace(
        result,
        z=xp.where(claimed[:, None], xp.astype(chk.z, dtype), result.z),
        status=new_status,
        prim_res=keep(chk.prim_res, result.prim_res),
        dual_res=keep(chk.dual_res, result.dual_res),
        compl_res=keep(chk.compl_res, None),
        gap=keep(chk.gap, None),
    )


def magnitude(M: Any, xp: Any, dtype: Any) -> Any:
    """``|M|`` in ``dtype`` (a dense array, or a SparseBatch of the absolute values), for the
    products :func:`_matvec` and :func:`_rmatvec` take it to."""
    if isinstance(M, SparseBatch):
        return replace(M, values=np.abs(np.asarray(M.values)))
    return xp.abs(xp.asarray(M, dtype=dtype))


def _same_batch(M: Any, v: Any) -> bool:
    """Whether (B, r, c) ``M`` and (B, ·) ``v`` have the same batch size (the kernels do not broadcast)."""
    return M.ndim == 3 and v.ndim == 2 and M.shape[0] == v.shape[0]


def _host_dense(data: QPData, x: Any) -> bool:
    """Whether the products with ``|M|`` can run as compiled kernels: dense float numpy data and point."""
    return all(host_float(a) for a in (data.P, data.A, data.C, x))


def _matvec(M: Any, x: Any, absolute: bool = False) -> Any:
    """Batched ``M @ x`` (``|M| @ x`` with ``absolute``) for a dense (B, r, c) array or a SparseBatch."""
    if isinstance(M, SparseBatch):
        return _sparse_sum(M.rows, M.shape[0], _values(M, absolute) * np.asarray(x)[:, M.cols])
    xp = namespace(x)
    if absolute and host_float(x) and _same_batch(M, x) and M.shape[1] and (kernels := host_kernels()):
        return kernels.abs_matvec(np.asarray(M, dtype=x.dtype), x)
    M = xp.asarray(M, dtype=x.dtype)
    if absolute:
        M = xp.abs(M)
    if M.shape[1] == 0:
        return xp.zeros((x.shape[0], 0), dtype=x.dtype, device=device(x))
    return xp.matmul(M, x[..., None])[..., 0]


def _rmatvec(M: Any, v: Any, absolute: bool = False) -> Any:
    """Batched ``M' @ v`` (``|M|' @ v`` with ``absolute``)."""
    if isinstance(M, SparseBatch):
        return _sparse_sum(M.cols, M.shape[1], _values(M, absolute) * np.asarray(v)[:, M.rows])
    xp = namespace(v)
    if absolute and host_float(v) and _same_batch(M, v) and M.shape[1] and (kernels := host_kernels()):
        return kernels.abs_rmatvec(np.asarray(M, dtype=v.dtype), v)
    M = xp.asarray(M, dtype=v.dtype)
    if absolute:
        M = xp.abs(M)
    if M.shape[1] == 0:
        return xp.zeros((v.shape[0], M.shape[2]), dtype=v.dtype, device=device(v))
    return xp.matmul(v[..., None, :], M)[..., 0, :]


def _values(M: SparseBatch, absolute: bool) -> np.ndarray:
    values = np.asarray(M.values)
    return np.abs(values) if absolute else values


def _sparse_sum(index: np.ndarray, size: int, terms: np.ndarray) -> np.ndarray:
    """``out[:, i] = sum of terms[:, k] over k with index[k] == i`` for a (B, nnz) batch of terms."""
    import scipy.sparse as sp

    nnz = index.size
    gather = sp.csr_matrix((np.ones(nnz), (index, np.arange(nnz))), shape=(size, nnz))
    return np.asarray(gather @ terms.T).T


_JITTED: list[Any] = []


def _jitted_check() -> Any:
    """:func:`check_point` under ``jax.jit`` (compiled once per shape and tolerance)."""
    if not _JITTED:
        import jax

        _JITTED.append(jax.jit(check_point, static_argnames=("eps_abs", "eps_rel")))
    return _JITTED[0]
