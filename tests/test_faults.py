"""Numerical faults: float32 on badly scaled problems, and diverging batch elements.

* float32, badly scaled: each element is either solved correctly (checked in float64 against
  ProxQP) or reported ``max_iter`` / ``numerical_error``; never ``solved`` with a wrong point.
* One element that diverges (unbounded, huge or overflowing data) never puts NaN or changes
  anything in the other elements of its batch, on the batched backends (torch, jax) and
  through the torch layer (values and gradients).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest

import qpdsl as qd
from qpdsl.backends import get_backend
from qpdsl.qp import QPData, Settings, Status
from qpdsl.testing import random_feasible_qps

torch = pytest.importorskip("torch")

AVAILABLE = set(qd.available_backends())
BATCHED = [b for b in ("torch", "jax") if b in AVAILABLE]
NAMES = ("P", "q", "A", "b", "C", "l", "u")
COUNTS: dict[str, Counter[str]] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request: pytest.FixtureRequest, one_torch_thread: None) -> Any:
    yield
    if COUNTS:
        counts = {k: dict(v) for k, v in COUNTS.items()}
        plugins = request.config.pluginmanager
        reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"\nfault outcomes: {counts}")


def to_framework(arrays: list[np.ndarray], backend: str, dtype: str) -> QPData:
    if backend == "jax":
        jax = pytest.importorskip("jax")
        jax.config.update("jax_enable_x64", True)
        return QPData(*(jax.numpy.asarray(np.asarray(a, dtype=dtype)) for a in arrays))
    return QPData(*(torch.as_tensor(np.asarray(a, dtype=dtype)) for a in arrays))


def host(a: Any) -> np.ndarray:
    return np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float64)


# ---------------------------------------------------------------- float32 on badly scaled problems


def badly_scaled(batch: int, seed: int, decades: float) -> list[np.ndarray]:
    """Random feasible QPs with rows, variables and objective scaled by 10**U(-decades, decades)."""
    P, q, A, b, C, l, u = random_feasible_qps(batch, 6, 2, 8, seed=seed)
    rng = np.random.default_rng(seed)
    rows = 10.0 ** rng.uniform(-decades, decades, (batch, 10))
    cols = 10.0 ** rng.uniform(-decades, decades, (batch, 6))
    obj = 10.0 ** rng.uniform(-decades, decades, (batch, 1))
    P, q = obj[:, :, None] * cols[:, :, None] * P * cols[:, None, :], obj * cols * q
    A, b = rows[:, :2, None] * A * cols[:, None, :], rows[:, :2] * b
    C, l, u = rows[:, 2:, None] * C * cols[:, None, :], rows[:, 2:] * l, rows[:, 2:] * u
    return [P, q, A, b, C, l, u]


ULPS = 100  # float32 roundings allowed per residual term (the ALM updates its products incrementally)


@pytest.mark.parametrize("backend", BATCHED)
def test_float32_badly_scaled_is_solved_or_declined(backend: str) -> None:
    """32 QPs scaled over 8 decades, solved in float32: every ``solved`` element satisfies the
    float32 tolerance in float64 arithmetic (1e-5 plus ``ULPS`` float32 roundings of the terms of
    each residual: on a row of size 100 the tolerance 1e-5 is below float32's resolution) and
    matches ProxQP's float64 objective; the others say ``max_iter`` or ``numerical_error``."""
    d = [np.asarray(a, dtype=np.float32).astype(np.float64) for a in badly_scaled(32, 1, 4.0)]
    reference = get_backend("proxsuite").solve(QPData(*d), Settings(eps_abs=1e-9))
    assert all(s == Status.SOLVED for s in reference.statuses())
    res = get_backend(backend).solve(to_framework(d, backend, "float32"), Settings())
    P, q, A, b, C, l, u = d
    x, y, z = host(res.x), host(res.y), host(res.z)
    counts = COUNTS.setdefault(f"float32 badly scaled, {backend}", Counter())
    ulps = ULPS * float(np.finfo(np.float32).eps)
    for i, status in enumerate(res.statuses()):
        counts[status.label] += 1
        if not status.ok:
            assert status in (Status.MAX_ITER, Status.NUMERICAL_ERROR, Status.INACCURATE), status
            continue
        assert status == Status.SOLVED  # the problems are feasible
        assert np.isfinite(x[i]).all() and np.isfinite(y[i]).all() and np.isfinite(z[i]).all()
        ax, cx = A[i] @ x[i], C[i] @ x[i]
        rounding_eq = ulps * (np.abs(A[i]) @ np.abs(x[i]) + np.abs(b[i]))
        rounding_in = ulps * (np.abs(C[i]) @ np.abs(x[i]) + np.abs(np.clip(cx, l[i], u[i])))
        assert np.all(np.abs(ax - b[i]) <= 1e-5 + rounding_eq), i
        assert np.all(np.abs(cx - np.clip(cx, l[i], u[i])) <= 1e-5 + rounding_in), i
        grad = P[i] @ x[i] + q[i] + A[i].T @ y[i] + C[i].T @ z[i]
        terms = np.abs(P[i]) @ np.abs(x[i]) + np.abs(q[i]) + np.abs(A[i].T) @ np.abs(y[i])
        terms = terms + np.abs(C[i].T) @ np.abs(z[i])
        assert np.all(np.abs(grad) <= 1e-5 + ulps * terms), i

        def f(v: np.ndarray, i: int = i) -> float:
            return float(0.5 * v @ P[i] @ v + q[i] @ v)

        f_ref = f(host(reference.x)[i])
        scale = float(np.abs(P[i]).max() + np.abs(q[i]).max())
        assert abs(f(x[i]) - f_ref) <= 1e-4 * (abs(f_ref) + scale), (i, f(x[i]), f_ref)
    assert counts["solved"] > 0  # the suite measures something


# ---------------------------------------------------------------- a diverging element


def diverging_batch(kind: str, dtype: str) -> tuple[list[np.ndarray], int]:
    """Four small feasible QPs, element 1 replaced by a diverging one; returns (data, bad index)."""
    P, q, A, b, C, l, u = (np.array(a) for a in random_feasible_qps(4, 4, 1, 4, seed=3))
    big = 1e30 if dtype == "float32" else 1e300
    if kind == "unbounded":  # an LP unbounded below along -q
        P[1], A[1], b[1], C[1], l[1], u[1], q[1] = 0.0, 0.0, 0.0, 0.0, -1.0, 1.0, 1.0
    elif kind == "huge":  # entries near the largest float: products overflow to inf
        q[1] *= big
        P[1] *= big
    elif kind == "tiny_curvature":  # strictly convex, but its minimiser lies beyond the float range
        P[1], A[1], b[1], C[1], l[1], u[1] = (
            np.eye(4) * (1e-30 if dtype == "float32" else 1e-300),
            0,
            0,
            0,
            -1,
            1,
        )
        q[1] = -1.0
    return [P, q, A, b, C, l, u], 1


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["unbounded", "huge", "tiny_curvature"])
@pytest.mark.parametrize("backend", BATCHED)
def test_diverging_element_leaves_others_untouched(backend: str, kind: str, dtype: str) -> None:
    """The other elements are bitwise what the same batch gives with element 1 replaced by a copy
    of element 0 (the same compiled shapes), finite and solved; element 1 is not ``solved``
    unless its point is finite."""
    data, bad = diverging_batch(kind, dtype)
    clean = [a.copy() for a in data]
    for a, c in zip(clean, random_feasible_qps(4, 4, 1, 4, seed=3), strict=True):
        a[bad] = c[bad]
    settings = Settings(closest_feasible=backend != "jax")  # jax: no extra compiles of that stage
    res = get_backend(backend).solve(to_framework(data, backend, dtype), settings)
    ref = get_backend(backend).solve(to_framework(clean, backend, dtype), settings)
    statuses = res.statuses()
    COUNTS.setdefault(f"diverging element ({kind}, {dtype}), {backend}", Counter())[statuses[bad].label] += 1
    good = [i for i in range(4) if i != bad]
    for field in ("x", "y", "z", "shift_eq", "shift_in", "status"):
        got, want = host(getattr(res, field))[good], host(getattr(ref, field))[good]
        assert np.all(np.isfinite(got)), (field, got)
        np.testing.assert_array_equal(got, want, err_msg=field)
    assert all(statuses[i] == Status.SOLVED for i in good)
    if statuses[bad].ok:
        assert np.isfinite(host(res.x)[bad]).all()


@pytest.mark.parametrize("backend", [b for b in ("torch", "proxsuite") if b in AVAILABLE])
def test_torch_layer_diverging_element_gradients(backend: str) -> None:
    """Through the torch layer with ``on_failure="nan"``: the unbounded element's rows are NaN and
    its gradients zero; the others' values and gradients equal those of the clean batch."""
    from qpdsl.torch import solve_qp

    data, bad = diverging_batch("unbounded", "float64")
    clean = [a.copy() for a in data]
    for a, c in zip(clean, random_feasible_qps(4, 4, 1, 4, seed=3), strict=True):
        a[bad] = c[bad]
    good = [0, 2, 3]
    outs = []
    for arrays in (data, clean):
        args = [torch.tensor(a, requires_grad=True) for a in arrays]
        x = solve_qp(*args, backend=backend, on_failure="nan")[0]
        x[good].sum().backward()
        outs.append((x.detach(), [a.grad for a in args]))
    (x, grads), (x_ref, grads_ref) = outs
    assert torch.isnan(x[bad]).all()
    assert torch.equal(x[good], x_ref[good])
    for g, r in zip(grads, grads_ref, strict=True):
        assert torch.isfinite(g).all() and torch.equal(g[bad], torch.zeros_like(g[bad]))
        torch.testing.assert_close(g[good], r[good], rtol=0, atol=1e-12)


# ---------------------------------------------------------------- regressions found by the property suite


@pytest.mark.parametrize("backend", BATCHED)
def test_alm_bounded_lp_with_a_small_row_is_not_unbounded(backend: str) -> None:
    """min t s.t. -1.3 x - t <= 0.9, |4.5e-5 x + 5.4e-5| <= w, w <= 1.16e-4: bounded (x <= 1.39).

    The ALM's dual-infeasibility certificate once compared C dx with eps |dx| without the rows'
    norms and called this LP unbounded (x ~ 4e6); fixed in alm/core.py."""
    a = 4.463746e-05
    C = np.array([[-1.3, -1.0, 0.0], [a, 0.0, -1.0], [-a, 0.0, -1.0], [0.0, 0.0, 1.0]])
    u = np.array([0.9, -5.4e-5, 5.4e-5, 1.16e-4])
    data = [
        np.zeros((1, 3, 3)),
        np.array([[0.0, 1.0, 0.0]]),
        np.zeros((1, 0, 3)),
        np.zeros((1, 0)),
        C[None],
        np.full((1, 4), -np.inf),
        u[None],
    ]
    ref = get_backend("proxsuite").solve(QPData(*data), Settings())
    assert ref.statuses() == [Status.SOLVED]
    res = get_backend(backend).solve(to_framework(data, backend, "float64"), Settings())
    assert res.statuses() == [Status.SOLVED]
    np.testing.assert_allclose(host(res.x)[0, :2], host(ref.x)[0, :2], atol=1e-5)


def test_float32_l1_model_with_auxiliary_variables_solves_on_the_alm_backends() -> None:
    """The README's model (least squares + lam * norm1, box, sum) in float32 through the shared
    ALM core: with rho = 1e-5 its first factorisation failed (``numerical_error`` at iteration 0
    on ``torch`` and ``jax``: |H| near 1e2, float32 rounding 1e-5 of it). Checked against cvxpy."""
    torch = pytest.importorskip("torch")
    cp = pytest.importorskip("cvxpy")
    n, m = 20, 10
    rng = np.random.default_rng(0)
    A0, b0 = rng.standard_normal((m, n)).astype(np.float32), np.ones(m, np.float32)
    x = qd.Variable(n, name="x")
    A, b = qd.Parameter((m, n), name="A"), qd.Parameter(m, name="b")
    lam = qd.Parameter(nonneg=True, name="lam")
    prob = qd.Problem(
        qd.Minimize(qd.sum_squares(A @ x - b) + lam * qd.norm1(x)), [x >= -1, x <= 1, qd.sum(x) == 0]
    )
    xc = cp.Variable(n)
    cp.Problem(
        cp.Minimize(cp.sum_squares(A0.astype(float) @ xc - 1) + 0.1 * cp.norm1(xc)),
        [xc >= -1, xc <= 1, cp.sum(xc) == 0],
    ).solve(solver=cp.CLARABEL)
    layer = prob.to_torch(parameters=[A, b, lam], variables=[x], backend="torch")
    (xt,) = layer(torch.tensor(A0), torch.tensor(b0), torch.tensor(0.1))
    assert layer.last_status.tolist() == [int(qd.Status.SOLVED)]
    np.testing.assert_allclose(xt.numpy(), xc.value, atol=1e-3)
