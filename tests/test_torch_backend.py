"""The ``torch`` backend: qpdsl's batched dense proximal ALM, checked against proxsuite and Clarabel."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from qpdsl.testing import random_feasible_qps

torch = pytest.importorskip("torch")
proxsuite = pytest.importorskip("proxsuite")

from qpdsl.backends.torch_backend import TorchBackend, solve_raw  # noqa: E402
from qpdsl.errors import ParameterError  # noqa: E402
from qpdsl.qp import QPData, Settings, Status, WarmStart  # noqa: E402

BACKEND = TorchBackend()


def to_data(arrays: list[np.ndarray], dtype: torch.dtype = torch.float64) -> QPData:
    return QPData(*[torch.as_tensor(a, dtype=dtype) for a in arrays])


def proxsuite_solve(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Solutions and objectives from proxsuite dense, one element at a time."""
    P, q, A, b, C, l, u = arrays
    xs, objs = [], []
    for i in range(q.shape[0]):
        qp = proxsuite.proxqp.dense.QP(q.shape[1], b.shape[1], l.shape[1])
        qp.settings.eps_abs, qp.settings.eps_rel = 1e-10, 0.0
        qp.init(P[i], q[i], A[i], b[i], C[i], np.clip(l[i], -1e20, 1e20), np.clip(u[i], -1e20, 1e20))
        qp.solve()
        assert qp.results.info.status == proxsuite.proxqp.QPSolverOutput.PROXQP_SOLVED
        x = qp.results.x
        xs.append(x.copy())
        objs.append(0.5 * x @ P[i] @ x + q[i] @ x)
    return np.array(xs), np.array(objs)


def clarabel_objective(arrays: list[np.ndarray], i: int) -> float:
    cp = pytest.importorskip("cvxpy")
    P, q, A, b, C, l, u = (a[i] for a in arrays)
    x = cp.Variable(q.shape[0])
    cons = [A @ x == b] if b.size else []
    fin_u, fin_l = np.isfinite(u), np.isfinite(l)
    if fin_u.any():
        cons.append(C[fin_u] @ x <= u[fin_u])
    if fin_l.any():
        cons.append(C[fin_l] @ x >= l[fin_l])
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(P)) + q @ x), cons)
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    return float(prob.value)


def check_kkt(data: QPData, res, tol: float) -> None:
    """Stationarity with P x + q + A'y + C'z = 0, feasibility, signs and complementarity of z."""
    P, q, A, b, C, l, u = (np.asarray(getattr(data, k), dtype=np.float64) for k in "P q A b C l u".split())
    x, y, z = (res.x.double().numpy(), res.y.double().numpy(), res.z.double().numpy())
    scale = 1.0 + np.abs(x).max()
    stat = np.einsum("bij,bj->bi", P, x) + q + np.einsum("bji,bj->bi", A, y) + np.einsum("bji,bj->bi", C, z)
    assert np.abs(stat).max() <= tol * scale * 10
    if b.shape[1]:
        assert np.abs(np.einsum("bij,bj->bi", A, x) - b).max() <= tol * scale * 10
    cx = np.einsum("bij,bj->bi", C, x)
    assert (cx <= u + tol * scale * 10).all() and (cx >= l - tol * scale * 10).all()
    ztol = tol * 10 * (1 + np.abs(z).max(initial=0.0))
    upper, lower = z > ztol, z < -ztol
    assert np.allclose(cx[upper], u[upper], atol=tol * scale * 10)
    assert np.allclose(cx[lower], l[lower], atol=tol * scale * 10)


@pytest.mark.parametrize("n, p, m", [(8, 2, 8), (20, 5, 30)])
def test_random_qps_match_proxsuite(n: int, p: int, m: int) -> None:
    arrays = random_feasible_qps(16, n, p, m, seed=n)
    data = to_data(arrays)
    res = BACKEND.solve(data, Settings())
    assert all(s == Status.SOLVED for s in res.statuses())
    x_ref, obj_ref = proxsuite_solve(arrays)
    np.testing.assert_allclose(res.x.numpy(), x_ref, atol=1e-7)
    np.testing.assert_allclose(res.objective.numpy(), obj_ref, rtol=1e-9, atol=1e-8)
    assert res.prim_res.max() <= 1e-9 and res.dual_res.max() <= 1e-9
    check_kkt(data, res, 1e-9)


def test_lps_match_clarabel_objective() -> None:
    arrays = random_feasible_qps(6, 15, 3, 40, seed=3, lp=True)
    # Box the variables so every LP is bounded.
    box = np.broadcast_to(np.eye(15), (6, 15, 15))
    arrays[4] = np.concatenate([arrays[4], box], axis=1)
    arrays[5] = np.concatenate([arrays[5], -10 * np.ones((6, 15))], axis=1)
    arrays[6] = np.concatenate([arrays[6], 10 * np.ones((6, 15))], axis=1)
    data = to_data(arrays)
    res = BACKEND.solve(data, Settings())
    assert all(s == Status.SOLVED for s in res.statuses())
    check_kkt(data, res, 1e-9)
    for i in range(6):
        assert res.objective[i].item() == pytest.approx(clarabel_objective(arrays, i), rel=1e-7, abs=1e-7)


def test_float32_reaches_its_tolerance() -> None:
    arrays = random_feasible_qps(8, 10, 3, 12, seed=5)
    data = to_data(arrays, torch.float32)
    res = BACKEND.solve(data, Settings())
    assert res.x.dtype == torch.float32
    assert all(s == Status.SOLVED for s in res.statuses())
    # measured in float32 on the user's data: within 1e-5 or ten roundoffs of the terms (|P x| up
    # to about 20 here), plus the rounding of the measurement itself
    assert res.prim_res.max() <= 5e-5 and res.dual_res.max() <= 5e-5
    x_ref, _ = proxsuite_solve(arrays)
    np.testing.assert_allclose(res.x.double().numpy(), x_ref, atol=1e-4)


def test_float32_stops_at_the_rounding_level_of_larger_problems() -> None:
    """At n = 50 (|P| up to about 200) the float32 dual residual cannot get below 1e-5: its terms'
    rounding is larger. The solver stops at that level, as verification allows, instead of
    running to max_iter; x is as close to the float64 solution as float32 arithmetic gets."""
    arrays = [a.astype(np.float32) for a in random_feasible_qps(4, 50, 10, 50, seed=0)]
    res = BACKEND.solve(to_data(arrays, torch.float32), Settings())
    assert [s.label for s in res.statuses()] == ["solved"] * 4
    assert res.iterations.max() < 100
    x_ref, _ = proxsuite_solve([a.astype(np.float64) for a in arrays])
    np.testing.assert_allclose(res.x.double().numpy(), x_ref, atol=1e-3)


def test_infinite_bounds_and_one_sided_rows() -> None:
    arrays = random_feasible_qps(8, 12, 2, 20, seed=7)
    rng = np.random.default_rng(0)
    arrays[5][rng.uniform(size=arrays[5].shape) < 0.4] = -np.inf
    arrays[6][rng.uniform(size=arrays[6].shape) < 0.4] = np.inf
    data = to_data(arrays)
    res = BACKEND.solve(data, Settings())
    assert all(s == Status.SOLVED for s in res.statuses())
    np.testing.assert_allclose(res.x.numpy(), proxsuite_solve(arrays)[0], atol=1e-7)
    check_kkt(data, res, 1e-9)
    assert (res.z.numpy()[np.isinf(arrays[6]) & np.isinf(arrays[5])] == 0).all()


@pytest.mark.parametrize("p, m", [(4, 0), (0, 10), (0, 0)])
def test_equality_only_inequality_only_unconstrained(p: int, m: int) -> None:
    arrays = random_feasible_qps(5, 10, p, m, seed=11)
    data = to_data(arrays)
    res = BACKEND.solve(data, Settings())
    assert all(s == Status.SOLVED for s in res.statuses())
    assert res.y.shape == (5, p) and res.z.shape == (5, m)
    np.testing.assert_allclose(res.x.numpy(), proxsuite_solve(arrays)[0], atol=1e-7)
    check_kkt(data, res, 1e-9)


def test_degenerate_duplicated_rows_and_rank_deficient_A() -> None:
    P, q, A, b, C, l, u = random_feasible_qps(6, 12, 3, 10, seed=13)
    A = np.concatenate([A, A[:, :1], A[:, :1] + A[:, 1:2]], axis=1)  # repeated and dependent rows
    b = np.concatenate([b, b[:, :1], b[:, :1] + b[:, 1:2]], axis=1)
    C = np.concatenate([C, C[:, :3]], axis=1)
    l, u = np.concatenate([l, l[:, :3]], axis=1), np.concatenate([u, u[:, :3]], axis=1)
    arrays = [P, q, A, b, C, l, u]
    data = to_data(arrays)
    res = BACKEND.solve(data, Settings())
    assert all(s == Status.SOLVED for s in res.statuses())
    check_kkt(data, res, 1e-9)
    for i in range(6):
        assert res.objective[i].item() == pytest.approx(clarabel_objective(arrays, i), rel=1e-7, abs=1e-7)


def test_unbounded_lp_is_dual_infeasible() -> None:
    # min -x1 - x2  s.t.  x1 - x2 = 0, x >= 0: unbounded along (1, 1).
    data = QPData(
        P=torch.zeros(1, 2, 2, dtype=torch.float64),
        q=torch.tensor([[-1.0, -1.0]], dtype=torch.float64),
        A=torch.tensor([[[1.0, -1.0]]], dtype=torch.float64),
        b=torch.zeros(1, 1, dtype=torch.float64),
        C=torch.eye(2, dtype=torch.float64)[None],
        l=torch.zeros(1, 2, dtype=torch.float64),
        u=torch.full((1, 2), float("inf"), dtype=torch.float64),
    )
    assert BACKEND.solve(data, Settings()).statuses() == [Status.DUAL_INFEASIBLE]


def worked_example(batch: int = 1) -> QPData:
    """min x²/2  s.t.  x = 5,  -3 <= x <= 3."""
    t = lambda v: torch.tensor(v, dtype=torch.float64).expand(batch, *np.shape(v)).clone()  # noqa: E731
    return QPData(P=t([[1.0]]), q=t([0.0]), A=t([[1.0]]), b=t([5.0]), C=t([[1.0]]), l=t([-3.0]), u=t([3.0]))


def test_crossed_bounds_element_is_set_aside() -> None:
    """``l > u`` is invalid data, not an infeasible QP: no iterations, NaN outputs, others intact."""
    arrays = random_feasible_qps(3, 10, 2, 10, seed=29)
    arrays[5][1, 4] = arrays[6][1, 4] + 1.0
    res = BACKEND.solve(to_data(arrays), Settings())
    assert res.statuses() == [Status.SOLVED, Status.NUMERICAL_ERROR, Status.SOLVED]
    assert torch.isnan(res.x[1]).all() and int(res.iterations[1]) == 0
    good = [0, 2]
    np.testing.assert_allclose(res.x[good].numpy(), proxsuite_solve([a[good] for a in arrays])[0], atol=1e-7)


def test_infeasible_raw_solve_reports_primal_infeasible() -> None:
    res = solve_raw(worked_example(), Settings())
    assert res.statuses() == [Status.PRIMAL_INFEASIBLE]


def test_worked_infeasible_example_gives_closest_feasible_qp() -> None:
    res = BACKEND.solve(worked_example(), Settings())
    assert res.statuses() == [Status.SOLVED_CLOSEST_FEASIBLE]
    assert res.x.item() == pytest.approx(4.0, abs=1e-7)
    assert res.shift_eq.item() == pytest.approx(-1.0, abs=1e-7)
    assert res.shift_in.item() == pytest.approx(1.0, abs=1e-7)


def test_nan_element_is_isolated() -> None:
    arrays = random_feasible_qps(4, 10, 2, 10, seed=17)
    arrays[1][2, 3] = np.nan
    arrays[4][1, 0, 0] = np.inf
    res = BACKEND.solve(to_data(arrays), Settings())
    statuses = res.statuses()
    assert statuses[1] == statuses[2] == Status.NUMERICAL_ERROR
    assert statuses[0] == statuses[3] == Status.SOLVED
    good = [0, 3]
    assert (
        torch.isfinite(res.x[good]).all()
        and torch.isfinite(res.y[good]).all()
        and torch.isfinite(res.z[good]).all()
    )
    ref = proxsuite_solve([a[good] for a in arrays])[0]
    np.testing.assert_allclose(res.x[good].numpy(), ref, atol=1e-7)


def test_warm_start_reduces_iterations() -> None:
    arrays = random_feasible_qps(8, 20, 4, 25, seed=19)
    data = to_data(arrays)
    cold = BACKEND.solve(data, Settings())
    perturbed = to_data([arrays[0], arrays[1] + 1e-3, *arrays[2:]])
    cold_p = BACKEND.solve(perturbed, Settings())
    warm_p = BACKEND.solve(perturbed, Settings(), WarmStart(cold.x, cold.y, cold.z))
    assert all(s == Status.SOLVED for s in warm_p.statuses())
    np.testing.assert_allclose(warm_p.x.numpy(), cold_p.x.numpy(), atol=1e-7)
    assert warm_p.iterations.sum() < cold_p.iterations.sum()
    exact = BACKEND.solve(data, Settings(), WarmStart(cold.x, cold.y, cold.z))
    assert (exact.iterations == 0).all()


def test_max_iter_status() -> None:
    res = BACKEND.solve(to_data(random_feasible_qps(3, 20, 4, 30, seed=23)), Settings(max_iter=1))
    assert all(s == Status.MAX_ITER for s in res.statuses())


def test_rejects_non_torch_inputs_and_bad_shapes() -> None:
    arrays = random_feasible_qps(2, 4, 1, 3)
    with pytest.raises(ParameterError, match="torch tensors"):
        BACKEND.solve(QPData(*arrays), Settings())
    bad = to_data(arrays)
    with pytest.raises(ParameterError, match="shape"):
        BACKEND.solve(QPData(bad.P[:, :3], *list(bad.__dict__.values())[1:7]), Settings())
    with pytest.raises(ParameterError, match="b has shape"):  # a batch size that disagrees with q's
        BACKEND.solve(QPData(*bad.arrays()[:3], bad.b[:1], *bad.arrays()[4:]), Settings())
    with pytest.raises(ParameterError, match="unknown option"):
        BACKEND.solve(bad, Settings(options={"not_an_option": 1}))


def test_registered_capabilities() -> None:
    caps = BACKEND.capabilities
    assert caps.framework == "torch" and caps.installed and caps.warm_start
    assert set(caps.dtypes) == {"float32", "float64"} and "cuda" in caps.devices


def _merit_along(a: float, quad, lin, w, v, l, u, mu) -> float:
    """The line-search merit (up to a constant) at step ``a``, for one element.

    ``lin`` is the derivative of the whole merit at 0, so the smooth part's slope is ``lin``
    less the derivative of the penalty term there.
    """

    def viol(a: float) -> np.ndarray:
        s = w + a * v
        return np.maximum(s - u, 0.0) + np.minimum(s - l, 0.0)

    smooth_lin = lin - float(np.sum(viol(0.0) * v)) / mu
    return 0.5 * quad * a * a + smooth_lin * a + 0.5 * float(np.sum(viol(a) ** 2)) / mu


@pytest.mark.parametrize("pairwise", [False, True], ids=["sorted kinks", "pairwise kinks"])
def test_exact_line_search_minimises_the_piecewise_quadratic_merit(pairwise: bool) -> None:
    """Both ways of locating the root (sorting the kinks; comparing all pairs, JAX's default)."""
    from qpdsl.backends.alm.linesearch import exact_step

    rng = np.random.default_rng(7)
    batch, m = 40, 12
    w, v = rng.standard_normal((batch, m)), rng.standard_normal((batch, m))
    l, u = -rng.uniform(size=(batch, m)), rng.uniform(size=(batch, m))
    u[0, :4], l[1, :4] = np.inf, -np.inf  # one-sided rows
    v[2, :3] = 0.0  # rows that do not move
    w[3, :3], v[3, :3] = u[3, :3], 1.0  # rows on a bound, entering
    w[4, :3], v[4, :3] = u[4, :3], -1.0  # rows on a bound, leaving
    w[6, :4], v[6, :4] = 2.0, -1.0  # tied kinks
    quad, mu = rng.uniform(0.1, 2.0, batch), rng.uniform(1e-3, 1.0, batch)
    lin = -rng.uniform(0.1, 3.0, batch)
    lin[5] = 1.0  # not a descent direction
    args = [torch.as_tensor(a) for a in (quad, lin, w, v, l, u, mu)]
    steps = exact_step(*args, pairwise=pairwise).numpy()
    assert steps[5] == 0.0
    other = exact_step(*args, pairwise=not pairwise).numpy()
    np.testing.assert_allclose(steps, other, rtol=1e-12, atol=1e-14)
    for i in range(batch):
        element = (quad[i], lin[i], w[i], v[i], l[i], u[i], mu[i])
        at = _merit_along(steps[i], *element)
        grid = np.linspace(0.0, 2.0 * steps[i] + 1.0, 2001)
        best = min(_merit_along(a, *element) for a in grid)
        assert at <= best + 1e-12 * (1 + abs(best))
        h = 1e-7 * (1 + steps[i])
        assert at <= _merit_along(steps[i] + h, *element) + 1e-13
        assert steps[i] == 0 or at <= _merit_along(steps[i] - h, *element) + 1e-13


def test_batch_solve_matches_one_element_at_a_time() -> None:
    """Compaction, partial refactorisation and low-rank factor updates do not change the answer."""
    arrays = random_feasible_qps(12, 30, 6, 40, seed=11)
    batched = solve_raw(to_data(arrays), Settings())
    assert all(s == Status.SOLVED for s in batched.statuses())
    for i in range(0, 12, 3):
        single = solve_raw(to_data([a[i : i + 1] for a in arrays]), Settings())
        np.testing.assert_allclose(batched.x[i : i + 1].numpy(), single.x.numpy(), atol=1e-8)
        np.testing.assert_allclose(batched.z[i : i + 1].numpy(), single.z.numpy(), atol=1e-7)
    check_kkt(to_data(arrays), batched, 1e-9)


def _gap(arrays: list[np.ndarray], res) -> np.ndarray:  # noqa: ANN001
    """|x'Px + q'x + b'y + u'[z]_+ + l'[z]_-| per element (qpbenchmark's duality gap)."""
    P, q, A, b, C, l, u = arrays
    x, y, z = (np.asarray(a, dtype=np.float64) for a in (res.x, res.y, res.z))
    support = np.where(z > 0, u * z, l * z)
    quadratic = np.einsum("bi,bij,bj->b", x, P, x) + np.einsum("bi,bi->b", q, x)
    return np.abs(quadratic + (b * y).sum(-1) + support.sum(-1))


def test_solved_means_small_duality_gap_too() -> None:
    """Large x and multipliers: residuals of 1e-9 do not bound the gap, which is tested on its own."""
    arrays = random_feasible_qps(6, 20, 4, 25, seed=11)
    P, q, A, b, C, l, u = arrays
    arrays = [P, 1e4 * q, A, 1e3 * b, C, 1e3 * l, 1e3 * u]
    res = solve_raw(to_data(arrays), Settings(eps_abs=1e-7))
    assert (np.asarray(res.status) == int(Status.SOLVED)).all()
    assert _gap(arrays, res).max() <= 1e-7 * 10  # our gap is computed in scaled space: allow rounding


def test_failed_factorisation_backs_off_the_penalties(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Cholesky failure (ill-conditioned Hessian at small mu) raises that element's mu floor and
    the solve goes on; only that element is affected and it still converges."""
    from qpdsl.backends.alm import core

    arrays = random_feasible_qps(3, 10, 2, 12, seed=5)
    reference = solve_raw(to_data(arrays), Settings(eps_abs=1e-9))
    real = core.newton
    calls = {"n": 0}

    def failing_once(data, st, ev, cfg, factorize=core.factorize_all, solve=None):  # noqa: ANN001, ANN202
        def factorize_and_fail(data, st, active, need):  # noqa: ANN001, ANN202
            L, ok = factorize(data, st, active, need)
            # Fail element 1 once, after its penalties went below their initial values.
            if not calls["n"] and ok.shape[0] == 3 and bool(need[1]) and float(st.mu_in[1]) < 0.5 * cfg.mu_in:
                calls["n"] += 1
                ok = ok.clone()
                ok[1] = False
            return L, ok

        kwargs = {} if solve is None else {"solve": solve}
        return real(data, st, ev, cfg, factorize_and_fail, **kwargs)

    monkeypatch.setattr(core, "newton", failing_once)
    res = solve_raw(to_data(arrays), Settings(eps_abs=1e-9))
    assert calls["n"] == 1
    assert (np.asarray(res.status) == int(Status.SOLVED)).all()
    np.testing.assert_allclose(res.x.numpy(), reference.x.numpy(), atol=1e-7)


def test_gpu_loop_matches_the_cpu_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver's GPU branch (full steps, a look at the flags every CHECK_EVERY iterations, no
    compaction), run here on the CPU: the same statuses and solutions as the compacting CPU loop,
    on a batch mixing solved, infeasible, unbounded, NaN and max_iter elements."""
    from qpdsl.backends import torch_backend

    P, q, A, b, C, l, u = random_feasible_qps(6, 12, 3, 15, seed=29)
    A[1, 1], b[1, 1] = A[1, 0], b[1, 0] + 1.0  # primal infeasible: one row, two right-hand sides
    P[2], A[2], b[2], l[2], u[2] = 0.0, 0.0, 0.0, -np.inf, np.inf  # an unconstrained LP: unbounded
    q[2] = 1.0
    P[3, 0, 0] = np.nan
    data = to_data([P, q, A, b, C, l, u])
    cpu, cpu_short = solve_raw(data, Settings()), solve_raw(data, Settings(max_iter=3))
    monkeypatch.setattr(torch_backend, "compacts", lambda device: False)
    gpu, gpu_short = solve_raw(data, Settings()), solve_raw(data, Settings(max_iter=3))
    expected = [Status.SOLVED, Status.PRIMAL_INFEASIBLE, Status.DUAL_INFEASIBLE, Status.NUMERICAL_ERROR]
    assert cpu.statuses() == gpu.statuses() == expected + [Status.SOLVED] * 2
    assert gpu_short.statuses() == cpu_short.statuses()
    assert Status.MAX_ITER in gpu_short.statuses()
    solved = [0, 4, 5]
    np.testing.assert_allclose(gpu.x[solved].numpy(), cpu.x[solved].numpy(), atol=1e-7)
    check_kkt(to_data([a[solved] for a in (P, q, A, b, C, l, u)]), _select(gpu, solved), 1e-8)


def _select(res, index: list[int]):  # noqa: ANN001, ANN202
    """The elements ``index`` of a result (x, y, z and statuses only)."""
    from types import SimpleNamespace

    return SimpleNamespace(x=res.x[index], y=res.y[index], z=res.z[index], status=res.status[index])


def test_gpu_loop_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU branch of the driver in float32 reaches float32's tolerance, like the CPU loop."""
    from qpdsl.backends import torch_backend

    arrays = random_feasible_qps(8, 10, 3, 12, seed=5)
    data = to_data(arrays, torch.float32)
    monkeypatch.setattr(torch_backend, "compacts", lambda device: False)
    res = BACKEND.solve(data, Settings())
    assert res.x.dtype == torch.float32
    assert all(s == Status.SOLVED for s in res.statuses())
    # measured in float32 on the user's data: within 1e-5 plus ten roundoffs of the terms (verified)
    assert res.prim_res.max() <= 2e-5 and res.dual_res.max() <= 2e-5
    np.testing.assert_allclose(res.x.double().numpy(), proxsuite_solve(arrays)[0], atol=1e-3)


def test_float32_products_in_full_precision_while_qpdsl_computes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training code often allows TF32 products (``set_float32_matmul_precision("high")``); on
    a GPU their 1e-3 relative error stops every float32 solve at max_iter (JAX's default did
    exactly that on an H200) and perturbs the QP data computed from the parameters. The solve,
    the parameter maps and the backward run with full-precision products; the user's setting is
    restored afterwards, with or without autograd."""
    import qpdsl as qd
    import qpdsl._layers as layers
    import qpdsl.torch as qt
    from qpdsl.backends.alm import core

    seen: dict[str, set[str]] = {"solve": set(), "maps": set(), "backward": set()}

    def spy(name: str, fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            seen[name].add(torch.get_float32_matmul_precision())
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(core, "newton", spy("solve", core.newton))
    monkeypatch.setattr(layers, "dense_data", spy("maps", layers.dense_data))
    import qpdsl.diff as diff

    monkeypatch.setattr(diff, "qp_vjp", spy("backward", diff.qp_vjp))
    x = qd.Variable(3)
    c = qd.Parameter(3)
    layer = qd.Problem(qd.Minimize(qd.sum_squares(x - c)), [qd.sum(x) == 1, x >= 0]).to_torch(backend="torch")
    c_t = torch.tensor([0.3, -0.2, 0.9], dtype=torch.float32, requires_grad=True)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        (sol,) = layer(c_t)
        sol.sum().backward()
        with torch.no_grad():  # the solve without autograd, through solve_qp
            qt.solve_qp(
                torch.eye(2),
                torch.ones(2),
                None,
                None,
                torch.eye(2),
                -torch.ones(2),
                torch.ones(2),
                backend="torch",
            )
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(previous)
    assert seen == {"solve": {"highest"}, "maps": {"highest"}, "backward": {"highest"}}
