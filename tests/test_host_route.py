"""CPU tensors with a numpy backend: the shared core runs on numpy views of the tensors.

Validation, verification, the closest-feasible stage and the backward then cost numpy's small
per-operation overhead, and no torch operation inside the solve wakes torch's thread pool (whose
spinning threads took a core from the solver's threads: the ``cpu`` kernel ran 1.5x slower on
two threads after torch operations than after numpy ones). Torch operations are counted
with a ``TorchDispatchMode``; only the conversions at the edges remain.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import qpdsl.torch as qt  # noqa: E402
from qpdsl.qp import Status  # noqa: E402
from qpdsl.testing import random_feasible_qps  # noqa: E402

# The edges (argument checks and broadcasting, the autograd node's bookkeeping, wrapping numpy
# results as tensors, NaN-cleaning of the incoming gradients) and the loss: about 80 operators,
# most of them views. The core on tensors ran 390 (a feasible batch) and 574 (an infeasible one).
EDGE_BUDGET = 100


class TorchOps:
    """Count the aten operators run inside a ``with`` block."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def __enter__(self) -> TorchOps:
        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                outer.counts[str(func)] += 1
                return func(*args, **(kwargs or {}))

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _inputs(batch: int, infeasible: bool) -> list[torch.Tensor]:
    data = random_feasible_qps(batch, 6, 2, 5, seed=3)
    arrays = [np.array(a) for a in data]
    if infeasible:  # element 0: x_0 <= -1 and x_0 >= 1 as two rows
        C, l, u = arrays[4], arrays[5], arrays[6]
        C[0, :2] = 0.0
        C[0, 0, 0] = C[0, 1, 0] = 1.0
        l[0, 0], u[0, 0] = -np.inf, -1.0
        l[0, 1], u[0, 1] = 1.0, np.inf
    return [torch.tensor(a, requires_grad=True) for a in arrays]


@pytest.mark.parametrize("backend", ["cpu", "proxsuite"])
@pytest.mark.parametrize("infeasible", [False, True])
def test_numpy_backend_on_cpu_tensors_runs_the_core_without_torch_operations(
    backend: str, infeasible: bool
) -> None:
    if backend == "proxsuite":
        pytest.importorskip("proxsuite")
    inputs = _inputs(4, infeasible)
    qt.solve_qp(*inputs, backend=backend)  # compile / load the kernels outside the count
    with TorchOps() as ops:
        x, *_, status = qt.solve_qp(*inputs, backend=backend)
        (x**2).sum().backward()
    assert ops.total <= EDGE_BUDGET, f"{ops.total} torch operations: {ops.counts.most_common(12)}"
    ok, closest = int(Status.SOLVED), int(Status.SOLVED_CLOSEST_FEASIBLE)
    expected = [closest, ok, ok, ok] if infeasible else [ok] * 4
    assert status.tolist() == expected


def test_host_route_gives_the_torch_route_results() -> None:
    """The same solve with a numpy backend (numpy views) and with torch's own backend (tensors)."""
    inputs = _inputs(5, True)
    outs = {}
    for backend in ("cpu", "torch"):
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        x, y, z, s_eq, s_in, status = qt.solve_qp(*leaves, backend=backend)
        (x.sin().sum() + s_in.sum()).backward()
        outs[backend] = (x, s_in, status, [t.grad for t in leaves])
    x0, s0, st0, g0 = outs["cpu"]
    x1, s1, st1, g1 = outs["torch"]
    assert isinstance(x0, torch.Tensor) and x0.dtype == torch.float64 and st0.dtype == torch.int64
    assert torch.equal(st0, st1)
    torch.testing.assert_close(x0, x1, atol=1e-6, rtol=0)
    torch.testing.assert_close(s0, s1, atol=1e-6, rtol=0)
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["cpu", "proxsuite", "torch"])
def test_changing_an_output_in_place_keeps_the_gradient_right(backend: str) -> None:
    """The outputs are not the arrays the backward reads: ``x.mul_(10)`` after the solve gives the
    gradient of ``10 x`` (the backward used to read the changed x and returned about zero)."""
    if backend == "proxsuite":
        pytest.importorskip("proxsuite")
    grads = []
    for in_place in (False, True):
        inputs = _inputs(3, True)
        x, *_ = qt.solve_qp(*inputs, backend=backend)
        x = x.mul_(10.0) if in_place else x * 10.0
        (x**2).sum().backward()
        grads.append([t.grad for t in inputs])
    for out_of_place, in_place in zip(*grads, strict=True):
        torch.testing.assert_close(in_place, out_of_place, rtol=1e-10, atol=1e-12)
