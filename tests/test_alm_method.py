"""Properties of qpdsl's own augmented-Lagrangian method, on each backend that runs it.

The ``cpu`` kernel and the batched core of ``torch`` and ``jax`` are two codings of one method;
these tests hold both to the same behaviour, against Clarabel's solutions.
"""

from __future__ import annotations

import numpy as np
import pytest

import qpdsl as qd
from qpdsl.qp import QPData, Settings, Status
from qpdsl.solve.core import resolve_backend, solve_batch
from qpdsl.testing import random_feasible_qps

ALM_BACKENDS = [b for b in ("cpu", "torch", "jax") if b in qd.available_backends()]


def _framework(arrays: list[np.ndarray], backend: str) -> QPData:
    if backend == "torch":
        import torch

        return QPData(*(torch.as_tensor(a) for a in arrays))
    if backend == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
        return QPData(*(jax.numpy.asarray(a) for a in arrays))
    return QPData(*arrays)


def _clarabel(arrays: list[np.ndarray], i: int) -> np.ndarray:
    cp = pytest.importorskip("cvxpy")
    P, q, A, b, C, l, u = (a[i] for a in arrays)
    x = cp.Variable(q.shape[0])
    objective = cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(P)) + q @ x)
    cp.Problem(objective, [A @ x == b, l <= C @ x, C @ x <= u]).solve(
        solver="CLARABEL", tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11
    )
    return np.asarray(x.value)


@pytest.mark.parametrize("backend", ALM_BACKENDS)
def test_penalties_held_at_their_floors_still_converge(backend: str) -> None:
    """With the penalties pinned (floors equal to the starting values) every multiplier update is
    a rejection at the floor. Rejections that left the multipliers unchanged posed the same
    subproblem again and again (elements of this batch ended in max_iter); at a
    fixed penalty the multiplier step is the proximal point method on the dual, which converges."""
    arrays = random_feasible_qps(8, 10, 3, 12, seed=5)
    settings = Settings(options={"mu_min_eq": 1e-3, "mu_min_in": 1e-1}, max_iter=200)
    out = solve_batch(resolve_backend(backend), _framework(arrays, backend), settings, on_failure="ignore")
    status = np.asarray(out.result.status)
    assert (status == int(Status.SOLVED)).all(), status
    x = np.asarray(out.result.x)
    for i in range(8):
        np.testing.assert_allclose(x[i], _clarabel(arrays, i), atol=1e-6)
