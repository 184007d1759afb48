"""The ``jax`` backend: qpdsl's batched dense proximal ALM (:mod:`.alm`) driven in JAX.

The iteration is :func:`.alm.core.step` inside a :func:`jax.lax.while_loop` that runs while
any element of the batch is still running (elements that are done stay frozen through the
masks of the state), jit-compiled once per shape, dtype and solver configuration. Nothing
in the traced path synchronises with the host or branches on values, so :meth:`JaxBackend.solve`
works on concrete arrays, under an outer :func:`jax.jit`, under :func:`jax.vmap` and on
arrays sharded over several devices.

Infeasible elements (DESIGN §5): on concrete inputs the shared
:func:`~.closest.solve_closest_feasible` stage runs, as in the torch backend (it selects
sub-batches on the host). On traced inputs the same two extra solves (least-squares
feasibility QP, then shifted QP, built by the helpers of :mod:`.closest`) run on the whole
batch with the elements that need them selected by masks, inside a :func:`jax.lax.cond`
that skips them when every element was solved.

``settings.options`` override the fields of :class:`~.alm.core.Config`. This module never
imports torch and never turns on ``jax_enable_x64``.
"""

from __future__ import annotations

from typing import Any

from .._array import framework
from .._standard_form import NAMES
from ..errors import ParameterError
from ..qp import QPData, QPResult, Settings, Status, WarmStart, register_jax_pytrees
from . import Capabilities, register
from .alm import core
from .alm.scaling import Problem, Scaling, check_shapes, equilibrate

try:
    import jax
    import jax.numpy as jnp

    register_jax_pytrees()
except Exception:  # registration must never raise, whatever breaks inside the package
    jax = None  # type: ignore[assignment]
    jnp = None  # type: ignore[assignment]

_OK = (int(Status.SOLVED), int(Status.SOLVED_CLOSEST_FEASIBLE))
REFRESH_EVERY = 8  # iterations between exact recomputations of the products K x


class JaxBackend:
    """Batched dense proximal ALM in JAX; closest-feasible stage for infeasible elements."""

    capabilities: Capabilities

    def __init__(self, name: str = "jax") -> None:
        self.name = name
        self.capabilities = CAPABILITIES

    def solve(self, data: QPData, settings: Settings, warm_start: WarmStart | None = None) -> QPResult:
        """Solve a batch of dense (or SparseBatch, densified) QPs given as JAX arrays.

        Works on concrete arrays and on tracers (inside ``jax.jit``, ``jax.vmap``, ``jax.grad``
        of a caller; derivatives come from :mod:`qpdsl.diff` through :mod:`qpdsl.jax`, not from
        differentiating the iteration). Returns a :class:`~qpdsl.qp.QPResult` of JAX arrays.

        Raises
        ------
        ParameterError
            If the data are torch tensors, have inconsistent shapes or an unsupported dtype,
            or ``settings.options`` names an unknown solver option.
        """
        prob, r = _problem(data)
        cfg = core.make_config(settings, prob.q.dtype)
        warm = _warm(warm_start, prob)
        if not _traced(*prob, r, *warm):
            from .closest import solve_closest_feasible

            full = prob.q.shape[0]
            return solve_closest_feasible(
                lambda d, w: _bucketed(d, settings, w, full), QPData(*prob, r=r), settings, warm_start
            )
        closest = bool(settings.closest_feasible) and prob.b.shape[1] + prob.l.shape[1] > 0
        out = _SOLVE(prob, warm, cfg=cfg, closest=closest, tol=settings.tolerance(prob.q.dtype))
        return _result(out, r)


def solve_raw(data: QPData, settings: Settings, warm_start: WarmStart | None = None) -> QPResult:
    """One ALM solve of the batch, without the closest-feasible stage (infeasible: PRIMAL_INFEASIBLE)."""
    prob, r = _problem(data)
    cfg = core.make_config(settings, prob.q.dtype)
    out = _SOLVE(prob, _warm(warm_start, prob), cfg=cfg, closest=False, tol=0.0)
    return _result(out, r)


def _bucketed(data: QPData, settings: Settings, warm: WarmStart | None, full: int) -> QPResult:
    """:func:`solve_raw` with a sub-batch padded to a power of two (at most ``full``) by repeating
    its last element, so that the closest-feasible stage compiles few distinct batch sizes."""
    size = data.batch_size
    target = min(1 << max(size - 1, 0).bit_length(), full) if size < full else size
    if target == size:
        return solve_raw(data, settings, warm)
    index = jnp.concatenate([jnp.arange(size), jnp.full((target - size,), size - 1)])

    def pad(a: Any) -> Any:
        return None if a is None else jnp.take(jnp.asarray(a), index, axis=0)

    data = data.dense()
    padded = QPData(*(pad(getattr(data, k)) for k in ("P", "q", "A", "b", "C", "l", "u", "r")))
    wpad = None if warm is None else WarmStart(pad(warm.x), pad(warm.y), pad(warm.z))
    res = solve_raw(padded, settings, wpad)
    cut = {k: getattr(res, k)[:size] for k in _FIELDS if getattr(res, k) is not None}
    return QPResult(**cut)


# --------------------------------------------------------------------------- traced core


def _iterate(prob: Problem, scaling: Scaling, st: core.State, cfg: core.Config) -> core.State:
    """``core.step`` in a ``lax.while_loop`` until no element runs (or the iteration limit)."""
    limit = cfg.max_iter + 2  # step() itself retires an element after cfg.max_iter Newton steps
    data = core.prepare(prob, scaling)  # once, outside the loop: it copies the data into one array

    def cond(carry: tuple[Any, core.State]) -> Any:
        k, st = carry
        return (k < limit) & jnp.any(st.status == core.RUNNING)

    def body(carry: tuple[Any, core.State]) -> tuple[Any, core.State]:
        k, st = carry
        # The products K x are updated along the steps; recompute them now and then so that
        # rounding drift cannot keep the convergence test from passing.
        st = jax.lax.cond(
            k % REFRESH_EVERY == REFRESH_EVERY - 1, lambda s: core.refresh(data, s), lambda s: s, st
        )
        return k + 1, core.step(data, scaling, st, cfg, _factorize)

    _, st = jax.lax.while_loop(cond, body, (jnp.asarray(0, jnp.int32), st))
    return st


def _factorize(prob: Problem, st: core.State, active: Any, need: Any, rho: float) -> tuple[Any, Any]:
    """:func:`core.factorize_all`, skipped (same result) in the iterations where no element needs it."""
    return jax.lax.cond(
        jnp.any(need),
        lambda: core.factorize_all(prob, st, active, need, rho),
        lambda: (st.L, jnp.ones_like(need)),
    )


def _sweeps(sweep: Any, iterations: int, carry: Any) -> Any:
    """The Ruiz sweeps as one compiled loop body (``equilibrate``'s ``loop`` hook)."""
    return jax.lax.fori_loop(0, iterations, lambda _, c: sweep(c), carry)


def _raw_solve(
    prob: Problem, warm: tuple[Any, Any, Any], cfg: core.Config, mask: Any = None
) -> core.Solution:
    """Sanitise, equilibrate, iterate, unscale. Elements outside ``mask`` are not iterated."""
    clean, valid = core.sanitize(prob)
    scaled, scaling = equilibrate(clean, loop=_sweeps)
    run = valid if mask is None else valid & mask
    st = core.init_state(scaled, scaling, cfg, run, *warm)
    st = _iterate(scaled, scaling, st, cfg)
    return core.finalize(clean, scaling, st, valid)


def _rows(mask: Any, like: Any) -> Any:
    return mask.reshape(mask.shape + (1,) * (like.ndim - 1))


def _solve_impl(
    prob: Problem, warm: tuple[Any, Any, Any], cfg: core.Config, closest: bool, tol: float
) -> tuple:
    """The full traceable solve (a tuple in :data:`_FIELDS` order).

    With ``closest``, the closest-feasible stage runs with masks on the whole batch: a loop of
    at most two passes of one ALM solve each (so the solver is compiled once for this shape),
    the first on the QPs, the second on the shifted QPs of the elements that need it; between
    them, only when some element is infeasible, the least-squares feasibility QP. Same math
    as :func:`~.closest.solve_closest_feasible`, whose data-building helpers it uses.
    """
    from .closest import _feasibility_qp, closest_shift, closest_status, shifted_data

    zeros_eq, zeros_in = jnp.zeros_like(prob.b), jnp.zeros_like(prob.l)
    if not closest:
        return (*_raw_solve(prob, warm, cfg), zeros_eq, zeros_in)
    n = prob.q.shape[1]
    data = QPData(*prob)

    def stage(out: tuple) -> tuple:
        """Feasibility solve for the elements that failed: shifted (b, l, u), who to re-solve, updated out."""
        status, iters = out[3], out[4]
        todo = (status != _OK[0]) & (status != _OK[1]) & (status != int(Status.DUAL_INFEASIBLE))
        fq = _feasibility_qp(data)
        feas = _raw_solve(Problem(fq.P, fq.q, fq.A, fq.b, fq.C, fq.l, fq.u), (None, None, None), cfg, todo)
        x_ls = jnp.where(_rows(todo, feas.x), feas.x[:, :n], 0.0)
        sh = closest_shift(data, x_ls, tol)
        keep = todo & ((feas.status == _OK[0]) | (feas.status == _OK[1])) & sh.shifted
        sd = shifted_data(data, sh)
        bounds = tuple(
            jnp.where(_rows(keep, old), new, old)
            for new, old in zip((sd.b, sd.l, sd.u), (prob.b, prob.l, prob.u), strict=True)
        )
        out = (
            *out[:4],
            jnp.where(keep, iters + feas.iterations.astype(iters.dtype), iters),
            *out[5:8],
            jnp.where(_rows(keep, sh.s_eq), sh.s_eq, 0.0),
            jnp.where(_rows(keep, sh.s_in), sh.s_in, 0.0),
        )
        return bounds, keep, out

    def no_stage(out: tuple) -> tuple:
        return (prob.b, prob.l, prob.u), jnp.zeros(prob.q.shape[:1], bool), out

    def body(carry: tuple) -> tuple:
        k, bounds, mask, out = carry
        sol = _raw_solve(prob._replace(b=bounds[0], l=bounds[1], u=bounds[2]), warm, cfg, mask)
        first = (*sol, zeros_eq, zeros_in)
        # Second pass: the shifted solve replaces the elements in ``mask`` (shifts set by stage()).
        shifted = (sol.x, sol.y, sol.z, closest_status(jnp, sol.status), sol.iterations + out[4], *sol[5:8])
        merged = (
            jnp.where(_rows(mask, o), s.astype(o.dtype), o) for s, o in zip(shifted, out[:8], strict=True)
        )
        second = (*merged, *out[8:])
        out = tuple(jnp.where(k == 0, a, b.astype(a.dtype)) for a, b in zip(first, second, strict=True))
        status = out[3]
        todo = (k == 0) & (status != _OK[0]) & (status != _OK[1]) & (status != int(Status.DUAL_INFEASIBLE))
        bounds, mask, out = jax.lax.cond(jnp.any(todo), stage, no_stage, out)
        return k + 1, bounds, mask, out

    def cond(carry: tuple) -> Any:
        k, _, mask, _ = carry
        return (k == 0) | ((k == 1) & jnp.any(mask))

    batch = prob.q.shape[0]
    count = jax.dtypes.canonicalize_dtype(jnp.int64)
    dt = prob.q.dtype
    out0 = (
        jnp.zeros((batch, n), dt),
        zeros_eq,
        zeros_in,
        jnp.zeros(batch, count),
        jnp.zeros(batch, count),
        jnp.zeros(batch, dt),
        jnp.zeros(batch, dt),
        jnp.zeros(batch, dt),
        zeros_eq,
        zeros_in,
    )
    carry = (jnp.asarray(0, jnp.int32), (prob.b, prob.l, prob.u), jnp.ones(batch, bool), out0)
    return jax.lax.while_loop(cond, body, carry)[3]


if jax is not None:
    # jax.jit caches one executable per shapes/dtypes/shardings of the arrays and per static
    # configuration (Config is a hashable NamedTuple of plain numbers).
    _SOLVE = jax.jit(_solve_impl, static_argnames=("cfg", "closest", "tol"))


# --------------------------------------------------------------------------- host-side glue


_FIELDS = ("x", "y", "z", "status", "iterations", "prim_res", "dual_res", "objective", "shift_eq", "shift_in")


def _result(out: tuple, r: Any) -> QPResult:
    x, y, z, status, iters, prim, dual, obj, s_eq, s_in = out
    return QPResult(
        x=x,
        y=y,
        z=z,
        shift_eq=s_eq,
        shift_in=s_in,
        status=status,
        iterations=iters,
        prim_res=prim,
        dual_res=dual,
        objective=obj if r is None else obj + r,
    )


def _traced(*arrays: Any) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in arrays if a is not None)


def _array(a: Any, name: str) -> Any:
    if framework(a) == "torch":
        raise ParameterError(
            f"the jax backend takes JAX (or numpy) arrays, but {name} is a torch tensor; "
            "convert it with jnp.asarray(t.numpy()) or choose the 'torch' backend"
        )
    return jnp.asarray(a)


def _problem(data: QPData) -> tuple[Problem, Any]:
    """The data as a :class:`Problem` of JAX arrays in one float dtype, and ``r``."""
    data = data.dense()
    arrays = [_array(a, k) for a, k in zip(data.arrays(), NAMES, strict=True)]
    dtype = jnp.result_type(*arrays)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.zeros((), dtype=float).dtype  # float64 with x64 enabled, else float32
    if dtype not in (jnp.float32, jnp.float64):
        raise ParameterError(
            f"the jax backend solves in float32 or float64, not {dtype}; cast the data with "
            ".astype(jnp.float64) (float64 needs jax.config.update('jax_enable_x64', True))"
        )
    prob = Problem(*(a.astype(dtype) for a in arrays))
    check_shapes(prob)
    r = None if data.r is None else _array(data.r, "r").astype(dtype)
    return prob, r


def _warm(warm: WarmStart | None, prob: Problem) -> tuple[Any, Any, Any]:
    """The warm start as a triple of JAX arrays in the problem's dtype (zeros where absent)."""
    warm = warm or WarmStart()
    out = []
    for a, name, like in ((warm.x, "x", prob.q), (warm.y, "y", prob.b), (warm.z, "z", prob.l)):
        if a is None:  # zeros are what the solver starts from without a guess: one compiled program
            out.append(jnp.zeros_like(like))
            continue
        a = _array(a, f"warm_start.{name}").astype(like.dtype)
        if a.shape != like.shape:
            raise ParameterError(
                f"warm_start.{name} has shape {tuple(a.shape)}, expected {tuple(like.shape)}"
            )
        out.append(a)
    return tuple(out)  # type: ignore[return-value]


CAPABILITIES = Capabilities(
    framework="jax",
    devices=("cpu", "gpu", "tpu"),
    dense=True,
    sparse=False,
    warm_start=True,
    dtypes=("float32", "float64"),
    extra="jax",
    installed=jax is not None,
    description="qpdsl's batched dense proximal ALM (ProxQP-style) in JAX: lax.while_loop, jit/vmap-able",
)

register("jax", JaxBackend, CAPABILITIES)
