"""The closest-feasible stage, shared by every backend, eager and traced.

A backend solves the batch once and reports a claim per element; :func:`verify` checks the
ok claims. Elements that are not ok (and not unbounded) get two more solves with the same
backend:

1. the least-squares feasibility problem, in residual form over ``(x, r_eq, r_in)``::

       minimize    1/2 ||r_eq||² + 1/2 ||r_in||²
       subject to  A x - D_eq r_eq = b,   l <= C x - D_in r_in <= u

   where ``D`` is 1 on the rows that may be shifted (the user's constraints) and 0 on the rows
   the compiler added (kept hard). Its optimal ``x_ls`` gives the unique minimal shift
   ``s* = (A x_ls - b, C x_ls - clip(C x_ls, l, u))``. A backend with soft rows (``jax``)
   solves it on the QP's own shapes, with ``P = 0``, ``q = 0`` and the shiftable rows soft;
   the others solve the residual form. Its point is verified like any
   solution (:func:`_feasibility_claim`), which checks that the shift is the least-squares one.
2. the shifted QP in its robust form: ``b' = A x_ls`` and, on the shifted rows,
   ``l'_i = u'_i = C_i x_ls`` (every point of the shifted feasible set has residual s*, so
   those rows are equalities there).

Whether a row's shift is zero is decided row by row, relative to that row's own terms. An
element whose shift is zero everywhere was feasible: it is solved once more from ``x_ls``
and keeps the status of that solve. The final points are verified on the user's data; a
closest-feasible point on the bounds of the shifted QP that was solved (widened on rows whose
shift reads zero to contain the least-squares point).

The control flow (any, cond, loop, masked solve) comes from a :class:`Flow`: plain Python on
concrete arrays, where each solve only sees the elements that need it, and ``jax.lax`` under
``jit``, where masks select them and the three solves (the QP, the feasibility problem, the
shifted QP) and their verification share one compiled loop body.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, NamedTuple

import numpy as np

from .._array import device, int_dtype, is_traced, namespace, to_numpy
from .._jax_batching import fold_mapped_axis
from ..qp import QPData, QPResult, Settings, SparseBatch, Status, WarmStart
from .verify import INFINITE_BOUND, ROUNDING, _matvec, verify

# A row's shift counts as zero below SHIFT_FACTOR times that row's verification tolerance: the
# feasibility QP is itself solved to the tolerance.
SHIFT_FACTOR = 10.0

RawSolve = Callable[[QPData, "WarmStart | None", Any], QPResult]
RESULT_FIELDS = (
    "x",
    "y",
    "z",
    "shift_eq",
    "shift_in",
    "status",
    "iterations",
    "prim_res",
    "dual_res",
    "objective",
)


@dataclass(frozen=True)
class Shiftable:
    """Which rows the closest feasible QP may shift: (p,) and (m,) boolean numpy arrays.

    ``None`` for a field means every row of that group (standard-form input).
    """

    eq: np.ndarray | None = None
    ineq: np.ndarray | None = None

    def masks(self, xp: Any, p: int, m: int, dtype: Any, dev: Any) -> tuple[Any, Any]:
        """The masks as (1, p), (1, m) 0/1 arrays of ``dtype``."""

        def mask(value: Any, size: int) -> Any:
            if value is None:
                return xp.ones((1, size), dtype=dtype, device=dev)
            if isinstance(value, np.ndarray):
                value = value.astype(float)
            return xp.reshape(xp.astype(xp.asarray(value, device=dev), dtype), (1, size))

        return mask(self.eq, p), mask(self.ineq, m)


class Flow:
    """Control flow for concrete arrays: Python branches; each solve sees only its elements.

    ``raw(data, warm)`` solves a batch; with ``soft_rows``, ``raw(data, warm, soft)`` also solves
    it with the rows in ``soft`` penalised by their squared residual instead of constrained (see
    :meth:`solve`). With ``bucket``, a sub-batch is padded to a power of two (at most the full
    batch) by repeating its last element, for backends that compile once per batch size.
    """

    def __init__(self, raw: Callable[..., QPResult], bucket: bool = False, soft_rows: bool = False):
        self.raw = raw
        self.bucket = bucket
        self.soft_rows = soft_rows

    def any(self, mask: Any) -> Any:
        return bool(namespace(mask).any(mask))

    def cond(self, pred: Any, true_fn: Callable, false_fn: Callable, operand: Any) -> Any:
        return true_fn(operand) if pred else false_fn(operand)

    def switch(self, index: Any, branches: list[Callable], operand: Any) -> Any:
        return branches[index](operand)

    def loop(self, cond_fn: Callable, body: Callable, carry: Any) -> Any:
        while cond_fn(carry):
            carry = body(carry)
        return carry

    def pick(self, first: Any, a: Any, b: Any) -> Any:
        """``a if first else b``."""
        return a if first else b

    def counter(self, value: int) -> Any:
        return value

    def solve(
        self, data: QPData, warm: WarmStart | None, mask: Any, base: QPResult, soft: Any = None
    ) -> QPResult:
        """``base`` with the elements in ``mask`` (None: all) replaced by a solve of ``data``.

        ``soft``, a pair of (1, p) and (1, m) boolean arrays, asks for the least-squares
        feasibility problem of ``data`` (its ``P`` and ``q`` zero) with those rows shiftable:
        ``x`` is the least-squares point, ``y`` and ``z`` the multipliers, which equal the
        residuals on the shiftable rows. ``None`` (or no row marked) solves ``data`` itself.
        """
        if mask is None:
            return _complete(self._raw(data, warm, soft), base)
        index = np.flatnonzero(to_numpy(mask))
        if index.size == data.batch_size:
            return _complete(self._raw(data, warm, soft), base)
        if index.size == 0:
            return base
        count = index.size
        if self.bucket:
            target = min(1 << (count - 1).bit_length(), data.batch_size)
            index = np.concatenate([index, np.full(target - count, index[-1])])
        part = _complete(self._raw(select(data, index), select_warm(warm, index), soft), None)
        if index.size > count:
            part = QPResult(**{f: getattr(part, f)[:count] for f in RESULT_FIELDS}, extras={})
        return _merge_rows(base, part, index[:count])

    def _raw(self, data: QPData, warm: WarmStart | None, soft: Any) -> QPResult:
        if soft is None:
            return self.raw(data, warm)
        if self.soft_rows:
            return self.raw(data, warm, soft)
        # the least-squares problem in residual form, over (x, r_eq, r_in), of the same rows
        eq, ineq = (np.asarray(to_numpy(s), dtype=bool).reshape(-1) for s in soft)
        res = self.raw(_feasibility_qp(data, Shiftable(eq, ineq)), None)
        return replace(res, x=res.x[:, : data.n])


class TracedFlow(Flow):
    """Control flow under ``jax.jit``: ``lax`` branches and loops; solves see masks.

    ``raw_masked(data, warm, mask, soft)`` must support soft rows (the jax backend does): every
    pass of the closest-feasible stage runs through its one compiled solve.
    """

    def __init__(self, raw_masked: Callable[[QPData, WarmStart | None, Any, Any], QPResult]):
        self.raw_masked = raw_masked
        self.soft_rows = True

    def any(self, mask: Any) -> Any:
        import jax.numpy as jnp

        return jnp.any(mask)

    def cond(self, pred: Any, true_fn: Callable, false_fn: Callable, operand: Any) -> Any:
        import jax

        return jax.lax.cond(pred, true_fn, false_fn, operand)

    def switch(self, index: Any, branches: list[Callable], operand: Any) -> Any:
        import jax

        return jax.lax.switch(index, branches, operand)

    def loop(self, cond_fn: Callable, body: Callable, carry: Any) -> Any:
        import jax

        return jax.lax.while_loop(cond_fn, body, carry)

    def pick(self, first: Any, a: Any, b: Any) -> Any:
        import jax

        # a leaf both sides share (the matrices of the QP and of its feasibility problem) needs no select
        return jax.tree_util.tree_map(lambda u, v: u if u is v else jax.numpy.where(first, u, v), a, b)

    def counter(self, value: int) -> Any:
        import jax.numpy as jnp

        return jnp.asarray(value, dtype=jnp.int32)

    def solve(
        self, data: QPData, warm: WarmStart | None, mask: Any, base: QPResult, soft: Any = None
    ) -> QPResult:
        if mask is None:
            mask = _everyone(data)
        res = _complete(self.raw_masked(data, warm, mask, soft), base)
        return _where_rows(mask, res, base)


def fold_vmap(
    solve: Callable[[QPData, WarmStart | None], QPResult], data: QPData, warm: WarmStart | None
) -> QPResult:
    """``solve(data, warm)`` on traced JAX arrays, with a ``vmap`` that folds the mapped axis into the batch.

    The solve is batched over the leading axis of every array already, and its elements are
    independent, so under ``jax.vmap`` the mapped axis joins the batch axis and one solve of
    ``V * B`` elements runs: the same program as under ``jit``. Batching the solver's loops and
    branches instead would run every loop until all mapped problems finish and compile both sides
    of every branch, with a select between them at each step.

    The solve is traced here with its constants as explicit inputs (and again at the folded
    shapes): a ``vmap`` of a ``lax.cond`` with a mapped predicate batches every operand of its
    branches, constants included; a solve whose constants are mapped is batched the ordinary way
    instead of folded.
    """
    import jax
    import jax.numpy as jnp

    # A batching rule may run after the caller's matmul-precision context has exited (vmap of an
    # existing jaxpr: vmap(jit(f))); the folded solve is traced with the same precision.
    precision = jax.config.jax_default_matmul_precision
    closed, shapes = jax.make_jaxpr(lambda d, w: replace(solve(d, w), extras={}), return_shape=True)(
        data, warm
    )
    leaves, in_tree = jax.tree_util.tree_flatten((data, warm))
    out_tree = jax.tree_util.tree_structure(shapes)
    out_avals = jax.tree_util.tree_leaves(shapes)

    def evaluate(consts: list[Any], leaves: list[Any]) -> list[Any]:
        return jax.core.eval_jaxpr(closed.jaxpr, consts, *leaves)

    @jax.custom_batching.custom_vmap
    def run(consts: list[Any], leaves: list[Any]) -> list[Any]:
        return evaluate(consts, leaves)

    @run.def_vmap
    def fold(
        axis_size: int, in_batched: list[Any], consts: list[Any], leaves: list[Any]
    ) -> tuple[list[Any], list[bool]]:
        consts_mapped, leaves_mapped = in_batched
        if any(consts_mapped):
            axes = ([0 if b else None for b in consts_mapped], [0 if b else None for b in leaves_mapped])
            return jax.vmap(evaluate, in_axes=axes)(consts, leaves), [True] * len(out_avals)
        d, _ = jax.tree_util.tree_unflatten(in_tree, leaves)
        d_mapped, _ = jax.tree_util.tree_unflatten(in_tree, leaves_mapped)
        batch = d.q.shape[1] if d_mapped.q else d.q.shape[0]
        if axis_size * batch == 0:  # nothing to solve
            zeros = [jnp.zeros((axis_size, *a.shape), a.dtype) for a in out_avals]
            return zeros, [True] * len(out_avals)

        merged = fold_mapped_axis(leaves, leaves_mapped, axis_size, batch)
        with jax.default_matmul_precision(precision):
            out = jax.tree_util.tree_leaves(fold_vmap(solve, *jax.tree_util.tree_unflatten(in_tree, merged)))
        return [o.reshape(axis_size, batch, *o.shape[1:]) for o in out], [True] * len(out)

    return jax.tree_util.tree_unflatten(out_tree, run(list(closed.consts), leaves))


def solve_with_closest_feasible(
    flow: Flow,
    data: QPData,
    settings: Settings,
    warm_start: WarmStart | None = None,
    shiftable: Shiftable | None = None,
) -> QPResult:
    """Solve ``data`` through ``flow``; verify; replace infeasible elements by their closest feasible QP.

    Returns
    -------
    QPResult
        Per element: the verified first result when it is ok or unbounded; otherwise, when the
        problem is infeasible, the solution of the shifted QP with status
        ``solved_closest_feasible`` and ``shift_eq``, ``shift_in`` equal to s*; a feasible
        element that the first solve missed gets the status of its second solve. With
        ``settings.closest_feasible=False`` a ``primal_infeasible`` claim is reported only when
        the feasibility QP confirms a nonzero shift (else ``inaccurate``).
    """
    shiftable = shiftable or Shiftable()
    if not settings.closest_feasible or data.n_eq + data.n_in == 0:
        first = verify(data, flow.solve(data, warm_start, None, _blank(data)), settings)
        first = _check_unbounded(flow, data, first, settings)
        if data.n_eq + data.n_in == 0:
            return first
        return _confirm_infeasible(flow, data, first, settings, shiftable)
    return _passes(flow, data, settings, warm_start, shiftable)


class _Carry(NamedTuple):
    """The state between the passes of :func:`_passes` (arrays only, for ``lax.while_loop``)."""

    k: Any  # the next pass: 0 the QP, 1 the feasibility problem, 2 the shifted QP, 3 done
    b: Any
    l: Any
    u: Any
    mask: Any  # (B,) elements the next solve is for
    x_ls: Any  # (B, n) least-squares point: the shifted solve's warm start
    out: QPResult
    s_eq: Any
    s_in: Any
    shifted: Any  # (B,) elements whose shift is nonzero
    feas_iters: Any  # (B,) iterations of the feasibility solve


def _passes(
    flow: Flow, data: QPData, settings: Settings, warm_start: WarmStart | None, shiftable: Shiftable
) -> QPResult:
    """The closest-feasible stage as a loop of at most three passes around one solve call: the
    QP, the least-squares feasibility problem of the elements that need it, their shifted QP.

    All three have the QP's shapes (the feasibility problem has soft rows, see
    :meth:`Flow.solve`), so under ``jit`` the backend's solver is compiled once.
    """
    xp = namespace(data.q)
    tol = settings.tolerance(data.q.dtype)
    traced = isinstance(flow, TracedFlow)
    cold = None
    if traced:  # every carried value must be an array
        zeros = tuple(xp.zeros_like(like) for like in (data.q, data.b, data.l))
        given = (None, None, None) if warm_start is None else (warm_start.x, warm_start.y, warm_start.z)
        warm_start = WarmStart(*(z if w is None else w for w, z in zip(given, zeros, strict=True)))
        cold = WarmStart(*zeros)
    soft_on, soft_off = _soft_rows(flow, data, shiftable)
    ls_data = _without_objective(data)

    # Each pass's claims are verified by one call in the loop body: the QP's on ``data``; the
    # feasibility problem's on ``ls_data``, shifted by its multipliers (see _feasibility_claim);
    # the shifted QP's on ``data`` within the bounds it was solved with.
    # ``shown``: (B,) the elements whose solve claims dual_infeasible and returned a descent
    # direction of ``data`` as x (the shifted QPs have the recession cone of the original ones).
    def claim_first(c: _Carry, res: QPResult, shown: Any) -> tuple[QPResult, Any, Any]:
        return res, data.l, data.u

    def claim_feasibility(c: _Carry, res: QPResult, shown: Any) -> tuple[QPResult, Any, Any]:
        return _feasibility_claim(data, res, soft_on)

    def claim_second(c: _Carry, second: QPResult, shown: Any) -> tuple[QPResult, Any, Any]:
        first, again, shifted = c.out, c.mask, c.shifted
        new_status = xp.where(shifted, closest_status(xp, second.status), second.status)
        # An unbounded claim of the second solve stands when its point is a descent direction (the
        # closest feasible QP is unbounded); otherwise it is not reported.
        unbounded = new_status == int(Status.DUAL_INFEASIBLE)
        new_status = xp.where(
            unbounded & ~shown, xp.full_like(new_status, int(Status.INACCURATE)), new_status
        )
        rows = shifted[:, None]
        merged = replace(
            _where_rows(again, second, replace(first, compl_res=None, gap=None)),
            status=xp.where(again, new_status, first.status),
            shift_eq=xp.where(rows, c.s_eq, xp.zeros_like(c.s_eq)),
            shift_in=xp.where(rows, c.s_in, xp.zeros_like(c.s_in)),
            iterations=xp.where(again, second.iterations + first.iterations + c.feas_iters, first.iterations),
        )
        return merged, c.l, c.u

    def after_first(c: _Carry, checked: QPResult, shown: Any) -> _Carry:
        first = _check_unbounded(flow, data, checked, settings, shown)
        status = first.status
        todo = ~_is_ok(status) & (status != int(Status.DUAL_INFEASIBLE))
        return c._replace(k=flow.counter(1), mask=todo, out=first)

    def after_feasibility(c: _Carry, checked: QPResult, shown: Any) -> _Carry:
        todo = c.mask
        x_ls = xp.where(todo[:, None], checked.x, xp.zeros_like(checked.x))
        sh = closest_shift(data, x_ls, tol, settings.eps_rel)
        again = todo & _is_ok(checked.status)
        robust = shifted_data(data, sh)
        return c._replace(
            k=flow.counter(2),
            b=robust.b,
            l=robust.l,
            u=robust.u,
            mask=again,
            x_ls=x_ls,
            s_eq=sh.s_eq,
            s_in=sh.s_in,
            shifted=again & sh.shifted,
            feas_iters=xp.astype(checked.iterations, c.feas_iters.dtype),
        )

    def after_second(c: _Carry, checked: QPResult, shown: Any) -> _Carry:
        return c._replace(k=flow.counter(3), out=checked, mask=xp.zeros_like(c.mask))

    def body(c: _Carry) -> _Carry:
        feasibility = c.k == 1
        current = flow.pick(feasibility, ls_data, replace(data, b=c.b, l=c.l, u=c.u))
        second = WarmStart(
            c.x_ls,
            None if warm_start is None else warm_start.y,
            None if warm_start is None else warm_start.z,
        )
        warm = flow.pick(c.k == 0, warm_start, flow.pick(feasibility, cold, second))
        soft = flow.pick(feasibility, soft_on, soft_off)
        # Concretely, the first solve is for every element (no mask to read).
        mask = None if isinstance(c.k, int) and c.k == 0 else c.mask
        res = flow.solve(current, warm, mask, replace(c.out, compl_res=None, gap=None), soft)
        shown = _shows_unbounded(flow, data, res)
        claims = [claim_first, claim_feasibility, claim_second]
        claim, lo, hi = flow.switch(c.k, [lambda r, f=f: f(c, r, shown) for f in claims], res)
        solved = replace(data, l=lo, u=hi)
        checked = replace(verify(flow.pick(feasibility, ls_data, data), claim, settings, solved), extras={})
        afters = [after_first, after_feasibility, after_second]
        return flow.switch(c.k, [lambda r, f=f: f(c, r, shown) for f in afters], checked)

    def running(c: _Carry) -> Any:
        if isinstance(c.k, int):  # concrete: no mask read before the first solve
            return c.k == 0 or (c.k < 3 and flow.any(c.mask))
        return (c.k == 0) | ((c.k < 3) & flow.any(c.mask))

    start = _Carry(
        flow.counter(0),
        data.b,
        data.l,
        data.u,
        _everyone(data),
        xp.zeros_like(data.q),
        _blank(data, residuals=True),
        xp.zeros_like(data.b),
        xp.zeros_like(data.l),
        xp.zeros((data.batch_size,), dtype=xp.bool, device=device(data.q)),
        _blank(data).iterations,
    )
    end = flow.loop(running, body, start)
    # An element still primal_infeasible here had a feasibility solve that failed: that verdict is
    # a numerical error for users who asked for the closest feasible QP.
    status = end.out.status
    code = xp.full_like(status, int(Status.NUMERICAL_ERROR))
    return replace(end.out, status=xp.where(status == int(Status.PRIMAL_INFEASIBLE), code, status))


def _soft_rows(flow: Flow, data: QPData, shiftable: Shiftable) -> tuple[Any, Any]:
    """The soft rows of the feasibility problem, (1, p) and (1, m) booleans, and of the other
    solves (none: ``None`` on concrete arrays, all False under ``jit``, where a pass picks one)."""
    xp = namespace(data.q)
    dev = device(data.q)
    on = tuple(mask != 0 for mask in shiftable.masks(xp, data.n_eq, data.n_in, data.q.dtype, dev))
    off = tuple(xp.zeros_like(mask) for mask in on) if isinstance(flow, TracedFlow) else None
    return on, off


def _without_objective(data: QPData) -> QPData:
    """``data`` with ``P = 0`` and ``q = 0``: the least-squares feasibility problem's data, whose
    objective is the squared residual of its soft rows."""
    xp = namespace(data.q)
    if isinstance(data.P, SparseBatch):
        empty = np.zeros(0, dtype=np.int64)
        values = np.zeros((data.batch_size, 0), dtype=np.asarray(data.q).dtype)
        P = SparseBatch(empty, empty, values, data.P.shape)
    else:
        P = xp.zeros_like(xp.asarray(data.P))
    return replace(data, P=P, q=xp.zeros_like(data.q))


def _feasibility_claim(data: QPData, res: QPResult, soft: tuple[Any, Any]) -> tuple[QPResult, Any, Any]:
    """The feasibility solve's claims as closest-feasible claims, and the inequality bounds
    ``(lo, hi)`` of the QP they are claims for, to verify them as such.

    In residual form the problem is ``min 1/2 ||r||²  s.t.  A x - r_eq = b,  l <= C x - r_in <= u``
    (``r = 0`` on the hard rows), and its optimal ``r`` equals the multipliers. So ``(x, y, z)`` is
    optimal when it solves the QP with ``P = 0``, ``q = 0``, ``b + r_eq`` and bounds
    ``[l + r_in, u + r_in]`` for ``r`` the multipliers on the shiftable rows: :func:`verify`'s
    check of a closest-feasible point given those bounds as the ones solved (not, as for a
    shifted QP, ``l = u`` at a row whose multiplier is merely rounding noise).
    """
    xp = namespace(res.x)
    d_eq, d_in = (xp.astype(mask, res.x.dtype) for mask in soft)
    claim = replace(
        res,
        status=xp.where(_is_ok(res.status), int(Status.SOLVED_CLOSEST_FEASIBLE), res.status),
        shift_eq=d_eq * res.y,
        shift_in=d_in * res.z,
    )
    return claim, data.l + claim.shift_in, data.u + claim.shift_in


def _verify_feasibility(data: QPData, res: QPResult, soft: tuple[Any, Any], settings: Settings) -> QPResult:
    """The feasibility solve's result with its claims verified (see :func:`_feasibility_claim`)."""
    claim, lo, hi = _feasibility_claim(data, res, soft)
    return verify(data, claim, settings, solved=replace(data, l=lo, u=hi))


def _confirm_infeasible(
    flow: Flow, data: QPData, first: QPResult, settings: Settings, shiftable: Shiftable
) -> QPResult:
    """With the closest feasible QP off: a ``primal_infeasible`` claim stands only when the
    feasibility problem finds a nonzero shift; otherwise it becomes ``inaccurate``."""
    xp = namespace(data.q)
    status = first.status
    todo = status == int(Status.PRIMAL_INFEASIBLE)
    soft, _ = _soft_rows(flow, data, shiftable)
    ls_data = _without_objective(data)

    def stage(_: Any) -> Any:
        res = flow.solve(ls_data, None, todo, replace(first, extras={}), soft)
        feas = _verify_feasibility(ls_data, res, soft, settings)
        x_ls = xp.where(todo[:, None], feas.x, xp.zeros_like(feas.x))
        sh = closest_shift(data, x_ls, settings.tolerance(data.q.dtype), settings.eps_rel)
        return todo & _is_ok(feas.status) & sh.shifted

    confirmed = flow.cond(flow.any(todo), stage, lambda _: xp.zeros_like(todo), None)
    code = xp.full_like(status, int(Status.INACCURATE))
    return replace(first, status=xp.where(todo & ~confirmed, code, status))


def _shows_unbounded(flow: Flow, data: QPData, res: QPResult) -> Any:
    """(B,) the ``dual_infeasible`` claims of ``res`` whose x is a descent direction of ``data``."""
    xp = namespace(res.x)
    claims = res.status == int(Status.DUAL_INFEASIBLE)
    direction = xp.where(claims[:, None], res.x, xp.zeros_like(res.x))
    return flow.cond(  # products with every matrix of the batch: only when someone claims
        flow.any(claims),
        lambda d: claims & descent_direction(data, d),
        lambda _: xp.zeros_like(claims),
        direction,
    )


def _check_unbounded(
    flow: Flow, data: QPData, first: QPResult, settings: Settings, shown: Any = None
) -> QPResult:
    """``first`` with each ``dual_infeasible`` claim that no descent direction confirms made ``inaccurate``.

    A backend may return its certificate as x (a direction); checking it costs no solve
    (``shown``, when the caller checked it: :func:`_shows_unbounded`). Otherwise the certificate
    is the direction LP ``min q'd  s.t.  P d = 0, A d = 0, C d in the recession cone of [l, u],
    -1 <= d <= 1``, solved by the same backend and verified like any solution: the claim stands
    when its optimal value is clearly negative (relative to ``|q| |d|``).
    """
    xp = namespace(data.q)
    status = first.status
    claims = status == int(Status.DUAL_INFEASIBLE)
    claims_left = claims & ~(_shows_unbounded(flow, data, first) if shown is None else shown)
    code = xp.full_like(status, int(Status.INACCURATE))
    if isinstance(flow, TracedFlow):  # no further solve under jit: what the backend showed decides
        return replace(first, status=xp.where(claims_left, code, status))
    confirmed_x = claims & ~claims_left
    claims = claims_left

    def certify(_: Any) -> Any:
        lp = _direction_lp(data)
        res = verify(lp, flow.solve(lp, None, claims, _blank(lp)), settings)
        d = res.x
        q = xp.asarray(data.q, dtype=d.dtype)
        u = float(xp.finfo(d.dtype).eps) / 2.0
        descent = xp.sum(q * d, axis=1)
        size = xp.sum(xp.abs(q * d), axis=1)
        tol = SHIFT_FACTOR * (settings.tolerance(d.dtype) + (settings.eps_rel + ROUNDING * u) * size)
        return claims & _is_ok(res.status) & (descent < -tol)

    confirmed = flow.cond(flow.any(claims), certify, lambda _: xp.zeros_like(claims), None)
    return replace(first, status=xp.where(claims & ~confirmed & ~confirmed_x, code, status))


# A direction certifies unboundedness when P d, A d and the recession-cone violation of C d are
# below this fraction of the rows' sizes and q'd is below minus this fraction of |q| |d|.
RECESSION_TOL = {"float64": 1e-6, "float32": 1e-3}


def descent_direction(data: QPData, d: Any) -> Any:
    """(B,) whether ``d`` is a direction along which every QP of ``data`` is unbounded below:
    ``P d = 0``, ``A d = 0``, ``C d`` in the recession cone of ``[l, u]`` and ``q'd < 0``, each
    relative to the size of its terms. Traceable."""
    xp = namespace(d)
    tol = RECESSION_TOL["float32" if "float32" in str(d.dtype) else "float64"]
    finite = xp.all(xp.isfinite(d), axis=1)
    d = xp.where(finite[:, None], d, xp.zeros_like(d))
    size = xp.max(xp.abs(d), axis=1) if d.shape[1] else xp.zeros(d.shape[0], dtype=d.dtype, device=device(d))
    d = d / xp.clip(size, float(xp.finfo(d.dtype).tiny), None)[:, None]

    ones = xp.ones_like(d)

    def products(M: Any) -> tuple[Any, Any]:
        # |d| <= 1 after the normalisation: a row's 1-norm bounds |M_i d|
        return _matvec(M, d), _matvec(M, ones, absolute=True)

    def rows_small(Md: Any, Md_abs: Any, side: Any = None) -> Any:
        excess = xp.abs(Md) if side is None else xp.maximum(side * Md, xp.zeros_like(Md))
        ok = excess <= tol * Md_abs
        return xp.all(ok, axis=1) if ok.shape[1] else xp.ones(d.shape[0], dtype=xp.bool, device=device(d))

    l, u = xp.asarray(data.l, dtype=d.dtype), xp.asarray(data.u, dtype=d.dtype)
    one, zero = xp.ones_like(l), xp.zeros_like(l)
    upper = xp.where(u < INFINITE_BOUND, one, zero)
    lower = xp.where(l > -INFINITE_BOUND, one, zero)
    q = xp.asarray(data.q, dtype=d.dtype)
    descent = xp.sum(q * d, axis=1) < -tol * xp.sum(xp.abs(q * d), axis=1)
    Cd, Cd_abs = products(data.C)
    cone = rows_small(Cd, Cd_abs, upper) & rows_small(Cd, Cd_abs, -lower)
    still = rows_small(*products(data.P)) & rows_small(*products(data.A))
    return finite & (size > 0) & descent & still & cone


def _direction_lp(data: QPData) -> QPData:
    """The direction LP of :func:`_check_unbounded` (dense, or sparse for sparse data)."""
    n, p = data.n, data.n_eq
    if data.is_sparse:
        return _sparse_direction_lp(data)
    xp = namespace(data.q)
    batch, dtype, dev = data.batch_size, data.q.dtype, device(data.q)
    l, u = xp.asarray(data.l, dtype=dtype), xp.asarray(data.u, dtype=dtype)
    zero_in = xp.zeros_like(l)
    inf = xp.full_like(l, float("inf"))
    low = xp.concat([xp.where(l > -INFINITE_BOUND, zero_in, -inf), -xp.ones_like(data.q)], axis=1)
    up = xp.concat([xp.where(u < INFINITE_BOUND, zero_in, inf), xp.ones_like(data.q)], axis=1)
    eye = xp.broadcast_to(xp.eye(n, dtype=dtype, device=dev)[None], (batch, n, n))
    return QPData(
        P=xp.zeros((batch, n, n), dtype=dtype, device=dev),
        q=data.q,
        A=xp.concat([xp.asarray(data.A, dtype=dtype), xp.asarray(data.P, dtype=dtype)], axis=1),
        b=xp.zeros((batch, p + n), dtype=dtype, device=dev),
        C=xp.concat([xp.asarray(data.C, dtype=dtype), eye], axis=1),
        l=low,
        u=up,
    )


def _sparse_direction_lp(data: QPData) -> QPData:
    n, p, m = data.n, data.n_eq, data.n_in
    batch = data.batch_size
    dtype = np.asarray(data.q).dtype
    l, u = np.asarray(data.l, dtype=dtype), np.asarray(data.u, dtype=dtype)
    A, P, C = _as_sparse(data.A), _as_sparse(data.P), _as_sparse(data.C)
    diag = np.arange(n)
    return QPData(
        P=SparseBatch(
            np.zeros(0, dtype=np.int64),
            np.zeros(0, dtype=np.int64),
            np.zeros((batch, 0), dtype=dtype),
            (n, n),
        ),
        q=data.q,
        A=SparseBatch(
            np.concatenate([A.rows, p + P.rows]),
            np.concatenate([A.cols, P.cols]),
            np.concatenate([np.asarray(A.values), np.asarray(P.values)], axis=1),
            (p + n, n),
        ),
        b=np.zeros((batch, p + n), dtype=dtype),
        C=SparseBatch(
            np.concatenate([C.rows, m + diag]),
            np.concatenate([C.cols, diag]),
            np.concatenate([np.asarray(C.values), np.ones((batch, n), dtype=dtype)], axis=1),
            (m + n, n),
        ),
        l=np.concatenate([np.where(l > -INFINITE_BOUND, 0.0, -np.inf), -np.ones((batch, n))], axis=1).astype(
            dtype
        ),
        u=np.concatenate([np.where(u < INFINITE_BOUND, 0.0, np.inf), np.ones((batch, n))], axis=1).astype(
            dtype
        ),
    )


def _is_ok(status: Any) -> Any:
    return (status == int(Status.SOLVED)) | (status == int(Status.SOLVED_CLOSEST_FEASIBLE))


class Shift(NamedTuple):
    """The minimal shift read off the least-squares point ``x_ls``, per element (dense arrays)."""

    ax: Any  # (B, p) A x_ls
    cx: Any  # (B, m) C x_ls
    s_eq: Any  # (B, p) A x_ls - b, zero on rows whose shift is not significant
    s_in: Any  # (B, m) C x_ls - clip(C x_ls, l, u), likewise
    shifted: Any  # (B,) bool, whether some row of the element has a significant shift


def closest_shift(data: QPData, x_ls: Any, tolerance: float, eps_rel: float = 0.0) -> Shift:
    """The shift of every element read off ``x_ls``; rows below their own tolerance count as zero.

    Row i's tolerance is ``SHIFT_FACTOR * (tolerance + (eps_rel + 10 u) * scale_i)`` with
    ``scale_i`` the size of that row's terms (``|A_i| |x_ls| + |b_i|``, and likewise with the
    finite bound for an inequality row), so a large bound on one row never hides the shift of
    another. Traceable (no host synchronisation).
    """
    xp = namespace(x_ls)
    u = float(xp.finfo(x_ls.dtype).eps) / 2.0
    rel = float(eps_rel) + ROUNDING * u
    abs_x = xp.abs(x_ls)
    ax, ax_abs = _matvec(data.A, x_ls), _matvec(data.A, abs_x, absolute=True)
    cx, cx_abs = _matvec(data.C, x_ls), _matvec(data.C, abs_x, absolute=True)
    b = xp.asarray(data.b, dtype=x_ls.dtype)
    l, up = xp.asarray(data.l, dtype=x_ls.dtype), xp.asarray(data.u, dtype=x_ls.dtype)
    s_eq = ax - b
    s_in = cx - xp.minimum(xp.maximum(cx, l), up)
    zero = xp.zeros_like(s_in)
    bound = xp.where(s_in > 0, xp.abs(up), xp.where(s_in < 0, xp.abs(l), zero))
    tol_eq = SHIFT_FACTOR * (tolerance + rel * (ax_abs + xp.abs(b)))
    tol_in = SHIFT_FACTOR * (tolerance + rel * (cx_abs + bound))
    big_eq, big_in = xp.abs(s_eq) > tol_eq, xp.abs(s_in) > tol_in
    s_eq = xp.where(big_eq, s_eq, xp.zeros_like(s_eq))
    s_in = xp.where(big_in, s_in, zero)
    shifted = _row_any(xp, big_eq) | _row_any(xp, big_in)
    return Shift(ax, cx, s_eq, s_in, shifted)


def _zero_shift(data: QPData) -> Shift:
    xp = namespace(data.q)
    zeros_eq = xp.zeros_like(xp.asarray(data.b, dtype=data.q.dtype))
    zeros_in = xp.zeros_like(xp.asarray(data.l, dtype=data.q.dtype))
    none = xp.zeros((data.batch_size,), dtype=xp.bool, device=device(data.q))
    return Shift(zeros_eq, zeros_in, zeros_eq, zeros_in, none)


def shifted_data(data: QPData, sh: Shift) -> QPData:
    """The shifted QP of every element in its robust form: ``b' = b + s_eq``, ``l'_i = u'_i = C_i x_ls``
    on the shifted inequality rows, elsewhere ``[l, u]`` widened to hold ``C x_ls``."""
    xp = namespace(sh.cx)
    moved = sh.s_in != 0
    return replace(
        data,
        b=data.b + sh.s_eq,
        l=xp.where(moved, sh.cx, xp.minimum(data.l, sh.cx)),
        u=xp.where(moved, sh.cx, xp.maximum(data.u, sh.cx)),
    )


def closest_status(xp: Any, codes: Any) -> Any:
    """Status codes of the shifted solves as reported for the original QPs: ok becomes
    ``solved_closest_feasible``, ``primal_infeasible`` (cannot happen in exact arithmetic)
    becomes ``numerical_error``, anything else stays."""
    failed = xp.where(codes == int(Status.PRIMAL_INFEASIBLE), int(Status.NUMERICAL_ERROR), codes)
    return xp.where(_is_ok(codes), int(Status.SOLVED_CLOSEST_FEASIBLE), failed)


def _feasibility_qp(data: QPData, shiftable: Shiftable) -> QPData:
    """The least-squares feasibility QP over ``(x, r_eq, r_in)`` (see the module docstring)."""
    n, p, m = data.n, data.n_eq, data.n_in
    if data.is_sparse:
        return _sparse_feasibility_qp(data, shiftable)
    xp = namespace(data.q)
    batch, dtype, dev = data.batch_size, data.q.dtype, device(data.q)
    d_eq, d_in = shiftable.masks(xp, p, m, dtype, dev)

    def zeros(r: int, c: int) -> Any:
        return xp.zeros((batch, r, c), dtype=dtype, device=dev)

    def diag(v: Any) -> Any:
        k = v.shape[1]
        return xp.broadcast_to(xp.eye(k, dtype=dtype, device=dev)[None] * v[:, None, :], (batch, k, k))

    P = xp.concat(
        [
            xp.concat([zeros(n, n), zeros(n, p), zeros(n, m)], axis=2),
            xp.concat([zeros(p, n), diag(xp.ones_like(d_eq)), zeros(p, m)], axis=2),
            xp.concat([zeros(m, n), zeros(m, p), diag(xp.ones_like(d_in))], axis=2),
        ],
        axis=1,
    )
    return QPData(
        P=P,
        q=xp.zeros((batch, n + p + m), dtype=dtype, device=dev),
        A=xp.concat([xp.asarray(data.A, dtype=dtype), -diag(d_eq), zeros(p, m)], axis=2),
        b=data.b,
        C=xp.concat([xp.asarray(data.C, dtype=dtype), zeros(m, p), -diag(d_in)], axis=2),
        l=data.l,
        u=data.u,
    )


def _sparse_feasibility_qp(data: QPData, shiftable: Shiftable) -> QPData:
    n, p, m = data.n, data.n_eq, data.n_in
    batch, size = data.batch_size, n + p + m
    dtype = np.asarray(data.q).dtype
    diag = np.arange(n, size)
    P = SparseBatch(diag, diag, np.ones((batch, p + m), dtype=dtype), (size, size))

    def with_identity(M: Any, offset: int, k: int, mask: np.ndarray | None) -> SparseBatch:
        S = _as_sparse(M)
        keep = np.arange(k) if mask is None else np.flatnonzero(mask)
        return SparseBatch(
            np.concatenate([S.rows, keep]),
            np.concatenate([S.cols, offset + keep]),
            np.concatenate([np.asarray(S.values), -np.ones((batch, keep.size), dtype=dtype)], axis=1),
            (k, size),
        )

    return QPData(
        P=P,
        q=np.zeros((batch, size), dtype=dtype),
        A=with_identity(data.A, n, p, shiftable.eq),
        b=data.b,
        C=with_identity(data.C, n + p, m, shiftable.ineq),
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


def _row_any(xp: Any, mask: Any) -> Any:
    if mask.shape[1] == 0:
        return xp.zeros(mask.shape[0], dtype=xp.bool, device=device(mask))
    return xp.any(mask, axis=1)


# --------------------------------------------------------------------------- batch plumbing


def _blank(data: QPData, residuals: bool = False) -> QPResult:
    """A result of the right shapes that claims nothing (status ``numerical_error``, zeros); with
    ``residuals``, verification's fields too (a loop carry keeps the same fields throughout)."""
    xp = namespace(data.q)
    dtype, dev, batch = data.q.dtype, device(data.q), data.batch_size

    def zeros(width: int) -> Any:
        return xp.zeros((batch, width), dtype=dtype, device=dev)

    scalar = xp.zeros((batch,), dtype=dtype, device=dev)
    return QPResult(
        x=zeros(data.n),
        y=zeros(data.n_eq),
        z=zeros(data.n_in),
        shift_eq=zeros(data.n_eq),
        shift_in=zeros(data.n_in),
        status=xp.full((batch,), int(Status.NUMERICAL_ERROR), dtype=int_dtype(xp), device=dev),
        iterations=xp.zeros((batch,), dtype=int_dtype(xp), device=dev),
        prim_res=scalar,
        dual_res=scalar,
        objective=scalar,
        compl_res=scalar if residuals else None,
        gap=scalar if residuals else None,
    )


def _everyone(data: QPData) -> Any:
    xp = namespace(data.q)
    return xp.ones((data.batch_size,), dtype=xp.bool, device=device(data.q))


def _complete(res: QPResult, like: QPResult | None) -> QPResult:
    """``res`` with the optional fields filled (NaN) and ints in one integer dtype, so that results merge."""
    xp = namespace(res.x)
    batch, dtype, dev = res.x.shape[0], res.x.dtype, device(res.x)
    nan = xp.full((batch,), float("nan"), dtype=dtype, device=dev)

    def fill(a: Any, integer: bool = False) -> Any:
        if a is None:
            return xp.zeros((batch,), dtype=int_dtype(xp), device=dev) if integer else nan
        a = xp.reshape(xp.asarray(a, device=dev), (batch,))
        return xp.astype(a, int_dtype(xp) if integer else dtype)

    return replace(
        res,
        status=fill(res.status, True),
        iterations=fill(res.iterations, True),
        prim_res=fill(res.prim_res),
        dual_res=fill(res.dual_res),
        objective=fill(res.objective),
        compl_res=None,
        gap=None,
        extras={},
    )


def _where_rows(mask: Any, new: QPResult, old: QPResult) -> QPResult:
    """Per element, ``new`` where ``mask`` else ``old`` (fields present in both)."""
    xp = namespace(new.x)

    def pick(a: Any, b: Any) -> Any:
        if a is None or b is None:
            return b if a is None else a
        m = xp.reshape(mask, (mask.shape[0],) + (1,) * (a.ndim - 1))
        return xp.where(m, a, xp.astype(b, a.dtype))

    return QPResult(**{f: pick(getattr(new, f), getattr(old, f)) for f in RESULT_FIELDS}, extras={})


def _merge_rows(base: QPResult, part: QPResult, index: np.ndarray) -> QPResult:
    """``base`` with rows ``index`` replaced by ``part`` (no in-place update)."""
    out = {}
    for f in RESULT_FIELDS:
        full, sub = getattr(base, f), getattr(part, f)
        out[f] = full if sub is None else _scatter_rows(full, sub, index, base.x.shape[0])
    return QPResult(**out, extras={})


def select(data: QPData, index: np.ndarray) -> QPData:
    """The sub-batch ``index`` of dense or sparse data."""
    xp = namespace(data.q)
    k = _take(xp, index, device(data.q))

    def sel(a: Any) -> Any:
        if a is None:
            return None
        if isinstance(a, SparseBatch):
            return replace(a, values=np.asarray(a.values)[index])
        return xp.take(a, k, axis=0)

    return QPData(**{f.name: sel(getattr(data, f.name)) for f in fields(QPData)})


def select_warm(warm: WarmStart | None, index: np.ndarray) -> WarmStart | None:
    if warm is None:
        return None

    def sel(a: Any) -> Any:
        if a is None:
            return None
        xp = namespace(a)
        return xp.take(a, _take(xp, index, device(a)), axis=0)

    return WarmStart(sel(warm.x), sel(warm.y), sel(warm.z))


def _scatter_rows(full: Any, part: Any, index: np.ndarray, batch: int) -> Any:
    """``full`` with rows ``index`` replaced by ``part``."""
    xp = namespace(full, part)
    dev = device(full)
    pos = np.zeros(batch, dtype=np.int64)
    pos[index] = np.arange(index.size)
    mask = np.zeros((batch,) + (1,) * (full.ndim - 1), dtype=bool)
    mask[index] = True
    taken = xp.take(xp.astype(part, full.dtype), _take(xp, pos, dev), axis=0)
    return xp.where(xp.asarray(mask, device=dev), taken, full)


def _take(xp: Any, index: np.ndarray, dev: Any = None) -> Any:
    return xp.asarray(np.asarray(index, dtype=np.int64), device=dev)


def traced(data: QPData, warm: WarmStart | None = None) -> bool:
    """Whether an array of ``data`` or ``warm`` is a JAX tracer (a ``vmap`` may map only the warm start)."""
    arrays = [getattr(data, f.name) for f in fields(QPData)]
    if warm is not None:
        arrays += [warm.x, warm.y, warm.z]
    return any(is_traced(a) for a in arrays if a is not None)
