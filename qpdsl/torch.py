"""PyTorch front end on the standard form: a differentiable, batched QP solve.

:func:`solve_qp` runs a backend's forward pass inside one :class:`torch.autograd.Function`
whose backward is the shared adjoint :func:`qpdsl.diff.qp_vjp` (DESIGN §6), so the solution,
the duals and the closest-feasible shift are all differentiable in every QP data item.
This module imports torch and never jax.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import _standard_form as sf
from ._array import to_numpy
from .backends import Backend, get_backend
from .errors import ParameterError, SolverError
from .qp import QPData, QPResult, Settings, Status, WarmStart

__all__ = ["QPLayer", "solve_qp"]

_NAMES = sf.NAMES
_ON_FAILURE = ("raise", "nan", "ignore")
_FLOATS = (torch.float32, torch.float64)

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
    backend: str = "proxsuite",
    settings: Settings | None = None,
    warm_start: WarmStart | None = None,
    on_failure: str = "raise",
) -> Outputs:
    """Solve a batch of standard-form QPs, differentiably in every input.

    ``minimize 1/2 x'Px + q'x  s.t.  A x = b,  l <= C x <= u``; when infeasible, the closest
    feasible QP (DESIGN §5) is solved and the shifts are returned.

    Parameters
    ----------
    P, q, A, b, C, l, u
        Dense tensors of shapes ``(B, n, n)``, ``(B, n)``, ``(B, m, n)``, ``(B, m)``,
        ``(B, p, n)``, ``(B, p)``, ``(B, p)``. Each may omit the batch dimension or have
        batch size 1 (it is then shared by the whole batch). ``A, b`` may both be None
        (no equalities), ``C, l, u`` may all be None (no inequalities). float32 or float64,
        one dtype and one device for all. ``l`` and ``u`` may hold ``-inf`` / ``+inf``.
        Only the symmetric part of ``P`` matters (it is symmetrised).
    backend
        A name from :func:`qpdsl.backends.available_backends`. A numpy backend receives
        host copies; a torch backend receives the tensors themselves.
    settings
        Solver settings; ``Settings()`` when None.
    warm_start
        Initial ``x, y, z`` (batched like the outputs, or unbatched); used when the
        backend supports warm starts.
    on_failure
        What to do with batch elements that are invalid (non-finite data, ``l > u``) or
        that the solver could not solve (status not ``ok``):
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
    if on_failure not in _ON_FAILURE:
        raise ParameterError(f"on_failure={on_failure!r} is not one of {', '.join(map(repr, _ON_FAILURE))}")
    settings = Settings() if settings is None else settings
    solver = get_backend(backend)
    if solver.capabilities.framework not in ("numpy", "torch"):
        raise ParameterError(
            f"backend {backend!r} works on {solver.capabilities.framework} arrays; with torch tensors "
            f"use a numpy or torch backend (e.g. 'proxsuite', 'torch'), or use qpdsl.jax.solve_qp"
        )
    tensors, batched = _broadcast(dict(zip(_NAMES, (P, q, A, b, C, l, u), strict=False)))
    P_, *rest = tensors
    tensors = (0.5 * (P_ + P_.transpose(-1, -2)), *rest)
    warm = _broadcast_warm_start(warm_start, tensors)
    options = _Options(solver, settings, warm, on_failure)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        outputs = _QPFunction.apply(options, *tensors)
    else:
        outputs, _ = _forward(options, tensors)
    if not batched:
        outputs = tuple(o.squeeze(0) for o in outputs)
    return outputs


class QPLayer(torch.nn.Module):
    """A module solving standard-form QPs with a fixed backend and settings.

    ``layer(P, q, A, b, C, l, u)`` is :func:`solve_qp` with this layer's options.

    Parameters
    ----------
    backend, settings, on_failure
        As in :func:`solve_qp`.
    warm_start
        Start each solve from the previous call's ``x, y, z`` when the input shapes, dtype
        and device are the same as in that call.
    """

    def __init__(
        self,
        backend: str = "proxsuite",
        settings: Settings | None = None,
        on_failure: str = "raise",
        warm_start: bool = False,
    ) -> None:
        super().__init__()
        self.backend = backend
        self.settings = settings
        self.on_failure = on_failure
        self.warm_start = warm_start
        self._previous: tuple[Any, WarmStart] | None = None

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
        args = (P, q, A, b, C, l, u)
        key = tuple(None if a is None else (tuple(a.shape), a.dtype, a.device) for a in args)
        warm = self._previous[1] if self._previous is not None and self._previous[0] == key else None
        out = solve_qp(
            *args, backend=self.backend, settings=self.settings, warm_start=warm, on_failure=self.on_failure
        )
        if self.warm_start:
            # NaN rows (failed elements) would poison the next solve; start those from zero.
            x, y, z = (torch.nan_to_num(o.detach(), nan=0.0, posinf=0.0, neginf=0.0) for o in out[:3])
            self._previous = (key, WarmStart(x, y, z))
        return out

    def reset_warm_start(self) -> None:
        """Forget the stored warm start."""
        self._previous = None


class _Options:
    """The non-tensor arguments of one solve (kept out of autograd's argument list)."""

    def __init__(self, solver: Backend, settings: Settings, warm: WarmStart | None, on_failure: str) -> None:
        self.solver = solver
        self.settings = settings
        self.warm = warm
        self.on_failure = on_failure


class _QPFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, options: _Options, *tensors: torch.Tensor) -> Outputs:
        outputs, saved = _forward(options, tensors)
        ctx.saved = saved
        ctx.mark_non_differentiable(outputs[-1])
        return outputs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: Any,
        gx: torch.Tensor,
        gy: torch.Tensor,
        gz: torch.Tensor,
        gse: torch.Tensor,
        gsi: torch.Tensor,
        _gstatus: Any,
    ) -> tuple[Any, ...]:
        from .diff import qp_vjp

        rows, data, result, like = ctx.saved
        wanted = ctx.needs_input_grad[1:]
        if rows.numel() == 0:
            return (None, *(torch.zeros_like(t) if w else None for t, w in zip(like, wanted, strict=False)))
        dtype = data.q.dtype
        grads = qp_vjp(data, result, *(g[rows].to(dtype) for g in (gx, gy, gz, gse, gsi)))
        out: list[torch.Tensor | None] = []
        for name, t, w in zip(_NAMES, like, wanted, strict=False):
            if not w:
                out.append(None)
                continue
            full = torch.zeros_like(t)
            full[rows] = getattr(grads, name).to(t.dtype)
            out.append(full)
        return (None, *out)


def _forward(options: _Options, tensors: tuple[torch.Tensor, ...]) -> tuple[Outputs, tuple[Any, ...]]:
    """Validate, solve the valid elements, assemble full outputs; also return what backward needs."""
    P, q, A, b, C, l, u = tensors
    batch, n, m, p = q.shape[0], q.shape[1], b.shape[1], l.shape[1]
    dtype, device = q.dtype, q.device
    invalid = sf.invalid_elements(tensors)
    if options.on_failure == "raise" and invalid:
        raise ParameterError(sf.invalid_message(invalid))
    bad = sorted({i for idx in invalid.values() for i in idx})
    keep = torch.ones(batch, dtype=torch.bool)
    keep[bad] = False
    rows = keep.nonzero().squeeze(1).to(device)

    solver, caps = options.solver, options.solver.capabilities
    solve_dtype = dtype if str(dtype).removeprefix("torch.") in caps.dtypes else torch.float64
    data = QPData(*(t.detach()[rows].to(solve_dtype) for t in tensors))
    result = (
        _run(solver, options.settings, data, _select_warm(options.warm, rows, solve_dtype))
        if rows.numel()
        else None
    )

    def full(width: int, field: str) -> torch.Tensor:
        out = torch.full((batch, width), float("nan"), dtype=dtype, device=device)
        if result is not None:
            out[rows] = getattr(result, field).to(dtype)
        return out

    status = torch.full((batch,), int(Status.NUMERICAL_ERROR), dtype=torch.int64, device=device)
    if result is not None:
        status[rows] = result.status.to(torch.int64)
    x, y, z = full(n, "x"), full(m, "y"), full(p, "z")
    se, si = full(m, "shift_eq"), full(p, "shift_in")

    codes = status[rows].tolist()
    ok = [i for i, c in enumerate(codes) if Status(c).ok]
    failed = [(int(rows[i]), Status(c)) for i, c in enumerate(codes) if not Status(c).ok]
    if failed and options.on_failure == "raise":
        raise SolverError(
            "the QP solve failed for batch elements "
            + ", ".join(f"{i} ({s.label})" for i, s in failed)
            + "; check those elements' data (bounded below? well scaled?), raise settings.max_iter, "
            "or pass on_failure='nan' / 'ignore' to get the other elements anyway",
            indices=[i for i, _ in failed],
            statuses=[s.label for _, s in failed],
        )
    if failed and options.on_failure == "nan":
        idx = torch.tensor([i for i, _ in failed], device=device)
        for o in (x, y, z, se, si):
            o[idx] = float("nan")

    saved: tuple[Any, ...] = ()
    if result is not None:
        sel = torch.tensor(ok, dtype=torch.int64, device=device)
        whole = len(ok) == rows.numel()
        saved = (rows[sel], data if whole else data.select(sel), _select_result(result, sel, whole), tensors)
    else:
        saved = (rows, data, None, tensors)
    return (x, y, z, se, si, status), saved


def _run(solver: Backend, settings: Settings, data: QPData, warm: WarmStart | None) -> QPResult:
    """Call the backend in its framework; return the result as torch tensors on the data's device."""
    if not solver.capabilities.warm_start:
        warm = None
    if solver.capabilities.framework == "torch":
        return solver.solve(data, settings, warm)
    device, dtype = data.q.device, data.q.dtype
    host = data.map_arrays(lambda t: np.ascontiguousarray(to_numpy(t)))
    if warm is not None:
        warm = WarmStart(
            *(None if w is None else np.ascontiguousarray(to_numpy(w)) for w in (warm.x, warm.y, warm.z))
        )
    res = solver.solve(host, settings, warm)

    def back(a: Any, dt: torch.dtype = dtype) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), device=device).to(dt)

    return QPResult(
        x=back(res.x),
        y=back(res.y),
        z=back(res.z),
        shift_eq=back(res.shift_eq),
        shift_in=back(res.shift_in),
        status=back(res.status, torch.int64),
        iterations=None if res.iterations is None else back(res.iterations, torch.int64),
        prim_res=None if res.prim_res is None else back(res.prim_res),
        dual_res=None if res.dual_res is None else back(res.dual_res),
        objective=None if res.objective is None else back(res.objective),
    )


def _select_result(result: QPResult, sel: torch.Tensor, whole: bool) -> QPResult:
    """The rows ``sel`` of a torch result (extras such as factorisations kept only when whole)."""
    if whole:
        return result

    def pick(a: Any) -> Any:
        return None if a is None else a[sel]

    return QPResult(
        x=pick(result.x),
        y=pick(result.y),
        z=pick(result.z),
        shift_eq=pick(result.shift_eq),
        shift_in=pick(result.shift_in),
        status=pick(result.status),
        iterations=pick(result.iterations),
        prim_res=pick(result.prim_res),
        dual_res=pick(result.dual_res),
        objective=pick(result.objective),
    )


def _broadcast(args: dict[str, torch.Tensor | None]) -> tuple[tuple[torch.Tensor, ...], bool]:
    """Check shapes, dtypes and devices; expand every input to a common batch size ``B``.

    Returns the seven ``(B, ...)`` tensors and whether any input had a batch dimension.
    """
    for name, value in args.items():
        if value is not None and not isinstance(value, torch.Tensor):
            raise ParameterError(
                f"{name} must be a torch.Tensor, got {type(value).__name__}; wrap it with torch.as_tensor"
            )
    fill = sf.missing_groups({k: v is not None for k, v in args.items()})
    dtypes = {v.dtype for v in args.values() if v is not None}
    devices = {v.device for v in args.values() if v is not None}
    if len(dtypes) > 1:
        raise ParameterError(
            f"all inputs must share one dtype, got {sorted(map(str, dtypes))}; convert them with .to(dtype)"
        )
    if len(devices) > 1:
        raise ParameterError(
            f"all inputs must be on one device, got {sorted(map(str, devices))}; move them with .to(device)"
        )
    q = args["q"]
    assert q is not None
    if q.dtype not in _FLOATS:
        raise ParameterError(
            f"inputs must be float32 or float64, got {q.dtype}; convert them with .to(torch.float64)"
        )
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
