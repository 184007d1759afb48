"""Problem-level layers: parameters -> QP data (affine map) -> differentiable solve -> user outputs.

The framework-specific differentiable solve lives in :mod:`qpdsl.torch` / :mod:`qpdsl.jax`
(``solve_qp`` on dense standard-form arrays). This module only broadcasts the parameter
arguments, applies the compiled affine maps (differentiable by the framework itself), and
reads variables, duals and shifts back in the user's shapes. Frameworks are imported lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ._array import framework
from .compiler import ParametricQP
from .errors import ModelError, ParameterError
from .expressions.constraints import Constraint
from .expressions.expression import Parameter, Variable
from .qp import QPData, Settings, WarmStart
from .validation import check_parameter_values


class Shift:
    """Marks a layer output as the shift s* of a constraint (DESIGN §5): ``outputs=[x, qd.Shift(c)]``."""

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
    missing = [p.name for p in problem_parameters if p.id not in {q.id for q in parameters} and p.value is None]
    if missing:
        raise ModelError(f"parameters {', '.join(missing)} are neither layer inputs nor given a value=; "
                         "list them in parameters=[...] or set Parameter(value=...)")


def broadcast_arguments(
    qp: ParametricQP, parameters: Sequence[Parameter], args: Sequence[Any], convert: Callable[[Any], Any],
    validate: bool = True,
) -> tuple[Any, int, bool]:
    """Stack layer arguments (and fixed parameter values) into theta (B, n_theta).

    Each argument may carry a leading batch dimension; unbatched ones broadcast.
    """
    if len(args) != len(parameters):
        raise ParameterError(f"the layer takes {len(parameters)} arguments "
                             f"({', '.join(p.name for p in parameters)}), got {len(args)}")
    given = {p.id: a for p, a in zip(parameters, args)}
    values: dict[Parameter, Any] = {}
    batch, batched = 1, False
    for p in qp.parameters:
        v = given[p.id] if p.id in given else convert(p.value)
        if tuple(v.shape) == p.shape:
            pass
        elif v.ndim == len(p.shape) + 1 and tuple(v.shape[1:]) == p.shape:
            if batched and v.shape[0] != batch:
                raise ParameterError(f"parameter {p.name}: batch size {v.shape[0]} differs from {batch}")
            batch, batched = int(v.shape[0]), True
        else:
            raise ParameterError(f"parameter {p.name}: expected shape {p.shape} (or (batch, *{p.shape})), "
                                 f"got {tuple(v.shape)}")
        values[p] = v
    for p, v in values.items():
        if tuple(v.shape) == p.shape:
            v = v.reshape(1, *p.shape)
            values[p] = _expand(v, batch)
        if validate and not _is_tracer(values[p]):
            check_parameter_values(p, values[p])
    return qp.stack_theta(values, batch), batch, batched


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


def read_outputs(specs: list[Output], results: Sequence[Any], batched: bool) -> tuple[Any, ...]:
    outs = []
    for s in specs:
        arr = results[s.source][:, s.start: s.stop]
        arr = arr.reshape(arr.shape[0], *s.shape)
        if s.sign != 1.0:
            arr = -arr
        outs.append(arr if batched else arr[0])
    return tuple(outs)


def dense_data(qp: ParametricQP, theta: Any) -> QPData:
    return qp.apply(theta).dense()


# ---------------------------------------------------------------- torch


def make_torch_layer(problem: Any, parameters: Sequence[Parameter], outputs: Sequence[Any], backend: str | None,
                     on_failure: str, warm_start: bool, settings: Settings) -> Any:
    import torch

    from . import torch as qtorch
    from .backends import default_backend

    qp = problem.compile()
    check_layer_parameters(qp.parameters, parameters)
    specs = output_specs(qp, outputs)
    backend_name = backend or default_backend()

    class ProblemLayer(torch.nn.Module):
        """A qpdsl problem as a differentiable torch module: ``layer(*parameter_values) -> outputs``."""

        def __init__(self) -> None:
            super().__init__()
            self.problem = problem
            self.parameters_in = list(parameters)
            self.backend = backend_name
            self.settings = settings
            self.on_failure = on_failure
            self.warm_start = warm_start
            self._previous: WarmStart | None = None
            self.last_status: Any = None

        def forward(self, *args: Any) -> tuple[Any, ...]:
            tensors = [a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a, dtype=float))
                       for a in args]
            ref = next((t for t in tensors if t.is_floating_point()), None)
            dtype = ref.dtype if ref is not None else torch.float64
            device = ref.device if ref is not None else torch.device("cpu")
            tensors = [t.to(device=device, dtype=dtype) for t in tensors]

            def convert(value: Any) -> Any:
                return torch.as_tensor(value, dtype=dtype, device=device)

            theta, batch, batched = broadcast_arguments(qp, self.parameters_in, tensors, convert)
            data = dense_data(qp, theta)
            ws = self._previous if self.warm_start and self._previous is not None \
                and self._previous.x is not None and self._previous.x.shape[0] == batch else None
            x, y, z, s_eq, s_in, status = qtorch.solve_qp(
                data.P, data.q, data.A, data.b, data.C, data.l, data.u,
                backend=self.backend, settings=self.settings, warm_start=ws, on_failure=self.on_failure,
            )
            self.last_status = status
            if self.warm_start:
                self._previous = WarmStart(x.detach(), y.detach(), z.detach())
            return read_outputs(specs, (x, y, z, s_eq, s_in), batched)

    return ProblemLayer()


# ---------------------------------------------------------------- jax


def make_jax_function(problem: Any, parameters: Sequence[Parameter], outputs: Sequence[Any], backend: str | None,
                      on_failure: str, settings: Settings) -> Callable[..., tuple[Any, ...]]:
    import jax.numpy as jnp

    from . import jax as qjax
    from .backends import default_backend

    qp = problem.compile()
    check_layer_parameters(qp.parameters, parameters)
    specs = output_specs(qp, outputs)
    backend_name = backend or ("jax" if "jax" in _names() else default_backend())

    def solve(*args: Any) -> tuple[Any, ...]:
        arrays = [jnp.asarray(a) for a in args]
        dtype = next((a.dtype for a in arrays if jnp.issubdtype(a.dtype, jnp.floating)), jnp.zeros(()).dtype)
        arrays = [a.astype(dtype) for a in arrays]

        def convert(value: Any) -> Any:
            return jnp.asarray(value, dtype=dtype)

        theta, _, batched = broadcast_arguments(qp, parameters, arrays, convert)
        data = dense_data(qp, theta)
        results = qjax.solve_qp(data.P, data.q, data.A, data.b, data.C, data.l, data.u,
                                backend=backend_name, settings=settings, on_failure=on_failure)
        return read_outputs(specs, results[:5], batched)

    solve.__doc__ = f"Solve the qpdsl problem for ({', '.join(p.name for p in parameters)})."
    return solve


def _names() -> dict[str, Any]:
    from .backends import available_backends

    return available_backends()
