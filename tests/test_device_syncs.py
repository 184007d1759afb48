"""Host-device synchronisations of the ``torch`` backend's device path, counted on the CPU.

On a GPU every value the host reads from the device (``.item()``, ``bool(t)``, ``int(t)``,
``.tolist()``, ``.cpu()``, ``.numpy()``, ``nonzero``, boolean-mask indexing, ``masked_select``,
``unique``, a linear-algebra error check, a copy of host data to the device) waits for all queued
work. :class:`HostReads` counts them on CPU tensors: a ``TorchFunctionMode`` sees the Python-level
reads and copies, a ``TorchDispatchMode`` the operators whose output size or error check depends
on values. The solver runs its device driver (the one CUDA tensors get) on the CPU here.

A second group runs sync-free parts on torch's ``meta`` device, where any read raises.
"""

from __future__ import annotations

import collections
import math
import traceback
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.overrides import TorchFunctionMode  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import qpdsl as qd  # noqa: E402
import qpdsl.torch as qt  # noqa: E402
from qpdsl.backends import torch_backend  # noqa: E402
from qpdsl.diff import qp_vjp  # noqa: E402
from qpdsl.qp import QPData, QPResult, Status  # noqa: E402
from qpdsl.testing import random_feasible_qps  # noqa: E402

aten = torch.ops.aten

# Operators that read values on the host (their output size or an error check depends on them).
# eigh and svd are counted because torch checks their convergence flags on the host.
READ_OPS = {
    aten._local_scalar_dense.default: "item",
    aten.nonzero.default: "nonzero",
    aten.masked_select.default: "masked_select",
    aten._linalg_check_errors.default: "linalg_check",
    aten._linalg_eigh.default: "eigh",
    aten._linalg_svd.default: "svd",
    aten.equal.default: "equal",
}
UNIQUE_OPS = {aten._unique2, aten.unique_dim, aten.unique_consecutive}
INDEX_OPS = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}
# Python-level reads of a value; inference tensors read some of them without a dispatch.
SCALAR_READS = {
    torch.Tensor.item,
    torch.Tensor.__bool__,
    torch.Tensor.__int__,
    torch.Tensor.__float__,
    torch.Tensor.__index__,
}
HOST_COPIES = {
    torch.Tensor.tolist: "tolist",
    torch.Tensor.numpy: "numpy",
    torch.Tensor.__array__: "numpy",
    torch.Tensor.cpu: "cpu",
}
UPLOADS = {torch.as_tensor, torch.tensor, torch.asarray, torch.from_numpy}


class HostReads:
    """Count host-device synchronisations by kind inside a ``with`` block.

    Attributes
    ----------
    counts
        Kind -> number of reads.
    where
        Kind -> the innermost qpdsl source lines that made them (for failure messages).
    """

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.where: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self._scalar_depth = 0
        self._modes = (_FunctionCounter(self), _DispatchCounter(self))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def record(self, kind: str) -> None:
        self.counts[kind] += 1
        frames = [
            f for f in traceback.extract_stack() if "/qpdsl/" in f.filename and "tests" not in f.filename
        ]
        if frames:
            self.where[kind][f"{frames[-1].filename.split('/qpdsl/')[-1]}:{frames[-1].lineno}"] += 1

    def report(self) -> str:
        return "; ".join(f"{kind} {n} at {dict(self.where[kind])}" for kind, n in self.counts.items())

    def __enter__(self) -> HostReads:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)


class _FunctionCounter(TorchFunctionMode):
    def __init__(self, reads: HostReads) -> None:
        super().__init__()
        self.reads = reads

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in SCALAR_READS:
            self.reads.record("item")
            self.reads._scalar_depth += 1  # the dispatch counter must not count it again
            try:
                return func(*args, **kwargs)
            finally:
                self.reads._scalar_depth -= 1
        if func in HOST_COPIES:
            self.reads.record(HOST_COPIES[func])
        elif func in UPLOADS and args and not isinstance(args[0], torch.Tensor):
            self.reads.record("upload")
        return func(*args, **kwargs)


class _DispatchCounter(TorchDispatchMode):
    def __init__(self, reads: HostReads) -> None:
        super().__init__()
        self.reads = reads

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        kind = READ_OPS.get(func)
        if kind == "item" and self.reads._scalar_depth:
            kind = None
        elif func in INDEX_OPS and any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
            for i in args[1]
            if i is not None
        ):
            kind = "mask_index"
        elif func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            kind = "repeat_interleave"
        elif func.overloadpacket in UNIQUE_OPS:
            kind = "unique"
        if kind:
            self.reads.record(kind)
        return func(*args, **kwargs)


def test_counter_sees_every_kind_of_read() -> None:
    t = torch.arange(6.0) - 2.0
    mask = t > 0
    with HostReads() as reads:
        with torch.inference_mode():
            bool(torch.randn(3).sum() > 0)  # inference tensors read without a dispatch
        t.sum().item()
        int(mask.sum())
        mask.nonzero()
        t[mask]
        mask.tolist()
        t.numpy()
        torch.linalg.cholesky(torch.eye(2))
        torch.as_tensor(np.arange(3))
        torch.where(mask, t, 0.0)  # no read
    assert reads.counts == {
        "item": 3,
        "nonzero": 1,
        "mask_index": 1,
        "tolist": 1,
        "numpy": 1,
        "linalg_check": 1,
        "upload": 1,
    }, reads.report()


@pytest.fixture
def device_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver CUDA tensors get, on CPU tensors."""
    monkeypatch.setattr(torch_backend, "HOST_DRIVEN", frozenset())


# Per forward: one read per CHECK_EVERY iterations (the number of running elements), one per
# compaction of the working batch (at most log2(B) + 1), and a fixed number in the solve path
# around the backend (valid data, the closest-feasible stage's three decisions, the status flags
# for on_failure="raise").
FIXED_FORWARD_READS = 6
# Per backward: one read of the status flags (none when the forward read them), one for the
# Cholesky retry of the adjoint system, one for A's rank, one per refinement step (at most
# REFINE_STEPS; three or four on these problems) and one for the elements whose gradient failed.
BACKWARD_READS = 12


def forward_budget(iterations: int, batch: int) -> int:
    checks = math.ceil(iterations / torch_backend.CHECK_EVERY)
    compactions = int(math.log2(batch)) + 1
    return checks + compactions + FIXED_FORWARD_READS


def _inputs(batch: int, n: int = 20, seed: int = 3) -> list[Any]:
    return [torch.tensor(a, requires_grad=True) for a in random_feasible_qps(batch, n, 4, n, seed=seed)]


def _solve(inputs: list[Any]) -> tuple[Any, dict[str, Any]]:
    info: dict[str, Any] = {}
    return qt.solve_qp(*inputs, backend="torch", info=info), info


@pytest.mark.usefixtures("device_driver")
@pytest.mark.parametrize("batch", [8, 32])
def test_forward_reads_grow_with_iterations_not_batch(batch: int) -> None:
    _solve(_inputs(2))  # first-call work (imports, caches) is not the steady state
    inputs = _inputs(batch)
    with HostReads() as reads:
        out, info = _solve(inputs)
    iterations = int(info["outcome"].result.iterations.max())
    assert bool((out[-1] == int(Status.SOLVED)).all())
    assert reads.total <= forward_budget(iterations, batch), (iterations, reads.report())
    assert reads.total <= 2 * iterations + FIXED_FORWARD_READS


@pytest.mark.usefixtures("device_driver")
@pytest.mark.parametrize("batch", [8, 32])
def test_backward_reads_are_a_constant(batch: int) -> None:
    inputs = _inputs(batch)
    out, _ = _solve(inputs)
    loss = (out[0] * torch.linspace(-1.0, 1.0, out[0].shape[1])).sum() + out[2].sum()
    with HostReads() as reads:
        grads = torch.autograd.grad(loss, inputs)
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    assert reads.total <= BACKWARD_READS, reads.report()


@pytest.mark.usefixtures("device_driver")
def test_device_driver_matches_host_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = random_feasible_qps(16, 20, 4, 20, seed=5)
    inputs = [torch.tensor(a) for a in arrays]
    device = qt.solve_qp(*inputs, backend="torch")
    monkeypatch.setattr(torch_backend, "HOST_DRIVEN", frozenset({"cpu"}))
    host = qt.solve_qp(*inputs, backend="torch")
    assert torch.equal(device[-1], host[-1])
    torch.testing.assert_close(device[0], host[0], atol=1e-7, rtol=1e-7)


def _psd_problem() -> tuple[Any, list[Any]]:
    """``min 1/2 x'Sx + q'x  s.t.  -1 <= x <= 1, sum(x) = 1/2`` with ``S`` psd."""
    x = qd.Variable(4, name="x")
    S = qd.Parameter((4, 4), name="S", psd=True)
    q = qd.Parameter(4, name="q")
    prob = qd.Problem(qd.Minimize(0.5 * qd.quad_form(x, S) + q @ x), [x >= -1, x <= 1, qd.sum(x) == 0.5])
    layer = prob.to_torch(parameters=[S, q], variables=[x], backend="torch")
    rng = np.random.default_rng(0)
    M = rng.standard_normal((8, 4, 4))
    S_value = torch.tensor(M @ M.transpose(0, 2, 1) + 0.1 * np.eye(4), requires_grad=True)
    q_value = torch.tensor(rng.standard_normal((8, 4)), requires_grad=True)
    return layer, [S_value, q_value]


@pytest.mark.usefixtures("device_driver")
def test_layer_with_psd_parameter_reads_once_for_its_checks() -> None:
    layer, args = _psd_problem()
    layer(*args)
    with HostReads() as reads:
        (x,) = layer(*args)
    assert "eigh" not in reads.counts, reads.report()
    info: dict[str, Any] = {}
    qt.solve_qp(*_layer_data(layer, args), backend="torch", info=info)
    iterations = int(info["outcome"].result.iterations.max())
    # one read for every parameter check of the call, on top of the solve
    assert reads.total <= forward_budget(iterations, 8) + 1, reads.report()
    with HostReads() as back:
        torch.autograd.grad(x.sum(), args)
    assert back.total <= BACKWARD_READS, back.report()


def _layer_data(layer: Any, args: list[Any]) -> tuple[Any, ...]:
    from qpdsl._layers import broadcast_arguments, dense_data

    qp = layer.problem.compile()
    theta, *_ = broadcast_arguments(qp, layer.parameters_in, [a.detach() for a in args], torch.as_tensor)
    return dense_data(qp, theta).arrays()


def test_psd_check_flags_the_failing_element_only() -> None:
    layer, (S, q) = _psd_problem()
    bad = S.detach().clone()
    bad[3] = -torch.eye(4)
    with pytest.raises(qd.ParameterError, match=r"negative eigenvalue in batch element\(s\) 3"):
        layer(bad, q)


# ----------------------------------------------------------------- meta device: no read at all


def _meta_data(batch: int, n: int, p: int, m: int) -> QPData:
    def t(*shape: int) -> Any:
        return torch.empty(shape, dtype=torch.float64, device="meta")

    return QPData(
        t(batch, n, n), t(batch, n), t(batch, p, n), t(batch, p), t(batch, m, n), t(batch, m), t(batch, m)
    )


def _meta_result(data: QPData) -> QPResult:
    batch = data.batch_size
    status = torch.empty((batch,), dtype=torch.int64, device="meta")
    zeros = {f: torch.empty_like(getattr(data, g)) for f, g in (("x", "q"), ("y", "b"), ("z", "l"))}
    shifts = {"shift_eq": torch.empty_like(data.b), "shift_in": torch.empty_like(data.l)}
    return QPResult(
        **zeros, **shifts, status=status, iterations=status, prim_res=None, dual_res=None, objective=None
    )


@pytest.mark.parametrize("p", [0, 3])
def test_adjoint_runs_on_meta_tensors_when_every_element_is_ok(p: int) -> None:
    data = _meta_data(4, 6, p, 5)
    result = _meta_result(data)
    grads = qp_vjp(data, result, torch.empty_like(data.q), torch.empty_like(data.b), flags=(True, False))
    assert grads.P.shape == data.P.shape and grads.C.shape == data.C.shape
    assert grads.ok.device.type == "meta"


def test_adjoint_on_meta_tensors_needs_the_flags() -> None:
    data = _meta_data(2, 3, 1, 2)
    with pytest.raises((RuntimeError, NotImplementedError)):
        bool(torch.empty((), device="meta"))  # what any read does there
    grads = qp_vjp(data, _meta_result(data), torch.empty_like(data.q))  # flags unknown: the masked path
    assert grads.all_solved is None


def test_layer_arguments_and_affine_maps_run_on_meta_tensors() -> None:
    from qpdsl._layers import broadcast_arguments, layer_arguments, torch_dtype

    layer, (S, q) = _psd_problem()
    qp = layer.problem.compile()
    args = [torch.empty_like(S, device="meta"), torch.empty_like(q, device="meta")]
    tensors = layer_arguments(layer.parameters_in, args, {})  # a user's meta tensors are refused earlier
    assert torch_dtype(tensors) == torch.float64
    theta, batch, batched, invalid = broadcast_arguments(
        qp, layer.parameters_in, tensors, lambda v: torch.as_tensor(v, device="meta"), validate=False
    )
    assert (batch, batched, invalid) == (8, True, []) and theta.device.type == "meta"
    # Maps that gather entries of theta run anywhere (torch has no sparse matmul on meta tensors).
    gathers = {key: m for key, m in qp.maps.items() if m._gather() is not None}
    assert {"q", "A", "C"} <= set(gathers)
    for m in gathers.values():
        out = m.apply(theta)
        assert out.shape == (8, m.nnz) and out.device.type == "meta"


def test_the_prepared_gpu_check_runs_on_the_cpu(tmp_path: Any) -> None:
    """``benchmarks/cuda_check.py`` (the GPU path's correctness check) runs end to end without a
    GPU and its checks pass there: statuses, x, shifts and gradients of the ``torch`` backend
    against the ``cpu`` backend on a mixed-status batch, a warm-started psd layer, and numbers,
    numpy arrays and integer tensors beside the device's tensors."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "cuda_check.py"
    spec = importlib.util.spec_from_file_location("cuda_check", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "check.json"
    rows = module.main(["--device", "cpu", "--json", str(out)])
    assert [r["passed"] for r in rows] == [True, True, True, True]
    mixed = rows[0]
    assert mixed["statuses_host"][:4] == [0, 1, 4, 2]  # solved, closest feasible, invalid, unbounded
    assert json.loads(out.read_text())["device"] == "cpu"
