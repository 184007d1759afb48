"""The ``jax`` backend: qpdsl's batched dense proximal ALM (:mod:`.alm`) driven in JAX.

The iteration is :func:`.alm.core.step` inside a :func:`jax.lax.while_loop` that runs while
any element of the batch is still running (elements that are done stay frozen through the
masks of the state), jit-compiled once per shape, dtype and solver configuration. Nothing
in the traced path synchronises with the host or branches on values, so :meth:`JaxBackend.solve`
works on concrete arrays, under an outer :func:`jax.jit`, under :func:`jax.vmap` and on
arrays sharded over several devices.

Infeasible elements and verification: the shared stage of :mod:`qpdsl.solve` drives this
backend's raw solves, selecting sub-batches on concrete arrays and masks under ``jit``.

``settings.options`` override the fields of :class:`~.alm.core.Config`. This module never
imports torch and never turns on ``jax_enable_x64``.
"""

from __future__ import annotations

from typing import Any

from .._array import framework
from .._jax_setup import warn_if_deadlocking_jaxlib
from .._standard_form import NAMES
from ..errors import ParameterError
from ..qp import QPData, QPResult, Settings, WarmStart, register_jax_pytrees
from . import Backend, Capabilities, register
from .alm import core
from .alm.scaling import Problem, Scaling, check_shapes, equilibrate

try:
    import jax
    import jax.numpy as jnp

    register_jax_pytrees()
    warn_if_deadlocking_jaxlib()
except Exception:  # registration must never raise, whatever breaks inside the package
    jax = None  # type: ignore[assignment]
    jnp = None  # type: ignore[assignment]

REFRESH_EVERY = 8  # iterations between exact recomputations of the products K x


class JaxBackend(Backend):
    """Batched dense proximal ALM in JAX."""

    capabilities: Capabilities

    def __init__(self, name: str = "jax") -> None:
        self.name = name
        self.capabilities = CAPABILITIES

    def solve_raw(
        self, data: QPData, settings: Settings, warm_start: WarmStart | None = None, soft: Any = None
    ) -> QPResult:
        """One solve of a batch of concrete JAX arrays; see :class:`~qpdsl.backends.Backend`.

        Raises
        ------
        ParameterError
            If the data are torch tensors, have inconsistent shapes or an unsupported dtype,
            or ``settings.options`` names an unknown solver option.
        """
        return solve_raw(data, settings, warm_start, soft=soft)

    def solve_raw_masked(
        self, data: QPData, settings: Settings, warm_start: WarmStart | None, mask: Any, soft: Any = None
    ) -> QPResult:
        """One traceable solve (inside ``jax.jit``, ``vmap``, ``grad``); elements outside ``mask``
        are not iterated."""
        return solve_raw(data, settings, warm_start, mask, soft)


def solve_raw(
    data: QPData,
    settings: Settings,
    warm_start: WarmStart | None = None,
    mask: Any = None,
    soft: Any = None,
) -> QPResult:
    """One ALM solve of the batch: the claims, unverified (an infeasible element: PRIMAL_INFEASIBLE).

    ``soft``, a pair of (B, p) and (B, m) boolean arrays (or (1, ·), or None): the rows that are
    penalised by their squared residual instead of constrained (see :mod:`.alm.core`). Every
    solve, with soft rows or without, runs the same compiled program for its shapes.
    """
    prob, r = _problem(data)
    cfg = core.make_config(settings, prob.q.dtype)
    if mask is None:
        mask = jnp.ones(prob.q.shape[:1], bool)
    out = _SOLVE(prob, _warm(warm_start, prob), mask, _soft(soft, prob), cfg=cfg)
    return _result(out, r)


def _soft(soft: Any, prob: Problem) -> Any:
    """The soft rows as one (B, p + m) boolean array (all False for None)."""
    batch, p, m = prob.q.shape[0], prob.b.shape[1], prob.l.shape[1]
    if soft is None:
        return jnp.zeros((batch, p + m), bool)
    eq, ineq = (jnp.broadcast_to(jnp.asarray(a, bool), (batch, k)) for a, k in zip(soft, (p, m), strict=True))
    return jnp.concatenate([eq, ineq], axis=1)


# --------------------------------------------------------------------------- traced core


def _iterate(prob: Problem, scaling: Scaling, st: core.State, cfg: core.Config, soft: Any) -> core.State:
    """``core.step`` in a ``lax.while_loop`` until no element runs (or the iteration limit)."""
    limit = cfg.max_iter + 2  # step() itself retires an element after cfg.max_iter Newton steps
    data = core.prepare(prob, scaling, soft)  # once, outside the loop: it copies the data into one array

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


def _factorize(prob: Problem, st: core.State, active: Any, need: Any) -> tuple[Any, Any]:
    """:func:`core.factorize_all`, skipped (same result) in the iterations where no element needs it."""
    return jax.lax.cond(
        jnp.any(need),
        lambda: core.factorize_all(prob, st, active, need),
        lambda: (st.L, jnp.ones_like(need)),
    )


def _sweeps(sweep: Any, iterations: int, carry: Any) -> Any:
    """The Ruiz sweeps as one compiled loop body (``equilibrate``'s ``loop`` hook)."""
    return jax.lax.fori_loop(0, iterations, lambda _, c: sweep(c), carry)


def _raw_solve(
    prob: Problem, warm: tuple[Any, Any, Any], cfg: core.Config, mask: Any, soft: Any
) -> core.Solution:
    """Sanitise, equilibrate, iterate, unscale. Elements outside ``mask`` are not iterated."""
    clean, valid = core.sanitize(prob)
    scaled, scaling = equilibrate(clean, loop=_sweeps)
    st = core.init_state(scaled, scaling, cfg, valid & mask, *warm, soft=soft)
    st = _iterate(scaled, scaling, st, cfg, soft)
    return core.finalize(clean, scaling, st, valid)


def _rows(mask: Any, like: Any) -> Any:
    return mask.reshape(mask.shape + (1,) * (like.ndim - 1))


def _solve_impl(prob: Problem, warm: tuple[Any, Any, Any], mask: Any, soft: Any, cfg: core.Config) -> tuple:
    """The traceable raw solve (a tuple in :data:`_FIELDS` order, shifts zero)."""
    sol = _raw_solve(prob, warm, cfg, mask, soft)
    return (*sol, jnp.zeros_like(prob.b), jnp.zeros_like(prob.l))


if jax is not None:
    # jax.jit caches one executable per shapes/dtypes/shardings of the arrays and per static
    # configuration (Config is a hashable NamedTuple of plain numbers).
    _SOLVE = jax.jit(_solve_impl, static_argnames=("cfg",))


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
    soft_rows=True,
)

register("jax", JaxBackend, CAPABILITIES)
