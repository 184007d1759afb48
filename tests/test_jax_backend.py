"""The ``jax`` backend: qpdsl's batched dense proximal ALM driven by ``lax.while_loop``.

Checked against proxsuite and the torch backend, eagerly, under ``jax.jit`` and ``jax.vmap``,
sharded over two CPU devices, and through the JAX adapter's derivatives. Compiling the
solver dominates the run time, so most tests share one problem shape (``SHAPE``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qpdsl.testing import random_feasible_qps

jax = pytest.importorskip("jax")
proxsuite = pytest.importorskip("proxsuite")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

from qpdsl.backends.jax_backend import JaxBackend, solve_raw  # noqa: E402
from qpdsl.errors import ParameterError  # noqa: E402
from qpdsl.qp import QPData, QPResult, Settings, Status, WarmStart  # noqa: E402

BACKEND = JaxBackend()
SHAPE = (8, 10, 3, 12)  # batch, n, n_eq, n_in
FIELDS = ("x", "y", "z", "shift_eq", "shift_in", "status", "iterations", "prim_res", "dual_res", "objective")


def to_data(arrays: list[np.ndarray], dtype=jnp.float64) -> QPData:
    return QPData(*[jnp.asarray(a, dtype=dtype) for a in arrays])


def proxsuite_solve(arrays: list[np.ndarray]) -> np.ndarray:
    P, q, A, b, C, l, u = arrays
    xs = []
    for i in range(q.shape[0]):
        qp = proxsuite.proxqp.dense.QP(q.shape[1], b.shape[1], l.shape[1])
        qp.settings.eps_abs, qp.settings.eps_rel = 1e-10, 0.0
        qp.settings.eps_primal_inf = 1e-12  # the default 1e-4 gives false verdicts on some LPs
        qp.init(P[i], q[i], A[i], b[i], C[i], np.clip(l[i], -1e20, 1e20), np.clip(u[i], -1e20, 1e20))
        qp.solve()
        assert qp.results.info.status == proxsuite.proxqp.QPSolverOutput.PROXQP_SOLVED
        xs.append(qp.results.x.copy())
    return np.array(xs)


def check_kkt(arrays: list[np.ndarray], res: QPResult, tol: float) -> None:
    """Stationarity P x + q + A'y + C'z = 0, feasibility, and the signs of z."""
    P, q, A, b, C, l, u = arrays
    x, y, z = (np.asarray(a, dtype=np.float64) for a in (res.x, res.y, res.z))
    scale = 10 * tol * (1.0 + np.abs(x).max())
    stat = np.einsum("bij,bj->bi", P, x) + q + np.einsum("bji,bj->bi", A, y) + np.einsum("bji,bj->bi", C, z)
    assert np.abs(stat).max() <= scale
    assert np.abs(np.einsum("bij,bj->bi", A, x) - b).max(initial=0.0) <= scale
    cx = np.einsum("bij,bj->bi", C, x)
    assert (cx <= u + scale).all() and (cx >= l - scale).all()
    assert np.allclose(cx[z > scale], u[z > scale], atol=scale) and np.allclose(
        cx[z < -scale], l[z < -scale], atol=scale
    )


def as_tuple(res: QPResult) -> tuple:
    """A QPResult's arrays as a tuple (what a jitted function can return)."""
    return tuple(getattr(res, f) for f in FIELDS)


def as_result(values: tuple) -> QPResult:
    return QPResult(**dict(zip(FIELDS, values, strict=True)))


def jit_solve(arrays: list[np.ndarray], settings: Settings | None = None) -> QPResult:
    settings = settings or Settings()
    fn = jax.jit(lambda *a: as_tuple(BACKEND.solve(QPData(*a), settings)))
    return as_result(fn(*[jnp.asarray(a) for a in arrays]))


def worked_example(batch: int = 1) -> list[np.ndarray]:
    """min x²/2  s.t.  x = 5,  -3 <= x <= 3."""
    return [
        np.broadcast_to(np.asarray(v, dtype=np.float64), (batch, *np.shape(v))).copy()
        for v in ([[1.0]], [0.0], [[1.0]], [5.0], [[1.0]], [-3.0], [3.0])
    ]


# --------------------------------------------------------------------------- accuracy


def test_random_qps_match_proxsuite() -> None:
    arrays = random_feasible_qps(*SHAPE, seed=1)
    res = BACKEND.solve(to_data(arrays), Settings())
    assert isinstance(res.x, jax.Array) and res.x.dtype == jnp.float64
    assert all(s == Status.SOLVED for s in res.statuses())
    np.testing.assert_allclose(np.asarray(res.x), proxsuite_solve(arrays), atol=1e-7)
    assert float(res.prim_res.max()) <= 1e-9 and float(res.dual_res.max()) <= 1e-9
    check_kkt(arrays, res, 1e-9)
    P, q = arrays[0], arrays[1]
    x = np.asarray(res.x)
    np.testing.assert_allclose(
        np.asarray(res.objective), 0.5 * np.einsum("bi,bij,bj->b", x, P, x) + (q * x).sum(1)
    )


def test_lps_match_proxsuite() -> None:
    batch, n, p, m = SHAPE
    arrays = random_feasible_qps(batch, n, p, m - n, seed=3, lp=True)
    # Box the variables so every LP is bounded (and keep SHAPE: m - n general rows + n box rows).
    arrays[4] = np.concatenate([arrays[4], np.broadcast_to(np.eye(n), (batch, n, n))], axis=1)
    arrays[5] = np.concatenate([arrays[5], -10 * np.ones((batch, n))], axis=1)
    arrays[6] = np.concatenate([arrays[6], 10 * np.ones((batch, n))], axis=1)
    res = BACKEND.solve(to_data(arrays), Settings())
    assert all(s == Status.SOLVED for s in res.statuses())
    np.testing.assert_allclose(np.asarray(res.x), proxsuite_solve(arrays), atol=1e-7)
    check_kkt(arrays, res, 1e-9)


def test_float32_reaches_its_tolerance() -> None:
    arrays = random_feasible_qps(*SHAPE, seed=5)
    res = BACKEND.solve(to_data(arrays, jnp.float32), Settings())
    assert res.x.dtype == jnp.float32
    assert all(s == Status.SOLVED for s in res.statuses())
    # measured in float32 on the user's data: within 1e-5 plus ten roundoffs of the terms (verified)
    assert float(res.prim_res.max()) <= 2e-5 and float(res.dual_res.max()) <= 2e-5
    np.testing.assert_allclose(np.asarray(res.x, dtype=np.float64), proxsuite_solve(arrays), atol=1e-3)


def test_infinite_bounds() -> None:
    arrays = random_feasible_qps(*SHAPE, seed=7)
    rng = np.random.default_rng(0)
    arrays[5][rng.uniform(size=arrays[5].shape) < 0.4] = -np.inf
    arrays[6][rng.uniform(size=arrays[6].shape) < 0.4] = np.inf
    arrays[5][:, 0], arrays[6][:, 0] = -np.inf, np.inf  # a free row in every element
    res = BACKEND.solve(to_data(arrays), Settings())
    assert all(s == Status.SOLVED for s in res.statuses())
    np.testing.assert_allclose(np.asarray(res.x), proxsuite_solve(arrays), atol=1e-7)
    check_kkt(arrays, res, 1e-9)
    assert (np.asarray(res.z)[:, 0] == 0).all()


@pytest.mark.parametrize("p, m", [(3, 0), (0, 12)])
def test_equality_only_and_inequality_only(p: int, m: int) -> None:
    arrays = random_feasible_qps(SHAPE[0], SHAPE[1], p, m, seed=11)
    res = BACKEND.solve(to_data(arrays), Settings())
    assert all(s == Status.SOLVED for s in res.statuses())
    assert res.y.shape == (SHAPE[0], p) and res.z.shape == (SHAPE[0], m)
    np.testing.assert_allclose(np.asarray(res.x), proxsuite_solve(arrays), atol=1e-7)
    check_kkt(arrays, res, 1e-9)


def test_unbounded_lp_is_dual_infeasible() -> None:
    # Element 0: min -sum(x)  s.t.  0 = 0 (A = 0), x >= 0 on the first n rows, |0| <= 1 on the others:
    # unbounded along (1, ..., 1). The other elements are ordinary QPs of the same batch.
    arrays = random_feasible_qps(*SHAPE, seed=13)
    batch, n, p, m = SHAPE
    arrays[0][0], arrays[1][0] = 0.0, -1.0
    arrays[2][0], arrays[3][0] = 0.0, 0.0
    arrays[4][0] = np.concatenate([np.eye(n), np.zeros((m - n, n))])
    arrays[5][0] = np.concatenate([np.zeros(n), -np.ones(m - n)])
    arrays[6][0] = np.concatenate([np.full(n, np.inf), np.ones(m - n)])
    statuses = BACKEND.solve(to_data(arrays), Settings()).statuses()
    assert statuses == [Status.DUAL_INFEASIBLE] + [Status.SOLVED] * (batch - 1)


# --------------------------------------------------------------------------- infeasible QPs


def test_worked_infeasible_example_eager() -> None:
    data = to_data(worked_example())
    assert solve_raw(data, Settings()).statuses() == [Status.PRIMAL_INFEASIBLE]
    res = BACKEND.solve(data, Settings())
    assert res.statuses() == [Status.SOLVED_CLOSEST_FEASIBLE]
    assert float(res.x[0, 0]) == pytest.approx(4.0, abs=1e-7)
    assert float(res.shift_eq[0, 0]) == pytest.approx(-1.0, abs=1e-7)
    assert float(res.shift_in[0, 0]) == pytest.approx(1.0, abs=1e-7)


def test_worked_infeasible_example_under_jit_in_a_mixed_batch() -> None:
    # Element 0 infeasible, element 1 feasible (x = 2): the masked closest-feasible stage.
    arrays = worked_example(2)
    arrays[3][1] = 2.0
    res = jit_solve(arrays)
    assert res.statuses() == [Status.SOLVED_CLOSEST_FEASIBLE, Status.SOLVED]
    np.testing.assert_allclose(np.asarray(res.x)[:, 0], [4.0, 2.0], atol=1e-7)
    np.testing.assert_allclose(np.asarray(res.shift_eq)[:, 0], [-1.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(np.asarray(res.shift_in)[:, 0], [1.0, 0.0], atol=1e-7)
    eager = BACKEND.solve(to_data(arrays), Settings())
    for f in ("x", "y", "z", "shift_eq", "shift_in"):
        np.testing.assert_allclose(np.asarray(getattr(res, f)), np.asarray(getattr(eager, f)), atol=1e-9)
    np.testing.assert_array_equal(np.asarray(res.iterations), np.asarray(eager.iterations))


# --------------------------------------------------------------------------- batching, failures, warm start


def test_vmap_equals_batched_solve() -> None:
    arrays = random_feasible_qps(*SHAPE, seed=17)
    batched = BACKEND.solve(to_data(arrays), Settings())
    stacked = [jnp.asarray(a.reshape(2, SHAPE[0] // 2, *a.shape[1:])) for a in arrays]
    fn = jax.vmap(lambda *a: as_tuple(BACKEND.solve(QPData(*a), Settings())))
    res = as_result(tuple(o.reshape(SHAPE[0], *o.shape[2:]) for o in fn(*stacked)))
    assert res.statuses() == batched.statuses()
    np.testing.assert_allclose(np.asarray(res.x), np.asarray(batched.x), atol=1e-10)
    np.testing.assert_allclose(np.asarray(res.z), np.asarray(batched.z), atol=1e-8)


def _equations(jaxpr: Any) -> int:
    """The number of equations of a jaxpr, those of its sub-jaxprs (loop bodies, branches) included."""
    count = 0
    for eqn in jaxpr.eqns:
        count += 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    count += _equations(inner)
    return count


def test_vmap_folds_the_mapped_axis_into_the_batch() -> None:
    """Under vmap the solver's loops and branches are not batched (that would run every loop until
    all mapped problems finish and trace both sides of every branch): the mapped axis joins the
    batch, so the program is the jit program on a longer batch. Mixed statuses (an infeasible
    element's closest feasible QP beside solved ones) and an unmapped argument included."""
    arrays = random_feasible_qps(*SHAPE, seed=23)
    # element 1: two rows that cannot both hold (a closest-feasible element)
    arrays[4][1, 1] = arrays[4][1, 0]
    arrays[5][1, 1] = arrays[6][1, 0] + 1.0
    arrays[6][1, 1] = np.inf
    half = SHAPE[0] // 2
    stacked = [jnp.asarray(a.reshape(2, half, *a.shape[1:])) for a in arrays]

    def solve(P: Any, *rest: Any) -> tuple:
        return as_tuple(BACKEND.solve(QPData(P, *rest), Settings()))

    plain = _equations(jax.make_jaxpr(solve)(*(a[0] for a in stacked)).jaxpr)
    mapped = _equations(jax.make_jaxpr(jax.vmap(solve))(*stacked).jaxpr)
    assert mapped <= plain + 100, (plain, mapped)  # the fold's reshapes, not a second solver

    batched = BACKEND.solve(to_data(arrays), Settings())
    res = as_result(tuple(o.reshape(SHAPE[0], *o.shape[2:]) for o in jax.vmap(solve)(*stacked)))
    assert res.statuses() == batched.statuses()
    assert res.statuses()[1] == Status.SOLVED_CLOSEST_FEASIBLE
    for field in ("x", "y", "z", "shift_in"):
        got, want = np.asarray(getattr(res, field)), np.asarray(getattr(batched, field))
        np.testing.assert_allclose(got, want, atol=1e-8)

    # P shared by the mapped problems (not mapped), the rest mapped, twice nested
    shared = [np.broadcast_to(arrays[0][:1], arrays[0].shape).copy(), *arrays[1:]]
    nested = [jnp.asarray(a.reshape(2, 2, SHAPE[0] // 4, *a.shape[1:])) for a in shared[1:]]
    P = jnp.asarray(shared[0][: SHAPE[0] // 4])
    out = jax.vmap(jax.vmap(solve, in_axes=(None,) + (0,) * 6), in_axes=(None,) + (0,) * 6)(P, *nested)
    res = as_result(tuple(o.reshape(SHAPE[0], *o.shape[3:]) for o in out))
    reference = BACKEND.solve(to_data(shared), Settings())
    assert res.statuses() == reference.statuses()
    np.testing.assert_allclose(np.asarray(res.x), np.asarray(reference.x), atol=1e-8)


def test_nan_element_is_isolated() -> None:
    arrays = random_feasible_qps(*SHAPE, seed=19)
    arrays[1][2, 3] = np.nan
    arrays[4][5, 0, 0] = np.inf
    clean = [np.delete(a, [2, 5], axis=0) for a in arrays]
    # closest_feasible=False: invalid elements would also be sent through the (separately
    # compiled) feasibility solve, which fails for them just the same.
    res = BACKEND.solve(to_data(arrays), Settings(closest_feasible=False))
    statuses = res.statuses()
    assert statuses[2] == statuses[5] == Status.NUMERICAL_ERROR
    good = [i for i in range(SHAPE[0]) if i not in (2, 5)]
    assert all(statuses[i] == Status.SOLVED for i in good)
    for f in ("x", "y", "z"):
        assert np.isfinite(np.asarray(getattr(res, f))[good]).all()
    np.testing.assert_allclose(np.asarray(res.x)[good], proxsuite_solve(clean), atol=1e-7)


def test_crossed_bounds_element_is_set_aside() -> None:
    """``l > u`` is invalid data, not an infeasible QP: NaN outputs, the others solved as before."""
    arrays = random_feasible_qps(*SHAPE, seed=29)
    arrays[5][3, 4] = arrays[6][3, 4] + 1.0
    res = BACKEND.solve(to_data(arrays), Settings(closest_feasible=False))
    statuses = res.statuses()
    assert statuses[3] == Status.NUMERICAL_ERROR and np.isnan(np.asarray(res.x)[3]).all()
    good = [i for i in range(SHAPE[0]) if i != 3]
    assert all(statuses[i] == Status.SOLVED for i in good)
    clean = [np.delete(a, [3], axis=0) for a in arrays]
    np.testing.assert_allclose(np.asarray(res.x)[good], proxsuite_solve(clean), atol=1e-7)


def test_warm_start_reduces_iterations() -> None:
    arrays = random_feasible_qps(*SHAPE, seed=23)
    cold = BACKEND.solve(to_data(arrays), Settings())
    perturbed = to_data([arrays[0], arrays[1] + 1e-3, *arrays[2:]])
    cold_p = BACKEND.solve(perturbed, Settings())
    warm_p = BACKEND.solve(perturbed, Settings(), WarmStart(cold.x, cold.y, cold.z))
    assert all(s == Status.SOLVED for s in warm_p.statuses())
    np.testing.assert_allclose(np.asarray(warm_p.x), np.asarray(cold_p.x), atol=1e-7)
    assert int(warm_p.iterations.sum()) < int(cold_p.iterations.sum())
    exact = BACKEND.solve(to_data(arrays), Settings(), WarmStart(cold.x, cold.y, cold.z))
    assert (np.asarray(exact.iterations) == 0).all()


def test_matches_torch_backend() -> None:
    torch = pytest.importorskip("torch")
    from qpdsl.backends.torch_backend import TorchBackend

    arrays = random_feasible_qps(*SHAPE, seed=31)
    arrays[6][:, :3] = np.inf
    res = BACKEND.solve(to_data(arrays), Settings())
    ref = TorchBackend().solve(QPData(*[torch.as_tensor(a) for a in arrays]), Settings())
    assert res.statuses() == ref.statuses()
    for f in ("x", "y", "z"):
        np.testing.assert_allclose(np.asarray(getattr(res, f)), getattr(ref, f).numpy(), atol=1e-8)


def test_rejects_bad_inputs_and_registers() -> None:
    arrays = random_feasible_qps(2, 4, 1, 3)
    bad = to_data(arrays)
    with pytest.raises(ParameterError, match="shape"):
        BACKEND.solve(QPData(bad.P[:, :3], bad.q, bad.A, bad.b, bad.C, bad.l, bad.u), Settings())
    with pytest.raises(ParameterError, match="unknown option"):
        BACKEND.solve(bad, Settings(options={"not_an_option": 1}))
    with pytest.raises(ParameterError, match="float32 or float64"):
        BACKEND.solve(QPData(*[jnp.asarray(a, jnp.float16) for a in arrays]), Settings())
    from qpdsl.backends import available_backends, get_backend

    caps = available_backends()["jax"]
    assert caps.framework == "jax" and caps.installed and caps.warm_start and caps.extra == "jax"
    assert set(caps.dtypes) == {"float32", "float64"} and set(caps.devices) == {"cpu", "gpu", "tpu"}
    assert isinstance(get_backend("jax"), JaxBackend)


def test_module_imports_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import qpdsl.backends.jax_backend as jb\n"
        "assert jb.CAPABILITIES.installed\n"
        "loaded = [k for k, v in sys.modules.items() if v is not None]\n"
        "assert not any(k == 'torch' or k.startswith('torch.') for k in loaded)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


# --------------------------------------------------------------------------- adapter and sharding


def test_adapter_gradients_under_jit_match_proxsuite() -> None:
    import qpdsl.jax as qj

    arrays = [jnp.asarray(a) for a in random_feasible_qps(4, 6, 2, 8, seed=37)]

    def loss(backend: str):
        def f(q, b, u):
            P, _, A, _, C, l, _ = arrays
            x, y, z, *_ = qj.solve_qp(P, q, A, b, C, l, u, backend=backend)
            return jnp.sum(x * jnp.arange(1.0, 7.0)) + jnp.sum(y) + 0.1 * jnp.sum(z)

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))

    args = (arrays[1], arrays[3], arrays[6])
    value, grads = loss("jax")(*args)
    value_ref, grads_ref = loss("proxsuite")(*args)
    assert float(value) == pytest.approx(float(value_ref), abs=1e-7)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), atol=1e-6)


SHARDED = textwrap.dedent(
    """
    import jax, numpy as np, jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from qpdsl.backends.jax_backend import JaxBackend
    from qpdsl.qp import QPData, Settings
    sys_path_test = __import__("sys").argv[1]
    __import__("sys").path.insert(0, sys_path_test)
    from test_jax_backend import SHAPE
    from qpdsl.testing import random_feasible_qps
    assert len(jax.devices()) == 2
    arrays = random_feasible_qps(*SHAPE, seed=41)
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    def put(a):
        spec = PartitionSpec("batch", *([None] * (a.ndim - 1)))
        return jax.device_put(jnp.asarray(a), NamedSharding(mesh, spec))
    sharded = QPData(*[put(a) for a in arrays])
    assert len(sharded.P.sharding.device_set) == 2
    BACKEND = JaxBackend()
    res_s = BACKEND.solve(sharded, Settings())
    res_u = BACKEND.solve(QPData(*[jnp.asarray(a) for a in arrays]), Settings())
    assert res_s.statuses() == res_u.statuses(), (res_s.statuses(), res_u.statuses())
    assert all(int(s) == 0 for s in res_s.status)
    for f in ("x", "y", "z"):
        np.testing.assert_allclose(np.asarray(getattr(res_s, f)), np.asarray(getattr(res_u, f)), atol=1e-9)
    print("SHARDED-OK", res_s.x.sharding)
    """
)


def test_sharded_batch_over_two_cpu_devices() -> None:
    here = Path(__file__).resolve().parent
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(here.parent),
    }
    out = subprocess.run(
        [sys.executable, "-c", SHARDED, str(here)], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SHARDED-OK" in out.stdout


def _dot_precisions(jaxpr: Any) -> list[Any]:
    """The precision of every matrix product in a jaxpr and its sub-jaxprs."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(eqn.params["precision"])
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found.extend(_dot_precisions(inner))
    return found


def test_float32_products_are_traced_in_full_precision() -> None:
    """On GPUs and TPUs JAX's default float32 product runs in TF32 or bfloat16 passes: every
    float32 solve of random n = 100 QPs on an H200 ended at max_iter. Every product of the solve,
    its derivative (grad of jit and jit of grad) and a problem's parameter map asks for HIGHEST."""
    import qpdsl as qd
    import qpdsl.jax as qj

    arrays = [jnp.asarray(a, jnp.float32) for a in random_feasible_qps(2, 6, 2, 6, seed=1)]
    v = jnp.ones(6, jnp.float32)

    def loss(*a: Any) -> Any:
        return jnp.sum(qj.solve_qp(*a, backend="jax")[0] * v)

    x = qd.Variable(3)
    c = qd.Parameter(3)
    M = qd.Parameter((2, 3))
    f = qd.Problem(qd.Minimize(qd.sum_squares(x - c)), [M @ x <= 1]).to_jax(backend="jax")
    layer_loss = lambda c_, M_: jnp.sum(f(c_, M_)[0])  # noqa: E731
    c_v, M_v = jnp.ones(3, jnp.float32), jnp.ones((2, 3), jnp.float32)
    traces = [
        jax.make_jaxpr(jax.jit(jax.grad(loss, argnums=(0, 1, 2))))(*arrays),
        jax.make_jaxpr(jax.grad(jax.jit(loss), argnums=(0, 1, 2)))(*arrays),
        jax.make_jaxpr(jax.grad(layer_loss, argnums=(0, 1)))(c_v, M_v),
    ]
    for trace in traces:
        precisions = _dot_precisions(trace.jaxpr)
        assert precisions, "no matrix product traced"
        assert all(p == (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST) for p in precisions), {
            str(p) for p in precisions
        }
