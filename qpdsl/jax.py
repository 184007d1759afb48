"""JAX front end on the standard form: a jit-, vmap- and grad-able batched QP solve.

:func:`solve_qp` is a :func:`jax.custom_jvp` whose rule is the shared, tangent-linear
:func:`qpdsl.diff.qp_jvp`; JAX derives reverse mode by transposing it. Backends
working on JAX arrays are called directly; the others (numpy) are reached through
:func:`jax.pure_callback`, so ``jit`` and ``vmap`` work with every backend. This module
imports jax and never torch. It never turns on ``jax_enable_x64``: float64 works when the
user enabled it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _standard_form as sf
from ._jax_batching import host_check
from ._jax_setup import warn_if_deadlocking_jaxlib
from .errors import BackendNotFound, NotSupportedError, ParameterError
from .qp import QPData, QPResult, Settings, Status, WarmStart, register_jax_pytrees
from .solve.closest import Shiftable
from .solve.core import check_on_failure, failure_error, resolve_backend, sanitise, solve_batch

register_jax_pytrees()
warn_if_deadlocking_jaxlib()

__all__ = ["solve_qp"]

_NAMES = sf.NAMES
_OK = (int(Status.SOLVED), int(Status.SOLVED_CLOSEST_FEASIBLE))

Outputs = tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]


def full_precision(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` traced with matrix products in full float32 precision.

    JAX's default on GPUs and TPUs computes float32 products in TF32 or bfloat16 passes
    (relative error about 1e-3), which no solver reaches a 1e-5 tolerance through: every
    float32 solve on a GPU ended at the iteration limit. The setting is read when a product is
    traced, so it covers the solve, its derivative rule and the parameter maps.
    """

    @functools.wraps(fn)
    def traced_exactly(*args: Any, **kwargs: Any) -> Any:
        with jax.default_matmul_precision("highest"):
            return fn(*args, **kwargs)

    return traced_exactly


def solve_qp(
    P: Any,
    q: Any,
    A: Any,
    b: Any,
    C: Any,
    l: Any,
    u: Any,
    *,
    backend: str = "auto",
    settings: Settings | None = None,
    on_failure: str = "raise",
    warm_start: WarmStart | None = None,
    shiftable: Shiftable | None = None,
) -> Outputs:
    """Solve a batch of standard-form QPs, differentiably (forward and reverse mode) in every input.

    ``minimize 1/2 x'Px + q'x  s.t.  A x = b,  l <= C x <= u``; when infeasible, the closest
    feasible QP is solved and the shifts are returned.

    Parameters
    ----------
    P, q, A, b, C, l, u
        Arrays of shapes ``(B, n, n)``, ``(B, n)``, ``(B, m, n)``, ``(B, m)``, ``(B, p, n)``,
        ``(B, p)``, ``(B, p)``. Each may omit the batch dimension or have batch size 1 (it is
        then shared). ``A, b`` may both be None, ``C, l, u`` may all be None. float32 or
        float64 (only when ``jax_enable_x64`` is on); mixed inputs are computed in the widest.
        ``l`` and ``u`` may hold ``-inf`` / ``+inf``. Only the symmetric part of ``P`` matters;
        it must be positive semidefinite (checked per element with one Cholesky factorisation;
        an element that is not is invalid data, see ``on_failure``).
    backend
        A name from :func:`qpdsl.backends.available_backends` whose framework is ``"jax"``
        or ``"numpy"`` (the latter through :func:`jax.pure_callback`).
    settings
        Solver settings; ``Settings()`` when None.
    on_failure
        ``"raise"``, ``"nan"`` or ``"ignore"``, as in :func:`qpdsl.torch.solve_qp`: invalid
        elements (non-finite data, ``l > u``, a P that is not positive semidefinite) are never
        solved and get status ``NUMERICAL_ERROR`` and NaN rows; failed solves raise, become NaN,
        or are returned as given. Derivatives are zero on elements whose status is not ``ok``.
    warm_start
        A :class:`~qpdsl.qp.WarmStart` ``(x, y, z)`` (e.g. the previous call's outputs), each
        ``(B, ·)``, unbatched, or None; used by backends that support warm starts, ignored by
        the others. Not differentiated: the solution does not depend on it.

        With concrete inputs (no ``jit``), ``"raise"`` raises :class:`~qpdsl.errors.ParameterError`
        or :class:`~qpdsl.errors.SolverError` itself. Under ``jit`` (or ``vmap``) the check runs
        in a host callback when the computation executes, and JAX re-raises it as a
        ``jax.errors.JaxRuntimeError`` whose message contains the qpdsl error's text; batch
        indices then count the flattened ``vmap`` and batch dimensions.

    Returns
    -------
    x, y, z, shift_eq, shift_in, status
        Shapes ``(B, n)``, ``(B, m)``, ``(B, p)``, ``(B, m)``, ``(B, p)``, ``(B,)`` (without
        ``B`` when no input had a batch dimension); ``status`` is int32
        :class:`~qpdsl.qp.Status` codes.
    """
    return solve_standard_form(
        (P, q, A, b, C, l, u), backend, settings, on_failure, warm_start, shiftable, check_convexity=True
    )


@full_precision
def solve_standard_form(
    args: tuple[Any, ...],
    backend: str,
    settings: Settings | None,
    on_failure: str,
    warm_start: WarmStart | None,
    shiftable: Shiftable | None,
    check_convexity: bool,
    batched: bool | None = None,
) -> Outputs:
    """:func:`solve_qp`; ``check_convexity=False`` for data convex by construction (compiled problems).

    ``batched``: whether the caller's own input had a batch dimension, for error messages, when
    it differs from that of ``args`` (a problem layer's unbatched call gives batched data).
    """
    check_on_failure(on_failure)
    settings = Settings() if settings is None else settings
    arrays, args_batched = _broadcast(dict(zip(_NAMES, args, strict=True)))
    batched = args_batched if batched is None else batched
    solver = resolve_backend(backend, arrays[1])
    if solver.capabilities.framework == "torch":
        raise BackendNotFound(
            f"backend {solver.name!r} works on torch tensors; with JAX arrays use 'auto', 'jax', 'cpu', "
            "'proxsuite' or 'qpsolvers:<name>', or use qpdsl.torch / Problem.to_torch"
        )
    P_, *rest = arrays
    warm = _broadcast_warm_start(warm_start, arrays) if solver.capabilities.warm_start else ()
    outputs = _differentiable_solve(solver, settings, on_failure, shiftable, check_convexity, batched)(
        0.5 * (P_ + jnp.swapaxes(P_, -1, -2)), *rest, *warm
    )
    if not args_batched:
        outputs = tuple(o[0] for o in outputs)
    return outputs


def _differentiable_solve(
    solver: Any,
    settings: Settings,
    on_failure: str,
    shiftable: Shiftable | None,
    check_convexity: bool,
    batched: bool,
) -> Callable[..., Outputs]:
    """The custom-JVP solve for one backend and one set of options (``batched``: for messages)."""
    options = (solver, settings, on_failure, shiftable, check_convexity, batched)

    @full_precision
    def primal(*arrays: jax.Array) -> Outputs:
        # arrays: the seven data arrays, then optionally the warm start's x, y, z.
        traced = any(isinstance(a, jax.core.Tracer) for a in arrays)
        if traced and solver.capabilities.framework == "numpy":
            return _solve_by_callback(options, arrays)
        return _solve(options, arrays, traced)

    solve = jax.custom_jvp(primal)

    @solve.defjvp
    @full_precision
    def _jvp(
        primals: tuple[jax.Array, ...], tangents: tuple[jax.Array, ...]
    ) -> tuple[Outputs, tuple[Any, ...]]:
        primals = _first_order_only(primals)
        outputs = primal(*primals)
        d_out = _tangent_map(tuple(primals[:7]), outputs, tuple(tangents[:7]), _mask_arrays(shiftable))
        return outputs, (*d_out, np.zeros(outputs[-1].shape, dtype=jax.dtypes.float0))

    return solve


@jax.custom_jvp
def _first_order_only(primals: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """The identity on the derivative rule's inputs, whose own derivative refuses second derivatives.

    The rule evaluates a linear map at the solution; differentiating it again would differentiate
    the solver's iterations and branches, which gives NaN or nonsense rather than the second
    derivative of the solution map.
    """
    return primals


@_first_order_only.defjvp
def _no_second_derivatives(primals: tuple[Any, ...], tangents: tuple[Any, ...]) -> Any:
    raise NotSupportedError(
        "qpdsl JAX functions have no second derivatives: their derivative rule solves the adjoint "
        "KKT system at the solution and is not itself differentiable. First derivatives (grad, "
        "jvp, jacfwd, jacrev, and vmap or jit of these) are fine; differentiating them again "
        "(jax.hessian, jacfwd(grad(...)), grad of a gradient penalty) is not supported"
    )


def _mask_arrays(shiftable: Shiftable | None) -> tuple[Any, Any]:
    """The shiftable-row masks as arrays (None: every row), so that the jitted map takes them as data."""
    if shiftable is None:
        return (None, None)
    return tuple(None if m is None else jnp.asarray(m) for m in (shiftable.eq, shiftable.ineq))


@jax.jit
def _tangent_map(
    primals: tuple[jax.Array, ...],
    outputs: Outputs,
    tangents: tuple[jax.Array, ...],
    masks: tuple[Any, Any] = (None, None),
) -> tuple[jax.Array, ...]:
    """The solution's tangents, zero on elements that are not ok (linear in ``tangents``).

    Jitted so that eager ``jax.grad`` / ``jax.jvp`` calls run one compiled program, cached per
    shape, instead of dispatching the adjoint's many small operations one by one.
    """
    from .diff import qp_jvp

    status = outputs[-1]
    ok = (status == _OK[0]) | (status == _OK[1])
    data = sanitise(QPData(*primals), ok)
    x, y, z, se, si = (jnp.where(_rows(ok, o), o, 0) for o in outputs[:5])
    zeros = jnp.zeros(status.shape, data.q.dtype)
    result = QPResult(x, y, z, se, si, status, None, zeros, zeros)
    masked = QPData(*(jnp.where(_rows(ok, t), t, 0) for t in tangents))
    shiftable = Shiftable(*masks)
    return tuple(jnp.where(_rows(ok, d), d, 0) for d in qp_jvp(data, result, masked, shiftable))


def _solve(options: tuple[Any, ...], arrays: tuple[jax.Array, ...], traced: bool) -> Outputs:
    """The shared solve on JAX arrays (concrete, or traced with a JAX backend).

    ``options``: the solver, settings, on_failure, shiftable rows, check_convexity and batched of
    :func:`solve_batch`.
    """
    on_failure = options[2]
    data, warm = QPData(*arrays[:7]), arrays[7:]
    start = WarmStart(*warm) if warm else None
    outcome = _solve_batch(options, data, start)
    res = outcome.result
    status = res.status.astype(jnp.int32)
    if traced and on_failure == "raise":
        host_check(partial(_raise_if_failed, batched=options[5]), status, outcome.valid)
    dtype = data.q.dtype
    return (*(a.astype(dtype) for a in (res.x, res.y, res.z, res.shift_eq, res.shift_in)), status)


def _solve_batch(options: tuple[Any, ...], data: QPData, start: WarmStart | None) -> Any:
    solver, settings, *rest = options
    return solve_batch(solver, data, settings, start, *rest)


def _solve_by_callback(options: tuple[Any, ...], arrays: tuple[jax.Array, ...]) -> Outputs:
    """Solve with a numpy backend under ``jit`` / ``vmap``, through ``jax.pure_callback``."""
    q, b, l = arrays[1], arrays[3], arrays[5]
    dtype = q.dtype

    def host(*host_arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        # broadcast_all: under vmap every argument comes with the mapped axes in front; all
        # leading axes are folded into one batch.
        lead = host_arrays[1].shape[:-1]
        cores = [a.shape[len(lead) :] for a in host_arrays]
        count = int(np.prod(lead))  # explicit: reshape(-1, 0) is ambiguous for empty blocks
        flat = [np.asarray(a).reshape(count, *core) for a, core in zip(host_arrays, cores, strict=True)]
        data, warm = QPData(*flat[:7]), flat[7:]
        start = WarmStart(*warm) if warm else None
        # under vmap the host sees the whole mapped batch: its indices are worth naming
        named = (*options[:5], options[5] or count > 1)
        res = _solve_batch(named, data, start).result
        outs = [np.asarray(a, dtype=dtype) for a in (res.x, res.y, res.z, res.shift_eq, res.shift_in)]
        return (
            *(o.reshape(*lead, o.shape[-1]) for o in outs),
            np.asarray(res.status, dtype=np.int32).reshape(lead),
        )

    batch, n, m, p = q.shape[0], q.shape[1], b.shape[1], l.shape[1]
    shapes = tuple(jax.ShapeDtypeStruct((batch, w), dtype) for w in (n, m, p, m, p))
    shapes += (jax.ShapeDtypeStruct((batch,), jnp.int32),)
    return jax.pure_callback(host, shapes, *arrays, vmap_method="broadcast_all")


def _raise_if_failed(status: np.ndarray, valid: np.ndarray, batched: bool) -> None:
    # under vmap the host sees every mapped element: their indices are worth naming
    error = failure_error(np.asarray(status), np.asarray(valid), batched or np.size(status) > 1)
    if error is not None:
        raise error


def _rows(mask: jax.Array, like: jax.Array) -> jax.Array:
    """``mask`` (B,) reshaped to broadcast against ``like`` (B, ...)."""
    return mask.reshape(mask.shape + (1,) * (like.ndim - mask.ndim))


def _broadcast(args: dict[str, Any]) -> tuple[tuple[jax.Array, ...], bool]:
    """Check shapes and dtypes; broadcast every input to a common batch size ``B``.

    Returns the seven ``(B, ...)`` arrays and whether any input had a batch dimension.
    """
    fill = sf.missing_groups({k: v is not None for k, v in args.items()})
    arrays = {k: None if v is None else jnp.asarray(v) for k, v in args.items()}
    for name, a in arrays.items():
        if a is not None and (
            jnp.iscomplexobj(a)
            or (jnp.issubdtype(a.dtype, jnp.floating) and a.dtype not in (jnp.float32, jnp.float64))
        ):
            raise ParameterError(
                "inputs must be real, and floating ones float32 or float64 (float64 needs "
                f"jax.config.update('jax_enable_x64', True)), got {a.dtype} for {name}"
            )
    given = [v for v in args.values() if v is not None]
    dtype = compute_dtype(given, [a for a in arrays.values() if a is not None])
    arrays = {k: None if a is None else a.astype(dtype) for k, a in arrays.items()}
    q = arrays["q"]
    n = q.shape[-1] if q.ndim else -1
    for name in fill:
        arrays[name] = jnp.zeros((0, n) if sf.CORE_NDIM[name] == 2 else (0,), q.dtype)
    core, batch, batched = sf.core_shapes({k: tuple(a.shape) for k, a in arrays.items()})
    out = tuple(
        jnp.broadcast_to(a if a.ndim == len(core[k]) + 1 else a[None], (batch, *core[k]))
        for k, a in arrays.items()
    )
    return out, batched


def compute_dtype(given: Sequence[Any], arrays: Sequence[Any]) -> Any:
    """The dtype a JAX solve computes in, for the inputs ``given`` and their ``arrays``: the floating
    arrays (values with a dtype) promoted as JAX promotes them; integer arrays, Python numbers and
    lists adapt; the default float when nothing decides."""
    floats = [
        a.dtype
        for g, a in zip(given, arrays, strict=True)
        if hasattr(g, "dtype") and jnp.issubdtype(a.dtype, jnp.floating)
    ]
    return jnp.result_type(*floats) if floats else jnp.zeros(()).dtype


def _broadcast_warm_start(warm: WarmStart | None, arrays: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """The warm start as three ``(B, ·)`` arrays in the data's dtype (zeros where absent); ``()`` for None.

    Zeros are where the solvers start without a guess, so a partial warm start changes nothing else.
    """
    if warm is None:
        return ()
    q, b, l = arrays[1], arrays[3], arrays[5]
    out = []
    for name, value, like in (("x", warm.x, q), ("y", warm.y, b), ("z", warm.z, l)):
        if value is None:
            out.append(jnp.zeros_like(like))
            continue
        value = jnp.asarray(value, dtype=like.dtype)
        if value.ndim == 1:
            value = value[None]
        if value.ndim != 2 or value.shape[1] != like.shape[1] or value.shape[0] not in (1, like.shape[0]):
            raise ParameterError(
                f"warm_start.{name} has shape {tuple(value.shape)}; expected "
                f"({like.shape[0]}, {like.shape[1]}) or ({like.shape[1]},)"
            )
        out.append(jax.lax.stop_gradient(jnp.broadcast_to(value, like.shape)))
    return tuple(out)
