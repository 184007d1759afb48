"""The closest-feasible stage shared by every backend (DESIGN §5).

A backend solves its batch once; the elements it could not solve (and that are not
unbounded) go through two more solves with the same backend:

1. the least-squares feasibility QP, in residual form over ``(x, r_eq, r_in)``::

       minimize    1/2 ||r_eq||² + 1/2 ||r_in||²
       subject to  A x - r_eq = b,   l <= C x - r_in <= u

   whose optimal ``x_ls`` gives the unique minimal shift ``s* = (A x_ls - b,
   C x_ls - clip(C x_ls, l, u))`` (no products ``A'A`` are formed, so the conditioning
   of the data is not squared and sparse data stay sparse);
2. the shifted QP in its robust form: ``b' = A x_ls`` and, on the violated rows,
   ``l'_i = u'_i = C_i x_ls``. Every point of the shifted feasible set has residual s*,
   so those rows are equalities there; ``x_ls`` is feasible by construction.

Elements whose shift is below the tolerance were feasible after all and keep the status
of the first solve (so a failed solve is told apart from an infeasible problem).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np

from .._array import namespace, to_numpy
from ..qp import QPData, QPResult, Settings, SparseBatch, Status, WarmStart

RawSolve = Callable[[QPData, "WarmStart | None"], QPResult]

# Shifts below SHIFT_FACTOR * tolerance * (1 + |right-hand sides|) count as zero: the
# feasibility QP is solved to the tolerance, so its residuals carry errors of that order.
SHIFT_FACTOR = 10.0


def solve_closest_feasible(
    raw_solve: RawSolve, data: QPData, settings: Settings, warm_start: WarmStart | None = None
) -> QPResult:
    """Solve ``data`` with ``raw_solve``, replacing infeasible elements by their closest feasible QP.

    Parameters
    ----------
    raw_solve
        ``raw_solve(data, warm_start) -> QPResult`` solves a batch (dense, or sparse when the
        backend accepts :class:`~qpdsl.qp.SparseBatch`) and reports a non-ok status for the
        elements it could not solve. It is called at most three times, on sub-batches.
    data
        The batch of QPs. Sparse data must hold numpy values.
    settings
        ``settings.closest_feasible=False`` skips the stage (the first result is returned).
    warm_start
        Passed to the first solve and, for the shifted elements, to the shifted solve.

    Returns
    -------
    QPResult
        Per element: the first result when it is ok, unbounded, or feasible after all;
        otherwise the solution of the shifted QP with status ``SOLVED_CLOSEST_FEASIBLE``
        and ``shift_eq``, ``shift_in`` equal to s* (its own status if the shifted solve
        failed; the first result if the feasibility solve failed). ``iterations`` of a
        shifted element add up all three solves.
    """
    raw = raw_solve(data, warm_start)
    if not settings.closest_feasible:
        return raw
    return _no_internal_status(_closest_stage(raw_solve, raw, data, settings, warm_start))


def _no_internal_status(result: QPResult) -> QPResult:
    """An element still PRIMAL_INFEASIBLE after the stage (its feasibility solve failed) is a
    numerical error: that internal verdict never reaches users who asked for the closest QP."""
    xp = namespace(result.status)
    status = xp.where(
        result.status == int(Status.PRIMAL_INFEASIBLE),
        xp.asarray(int(Status.NUMERICAL_ERROR), dtype=result.status.dtype),
        result.status,
    )
    return replace(result, status=status)


def _closest_stage(
    raw_solve: RawSolve, raw: QPResult, data: QPData, settings: Settings, warm_start: WarmStart | None
) -> QPResult:
    codes = np.asarray(to_numpy(raw.status)).astype(np.int64).reshape(-1)
    ok = np.isin(codes, [Status.SOLVED, Status.SOLVED_CLOSEST_FEASIBLE])
    todo = np.flatnonzero(~ok & (codes != Status.DUAL_INFEASIBLE))
    if todo.size == 0 or data.n_eq + data.n_in == 0:
        return raw

    sub = _select(data, todo)
    feas = raw_solve(_feasibility_qp(sub), None)
    x_ls = feas.x[:, : data.n]
    xp = namespace(x_ls)
    sh = closest_shift(sub, x_ls, settings.tolerance(x_ls.dtype))
    feas_ok = np.array([s.ok for s in feas.statuses()], dtype=bool)
    shifted = np.asarray(to_numpy(sh.shifted), dtype=bool)
    # A zero shift after a PRIMAL_INFEASIBLE verdict was a false alarm of the first solve's
    # infeasibility test: solve again from the least-squares point and report it as solved.
    false_alarm = ~shifted & (codes[todo] == Status.PRIMAL_INFEASIBLE)
    keep = np.flatnonzero(feas_ok & (shifted | false_alarm))
    if keep.size == 0:
        return raw

    k = _take(xp, keep, _device(x_ls))
    s_eq, s_in = (xp.take(a, k, axis=0) for a in (sh.s_eq, sh.s_in))
    shifted_qp = _select(shifted_data(sub, sh), keep)
    where = todo[keep]
    res = raw_solve(shifted_qp, _select_warm(warm_start, where))

    res_codes = np.asarray(to_numpy(res.status)).astype(np.int64).reshape(-1)
    new_codes = np.where(shifted[keep], closest_status(np, res_codes), res_codes)
    zero = xp.asarray(shifted[keep][:, None], dtype=s_eq.dtype, device=_device(s_eq))
    s_eq, s_in = s_eq * zero, s_in * zero
    first_iters = xp.take(raw.iterations, _take(xp, where, _device(raw.iterations)), axis=0)
    iters = res.iterations + xp.take(feas.iterations, k, axis=0) + first_iters
    status = xp.asarray(new_codes, dtype=raw.status.dtype, device=_device(raw.status))

    def merge(full: Any, part: Any) -> Any:
        return _scatter_rows(full, part, where, data.batch_size)

    return replace(
        raw,
        x=merge(raw.x, res.x),
        y=merge(raw.y, res.y),
        z=merge(raw.z, res.z),
        shift_eq=merge(raw.shift_eq, s_eq),
        shift_in=merge(raw.shift_in, s_in),
        status=merge(raw.status, status),
        iterations=merge(raw.iterations, iters),
        prim_res=merge(raw.prim_res, res.prim_res),
        dual_res=merge(raw.dual_res, res.dual_res),
        objective=None
        if raw.objective is None or res.objective is None
        else merge(raw.objective, res.objective),
        extras={},
    )


class Shift(NamedTuple):
    """The minimal shift read off the least-squares point ``x_ls``, per element (dense arrays)."""

    ax: Any  # (B, p) A x_ls
    cx: Any  # (B, m) C x_ls
    s_eq: Any  # (B, p) A x_ls - b
    s_in: Any  # (B, m) C x_ls - clip(C x_ls, l, u)
    tol: Any  # (B,) threshold below which a shift counts as zero
    shifted: Any  # (B,) bool, whether the element's shift is nonzero


def closest_shift(data: QPData, x_ls: Any, tolerance: float) -> Shift:
    """The shift s* = (A x_ls - b, C x_ls - clip(C x_ls, l, u)) of every element, and which are nonzero.

    Pure array code without index selection or host synchronisation (traceable under ``jax.jit``).
    """
    xp = namespace(x_ls)
    ax = _matvec(data.A, x_ls)
    cx = _matvec(data.C, x_ls)
    s_eq = ax - data.b
    s_in = cx - xp.minimum(xp.maximum(cx, data.l), data.u)
    # The scale of the right-hand sides, not of C x_ls: x_ls is not unique where C has a null space
    # or a row is free on one side, and a solver may return it huge there (an interior point does),
    # which would make every shift look like zero.
    finite_l = xp.where(xp.isfinite(data.l), xp.abs(data.l), xp.zeros_like(data.l))
    finite_u = xp.where(xp.isfinite(data.u), xp.abs(data.u), xp.zeros_like(data.u))
    scale = 1.0 + _row_max(xp, xp.concat([xp.abs(ax), finite_l, finite_u], axis=1))
    tol = SHIFT_FACTOR * tolerance * scale
    shifted = _row_max(xp, xp.abs(xp.concat([s_eq, s_in], axis=1))) > tol
    return Shift(ax, cx, s_eq, s_in, tol, shifted)


def shifted_data(data: QPData, sh: Shift) -> QPData:
    """The shifted QP of every element in its robust form (module docstring): ``b' = A x_ls`` and
    ``l'_i = u'_i = C_i x_ls`` on the violated rows (elsewhere ``[l, u]`` widened to hold ``C x_ls``)."""
    xp = namespace(sh.cx)
    violated = xp.abs(sh.s_in) > sh.tol[:, None]
    return replace(
        data,
        b=sh.ax,
        l=xp.where(violated, sh.cx, xp.minimum(data.l, sh.cx)),
        u=xp.where(violated, sh.cx, xp.maximum(data.u, sh.cx)),
    )


def closest_status(xp: Any, codes: Any) -> Any:
    """Status codes of the shifted solves as reported for the original QPs: ok becomes
    ``SOLVED_CLOSEST_FEASIBLE``, ``PRIMAL_INFEASIBLE`` (cannot happen in exact arithmetic)
    becomes ``NUMERICAL_ERROR``, anything else stays."""
    ok = (codes == int(Status.SOLVED)) | (codes == int(Status.SOLVED_CLOSEST_FEASIBLE))
    failed = xp.where(codes == int(Status.PRIMAL_INFEASIBLE), int(Status.NUMERICAL_ERROR), codes)
    return xp.where(ok, int(Status.SOLVED_CLOSEST_FEASIBLE), failed)


def _feasibility_qp(data: QPData) -> QPData:
    """The least-squares feasibility QP over ``(x, r_eq, r_in)`` (see the module docstring)."""
    n, p, m = data.n, data.n_eq, data.n_in
    if data.is_sparse:
        return _sparse_feasibility_qp(data)
    xp = namespace(data.q)
    batch, dtype, dev = data.batch_size, data.q.dtype, _device(data.q)

    def zeros(r: int, c: int) -> Any:
        return xp.zeros((batch, r, c), dtype=dtype, device=dev)

    def eye(k: int, sign: float) -> Any:
        return xp.broadcast_to(sign * xp.eye(k, dtype=dtype, device=dev)[None], (batch, k, k))

    P = xp.concat(
        [
            xp.concat([zeros(n, n), zeros(n, p), zeros(n, m)], axis=2),
            xp.concat([zeros(p, n), eye(p, 1.0), zeros(p, m)], axis=2),
            xp.concat([zeros(m, n), zeros(m, p), eye(m, 1.0)], axis=2),
        ],
        axis=1,
    )
    return QPData(
        P=P,
        q=xp.zeros((batch, n + p + m), dtype=dtype, device=dev),
        A=xp.concat([data.A, eye(p, -1.0), zeros(p, m)], axis=2),
        b=data.b,
        C=xp.concat([data.C, zeros(m, p), eye(m, -1.0)], axis=2),
        l=data.l,
        u=data.u,
    )


def _sparse_feasibility_qp(data: QPData) -> QPData:
    n, p, m = data.n, data.n_eq, data.n_in
    batch, size = data.batch_size, n + p + m
    dtype = np.asarray(data.q).dtype
    diag = np.arange(n, size)
    P = SparseBatch(diag, diag, np.ones((batch, p + m), dtype=dtype), (size, size))

    def with_identity(M: Any, offset: int, k: int) -> SparseBatch:
        S = _as_sparse(M)
        return SparseBatch(
            np.concatenate([S.rows, np.arange(k)]),
            np.concatenate([S.cols, offset + np.arange(k)]),
            np.concatenate([np.asarray(S.values), -np.ones((batch, k), dtype=dtype)], axis=1),
            (k, size),
        )

    return QPData(
        P=P,
        q=np.zeros((batch, size), dtype=dtype),
        A=with_identity(data.A, n, p),
        b=data.b,
        C=with_identity(data.C, n + p, m),
        l=data.l,
        u=data.u,
    )


def _as_sparse(M: Any) -> SparseBatch:
    """A numpy SparseBatch holding ``M`` (the union of the batch's nonzero patterns if dense)."""
    if isinstance(M, SparseBatch):
        return M
    M = np.asarray(M)
    rows, cols = np.nonzero(np.any(M != 0, axis=0))
    return SparseBatch(rows, cols, M[:, rows, cols], (M.shape[1], M.shape[2]))


def _matvec(M: Any, x: Any) -> Any:
    """Batched ``M @ x`` for a dense (B, r, c) array or a numpy SparseBatch."""
    if isinstance(M, SparseBatch):
        import scipy.sparse as sp

        nnz = M.rows.size
        gather = sp.csr_matrix((np.ones(nnz), (M.rows, np.arange(nnz))), shape=(M.shape[0], nnz))
        return np.asarray(gather @ (np.asarray(M.values) * x[:, M.cols]).T).T
    xp = namespace(M, x)
    return xp.matmul(M, x[..., None])[..., 0]


def _row_max(xp: Any, a: Any) -> Any:
    """Max over axis 1, zero for rows of length zero."""
    if a.shape[1] == 0:
        return xp.zeros(a.shape[0], dtype=a.dtype, device=_device(a))
    return xp.max(a, axis=1)


def _select(data: QPData, index: np.ndarray) -> QPData:
    """The sub-batch ``index`` of dense or sparse data."""
    xp = namespace(data.q)
    k = _take(xp, index, _device(data.q))

    def sel(a: Any) -> Any:
        if a is None:
            return None
        if isinstance(a, SparseBatch):
            return replace(a, values=np.asarray(a.values)[index])
        return xp.take(a, k, axis=0)

    return QPData(*(sel(getattr(data, f)) for f in ("P", "q", "A", "b", "C", "l", "u", "r")))


def _select_warm(warm: WarmStart | None, index: np.ndarray) -> WarmStart | None:
    if warm is None:
        return None

    def sel(a: Any) -> Any:
        if a is None:
            return None
        xp = namespace(a)
        return xp.take(a, _take(xp, index, _device(a)), axis=0)

    return WarmStart(sel(warm.x), sel(warm.y), sel(warm.z))


def _scatter_rows(full: Any, part: Any, index: np.ndarray, batch: int) -> Any:
    """``full`` with rows ``index`` replaced by ``part`` (no in-place update: works for jax)."""
    xp = namespace(full, part)
    dev = _device(full)
    pos = np.zeros(batch, dtype=np.int64)
    pos[index] = np.arange(index.size)
    mask = np.zeros((batch,) + (1,) * (full.ndim - 1), dtype=bool)
    mask[index] = True
    taken = xp.take(xp.astype(part, full.dtype), _take(xp, pos, dev), axis=0)
    return xp.where(xp.asarray(mask, device=dev), taken, full)


def _take(xp: Any, index: np.ndarray, device: Any = None) -> Any:
    return xp.asarray(np.asarray(index, dtype=np.int64), device=device)


def _device(a: Any) -> Any:
    import array_api_compat

    dev = array_api_compat.device(a)
    # A jax array sharded over several devices reports its sharding, which is tied to the
    # array's rank: new arrays of other ranks (index vectors, masks) go to the default device.
    if hasattr(dev, "device_set") and not hasattr(dev, "platform"):
        return None
    return dev
