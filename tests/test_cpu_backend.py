"""The ``cpu`` backend (numba kernels) against cvxpy + Clarabel, and its threading and caching."""

from __future__ import annotations

import importlib.metadata
import multiprocessing
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numba")
cp = pytest.importorskip("cvxpy")

from qpdsl import backends  # noqa: E402
from qpdsl.backends.cpu_alm import cache, runtime  # noqa: E402
from qpdsl.backends.cpu_backend import CpuBackend, solve_raw  # noqa: E402
from qpdsl.errors import ParameterError  # noqa: E402
from qpdsl.qp import QPData, Settings, Status, WarmStart  # noqa: E402

FIELDS = ("P", "q", "A", "b", "C", "l", "u")
BACKEND = CpuBackend()


def random_qp(rng, batch=4, n=10, p=3, m=12, lp=False, infinite=True, degenerate=False):
    """Random feasible QPs (LPs get a box); some infinite and two-sided rows; optionally
    rank-deficient equality rows (a duplicate and a sum of two rows)."""
    if lp:
        P = np.zeros((batch, n, n))
    else:
        M = rng.standard_normal((batch, n, n))
        P = M @ M.transpose(0, 2, 1) + 0.1 * np.eye(n)
    q = rng.standard_normal((batch, n))
    A = rng.standard_normal((batch, p, n))
    if degenerate and p >= 4:
        A[:, 2] = A[:, 0]
        A[:, 3] = A[:, 0] + A[:, 1]
    x0 = rng.standard_normal((batch, n))
    b = np.einsum("bij,bj->bi", A, x0)
    C = rng.standard_normal((batch, m, n))
    cx = np.einsum("bij,bj->bi", C, x0)
    low, up = cx - rng.uniform(0.1, 1, (batch, m)), cx + rng.uniform(0.1, 1, (batch, m))
    if infinite and m >= 5:
        low[:, :2] = -np.inf
        up[:, 2:4] = 1e20 * rng.uniform(1, 2)  # |bound| >= 1e20 is infinite
        low[:, 4], up[:, 4] = -np.inf, np.inf
    if lp:
        C = np.concatenate([C, np.broadcast_to(np.eye(n), (batch, n, n))], axis=1)
        low = np.concatenate([low, x0 - 3], axis=1)
        up = np.concatenate([up, x0 + 3], axis=1)
    return QPData(P=P, q=q, A=A, b=b, C=C, l=low, u=up, r=rng.standard_normal(batch))


def element(d: QPData, i: int) -> list[np.ndarray]:
    return [np.asarray(getattr(d, f))[i] for f in FIELDS]


def stack(elements: list[list[np.ndarray]]) -> QPData:
    return QPData(*(np.stack([e[k] for e in elements]) for k in range(7)))


def clarabel(P, q, A, b, C, low, up):
    """x, y, z (qpdsl's sign convention ``Px + q + A'y + C'z = 0``) and the objective."""
    n = q.shape[0]
    x = cp.Variable(n)
    fu, fl = up < 1e20, low > -1e20
    cons = [A @ x == b] if b.size else []
    upper = C[fu] @ x <= up[fu] if fu.any() else None
    lower = C[fl] @ x >= low[fl] if fl.any() else None
    cons += [c for c in (upper, lower) if c is not None]
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(P)) + q @ x), cons)
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    assert prob.status == cp.OPTIMAL
    y = cons[0].dual_value if b.size else np.zeros(0)
    z = np.zeros(low.shape[0])
    if upper is not None:
        z[fu] += upper.dual_value
    if lower is not None:
        z[fl] -= lower.dual_value
    return x.value, np.atleast_1d(y), z, prob.value


def kkt(e: list[np.ndarray], x, y, z):
    """Stationarity, primal and complementarity errors of ``(x, y, z)`` on the data ``e``."""
    P, q, A, b, C, low, up = (np.asarray(a, dtype=np.float64) for a in e)
    x, y, z = (np.asarray(a, dtype=np.float64) for a in (x, y, z))
    low, up = np.where(low <= -1e20, -np.inf, low), np.where(up >= 1e20, np.inf, up)
    cx = C @ x
    stat = np.abs(P @ x + q + A.T @ y + C.T @ z).max(initial=0)
    prim = np.abs(np.concatenate([A @ x - b, cx - np.clip(cx, low, up)])).max(initial=0)
    zu, zl = np.maximum(z, 0), np.maximum(-z, 0)
    comp = np.concatenate(
        [zu * np.where(np.isfinite(up), up - cx, 1), zl * np.where(np.isfinite(low), cx - low, 1)]
    )
    return stat, prim, np.abs(comp).max(initial=0)


def check_against_clarabel(d: QPData, res, duals: bool, xtol: float = 1e-6) -> None:
    assert res.statuses() == [Status.SOLVED] * d.batch_size
    for i in range(d.batch_size):
        e = element(d, i)
        x, y, z, obj = clarabel(*e)
        scale = max(1.0, np.abs(x).max())
        np.testing.assert_allclose(res.x[i], x, atol=xtol * scale, rtol=0)
        if duals:
            np.testing.assert_allclose(res.y[i], y, atol=1e-5 * max(1.0, np.abs(y).max(initial=0)), rtol=0)
            np.testing.assert_allclose(res.z[i], z, atol=1e-5 * max(1.0, np.abs(z).max(initial=0)), rtol=0)
        r = 0.0 if d.r is None else d.r[i]
        assert abs(res.objective[i] - (obj + r)) <= 1e-7 * max(1.0, abs(obj))
        # a point declared solved meets the tolerance on the original data
        assert max(kkt(e, res.x[i], res.y[i], res.z[i])[:2]) <= 1e-9 * 1.01
        assert res.prim_res[i] <= 1e-9 and res.dual_res[i] <= 1e-9


def test_registered_as_cpu_with_its_capabilities():
    backend = backends.get_backend("cpu")
    assert isinstance(backend, CpuBackend) and backend.name == "cpu"
    assert "cpu" not in backends._ALIASES  # no longer an alias of proxsuite
    caps = backends.available_backends()["cpu"]
    assert caps.framework == "numpy" and caps.devices == ("cpu",) and caps.dense and not caps.sparse
    assert set(caps.dtypes) == {"float32", "float64"} and caps.warm_start


@pytest.mark.parametrize("seed", range(4))
def test_strictly_convex_qps_match_clarabel_with_duals(seed):
    d = random_qp(np.random.default_rng(seed), batch=4, n=10 + 3 * seed, p=2 + seed, m=12 + 2 * seed)
    check_against_clarabel(d, BACKEND.solve(d, Settings()), duals=True)


@pytest.mark.parametrize("seed", range(3))
def test_lps_match_clarabel(seed):
    d = random_qp(np.random.default_rng(100 + seed), batch=3, n=8, p=2, m=6, lp=True)
    check_against_clarabel(d, BACKEND.solve(d, Settings()), duals=False)


def test_rank_deficient_equality_rows():
    d = random_qp(np.random.default_rng(200), batch=4, n=12, p=5, m=10, degenerate=True)
    res = BACKEND.solve(d, Settings())
    check_against_clarabel(d, res, duals=False)  # y is not unique
    np.testing.assert_allclose(res.z, np.stack([clarabel(*element(d, i))[2] for i in range(4)]), atol=1e-5)


@pytest.mark.parametrize("p, m", [(3, 0), (0, 12), (0, 0)])
def test_only_equalities_only_inequalities_or_none(p, m):
    d = random_qp(np.random.default_rng(300 + p + m), batch=3, n=9, p=max(p, 1), m=max(m, 6))
    d = replace(d, A=d.A[:, :p], b=d.b[:, :p], C=d.C[:, :m], l=d.l[:, :m], u=d.u[:, :m])
    res = BACKEND.solve(d, Settings())
    assert res.y.shape == (3, p) and res.z.shape == (3, m) and res.shift_in.shape == (3, m)
    check_against_clarabel(d, res, duals=True)
    if p == m == 0:
        np.testing.assert_allclose(res.x, -np.linalg.solve(d.P, d.q[..., None])[..., 0], atol=1e-8)


def test_two_sided_rows_active_on_either_side():
    """Every row two-sided and narrow (fewer rows than variables: still feasible), so that the
    solution sits on lower and upper bounds."""
    rng = np.random.default_rng(400)
    d = random_qp(rng, batch=4, n=10, p=0, m=8, infinite=False)
    mid = (d.l + d.u) / 2
    d = replace(d, q=10 * d.q, l=mid - 0.05, u=mid + 0.05)
    res = BACKEND.solve(d, Settings())
    check_against_clarabel(d, res, duals=True)
    assert (res.z > 1e-6).any() and (res.z < -1e-6).any()


def test_float32_to_its_tolerance():
    d64 = random_qp(np.random.default_rng(500), batch=4, n=12, p=3, m=14)
    d32 = d64.map_arrays(lambda a: a.astype(np.float32))
    res = BACKEND.solve(d32, Settings())
    assert res.x.dtype == res.y.dtype == res.objective.dtype == np.float32
    assert res.statuses() == [Status.SOLVED] * 4
    for i in range(4):
        e = element(d32, i)
        stat, prim, _ = kkt(e, res.x[i], res.y[i], res.z[i])
        assert stat <= 1e-4 and prim <= 1e-4  # 1e-5 before rounding x, y, z to float32
        x = clarabel(*(a.astype(np.float64) for a in e))[0]
        np.testing.assert_allclose(res.x[i], x, atol=1e-4 * max(1, np.abs(x).max()))
    # measured in float32 on the user's data: within 1e-5 plus ten roundoffs of the terms (verified)
    assert np.all(res.prim_res <= 2e-5) and np.all(res.dual_res <= 2e-5)
    loose = BACKEND.solve(d64, Settings())
    assert np.all(res.iterations <= loose.iterations)


def test_warm_start_from_the_solution_and_partial_guesses():
    d = random_qp(np.random.default_rng(600), batch=5, n=15, p=3, m=20)
    cold = BACKEND.solve(d, Settings())
    warm = BACKEND.solve(d, Settings(), WarmStart(cold.x, cold.y, cold.z))
    assert warm.statuses() == [Status.SOLVED] * 5
    assert np.all(warm.iterations <= 2) and np.all(cold.iterations >= 5)
    np.testing.assert_allclose(warm.x, cold.x, atol=1e-8)
    for guess in (WarmStart(x=cold.x + 0.3), WarmStart(y=cold.y), WarmStart(z=cold.z[0])):
        res = BACKEND.solve(d, Settings(), guess)
        assert res.statuses() == [Status.SOLVED] * 5
        np.testing.assert_allclose(res.x, cold.x, atol=1e-7)
    with pytest.raises(ParameterError, match="warm_start.x has shape"):
        BACKEND.solve(d, Settings(), WarmStart(x=np.zeros((5, 3))))


def test_infeasible_worked_example_goes_through_the_closest_feasible_stage():
    d = QPData(
        P=np.ones((1, 1, 1)),
        q=np.zeros((1, 1)),
        A=np.ones((1, 1, 1)),
        b=np.full((1, 1), 5.0),
        C=np.ones((1, 1, 1)),
        l=np.full((1, 1), -3.0),
        u=np.full((1, 1), 3.0),
    )
    raw = solve_raw(d, Settings())
    assert raw.statuses() in ([Status.PRIMAL_INFEASIBLE], [Status.MAX_ITER])
    res = BACKEND.solve(d, Settings())
    assert res.statuses() == [Status.SOLVED_CLOSEST_FEASIBLE]
    np.testing.assert_allclose(res.x, [[4.0]], atol=1e-7)
    np.testing.assert_allclose(res.shift_eq, [[-1.0]], atol=1e-7)
    np.testing.assert_allclose(res.shift_in, [[1.0]], atol=1e-7)
    np.testing.assert_allclose(res.objective, [8.0], atol=1e-6)
    off = BACKEND.solve(d, Settings(closest_feasible=False))
    assert off.statuses() == [Status.PRIMAL_INFEASIBLE]


def test_infeasible_random_elements_are_certified_quickly():
    rng = np.random.default_rng(700)
    d = random_qp(rng, batch=3, n=8, p=2, m=10)
    C, low, up = d.C.copy(), d.l.copy(), d.u.copy()
    C[:, 6] = C[:, 5]
    low[:, 6], up[:, 6] = d.u[:, 5] + 1, d.u[:, 5] + 1.5  # rows 5 and 6 ask for disjoint intervals
    # np.inf, not 1e20: the shared closest-feasible stage scales its zero-shift test by the finite bounds
    d = replace(d, C=C, l=low, u=np.where(up >= 1e20, np.inf, up))
    raw = solve_raw(d, Settings())
    assert raw.statuses() == [Status.PRIMAL_INFEASIBLE] * 3
    assert np.all(raw.iterations < 200)
    res = BACKEND.solve(d, Settings())
    assert res.statuses() == [Status.SOLVED_CLOSEST_FEASIBLE] * 3
    # the two identical rows split their gap of 1 evenly; the others need no shift
    np.testing.assert_allclose(res.shift_in[:, 5:7], [[0.5, -0.5]] * 3, atol=1e-7)
    np.testing.assert_allclose(np.delete(res.shift_in, [5, 6], axis=1), 0.0, atol=1e-7)


def test_unbounded_lp_is_dual_infeasible():
    rng = np.random.default_rng(800)
    n, m = 6, 5
    C = rng.standard_normal((1, m, n))
    C[:, :, 0] = 0.0  # x_0 is free ...
    q = np.zeros((1, n))
    q[0, 0] = -1.0  # ... and decreases the cost
    d = QPData(
        np.zeros((1, n, n)), q, np.zeros((1, 1, n)), np.zeros((1, 1)), C, -np.ones((1, m)), np.ones((1, m))
    )
    res = BACKEND.solve(d, Settings())
    assert res.statuses() == [Status.DUAL_INFEASIBLE]


def test_invalid_elements_do_not_affect_the_others():
    rng = np.random.default_rng(900)
    d = random_qp(rng, batch=4, n=10, p=2, m=10)
    P, l = d.P.copy(), d.l.copy()
    P[1, 2, 3] = np.nan
    l[2, 7] = d.u[2, 7] + 1.0  # l > u
    bad = replace(d, P=P, l=l)
    res = BACKEND.solve(bad, Settings())
    assert res.statuses() == [Status.SOLVED, Status.NUMERICAL_ERROR, Status.NUMERICAL_ERROR, Status.SOLVED]
    assert np.isnan(res.x[1]).all() and np.isnan(res.z[2]).all()
    good = BACKEND.solve(d.select(np.array([0, 3])), Settings())
    np.testing.assert_array_equal(res.x[[0, 3]], good.x)  # each element is solved on its own
    np.testing.assert_array_equal(res.iterations[[0, 3]], good.iterations)


def test_indefinite_p_is_a_numerical_error():
    rng = np.random.default_rng(901)
    d = random_qp(rng, batch=2, n=6, p=1, m=4, infinite=False)
    P = d.P.copy()
    P[0] -= 50 * np.eye(6)
    res = solve_raw(replace(d, P=P), Settings())
    assert res.statuses() == [Status.NUMERICAL_ERROR, Status.SOLVED]


def test_max_iter_and_options():
    d = random_qp(np.random.default_rng(1000), batch=2, n=10, p=2, m=10)
    res = BACKEND.solve(d, Settings(max_iter=1, closest_feasible=False))
    assert res.statuses() == [Status.MAX_ITER] * 2
    with pytest.raises(ParameterError, match="no_such_option.*valid options: num_threads, rho, mu_eq"):
        BACKEND.solve(d, Settings(options={"no_such_option": 1}))
    with pytest.raises(ParameterError, match="rho"):
        BACKEND.solve(d, Settings(options={"rho": -1.0}))
    # the work counters are the kernel's: in the raw claims (the verified result keeps none)
    base = BACKEND.solve_raw(d, Settings())
    tuned = BACKEND.solve_raw(d, Settings(options={"rho": 1e-6, "mu_in": 0.05, "max_rank": 0}))
    assert tuned.statuses() == [Status.SOLVED] * 2
    assert np.all(tuned.extras["rank_one_updates"] == 0) and np.all(base.extras["rank_one_updates"] > 0)
    np.testing.assert_allclose(tuned.x, base.x, atol=1e-7)


def test_low_rank_updates_give_the_refactorised_answer():
    d = random_qp(np.random.default_rng(1100), batch=4, n=40, p=5, m=60)
    updated = BACKEND.solve_raw(d, Settings())
    refactored = BACKEND.solve_raw(d, Settings(options={"max_rank": 0}))
    assert updated.statuses() == refactored.statuses() == [Status.SOLVED] * 4
    assert np.all(updated.extras["factorizations"] < refactored.extras["factorizations"])
    np.testing.assert_allclose(updated.x, refactored.x, atol=1e-7)


def test_thread_counts_give_identical_results():
    d = random_qp(np.random.default_rng(1200), batch=7, n=12, p=2, m=12)
    one = BACKEND.solve(d, Settings(options={"num_threads": 1}))
    two = BACKEND.solve(d, Settings(options={"num_threads": 2}))
    np.testing.assert_array_equal(one.x, two.x)
    assert runtime.thread_count(10**6) >= 1


def test_tbb_is_the_threading_layer():
    """With pip's tbb installed, the layer is the one safe under threads and fork."""
    try:
        importlib.metadata.distribution("tbb")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("pip's tbb is not installed")
    BACKEND.solve(random_qp(np.random.default_rng(1), batch=2), Settings())
    assert runtime.layer() == "tbb"


def test_concurrent_calls_from_python_threads():
    batches = [random_qp(np.random.default_rng(1300 + i), batch=6, n=14, p=3, m=16) for i in range(6)]
    alone = [BACKEND.solve(d, Settings(options={"num_threads": 2})) for d in batches]
    with ThreadPoolExecutor(max_workers=3) as pool:
        together = list(
            pool.map(lambda d: BACKEND.solve(d, Settings(options={"num_threads": 2})), batches * 2)
        )
    for a, b in zip(alone * 2, together, strict=True):
        np.testing.assert_array_equal(a.x, b.x)
        assert b.statuses() == [Status.SOLVED] * 6


def _child_solve(queue) -> None:  # runs in the forked child
    d = random_qp(np.random.default_rng(1400), batch=6, n=14, p=3, m=16)
    queue.put(BACKEND.solve(d, Settings(options={"num_threads": 2})).x)


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_forked_child_solves_after_the_parent_did():
    d = random_qp(np.random.default_rng(1400), batch=6, n=14, p=3, m=16)
    parent = BACKEND.solve(d, Settings(options={"num_threads": 2}))
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_solve, args=(queue,))
    child.start()
    try:
        x = queue.get(timeout=120)
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    np.testing.assert_array_equal(x, parent.x)


def test_cache_falls_back_to_the_user_directory(monkeypatch, tmp_path):
    """A read-only package directory: the kernels are cached in the user's cache directory."""
    assert cache.LOCATOR is not None
    from qpdsl.backends.cpu_alm import solver

    py_file = solver.__file__
    local, user = cache.cache_dirs(py_file)
    assert local == os.path.join(os.path.dirname(py_file), "__pycache__")
    assert "numba" in user and "qpdsl_cpu_alm" in user
    monkeypatch.setattr(cache.LOCATOR, "ensure_cache_path", _writable_only_outside(local))
    locator = cache.LOCATOR.from_function(solver.solve_one, py_file)
    assert locator.get_cache_path() == user
    assert cache.cache_dirs(py_file, str(tmp_path))[0].startswith(str(tmp_path))  # NUMBA_CACHE_DIR first


def _writable_only_outside(read_only: str):
    def ensure(self) -> None:
        if self.get_cache_path() == read_only:
            raise PermissionError(read_only)

    return ensure


def test_cached_kernels_load_in_a_new_process():
    """A second process loads the kernels from the cache instead of compiling them again."""
    script = textwrap.dedent(
        """
        import time
        import numpy as np
        from qpdsl.backends.cpu_backend import solve_raw
        from qpdsl.qp import QPData, Settings
        from qpdsl.testing import random_feasible_qps
        BACKEND_DATA = QPData(*random_feasible_qps(2, 5, 1, 5))
        t = time.perf_counter()
        assert solve_raw(BACKEND_DATA, Settings()).statuses()[0].ok
        print(time.perf_counter() - t)
        """
    )
    BACKEND.solve(random_qp(np.random.default_rng(2), batch=1), Settings())  # compiled and cached here
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.split()[-1]) < 10.0  # compiling takes tens of seconds


@pytest.mark.parametrize("n", [1, 5, 37])
def test_factor_updates_and_solves_match_numpy(n):
    """The upper factor U'U = H, rank-one updates and downdates of it, and solves with it."""
    from qpdsl.backends.cpu_alm import linalg

    rng = np.random.default_rng(n)
    G = rng.standard_normal((n + 3, n))
    H = G.T @ G + 0.5 * np.eye(n)
    U = np.triu(H)
    assert linalg.cholesky(U)
    U = np.triu(U)
    np.testing.assert_allclose(U.T @ U, H, atol=1e-12 * np.abs(H).max())
    g = rng.standard_normal(n)
    sol = g.copy()
    linalg.cho_solve(U, sol)
    np.testing.assert_allclose(H @ sol, g, atol=1e-10 * np.abs(g).max())
    v = rng.standard_normal(n)
    assert linalg.rank_updates(U, v.copy()[None], np.array([1.0]), 1)
    np.testing.assert_allclose(np.triu(U).T @ np.triu(U), H + np.outer(v, v), atol=1e-11 * np.abs(H).max())
    assert linalg.rank_updates(U, v.copy()[None], np.array([-1.0]), 1)
    np.testing.assert_allclose(np.triu(U).T @ np.triu(U), H, atol=1e-10 * np.abs(H).max())
    # a downdate that would make H singular is refused
    w = np.zeros(n)
    w[0] = np.sqrt(H[0, 0])  # H - e0 e0' H00 is singular or indefinite at the first pivot
    assert not linalg.rank_updates(np.triu(np.linalg.cholesky(H).T).copy(), w[None], np.array([-1.0]), 1)
    # an indefinite matrix is refused
    bad = np.triu(H - 2 * np.abs(H).max() * np.eye(n))
    assert not linalg.cholesky(bad)


@pytest.mark.parametrize("count", [1, 3, 4, 7])
def test_several_factor_updates_at_once_match_numpy(count):
    """Mixed updates and downdates applied together, four at a time, give the factor of the
    modified matrix (numpy's Cholesky factor of it, up to rounding)."""
    from qpdsl.backends.cpu_alm import linalg

    n = 23
    rng = np.random.default_rng(count)
    G = rng.standard_normal((2 * n, n))
    H = G.T @ G + 0.5 * np.eye(n)
    X = rng.standard_normal((count, n)) * 0.3
    signs = np.where(np.arange(count) % 2 == 0, 1.0, -1.0)
    target = H + (X.T * signs) @ X
    U = np.triu(np.linalg.cholesky(H).T).copy()
    assert linalg.rank_updates(U, X.copy(), signs, count)
    np.testing.assert_allclose(np.triu(U), np.linalg.cholesky(target).T, atol=1e-12 * np.abs(U).max())
    # a downdate past positive definiteness is refused
    w = np.zeros((1, n))
    w[0, 0] = np.sqrt(H[0, 0]) * 1.5
    U = np.triu(np.linalg.cholesky(H).T).copy()
    assert not linalg.rank_updates(U, w, np.array([-1.0]), 1)


@pytest.mark.parametrize("count", [0, 1, 5, 8])
def test_blocked_outer_products_match_numpy(count):
    """``add_outers_upper`` adds signed outer products of the chosen rows (upper triangle), and
    ``gram_upper`` forms the Gram matrix of the chosen rows."""
    from qpdsl.backends.cpu_alm import linalg

    n = 19
    rng = np.random.default_rng(count + 10)
    G = rng.standard_normal((12, n))
    rows = rng.choice(12, size=count, replace=False).astype(np.int64)
    signs = rng.choice([-1.0, 1.0], size=count)
    M0 = rng.standard_normal((n, n))
    M = M0.copy()
    linalg.add_outers_upper(M, G, rows, signs, count)
    expected = M0 + (G[rows].T * signs) @ G[rows]
    np.testing.assert_allclose(np.triu(M), np.triu(expected), atol=1e-12)
    np.testing.assert_array_equal(np.tril(M, -1), np.tril(M0, -1))
    use = np.zeros(12, dtype=bool)
    use[rows] = True
    linalg.gram_upper(M, G, 2, 12, use)
    chosen = G[2:][use[2:]]
    np.testing.assert_allclose(np.triu(M), np.triu(chosen.T @ chosen), atol=1e-12)


def test_gram_matrices_follow_the_active_rows():
    """The Gram matrix of the active inequality rows, built anew or by outer products of the changes."""
    from qpdsl.backends.cpu_alm import solver

    rng = np.random.default_rng(3)
    n, p, m = 12, 3, 20
    G = rng.standard_normal((p + m, n))
    work, signs = np.empty(p + m, dtype=np.int64), np.empty(p + m)
    M, in_gram = np.zeros((n, n)), np.zeros(p + m, dtype=np.bool_)
    for step in range(12):
        # small changes (outer products of the changed rows) and large ones (built anew)
        active = in_gram.copy()
        flip = rng.choice(m, size=(2 if step % 3 else 15), replace=False) + p
        active[flip] = ~active[flip]
        solver._sync_gram(M, G, p, active, in_gram, work, signs)
        rows = G[p:][active[p:]]
        np.testing.assert_allclose(np.triu(M), np.triu(rows.T @ rows), atol=1e-12 * n)
        assert np.array_equal(in_gram, active)


def test_fused_ruiz_sweeps_match_plain_sweeps():
    """One pass per sweep gives the scalings of the textbook sweeps (maxima, then scaling)."""
    from qpdsl.backends.cpu_alm import scaling

    rng = np.random.default_rng(4)
    n, k = 9, 14
    K0 = rng.standard_normal((n + k, n)) * np.exp(rng.uniform(-6, 6, (n + k, 1)))
    K0[:n] = K0[:n] @ K0[:n].T  # a symmetric P block
    K0[n + 2] = 0.0  # an empty row keeps factor 1
    for sweeps, tol in ((1, 0.0), (10, 1e-3), (25, 0.0)):
        K, D, E = K0.copy(), np.empty(n), np.empty(k)
        scaling.equilibrate(K, n, D, E, sweeps, tol)
        R, d_all, e_all = K0.copy(), np.ones(n), np.ones(k)
        for _ in range(sweeps):
            col = np.abs(R).max(axis=0)
            row = np.abs(R[n:]).max(axis=1)
            d = np.where(col > 0, 1 / np.sqrt(np.where(col > 0, col, 1)), 1.0)
            e = np.where(row > 0, 1 / np.sqrt(np.where(row > 0, row, 1)), 1.0)
            R = np.concatenate([d, e])[:, None] * R * d[None, :]
            d_all, e_all = d_all * d, e_all * e
            if max(np.abs(1 - d).max(), np.abs(1 - e).max()) <= tol:
                break
        np.testing.assert_allclose(D, d_all, rtol=1e-12)
        np.testing.assert_allclose(E, e_all, rtol=1e-12)
        np.testing.assert_allclose(K, R, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(3, 5, 4), (2, 1, 7), (2, 6, 1), (1, 3, 0)])
def test_absolute_products_match_numpy(dtype, shape):
    """``|M| @ x`` and ``|M|' @ v``, compiled for host arrays (the verification's scales), equal
    numpy's products with ``np.abs(M)``; non-finite entries propagate."""
    from qpdsl.backends.cpu_alm import linalg

    rng = np.random.default_rng(sum(shape))
    M = rng.standard_normal(shape).astype(dtype)
    x = rng.standard_normal(shape[::2]).astype(dtype)
    v = rng.standard_normal(shape[:2]).astype(dtype)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    expected_x, expected_v = (np.abs(M) @ x[..., None])[..., 0], (v[:, None, :] @ np.abs(M))[:, 0]
    np.testing.assert_allclose(linalg.abs_matvec(M, x), expected_x, rtol=tol, atol=tol)
    np.testing.assert_allclose(linalg.abs_rmatvec(M, v), expected_v, rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="abs_matvec takes"):
        linalg.abs_matvec(M, x[:1] if shape[0] > 1 else np.ones((2, shape[2]), dtype=dtype))
    if M.size:
        M[0, 0, 0] = np.nan
        assert np.isnan(linalg.abs_matvec(M, x)[0, 0]) and np.isnan(linalg.abs_rmatvec(M, v)[0, 0])


def test_gap_rounding_floor_is_a_lower_limit_not_an_addition():
    """The rounding floor of the duality gap (10 ulps of its largest term) replaces a tolerance
    below it; it is not added to ``eps_abs``: a gap of 1.5e-6 with terms of 4.4e8 is above
    ``eps_abs = 1e-6`` and above the floor (9.8e-7), so the solve goes on."""
    from qpdsl.backends.cpu_alm import solver

    floor = solver.GAP_ROUNDING * solver.EPS * 4.4e8
    assert 1e-6 > floor > 5e-7
    assert not solver._tolerances_met(0.0, 0.0, 1.5e-6, 4.4e8, 1.0, 1.0, 1e-6, 0.0)
    assert solver._tolerances_met(0.0, 0.0, 0.9e-6, 4.4e8, 1.0, 1.0, 1e-6, 0.0)
    # terms of 1e10: the floor (2.2e-5) is above eps_abs and is the test
    assert solver._tolerances_met(0.0, 0.0, 1.5e-5, 1e10, 1.0, 1.0, 1e-6, 0.0)
    assert not solver._tolerances_met(0.0, 0.0, 3e-5, 1e10, 1.0, 1.0, 1e-6, 0.0)


def test_maros_meszaros_qscagr25_meets_the_absolute_gap():
    """QSCAGR25 (objective terms of 4e8) at eps 1e-6, scored as the public QP benchmark scores
    it: primal, dual residual and duality gap all at most 1e-6 (with the floor added to eps_abs the
    solve stopped at a gap of 1.4e-6)."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("maros_meszaros", root / "benchmarks" / "maros_meszaros.py")
    mm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mm)
    path = Path(mm.data_folder()) / "QSCAGR25.mat"
    if not path.exists():
        pytest.skip(f"the Maros-Meszaros set is not at {path.parent} (set QPDSL_MAROS_MESZAROS)")
    prob = mm.load(str(path))
    out = mm.solve("cpu", prob, 1e-6, None)
    assert out["status"] == "solved"
    scores = mm.score(prob, out["x"], out["y"], out["z"])
    assert max(scores.values()) <= 1e-6, scores


def test_residuals_at_rounding_level_of_large_terms_count_as_met():
    """A well-conditioned QP with P scaled by 1e8: the dual residual cannot go below the rounding
    of P x (about 1e-8), so eps_abs = 1e-9 is met at that floor (it ended at max_iter), and the
    point equals cvxpy's."""
    rng = np.random.default_rng(0)
    n = 3
    L = rng.standard_normal((n, n))
    P = 1e8 * (L @ L.T + 0.1 * np.eye(n))
    q, A, b, C = (
        rng.standard_normal(n),
        rng.standard_normal((1, n)),
        rng.standard_normal(1),
        rng.standard_normal((2, n)),
    )
    l, u = -np.ones(2), np.ones(2)
    res = backends.get_backend("cpu").solve(QPData(*(a[None] for a in (P, q, A, b, C, l, u))), Settings())
    assert int(res.status[0]) == int(Status.SOLVED)
    x = cp.Variable(n)
    cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, P) + q @ x), [A @ x == b, l <= C @ x, C @ x <= u]).solve(
        solver=cp.CLARABEL
    )
    np.testing.assert_allclose(res.x[0], x.value, atol=1e-7)
