"""Problem-level layers: parameters -> QP data (affine map) -> differentiable solve -> user outputs.

The framework-specific differentiable solve lives in :mod:`qpdsl.torch` / :mod:`qpdsl.jax`
(``solve_qp`` on dense standard-form arrays). This module only broadcasts the parameter
arguments, applies the compiled affine maps (differentiable by the framework itself), and
reads variables, duals and shifts back in the user's shapes. Frameworks are imported lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ._array import framework, to_numpy
from ._jax_batching import host_check
from .compiler import ParametricQP
from .errors import ModelError, ParameterError, listing
from .expressions.constraints import Constraint
from .expressions.expression import Parameter, Variable
from .qp import QPData, Settings
from .validation import (
    PSD_TOL,
    any_invalid,
    batched_shape,
    check_all_parameter_values,
    invalid_masks,
    invalid_parameter_elements,
)


class Shift:
    """Marks a layer output as the shift s* of a constraint: ``outputs=[x, qd.Shift(c)]``."""

    def __init__(self, constraint: Constraint):
        self.constraint = constraint


@dataclass
class Output:
    source: int  # index into (x, y, z, shift_eq, shift_in)
    start: int
    stop: int
    shape: tuple[int, ...]
    sign: float = 1.0


def output_specs(qp: ParametricQP, outputs: Sequence[Any]) -> list[Output]:
    """Where each requested output (Variable, Constraint -> its dual, Shift) sits in the results."""
    specs = []
    for item in outputs:
        if isinstance(item, Variable):
            sl = qp.variables.get(item)
            if sl is None:
                raise ModelError(f"variable {item.name} is not part of this problem")
            specs.append(Output(0, sl.offset, sl.offset + sl.size, sl.shape))
            continue
        constraint, is_shift = (item.constraint, True) if isinstance(item, Shift) else (item, False)
        rows = qp.constraints.get(constraint) if isinstance(constraint, Constraint) else None
        if rows is None:
            raise ModelError(f"{item!r} is neither a variable nor a constraint of this problem")
        source = (3 if rows.kind == "eq" else 4) if is_shift else (1 if rows.kind == "eq" else 2)
        specs.append(Output(source, rows.start, rows.stop, rows.shape, rows.sign))
    return specs


def check_layer_parameters(problem_parameters: list[Parameter], parameters: Sequence[Parameter]) -> None:
    ids = {p.id for p in problem_parameters}
    for p in parameters:
        if not isinstance(p, Parameter) or p.id not in ids:
            raise ModelError(f"{getattr(p, 'name', p)!r} is not a parameter of this problem")
    missing = [
        p.name for p in problem_parameters if p.id not in {q.id for q in parameters} and p.value is None
    ]
    if missing:
        raise ModelError(
            f"parameters {', '.join(missing)} are neither layer inputs nor given a value=; "
            "list them in parameters=[...] or set Parameter(value=...)"
        )


def broadcast_arguments(
    qp: ParametricQP,
    parameters: Sequence[Parameter],
    args: Sequence[Any],
    convert: Callable[[Any], Any],
    validate: bool = True,
    on_failure: str = "raise",
) -> tuple[Any, int, bool, list[int]]:
    """Stack layer arguments (and fixed parameter values) into theta (B, n_theta).

    Each argument may carry a leading batch dimension; unbatched ones, and those of batch size 1,
    broadcast. Invalid values (NaN/Inf, a negative ``nonneg`` or a non-PSD ``psd`` parameter)
    raise :class:`ParameterError` with ``on_failure="raise"``; otherwise the indices of the
    invalid batch elements are returned (last item) for the caller to mark as failed. An invalid
    value shared by the whole batch (no batch dimension) always raises.
    """
    if len(args) != len(parameters):
        raise ParameterError(
            f"the layer takes {len(parameters)} arguments "
            f"({', '.join(p.name for p in parameters)}), got {len(args)}"
        )
    given = {p.id: a for p, a in zip(parameters, args, strict=False)}
    values: dict[Parameter, Any] = {}  # each (1 or B, *shape)
    batch, batched, batch_from = 1, False, ""
    shared: set[int] = set()
    for p in qp.parameters:
        v = given[p.id] if p.id in given else convert(p.value)
        if tuple(v.shape) == p.shape:
            shared.add(p.id)
            v = v.reshape(1, *p.shape)
        elif v.ndim == len(p.shape) + 1 and tuple(v.shape[1:]) == p.shape:
            batched = True
            size = int(v.shape[0])
            if size != 1 and batch_from and size != batch:
                raise ParameterError(
                    f"parameter {p.name}: batch size {size} differs from the batch size {batch} of "
                    f"parameter {batch_from}; give every batched argument the same leading dimension "
                    "(or 1, or none, to share one value across the batch)"
                )
            if size != 1:
                batch, batch_from = size, p.name
        else:
            raise ParameterError(
                f"parameter {p.name}: expected shape {p.shape} (or {batched_shape(p.shape)}), "
                f"got {tuple(v.shape)}"
            )
        values[p] = v
    if batch == 0:
        raise ParameterError(f"parameter {batch_from} has batch size 0; pass at least one batch element")
    # Checked before broadcasting: a value shared by the batch is checked once. Inside a JAX trace
    # even concrete values become tracers when operated on: those are checked on host copies
    # (traced ones by the caller, see traced_invalid).
    invalid: set[int] = set()
    tracing = any(_is_tracer(v) for v in values.values())
    checked = [
        (p, to_numpy(v) if tracing else v) for p, v in values.items() if validate and not _is_tracer(v)
    ]
    if checked and any_invalid(checked):  # one host read for every parameter; details only then
        strict = [(p, v, p.id not in shared) for p, v in checked if on_failure == "raise" or p.id in shared]
        check_all_parameter_values(strict)
        for p, v in checked:
            for idx in invalid_parameter_elements(p, v).values():
                invalid.update(range(batch) if v.shape[0] == 1 else idx)
    for p, v in values.items():
        if v.shape[0] == 1 and batch != 1:
            values[p] = _expand(v, batch)
    theta = qp.stack_theta(values, batch)
    if framework(theta) == "numpy":  # a problem without parameters: theta is a column of ones
        theta = convert(theta)
    return theta, batch, batched, sorted(invalid)


def mark_invalid(data: QPData, invalid: list[int]) -> QPData:
    """``data`` with NaN in ``q`` for the batch elements ``invalid``: the standard-form layers then
    treat them as invalid (never solved, status ``numerical_error``, NaN rows, zero gradients)."""
    if not invalid:
        return data
    q = data.q
    if framework(q) == "torch":
        import torch

        mask = torch.zeros(q.shape[0], dtype=torch.bool, device=q.device)
        mask[invalid] = True
        q = torch.where(mask[:, None], torch.full_like(q, float("nan")), q)
    else:
        import jax.numpy as jnp

        mask = np.zeros(q.shape[0], dtype=bool)
        mask[invalid] = True
        q = jnp.where(jnp.asarray(mask)[:, None], jnp.nan, q)
    return replace(data, q=q)


def _expand(v: Any, batch: int) -> Any:
    if framework(v) == "torch":
        return v.expand(batch, *v.shape[1:])
    if framework(v) == "jax":
        import jax.numpy as jnp

        return jnp.broadcast_to(v, (batch, *v.shape[1:]))
    return np.broadcast_to(v, (batch, *v.shape[1:]))


def _is_tracer(v: Any) -> bool:
    if framework(v) != "jax":
        return False
    import jax

    return isinstance(v, jax.core.Tracer)


def _mapped(v: Any) -> Any:
    """A traced boolean: whether ``v`` carries a ``jax.vmap`` axis, wherever the ``vmap`` is applied.

    Such a value without a batch dimension is not shared by a batch: each mapped element is a
    problem of its own, and ``on_failure`` applies to it as to a batch element. The answer comes
    from the batching rule, so it holds for a ``vmap`` outside ``jit``, ``grad`` or ``checkpoint``
    too, where the traced function sees no batch tracer.
    """
    import jax
    import jax.numpy as jnp

    @jax.custom_batching.custom_vmap
    def mapped(value: Any) -> Any:
        return jnp.zeros((), dtype=bool)

    @mapped.def_vmap
    def rule(axis_size: int, in_batched: list[bool], value: Any) -> tuple[Any, bool]:
        return jnp.full((axis_size,), in_batched[0]), True

    return mapped(jax.lax.stop_gradient(v))


def read_outputs(specs: list[Output], results: Sequence[Any], batched: bool) -> tuple[Any, ...]:
    outs = []
    for s in specs:
        arr = results[s.source][:, s.start : s.stop]
        arr = arr.reshape(arr.shape[0], *s.shape)
        if s.sign != 1.0:
            arr = -arr
        outs.append(arr if batched else arr[0])
    return tuple(outs)


def dense_data(qp: ParametricQP, theta: Any) -> QPData:
    return qp.apply(theta).dense()


# ---------------------------------------------------------------- torch


def make_torch_layer(
    problem: Any,
    parameters: Sequence[Parameter],
    outputs: Sequence[Any],
    backend: str | None,
    on_failure: str,
    warm_start: bool,
    settings: Settings,
) -> Any:
    from .torch import ProblemLayer

    return ProblemLayer(problem, parameters, outputs, backend or "auto", on_failure, warm_start, settings)


def layer_arguments(
    parameters: Sequence[Parameter], args: Sequence[Any], kwargs: dict[str, Any]
) -> list[Any]:
    """Positional layer arguments, with keyword arguments (parameter names) put in their places."""
    if not kwargs:
        return list(args)
    names = [p.name for p in parameters]
    out: list[Any] = list(args) + [_MISSING] * (len(parameters) - len(args))
    for name, value in kwargs.items():
        if names.count(name) != 1:
            shared = names.count(name) > 1
            why = "two layer inputs share that name" if shared else "no layer input has that name"
            raise ParameterError(
                f"keyword argument {name!r}: {why} (inputs: {', '.join(names)}); "
                "pass the arguments by position"
            )
        i = names.index(name)
        if i < len(args) or out[i] is not _MISSING:
            raise ParameterError(f"parameter {name} is given twice (by position and by keyword)")
        out[i] = value
    missing = [names[i] for i, v in enumerate(out) if v is _MISSING]
    if missing:
        raise ParameterError(f"the layer is missing arguments for {', '.join(missing)}")
    return out


_MISSING = object()


# ---------------------------------------------------------------- jax


def make_jax_function(
    problem: Any,
    parameters: Sequence[Parameter],
    outputs: Sequence[Any],
    backend: str | None,
    on_failure: str,
    settings: Settings,
) -> Callable[..., tuple[Any, ...]]:
    import jax.numpy as jnp

    from . import jax as qjax

    qp = problem.compile()
    check_layer_parameters(qp.parameters, parameters)
    specs = output_specs(qp, outputs)
    backend_name = backend or "auto"

    @qjax.full_precision
    def solve(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
        given = layer_arguments(parameters, args, kwargs)
        arrays = _jax_arguments(parameters, given)
        dtype = qjax.compute_dtype(given, arrays)
        arrays = [a.astype(dtype) for a in arrays]

        def convert(value: Any) -> Any:
            return jnp.asarray(value, dtype=dtype)

        theta, batch, batched, invalid = broadcast_arguments(
            qp, parameters, arrays, convert, on_failure=on_failure
        )
        data = mark_invalid(dense_data(qp, theta), invalid)
        if any(_is_tracer(a) for a in arrays):
            data = _check_traced(parameters, arrays, batch, data, on_failure)
        # P is convex by construction: the psd parameters are checked where they enter.
        results = qjax.solve_standard_form(
            data.arrays(),
            backend_name,
            settings,
            on_failure,
            None,
            qp.shiftable,
            check_convexity=False,
            batched=batched,
        )
        return read_outputs(specs, results[:5], batched)

    solve.__doc__ = f"Solve the qpdsl problem for ({', '.join(p.name for p in parameters)})."
    return solve


def _check_traced(
    parameters: Sequence[Parameter], arrays: Sequence[Any], batch: int, data: QPData, on_failure: str
) -> QPData:
    """Under ``jit`` / ``vmap``: the checks of :func:`broadcast_arguments` on the traced arguments.

    The elements with an invalid value get NaN in ``q`` (the solve then treats them as invalid,
    as :func:`mark_invalid` does eagerly). When the computation runs, a host callback raises a
    ParameterError naming each parameter with an invalid value, for ``on_failure="raise"``, and
    for a value shared by the whole batch whatever ``on_failure`` says, as eagerly (JAX re-raises
    it as a JaxRuntimeError with this text).
    """
    import jax.numpy as jnp

    bad_elements = jnp.zeros((batch,), dtype=bool)
    masks: list[Any] = []
    labels: list[str] = []
    per_element: list[bool | None] = []  # name the elements: yes, no, or when a vmap adds some
    for p, a in zip(parameters, arrays, strict=True):
        if not _is_tracer(a):
            continue  # checked on the host by broadcast_arguments
        unbatched = tuple(a.shape) == p.shape
        values = a[None] if unbatched else a
        for reason, mask in invalid_masks(jnp, p, values, PSD_TOL).items():
            mask = jnp.broadcast_to(mask, (batch,))
            bad_elements = bad_elements | mask
            if on_failure == "raise":
                masks.append(mask)
                labels.append(f"{p.name} ({reason})")
                # an unbatched value that a vmap maps has elements worth naming
                per_element.append(True if not unbatched and batch > 1 else None)
            elif unbatched:  # shared by the batch unless a vmap maps it
                masks.append(mask & ~_mapped(a))
                labels.append(f"{p.name} ({reason}, shared by the batch)")
                per_element.append(False)
    if masks:

        def check(found: Any) -> None:
            found = np.asarray(found).reshape(-1, len(labels)).T  # a vmap adds elements
            bad, indices = [], set()
            for label, hits, named in zip(labels, found, per_element, strict=True):
                idx = np.flatnonzero(hits).tolist()
                if idx:
                    named = hits.size > batch if named is None else named
                    bad.append(f"{label} in batch elements [{listing(idx)}]" if named else label)
                    indices.update(idx)
            if bad:
                raise ParameterError(
                    f"invalid value of parameter(s) {'; '.join(bad)}: pass finite values, nonneg "
                    "parameters >= 0 and psd parameters whose symmetric part is positive "
                    "semidefinite, or on_failure='nan' to get NaN outputs for the batch elements concerned",
                    indices=sorted(indices),
                )

        host_check(check, jnp.stack(masks, axis=1))
    return replace(data, q=jnp.where(bad_elements[:, None], jnp.nan, data.q))


def _complex_error(label: str, dtype: Any) -> ParameterError:
    return ParameterError(
        f"{label} is complex ({dtype}); pass real values (split real and imaginary parts into two "
        "inputs if the model needs both)"
    )


def _argument_error(p: Parameter, value: Any, exc: Exception | None = None) -> ParameterError:
    why = f" ({exc})" if exc is not None else ""
    return ParameterError(
        f"argument for parameter {p.name}: a {type(value).__name__} that is not a real "
        f"numeric array{why}; pass a float tensor or array of shape {p.shape} "
        f"(or {batched_shape(p.shape)})"
    )


def torch_dtype(tensors: Sequence[Any]) -> Any:
    """The dtype a torch layer or ``solve_qp`` computes in, as torch promotes its operands: the
    widest floating dtype of the tensors with dimensions, else of the 0-dim ones, else float64
    (integer tensors, numbers, lists and arrays adapt)."""
    import torch

    floats = [a for a in tensors if isinstance(a, torch.Tensor) and a.is_floating_point()]
    ranked = [a.dtype for a in floats if a.ndim > 0] or [a.dtype for a in floats]
    dtype = ranked[0] if ranked else torch.float64
    for other in ranked[1:]:
        dtype = torch.promote_types(dtype, other)
    return dtype


def check_torch_tensor(label: str, t: Any) -> None:
    """Raise :class:`ParameterError` for a tensor qpdsl cannot compute with (``label`` names it):
    sparse or otherwise non-strided, on the ``meta`` device, complex, or a floating dtype other
    than float32 and float64. Integer and boolean tensors are accepted (they are converted)."""
    import torch

    if t.layout != torch.strided:
        raise ParameterError(f"{label} is a {t.layout} tensor; pass a dense one (.to_dense())")
    if t.device.type == "meta":
        raise ParameterError(
            f"{label} is on the meta device, which holds no values; create it on 'cpu' or 'cuda'"
        )
    if t.is_complex():
        raise _complex_error(label, t.dtype)
    if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
        raise ParameterError(
            f"{label} is {t.dtype}; qpdsl computes in float32 or float64: convert it with .float() "
            "or .double()"
        )


def torch_arguments(parameters: Sequence[Parameter], args: Sequence[Any]) -> list[Any]:
    """The layer arguments as real tensors on one device: numbers and numpy arrays are converted
    and placed on the device of the tensor arguments."""
    import torch

    given = [a for a in args if isinstance(a, torch.Tensor)]
    devices = {str(t.device) for t in given}
    if len(devices) > 1:
        where = ", ".join(
            f"{p.name} on {a.device}"
            for p, a in zip(parameters, args, strict=False)
            if isinstance(a, torch.Tensor)
        )
        raise ParameterError(
            f"the layer's arguments are on different devices ({where}); move them to one "
            "device with .to(device)"
        )
    for p, a in zip(parameters, args, strict=False):
        if isinstance(a, torch.Tensor):
            check_torch_tensor(f"argument for parameter {p.name}", a)
    device = given[0].device if given else None
    out = []
    for p, a in zip(parameters, args, strict=False):
        if not isinstance(a, torch.Tensor):
            try:
                a = torch.as_tensor(np.asarray(a, dtype=float), device=device)
            except (TypeError, ValueError) as exc:
                raise _argument_error(p, a, exc) from exc
        out.append(a)
    return out + list(args[len(out) :])


def _jax_arguments(parameters: Sequence[Parameter], args: Sequence[Any]) -> list[Any]:
    """The layer arguments as real JAX arrays."""
    import jax.numpy as jnp

    out = []
    for p, a in zip(parameters, args, strict=False):
        try:
            arr = jnp.asarray(a)
        except TypeError as exc:
            raise _argument_error(p, a, exc) from exc
        if jnp.iscomplexobj(arr):
            raise _complex_error(f"argument for parameter {p.name}", arr.dtype)
        if jnp.issubdtype(arr.dtype, jnp.floating) and arr.dtype not in (jnp.float32, jnp.float64):
            raise ParameterError(
                f"argument for parameter {p.name} is {arr.dtype}; the layer computes in float32 or "
                "float64: convert it with .astype(jnp.float32) (or float64, with jax_enable_x64)"
            )
        out.append(arr)
    return out + [jnp.asarray(a) for a in args[len(out) :]]
