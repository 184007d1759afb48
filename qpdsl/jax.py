"""JAX front end on the standard form: a jit-, vmap- and grad-able batched QP solve.

:func:`solve_qp` is a :func:`jax.custom_jvp` whose rule is the shared, tangent-linear
:func:`qpdsl.diff.qp_jvp` (DESIGN §6); JAX derives reverse mode by transposing it. Backends
working on JAX arrays are called directly; the others (numpy) are reached through
:func:`jax.pure_callback`, so ``jit`` and ``vmap`` work with every backend. This module
imports jax and never torch. It never turns on ``jax_enable_x64``: float64 works when the
user enabled it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _standard_form as sf
from .backends import Backend, get_backend
from .errors import ParameterError, SolverError
from .qp import QPData, QPResult, Settings, Status, WarmStart, register_jax_pytrees

register_jax_pytrees()

__all__ = ["solve_qp"]

_NAMES = sf.NAMES
_ON_FAILURE = ("raise", "nan", "ignore")
_FAILED = int(Status.NUMERICAL_ERROR)
_OK = (int(Status.SOLVED), int(Status.SOLVED_CLOSEST_FEASIBLE))

Outputs = tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]


def solve_qp(
    P: Any,
    q: Any,
    A: Any,
    b: Any,
    C: Any,
    l: Any,
    u: Any,
    *,
    backend: str = "jax",
    settings: Settings | None = None,
    on_failure: str = "raise",
    warm_start: WarmStart | None = None,
) -> Outputs:
    """Solve a batch of standard-form QPs, differentiably (forward and reverse mode) in every input.

    ``minimize 1/2 x'Px + q'x  s.t.  A x = b,  l <= C x <= u``; when infeasible, the closest
    feasible QP (DESIGN §5) is solved and the shifts are returned.

    Parameters
    ----------
    P, q, A, b, C, l, u
        Arrays of shapes ``(B, n, n)``, ``(B, n)``, ``(B, m, n)``, ``(B, m)``, ``(B, p, n)``,
        ``(B, p)``, ``(B, p)``. Each may omit the batch dimension or have batch size 1 (it is
        then shared). ``A, b`` may both be None, ``C, l, u`` may all be None. One floating
        dtype for all (float64 only when ``jax_enable_x64`` is on). ``l`` and ``u`` may hold
        ``-inf`` / ``+inf``. Only the symmetric part of ``P`` matters.
    backend
        A name from :func:`qpdsl.backends.available_backends` whose framework is ``"jax"``
        or ``"numpy"`` (the latter through :func:`jax.pure_callback`).
    settings
        Solver settings; ``Settings()`` when None.
    on_failure
        ``"raise"``, ``"nan"`` or ``"ignore"``, as in :func:`qpdsl.torch.solve_qp`: invalid
        elements (non-finite data, ``l > u``) are never solved and get status
        ``NUMERICAL_ERROR`` and NaN rows; failed solves raise, become NaN, or are returned
        as given. Derivatives are zero on elements whose status is not ``ok``.
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
    if on_failure not in _ON_FAILURE:
        raise ParameterError(f"on_failure={on_failure!r} is not one of {', '.join(map(repr, _ON_FAILURE))}")
    settings = Settings() if settings is None else settings
    solver = get_backend(backend)
    if solver.capabilities.framework not in ("numpy", "jax"):
        raise ParameterError(
            f"backend {backend!r} works on {solver.capabilities.framework} arrays; with JAX arrays use a "
            f"jax or numpy backend (e.g. 'jax', 'proxsuite'), or use qpdsl.torch.solve_qp"
        )
    arrays, batched = _broadcast(dict(zip(_NAMES, (P, q, A, b, C, l, u), strict=False)))
    P_, *rest = arrays
    warm = _broadcast_warm_start(warm_start, arrays) if solver.capabilities.warm_start else ()
    outputs = _differentiable_solve(solver, settings, on_failure)(
        0.5 * (P_ + jnp.swapaxes(P_, -1, -2)), *rest, *warm
    )
    if not batched:
        outputs = tuple(o[0] for o in outputs)
    return outputs


def _differentiable_solve(solver: Backend, settings: Settings, on_failure: str) -> Callable[..., Outputs]:
    """The custom-JVP solve for one backend and one set of options."""

    def primal(*arrays: jax.Array) -> Outputs:
        # arrays: the seven data arrays, then optionally the warm start's x, y, z.
        if solver.capabilities.framework == "jax":
            return _solve_in_jax(solver, settings, on_failure, arrays)
        return _solve_by_callback(solver, settings, on_failure, arrays)

    solve = jax.custom_jvp(primal)

    @solve.defjvp
    def _jvp(
        primals: tuple[jax.Array, ...], tangents: tuple[jax.Array, ...]
    ) -> tuple[Outputs, tuple[Any, ...]]:
        outputs = primal(*primals)
        d_out = _tangent_map(tuple(primals[:7]), outputs, tuple(tangents[:7]))
        return outputs, (*d_out, np.zeros(outputs[-1].shape, dtype=jax.dtypes.float0))

    return solve


@jax.jit
def _tangent_map(
    primals: tuple[jax.Array, ...], outputs: Outputs, tangents: tuple[jax.Array, ...]
) -> tuple[jax.Array, ...]:
    """The solution's tangents, zero on elements that are not ok (linear in ``tangents``).

    Jitted so that eager ``jax.grad`` / ``jax.jvp`` calls run one compiled program, cached per
    shape, instead of dispatching the adjoint's many small operations one by one.
    """
    from .diff import qp_jvp

    status = outputs[-1]
    ok = (status == _OK[0]) | (status == _OK[1])
    data, result = _sanitised(primals, outputs, ok)
    masked = QPData(*(jnp.where(_rows(ok, t), t, 0) for t in tangents))
    return tuple(jnp.where(_rows(ok, d), d, 0) for d in qp_jvp(data, result, masked))


def _solve_by_callback(
    solver: Backend, settings: Settings, on_failure: str, arrays: tuple[jax.Array, ...]
) -> Outputs:
    """Solve with a numpy backend: directly on concrete inputs, else through ``jax.pure_callback``."""
    P, q, A, b, C, l, u = arrays[:7]
    dtype = q.dtype

    def host(*host_arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        return _host_solve(solver, settings, on_failure, host_arrays, dtype)

    if not any(isinstance(a, jax.core.Tracer) for a in arrays):
        return tuple(jnp.asarray(o) for o in host(*(np.asarray(a) for a in arrays)))  # type: ignore[return-value]
    batch, n, m, p = q.shape[0], q.shape[1], b.shape[1], l.shape[1]
    shapes = tuple(jax.ShapeDtypeStruct((batch, w), dtype) for w in (n, m, p, m, p))
    shapes += (jax.ShapeDtypeStruct((batch,), jnp.int32),)
    # broadcast_all: under vmap the callback gets every argument with the mapped axes in front,
    # and _host_solve folds all leading axes into one batch.
    return jax.pure_callback(host, shapes, *arrays, vmap_method="broadcast_all")


def _host_solve(
    solver: Backend, settings: Settings, on_failure: str, arrays: tuple[np.ndarray, ...], dtype: Any
) -> tuple[np.ndarray, ...]:
    """Validate and solve on the host; every leading axis is a batch axis."""
    lead = arrays[1].shape[:-1]
    cores = [a.shape[len(lead) :] for a in arrays]
    flat = [np.asarray(a).reshape(-1, *core) for a, core in zip(arrays, cores, strict=False)]
    flat, warm = flat[:7], flat[7:]
    batch, n, m, p = flat[1].shape[0], flat[1].shape[1], flat[3].shape[1], flat[5].shape[1]
    invalid = sf.invalid_elements(flat)
    if invalid and on_failure == "raise":
        raise ParameterError(sf.invalid_message(invalid))
    keep = np.ones(batch, dtype=bool)
    keep[sorted({i for idx in invalid.values() for i in idx})] = False
    rows = np.flatnonzero(keep)

    widths = {"x": n, "y": m, "z": p, "shift_eq": m, "shift_in": p}
    out = {k: np.full((batch, w), np.nan, dtype=dtype) for k, w in widths.items()}
    status = np.full(batch, _FAILED, dtype=np.int32)
    if rows.size:
        solve_dtype = np.dtype(dtype) if np.dtype(dtype).name in solver.capabilities.dtypes else np.float64
        data = QPData(*(np.ascontiguousarray(a[rows], dtype=solve_dtype) for a in flat))
        start = WarmStart(*(np.ascontiguousarray(w[rows], dtype=solve_dtype) for w in warm)) if warm else None
        res = solver.solve(data, settings, start)
        for k in widths:
            out[k][rows] = np.asarray(getattr(res, k))
        status[rows] = np.asarray(res.status).reshape(-1)
    failed = [(int(i), Status(int(status[i]))) for i in rows if int(status[i]) not in _OK]
    if failed and on_failure == "raise":
        raise _solver_error(failed)
    if failed and on_failure == "nan":
        for k in widths:
            out[k][[i for i, _ in failed]] = np.nan
    return (*(out[k].reshape(*lead, w) for k, w in widths.items()), status.reshape(lead))


def _solve_in_jax(
    solver: Backend, settings: Settings, on_failure: str, arrays: tuple[jax.Array, ...]
) -> Outputs:
    """Solve with a JAX backend, traceably; invalid elements are swapped for a trivial QP first."""
    arrays, warm = arrays[:7], arrays[7:]
    P, q, A, b, C, l, u = arrays
    concrete = not any(isinstance(a, jax.core.Tracer) for a in arrays)
    if concrete and on_failure == "raise":
        invalid = sf.invalid_elements([np.asarray(a) for a in arrays])
        if invalid:
            raise ParameterError(sf.invalid_message(invalid))
    valid = _valid_mask(arrays)
    data, _ = _sanitised(arrays, None, valid)
    start = WarmStart(*(jnp.where(_rows(valid, w), w, 0) for w in warm)) if warm else None
    res = solver.solve(data, settings, start)
    status = jnp.where(valid, jnp.asarray(res.status, jnp.int32), _FAILED)
    ok = (status == _OK[0]) | (status == _OK[1])
    hide = ~valid if on_failure == "ignore" else ~ok
    outs = [
        jnp.where(_rows(hide, o), jnp.nan, o).astype(q.dtype)
        for o in (res.x, res.y, res.z, res.shift_eq, res.shift_in)
    ]
    if on_failure == "raise":
        if concrete:
            failed = [(i, Status(int(s))) for i, s in enumerate(np.asarray(status)) if int(s) not in _OK]
            if failed:
                raise _solver_error(failed)
        else:
            jax.debug.callback(_raise_if_failed, status, valid)
    return (*outs, status)


def _raise_if_failed(status: np.ndarray, valid: np.ndarray) -> None:
    invalid = np.flatnonzero(~np.asarray(valid).reshape(-1)).tolist()
    if invalid:
        raise ParameterError(sf.invalid_message({"non-finite data, NaN bounds or l > u": invalid}))
    flat = np.asarray(status).reshape(-1)
    failed = [(i, Status(int(s))) for i, s in enumerate(flat) if int(s) not in _OK]
    if failed:
        raise _solver_error(failed)


def _solver_error(failed: list[tuple[int, Status]]) -> SolverError:
    return SolverError(
        "the QP solve failed for batch elements "
        + ", ".join(f"{i} ({s.label})" for i, s in failed)
        + "; check those elements' data (bounded below? well scaled?), raise settings.max_iter, "
        "or pass on_failure='nan' / 'ignore' to get the other elements anyway",
        indices=[i for i, _ in failed],
        statuses=[s.label for _, s in failed],
    )


def _rows(mask: jax.Array, like: jax.Array) -> jax.Array:
    """``mask`` (B,) reshaped to broadcast against ``like`` (B, ...)."""
    return mask.reshape(mask.shape + (1,) * (like.ndim - mask.ndim))


def _valid_mask(arrays: tuple[jax.Array, ...]) -> jax.Array:
    """(B,) True where the element's data are valid (traceable version of _standard_form.invalid_elements)."""
    P, q, A, b, C, l, u = arrays

    def every(x: jax.Array) -> jax.Array:
        return jnp.all(x.reshape(x.shape[0], -1), axis=1)

    finite = [every(jnp.isfinite(t)) for t in (P, q, A, b, C)]
    bounds = every(~jnp.isnan(l) & ~jnp.isnan(u) & (l != jnp.inf) & (u != -jnp.inf) & (l <= u))
    return jnp.stack([*finite, bounds]).all(axis=0)


def _sanitised(
    arrays: tuple[jax.Array, ...], outputs: Outputs | None, keep: jax.Array
) -> tuple[QPData, QPResult | None]:
    """Replace the elements not in ``keep`` by ``min |x|²/2, -1 <= 0·x <= 1`` (and its solution, 0).

    Keeps NaN or garbage in those elements away from batched solves and linear algebra,
    where they could otherwise spread to the other elements or to gradients.
    """
    P, q, A, b, C, l, u = arrays
    eye = jnp.broadcast_to(jnp.eye(P.shape[-1], dtype=P.dtype), P.shape)
    trivial = (eye, 0, 0, 0, 0, -1, 1)
    data = QPData(
        *(
            jnp.where(_rows(keep, a), a, jnp.asarray(t, a.dtype))
            for a, t in zip(arrays, trivial, strict=False)
        )
    )
    if outputs is None:
        return data, None
    x, y, z, se, si, status = (jnp.where(_rows(keep, o), o, 0) for o in outputs)
    zeros = jnp.zeros(status.shape, q.dtype)
    result = QPResult(
        x=x,
        y=y,
        z=z,
        shift_eq=se,
        shift_in=si,
        status=status,
        iterations=None,
        prim_res=zeros,
        dual_res=zeros,
    )
    return data, result


def _broadcast(args: dict[str, Any]) -> tuple[tuple[jax.Array, ...], bool]:
    """Check shapes and dtypes; broadcast every input to a common batch size ``B``.

    Returns the seven ``(B, ...)`` arrays and whether any input had a batch dimension.
    """
    fill = sf.missing_groups({k: v is not None for k, v in args.items()})
    arrays = {k: None if v is None else jnp.asarray(v) for k, v in args.items()}
    dtypes = {a.dtype for a in arrays.values() if a is not None}
    if len(dtypes) > 1:
        raise ParameterError(
            f"all inputs must share one dtype, got {sorted(map(str, dtypes))}; convert them with .astype"
        )
    q = arrays["q"]
    if q.dtype not in (jnp.float32, jnp.float64):
        raise ParameterError(
            f"inputs must be float32 or float64 (float64 needs jax.config.update('jax_enable_x64', True)), "
            f"got {q.dtype}"
        )
    n = q.shape[-1] if q.ndim else -1
    for name in fill:
        arrays[name] = jnp.zeros((0, n) if sf.CORE_NDIM[name] == 2 else (0,), q.dtype)
    core, batch, batched = sf.core_shapes({k: tuple(a.shape) for k, a in arrays.items()})
    out = tuple(
        jnp.broadcast_to(a if a.ndim == len(core[k]) + 1 else a[None], (batch, *core[k]))
        for k, a in arrays.items()
    )
    return out, batched


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
