"""PyTorch front end on the standard form: a differentiable, batched QP solve.

:func:`solve_qp` runs a backend's forward pass inside one :class:`torch.autograd.Function`
whose backward is the shared adjoint :func:`qpdsl.diff.qp_vjp`, so the solution,
the duals and the closest-feasible shift are all differentiable in every QP data item.
This module imports torch and never jax.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from . import _standard_form as sf
from .errors import NotSupportedError, ParameterError, SolverError, listing
from .qp import QPData, QPResult, Settings, WarmStart
from .solve.closest import Shiftable
from .solve.core import Outcome, WarmMemory, check_on_failure, resolve_backend, solve_batch, zero_rows

__all__ = ["ProblemLayer", "QPLayer", "solve_qp"]

_NAMES = sf.NAMES

Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def solve_qp(
    P: torch.Tensor,
    q: torch.Tensor,
    A: torch.Tensor | None,
    b: torch.Tensor | None,
    C: torch.Tensor | None,
    l: torch.Tensor | None,
    u: torch.Tensor | None,
    *,
    backend: str = "auto",
    settings: Settings | None = None,
    warm_start: WarmStart | None = None,
    on_failure: str = "raise",
    shiftable: Shiftable | None = None,
    info: dict[str, Any] | None = None,
) -> Outputs:
    """Solve a batch of standard-form QPs, differentiably in every input.

    ``minimize 1/2 x'Px + q'x  s.t.  A x = b,  l <= C x <= u``; when infeasible, the closest
    feasible QP is solved and the shifts are returned.

    Parameters
    ----------
    P, q, A, b, C, l, u
        Dense tensors of shapes ``(B, n, n)``, ``(B, n)``, ``(B, m, n)``, ``(B, m)``,
        ``(B, p, n)``, ``(B, p)``, ``(B, p)``. Each may omit the batch dimension or have
        batch size 1 (it is then shared by the whole batch). ``A, b`` may both be None
        (no equalities), ``C, l, u`` may all be None (no inequalities). Dense, one device
        for all, float32 or float64; mixed inputs are computed in the dtype torch promotes them
        to (the widest floating dtype of the inputs with dimensions, else of the 0-dim ones;
        integer inputs adapt, float64 when all are integer). ``l`` and ``u`` may hold ``-inf`` / ``+inf``.
        Only the symmetric part of ``P`` matters (it is symmetrised); it must be positive
        semidefinite (checked per element with one Cholesky factorisation; an element that is
        not is invalid data, see ``on_failure``).
    backend
        A name from :func:`qpdsl.backends.available_backends`. A numpy backend reads CPU
        tensors through numpy views (no copy) and CUDA tensors through host copies; a torch
        backend receives the tensors themselves.
    settings
        Solver settings; ``Settings()`` when None.
    warm_start
        Initial ``x, y, z`` (batched like the outputs, or unbatched); used when the
        backend supports warm starts.
    on_failure
        What to do with batch elements that are invalid (non-finite data, ``l > u``, a P that
        is not positive semidefinite) or
        that the solver could not solve (status not ``ok``; ``solved`` and
        ``solved_closest_feasible`` are ok, so an infeasible element never raises and gets
        the closest feasible QP's solution and gradients):
        ``"raise"`` raises :class:`~qpdsl.errors.ParameterError` (invalid data) or
        :class:`~qpdsl.errors.SolverError` (failed solve) naming the batch elements;
        ``"nan"`` makes their output rows NaN; ``"ignore"`` returns what the solver gave.
        Invalid elements are never sent to the solver: they get status
        ``NUMERICAL_ERROR`` and NaN rows in both ``"nan"`` and ``"ignore"`` modes.
        Gradients are zero on every element whose status is not ``ok``.

    Returns
    -------
    x, y, z, shift_eq, shift_in, status
        Shapes ``(B, n)``, ``(B, m)``, ``(B, p)``, ``(B, m)``, ``(B, p)``, ``(B,)`` (without
        ``B`` when no input had a batch dimension). ``status`` holds :class:`~qpdsl.qp.Status`
        codes (int64) and is not differentiable; the other outputs are, including under
        ``torch.autograd.grad`` with gradient outputs on any of them.

    Raises
    ------
    ParameterError
        Inconsistent shapes, dtypes or devices; invalid data with ``on_failure="raise"``.
    SolverError
        A batch element not solved, with ``on_failure="raise"``.
    BackendNotFound
        Unknown or uninstalled backend.
    """
    return _solve_qp(
        (P, q, A, b, C, l, u),
        backend,
        settings,
        warm_start,
        on_failure,
        shiftable,
        info,
        check_convexity=True,
    )


def _solve_qp(
    args: tuple[torch.Tensor | None, ...],
    backend: str,
    settings: Settings | None,
    warm_start: WarmStart | None,
    on_failure: str,
    shiftable: Shiftable | None,
    info: dict[str, Any] | None,
    check_convexity: bool,
    batched_input: bool | None = None,
) -> Outputs:
    """:func:`solve_qp`; ``check_convexity=False`` for data convex by construction (compiled problems).

    ``batched_input``: whether the caller's own input had a batch dimension, for error messages,
    when it differs from that of ``args`` (a problem layer's unbatched call gives batched data).
    """
    check_on_failure(on_failure)
    settings = Settings() if settings is None else settings
    tensors, batched = _broadcast(dict(zip(_NAMES, args, strict=True)))
    named = batched if batched_input is None else batched_input
    solver = resolve_backend(backend, tensors[1])
    if solver.capabilities.framework == "jax":
        from .errors import BackendNotFound

        raise BackendNotFound(
            f"backend {solver.name!r} works on JAX arrays; with torch tensors use another backend "
            "('auto', 'cpu', 'torch', 'proxsuite', 'qpsolvers:<name>'), or use qpdsl.jax / Problem.to_jax"
        )
    warm = _broadcast_warm_start(warm_start, tensors)
    options = _Options(solver, settings, warm, on_failure, shiftable, info, check_convexity, named)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        outputs = _QPFunction.apply(options, *tensors)
    else:
        outputs = _forward(options, tensors)[0]
    if not batched:
        outputs = tuple(o.squeeze(0) for o in outputs)
    return outputs


class _SolvingModule(torch.nn.Module):
    """What every qpdsl torch layer shares: warm-start memory (not part of a saved model)."""

    _memory: WarmMemory

    def reset_warm_start(self) -> None:
        """Forget the stored warm start."""
        self._memory.reset()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_memory"] = WarmMemory()  # warm starts are not part of a saved model
        return state


class QPLayer(_SolvingModule):
    """A module solving standard-form QPs with a fixed backend and settings.

    ``layer(P, q, A, b, C, l, u)`` is :func:`solve_qp` with this layer's options.

    Parameters
    ----------
    backend, settings, on_failure
        As in :func:`solve_qp`.
    warm_start
        Start each solve from the previous call's ``x, y, z`` when the input shapes, dtype
        and device are the same as in that call (elements that failed start cold).

    Attributes
    ----------
    last_status
        Status codes of the last forward call.
    last_backward_status
        Per element, whether the last backward pass computed the element's gradient (False where
        its status was not ok or its adjoint system could not be solved; those gradients are zero).
    """

    def __init__(
        self,
        backend: str = "auto",
        settings: Settings | None = None,
        on_failure: str = "raise",
        warm_start: bool = False,
    ) -> None:
        super().__init__()
        self.backend = backend
        self.settings = settings
        self.on_failure = check_on_failure(on_failure)
        self.warm_start = warm_start
        self._memory = WarmMemory()
        self.last_status: torch.Tensor | None = None
        self.last_backward_status: torch.Tensor | None = None

    def forward(
        self,
        P: torch.Tensor,
        q: torch.Tensor,
        A: torch.Tensor | None,
        b: torch.Tensor | None,
        C: torch.Tensor | None,
        l: torch.Tensor | None,
        u: torch.Tensor | None,
    ) -> Outputs:
        self.last_status = None  # not the status of an earlier call when this one raises
        args = (P, q, A, b, C, l, u)
        key = tuple(None if a is None else (tuple(a.shape), a.dtype, a.device) for a in args)
        return solve_layer(self, args, key, self._memory)


class ProblemLayer(_SolvingModule):
    """A qpdsl problem as a differentiable torch module: ``layer(*parameter_values) -> outputs``.

    Built by :meth:`qpdsl.Problem.to_torch`. Arguments are given in the order of the layer's
    parameters, or by their names (``layer(A=..., b=...)``) when the names are unique.

    Attributes
    ----------
    last_status, last_backward_status
        As for :class:`QPLayer`.
    """

    def __init__(
        self,
        problem: Any,
        parameters: Any,
        outputs: Any,
        backend: str,
        on_failure: str,
        warm_start: bool,
        settings: Settings,
    ) -> None:
        from ._layers import check_layer_parameters, output_specs

        super().__init__()
        self.problem = problem
        self.parameters_in = list(parameters)
        self.outputs = list(outputs)
        qp = problem.compile()
        check_layer_parameters(qp.parameters, self.parameters_in)
        self._specs = output_specs(qp, self.outputs)
        self.backend = backend
        self.settings = settings
        self.on_failure = check_on_failure(on_failure)
        self.warm_start = warm_start
        self._memory = WarmMemory()
        self.last_status: torch.Tensor | None = None
        self.last_backward_status: torch.Tensor | None = None

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
        self.last_status = None  # not the status of an earlier call when this one raises
        with full_float32_products():
            return self._solve(args, kwargs)

    def _solve(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        from ._layers import (
            broadcast_arguments,
            dense_data,
            layer_arguments,
            mark_invalid,
            read_outputs,
            torch_arguments,
            torch_dtype,
        )

        qp = self.problem.compile()
        given = layer_arguments(self.parameters_in, args, kwargs)
        tensors = torch_arguments(self.parameters_in, given)
        dtype = torch_dtype(given)
        device = tensors[0].device if tensors else torch.device("cpu")
        tensors = [t.to(device=device, dtype=dtype) for t in tensors]

        def convert(value: Any) -> Any:
            return torch.as_tensor(value, dtype=dtype, device=device)

        theta, batch, batched, invalid = broadcast_arguments(
            qp, self.parameters_in, tensors, convert, on_failure=self.on_failure
        )
        data = mark_invalid(dense_data(qp, theta), invalid)
        key = (batch, dtype, device)
        # P is convex by construction: the psd parameters are checked where they enter.
        x, y, z, s_eq, s_in, _ = solve_layer(
            self, data.arrays(), key, self._memory, qp.shiftable, convex=True, batched_input=batched
        )
        return read_outputs(self._specs, (x, y, z, s_eq, s_in), batched)


def solve_layer(
    layer: Any,
    args: tuple[Any, ...],
    key: Any,
    memory: WarmMemory,
    shiftable: Shiftable | None = None,
    convex: bool = False,
    batched_input: bool | None = None,
) -> Outputs:
    """The solve of a torch layer: :func:`solve_qp` with the layer's options, warm-start memory
    (``layer.warm_start``) and status records (``layer.last_status``, ``layer.last_backward_status``).
    ``convex``: P is known to be positive semidefinite (not checked again); ``batched_input`` as
    in :func:`_solve_qp`."""
    info: dict[str, Any] = {"layer": layer}
    warm = memory.get(key) if layer.warm_start else None
    out = _solve_qp(
        args,
        layer.backend,
        layer.settings,
        warm,
        layer.on_failure,
        shiftable,
        info,
        check_convexity=not convex,
        batched_input=batched_input,
    )
    layer.last_status = out[-1]
    outcome: Outcome = info["outcome"]
    if layer.warm_start:
        memory.store(key, outcome.result, outcome.ok)
    return out


class _Options:
    """The non-tensor arguments of one solve (kept out of autograd's argument list)."""

    def __init__(
        self,
        solver: Any,
        settings: Settings,
        warm: WarmStart | None,
        on_failure: str,
        shiftable: Shiftable | None,
        info: dict[str, Any] | None,
        check_convexity: bool,
        batched: bool = True,
    ) -> None:
        self.solver = solver
        self.settings = settings
        self.warm = warm
        self.on_failure = on_failure
        self.shiftable = shiftable
        self.info = {} if info is None else info
        self.check_convexity = check_convexity
        self.batched = batched  # for messages only: an unbatched input is solved as a batch of one


@contextlib.contextmanager
def full_float32_products() -> Iterator[None]:
    """Float32 matrix products in full precision while qpdsl computes.

    Training code often allows TF32 products (``torch.set_float32_matmul_precision("high")``,
    ``torch.backends.cuda.matmul.allow_tf32 = True``), whose relative error of about 1e-3 no
    solver reaches a 1e-5 tolerance through, and which would perturb the QP data computed from
    the parameters. The setting is global: other threads' products run in full precision too
    while qpdsl computes.
    """
    previous = torch.get_float32_matmul_precision()
    if previous == "highest":
        yield
        return
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


class _QPFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, options: _Options, *tensors: torch.Tensor) -> Outputs:
        outputs, outcome = _forward(options, tensors)
        ctx.outcome = outcome
        ctx.options = options
        ctx.dtypes = tuple(t.dtype for t in tensors)
        # Not saved_tensors: version checks would refuse inputs changed in place after the forward.
        ctx.sources = tuple(t for t in tensors if t.requires_grad)
        ctx.mark_non_differentiable(outputs[-1])
        return outputs

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Any) -> tuple[Any, ...]:
        second_order = torch.is_grad_enabled()  # create_graph=True
        with torch.no_grad():
            grads = _backward(ctx, *grad_outputs)
        if not second_order:
            return grads
        given = [g for g in grad_outputs if isinstance(g, torch.Tensor) and g.requires_grad]
        sources = [*ctx.sources, *given]
        if not sources:
            return grads
        return tuple(None if g is None else _NoSecondDerivative.apply(g, *sources) for g in grads)


class _NoSecondDerivative(torch.autograd.Function):
    """The identity on a first derivative, whose own derivative raises :class:`NotSupportedError`.

    ``sources`` are the tensors the derivative depends on, so that differentiating it reaches this node.
    """

    @staticmethod
    def forward(ctx: Any, grad: torch.Tensor, *sources: torch.Tensor) -> torch.Tensor:
        return grad.clone()

    @staticmethod
    def backward(ctx: Any, *_: Any) -> tuple[Any, ...]:
        raise NotSupportedError(
            "qpdsl layers have no second derivatives (double backward): their backward pass solves "
            "the adjoint KKT system once and is not itself differentiable. First derivatives with "
            "create_graph=True are fine; differentiating them again (Hessians, gradient penalties "
            "through the layer, MAML-style inner loops) is not supported"
        )


@full_float32_products()
def _backward(
    ctx: Any,
    gx: torch.Tensor,
    gy: torch.Tensor,
    gz: torch.Tensor,
    gse: torch.Tensor,
    gsi: torch.Tensor,
    _gstatus: Any,
) -> tuple[Any, ...]:
    """The first derivatives of :class:`_QPFunction`: the shared adjoint, zero on failed elements."""
    from .diff import qp_vjp

    outcome: Outcome = ctx.outcome
    options: _Options = ctx.options
    host = not isinstance(outcome.data.q, torch.Tensor)  # the forward ran on numpy views
    result = _zero_failed(outcome.result, outcome.ok)
    grads_in = (
        None if g is None else (_host_view(torch.nan_to_num(g)) if host else torch.nan_to_num(g))
        for g in (gx, gy, gz, gse, gsi)
    )
    flags = None if outcome.flags is None else (outcome.flags.all_ok, outcome.flags.any_closest)
    grads = qp_vjp(outcome.data, result, *grads_in, shiftable=options.shiftable, flags=flags)
    if host:
        grads = replace(grads, ok=_tensor(grads.ok), **{k: _tensor(getattr(grads, k)) for k in _NAMES})
    ok = _tensor(outcome.ok)
    computed = grads.ok & ok
    layer = options.info.get("layer")
    if layer is not None:
        layer.last_backward_status = computed
    check = options.on_failure == "raise" and not grads.all_solved
    failed = (ok & ~grads.ok).nonzero()[:, 0].tolist() if check else []
    if failed:
        raise SolverError(
            f"the backward pass could not solve the adjoint system of batch elements [{listing(failed)}] "
            "(singular or ill-conditioned KKT matrix); their gradients would be wrong. Pass "
            "on_failure='nan' or 'ignore' to get zero gradients for them instead",
            indices=failed,
            statuses=["backward_failed"] * len(failed),
        )
    out: list[torch.Tensor | None] = []
    for name, dtype, wanted in zip(_NAMES, ctx.dtypes, ctx.needs_input_grad[1:], strict=True):
        if not wanted:
            out.append(None)
            continue
        g = getattr(grads, name)
        if grads.all_solved is not True:  # known everywhere solved: nothing to zero, no full copy
            g = torch.where(computed.reshape((-1,) + (1,) * (g.ndim - 1)), g, torch.zeros_like(g))
        out.append(g.to(dtype))
    return (None, *out)


def _zero_failed(result: QPResult, ok: torch.Tensor) -> QPResult:
    """The result with the rows of non-ok elements set to zero (the backward never reads NaN)."""
    rows = {f: zero_rows(getattr(result, f), ok) for f in ("x", "y", "z", "shift_eq", "shift_in")}
    return replace(result, **rows, extras={})


@full_float32_products()
def _forward(options: _Options, tensors: tuple[torch.Tensor, ...]) -> tuple[Outputs, Outcome]:
    """Solve through the shared core; return the outputs and what the backward needs.

    For a numpy backend and CPU tensors the core (validation, verification, the closest-feasible
    stage) and later the backward run on numpy views of the tensors: small numpy operations cost
    a fraction of torch's, and no torch operation wakes torch's thread pool, whose spinning
    threads would compete with the solver's own threads for the cores.
    """
    host = _on_host(options.solver, tensors)
    P, *rest = (_host_view(t) if host else t.detach() for t in tensors)
    # Only the symmetric part of P counts. The gradient the backward returns for P is symmetric,
    # hence also the gradient with respect to the unsymmetrised input.
    data = QPData(0.5 * (P + P.swapaxes(-1, -2)), *rest)
    warm = options.warm
    if host and warm is not None:
        warm = WarmStart(*(None if w is None else _host_view(w) for w in (warm.x, warm.y, warm.z)))
    outcome = solve_batch(
        options.solver,
        data,
        options.settings,
        warm,
        options.on_failure,
        options.shiftable,
        options.check_convexity,
        options.batched,
    )
    options.info["outcome"] = outcome
    res = outcome.result
    dtype = tensors[1].dtype
    # Copies: the backward reads the result, which an in-place change of an output must not alter.
    results = (res.x, res.y, res.z, res.shift_eq, res.shift_in)
    outputs = tuple(_tensor(a).to(dtype, copy=True) for a in results)
    return (*outputs, _tensor(res.status)), outcome


def _on_host(solver: Any, tensors: tuple[torch.Tensor, ...]) -> bool:
    """Whether the solve runs on numpy views: a numpy backend and CPU tensors."""
    return solver.capabilities.framework == "numpy" and tensors[1].device.type == "cpu"


def _host_view(t: torch.Tensor) -> Any:
    """A numpy view of a CPU tensor (no copy; broadcast dimensions keep their zero strides)."""
    return t.detach().numpy()


def _tensor(a: Any) -> torch.Tensor:
    """``a`` as a tensor: numpy arrays wrapped without a copy, tensors as they are."""
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(a)


def _broadcast(args: dict[str, torch.Tensor | None]) -> tuple[tuple[torch.Tensor, ...], bool]:
    """Check shapes, dtypes and devices; expand every input to a common batch size ``B``.

    Returns the seven ``(B, ...)`` tensors and whether any input had a batch dimension.
    """
    from ._layers import check_torch_tensor, torch_dtype

    fill = sf.missing_groups({k: v is not None for k, v in args.items()})
    given = [v for v in args.values() if isinstance(v, torch.Tensor)]
    place = given[0].device if given else None
    for name, value in args.items():  # numbers, lists and numpy arrays adapt, as in the layers
        if value is not None and not isinstance(value, torch.Tensor):
            try:
                args[name] = torch.as_tensor(np.asarray(value, dtype=float), device=place)
            except (TypeError, ValueError) as exc:
                raise ParameterError(
                    f"{name} is a {type(value).__name__} that is not a real numeric array ({exc}); "
                    "pass a float tensor"
                ) from exc
    devices = {v.device for v in given}
    if len(devices) > 1:
        raise ParameterError(
            f"all inputs must be on one device, got {sorted(map(str, devices))}; move them with .to(device)"
        )
    for name, value in args.items():
        if value is not None:
            check_torch_tensor(name, value)
    # mixed dtypes: as torch promotes them (integer inputs adapt)
    dtype = torch_dtype(given)
    args = {k: None if v is None else v.to(dtype) for k, v in args.items()}
    q = args["q"]
    assert q is not None
    n = q.shape[-1] if q.ndim else -1
    for name in fill:
        args[name] = torch.zeros((0, n) if sf.CORE_NDIM[name] == 2 else (0,), dtype=q.dtype, device=q.device)
    core, batch, batched = sf.core_shapes({k: tuple(v.shape) for k, v in args.items()})  # type: ignore[union-attr]
    out = tuple(
        (t if t.ndim == len(core[name]) + 1 else t.unsqueeze(0)).expand(batch, *core[name])  # type: ignore[union-attr]
        for name, t in args.items()
    )
    return out, batched


def _broadcast_warm_start(warm: WarmStart | None, tensors: tuple[torch.Tensor, ...]) -> WarmStart | None:
    """Expand a warm start to ``(B, ·)`` like the data; check its shapes."""
    if warm is None:
        return None
    q, b, l = tensors[1], tensors[3], tensors[5]
    out = []
    for name, value, width in (
        ("x", warm.x, q.shape[1]),
        ("y", warm.y, b.shape[1]),
        ("z", warm.z, l.shape[1]),
    ):
        if value is None:
            out.append(None)
            continue
        value = torch.as_tensor(value, device=q.device)
        if value.ndim == 1:
            value = value.unsqueeze(0)
        if value.ndim != 2 or value.shape[1] != width or value.shape[0] not in (1, q.shape[0]):
            raise ParameterError(
                f"warm_start.{name} has shape {tuple(value.shape)}; "
                f"expected ({q.shape[0]}, {width}) or ({width},)"
            )
        out.append(value.detach().expand(q.shape[0], width))
    return WarmStart(*out)


def _select_warm(warm: WarmStart | None, rows: torch.Tensor, dtype: torch.dtype) -> WarmStart | None:
    if warm is None:
        return None
    return WarmStart(*(None if w is None else w[rows].to(dtype) for w in (warm.x, warm.y, warm.z)))
