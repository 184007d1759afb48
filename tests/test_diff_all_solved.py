"""qp_vjp on a batch whose elements all solved (no masking copies) against finite differences of
Clarabel's solutions, and against the masked path of a batch with a failed element."""

from __future__ import annotations

import numpy as np
import pytest

from qpdsl.diff import qp_vjp
from qpdsl.qp import QPData, QPResult, Status

cp = pytest.importorskip("cvxpy")

NAMES = ("P", "q", "A", "b", "C", "l", "u")
STEP = 1e-5


def _problem(rng: np.random.Generator, n: int = 6, p: int = 2, m: int = 8) -> dict[str, np.ndarray]:
    M = rng.standard_normal((n, n))
    x0 = rng.standard_normal(n)
    A, C = rng.standard_normal((p, n)), rng.standard_normal((m, n))
    cx = C @ x0
    # half the rows tight at x0 on one side or the other, so that the solution has active rows
    l, u = cx - rng.uniform(0.1, 1.0, m), cx + rng.uniform(0.1, 1.0, m)
    q = rng.standard_normal(n) * 3
    return {"P": M @ M.T + 0.5 * np.eye(n), "q": q, "A": A, "b": A @ x0, "C": C, "l": l, "u": u}


def _clarabel(d: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y, z in qpdsl's sign convention (``Px + q + A'y + C'z = 0``)."""
    n = d["q"].size
    x = cp.Variable(n)
    eq, up, lo = d["A"] @ x == d["b"], d["C"] @ x <= d["u"], d["C"] @ x >= d["l"]
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(d["P"])) + d["q"] @ x), [eq, up, lo])
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-13, tol_gap_rel=1e-13, tol_feas=1e-13)
    return x.value, eq.dual_value, up.dual_value - lo.dual_value


def _batch(problems: list[dict[str, np.ndarray]], status: list[int]) -> tuple[QPData, QPResult]:
    sols = [_clarabel(d) for d in problems]
    data = QPData(*(np.stack([d[k] for d in problems]) for k in NAMES))
    B, p, m = len(problems), problems[0]["b"].size, problems[0]["l"].size
    result = QPResult(
        x=np.stack([s[0] for s in sols]),
        y=np.stack([s[1] for s in sols]),
        z=np.stack([s[2] for s in sols]),
        shift_eq=np.zeros((B, p)),
        shift_in=np.zeros((B, m)),
        status=np.array(status),
        iterations=np.zeros(B, dtype=np.int64),
        prim_res=np.zeros(B),
        dual_res=np.zeros(B),
    )
    return data, result


def test_all_solved_batch_matches_finite_differences_of_clarabel():
    rng = np.random.default_rng(7)
    problems = [_problem(rng) for _ in range(3)]
    data, result = _batch(problems, [int(Status.SOLVED)] * 3)
    v = rng.standard_normal(result.x.shape)
    grads = qp_vjp(data, result, v)
    assert np.all(grads.ok)
    for i, d in enumerate(problems):
        for name in NAMES:
            direction = rng.standard_normal(d[name].shape)
            if name == "P":
                direction = direction + direction.T
            plus = dict(d, **{name: d[name] + STEP * direction})
            minus = dict(d, **{name: d[name] - STEP * direction})
            fd = v[i] @ (_clarabel(plus)[0] - _clarabel(minus)[0]) / (2 * STEP)
            analytic = float(np.sum(np.asarray(getattr(grads, name))[i] * direction))
            assert abs(analytic - fd) <= 1e-5 * max(1.0, abs(fd)), (i, name, analytic, fd)


def test_failed_element_is_zero_and_the_others_match_the_all_solved_path():
    rng = np.random.default_rng(8)
    problems = [_problem(rng) for _ in range(3)]
    data, result = _batch(problems, [int(Status.SOLVED)] * 3)
    v = rng.standard_normal(result.x.shape)
    every = qp_vjp(data, result, v)
    failed = QPResult(**{**vars(result), "status": np.array([int(Status.SOLVED), int(Status.MAX_ITER), 0])})
    some = qp_vjp(data, failed, v)
    assert list(some.ok) == [True, False, True]
    for name in NAMES:
        g_all, g_some = np.asarray(getattr(every, name)), np.asarray(getattr(some, name))
        assert np.all(g_some[1] == 0.0)
        np.testing.assert_allclose(g_some[[0, 2]], g_all[[0, 2]], rtol=1e-12, atol=1e-12)
