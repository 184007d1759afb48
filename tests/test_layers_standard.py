"""The torch and JAX adapters on the standard form (qpdsl.torch.solve_qp, qpdsl.jax.solve_qp).

Test problems are built from a chosen primal-dual solution with a chosen active set, so the
expected ``x`` is known and strict complementarity holds by construction.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from qpdsl.backends import available_backends, get_backend
from qpdsl.errors import BackendNotFound, ParameterError, SolverError
from qpdsl.qp import Settings, Status, WarmStart
from qpdsl.torch import QPLayer, solve_qp

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("P", "q", "A", "b", "C", "l", "u")
SETTINGS = Settings(eps_abs=1e-10)
# qpsolvers solvers accurate enough for finite-difference gradient checks.
_ACCURATE_QPSOLVERS = ("piqp", "clarabel")


def _backends(*frameworks: str) -> list[str]:
    avail = available_backends()
    names = [n for n in ("cpu", "proxsuite", "torch", "jax") if n in avail]
    names += [f"qpsolvers:{s}" for s in _ACCURATE_QPSOLVERS if f"qpsolvers:{s}" in avail]
    return [n for n in names if avail[n].framework in frameworks]


TORCH_BACKENDS = _backends("numpy", "torch")
# Every numpy backend goes through the same pure_callback path: one of them covers it.
JAX_BACKENDS = _backends("jax") + _backends("numpy")[:1]


def make_qp(
    seed: int,
    batch: int = 2,
    n: int = 4,
    m: int = 1,
    p: int = 4,
    n_upper: int = 1,
    n_lower: int = 1,
    lp: bool = False,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A batch of strictly complementary QPs (LPs with ``lp``) and their solutions ``x``.

    Rows ``[0, n_upper)`` of ``C`` are active at ``u`` (z > 0), the next ``n_lower`` at ``l``
    (z < 0), the others inactive with a margin of at least 0.5 on both sides.
    """
    rng = np.random.default_rng(seed)
    data: dict[str, list[np.ndarray]] = {k: [] for k in NAMES}
    xs = []
    for _ in range(batch):
        M = rng.standard_normal((n, n))
        P = np.zeros((n, n)) if lp else M @ M.T + 0.5 * np.eye(n)
        A, C = rng.standard_normal((m, n)), rng.standard_normal((p, n))
        x, y = rng.standard_normal(n), rng.standard_normal(m)
        z = np.zeros(p)
        z[:n_upper] = rng.uniform(0.5, 1.5, n_upper)
        z[n_upper : n_upper + n_lower] = -rng.uniform(0.5, 1.5, n_lower)
        Cx = C @ x
        u, l = Cx + rng.uniform(0.5, 1.5, p), Cx - rng.uniform(0.5, 1.5, p)
        u[:n_upper] = Cx[:n_upper]
        l[n_upper : n_upper + n_lower] = Cx[n_upper : n_upper + n_lower]
        for k, v in zip(NAMES, (P, -(P @ x + A.T @ y + C.T @ z), A, A @ x, C, l, u), strict=False):
            data[k].append(v)
        xs.append(x)
    return {k: np.stack(v) for k, v in data.items()}, np.stack(xs)


def worked_example() -> dict[str, np.ndarray]:
    """The worked example of the closest feasible QP: min x²/2 s.t. x = 5, -3 <= x <= 3 (infeasible)."""
    one = np.ones((1, 1, 1))
    return {
        "P": one,
        "q": np.zeros((1, 1)),
        "A": one,
        "b": np.full((1, 1), 5.0),
        "C": one.copy(),
        "l": np.full((1, 1), -3.0),
        "u": np.full((1, 1), 3.0),
    }


def torch_args(
    data: dict[str, np.ndarray], dtype: torch.dtype = torch.float64, grad: bool = False
) -> list[torch.Tensor]:
    return [torch.tensor(data[k], dtype=dtype, requires_grad=grad) for k in NAMES]


# ----------------------------------------------------------------------------------- torch


@pytest.mark.parametrize("backend", TORCH_BACKENDS)
def test_torch_gradcheck_all_inputs_feasible(backend: str) -> None:
    data, x_star = make_qp(0)
    args = torch_args(data, grad=True)
    x, y, z, se, si, status = solve_qp(*args, backend=backend, settings=SETTINGS)
    assert status.tolist() == [Status.SOLVED] * 2
    np.testing.assert_allclose(x.detach().numpy(), x_star, atol=1e-7)
    np.testing.assert_allclose(se.detach().numpy(), 0.0, atol=1e-9)

    def f(*a: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return solve_qp(*a, backend=backend, settings=SETTINGS)[:3]

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("backend", TORCH_BACKENDS)
def test_torch_worked_example_closest_feasible(backend: str) -> None:
    args = torch_args(worked_example(), grad=True)
    x, y, z, se, si, status = solve_qp(*args, backend=backend, settings=SETTINGS)
    assert int(status) == Status.SOLVED_CLOSEST_FEASIBLE
    np.testing.assert_allclose(x.item(), 4.0, atol=1e-7)
    np.testing.assert_allclose([se.item(), si.item()], [-1.0, 1.0], atol=1e-7)
    x.sum().backward()
    grads = {k: a.grad.item() for k, a in zip(NAMES, args, strict=False)}
    np.testing.assert_allclose(
        [grads["b"], grads["u"], grads["l"], grads["q"]], [0.5, 0.5, 0.0, 0.0], atol=1e-6
    )

    def f(*a: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = solve_qp(*a, backend=backend, settings=SETTINGS)
        return out[0], out[3], out[4]  # the duals of the shifted QP are not unique here

    assert torch.autograd.gradcheck(
        f, [a.detach().requires_grad_() for a in args], eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True
    )


@pytest.mark.parametrize("backend", TORCH_BACKENDS)
def test_torch_batch_matches_single_solves_and_broadcasts(backend: str) -> None:
    data, _ = make_qp(1, batch=3)
    out = solve_qp(*torch_args(data), backend=backend, settings=SETTINGS)
    for i in range(3):
        single = solve_qp(*torch_args({k: v[i] for k, v in data.items()}), backend=backend, settings=SETTINGS)
        assert single[0].shape == (4,) and single[5].shape == ()
        for o, s in zip(out, single, strict=False):
            np.testing.assert_allclose(o[i].numpy(), s.numpy(), atol=1e-8)

    # P and C shared without a batch dim, A with batch size 1; q, b, l, u batched.
    shared = {k: data[k][0] if k in ("P", "C") else data[k] for k in NAMES}
    shared["A"] = data["A"][:1]

    def element(i: int) -> dict[str, np.ndarray]:
        return {k: data[k][0] if k in ("P", "A", "C") else data[k][i] for k in NAMES}

    batched = torch_args(shared, grad=True)
    x = solve_qp(*batched, backend=backend, settings=SETTINGS)[0]
    assert x.shape == (3, 4)
    x.sum().backward()
    total = {k: 0.0 for k in ("P", "A", "C")}
    for i in range(3):
        single = torch_args(element(i), grad=True)
        xi = solve_qp(*single, backend=backend, settings=SETTINGS)[0]
        np.testing.assert_allclose(x[i].detach().numpy(), xi.detach().numpy(), atol=1e-8)
        xi.sum().backward()
        for k in total:
            total[k] = total[k] + single[NAMES.index(k)].grad.numpy()
    # The gradient of a shared input sums the gradients of the elements.
    for k in total:
        np.testing.assert_allclose(
            batched[NAMES.index(k)].grad.numpy().reshape(total[k].shape), total[k], atol=1e-7
        )


@pytest.mark.parametrize("backend", TORCH_BACKENDS)
def test_torch_lp_forward_backward(backend: str) -> None:
    data, x_star = make_qp(2, n=3, m=1, p=4, n_upper=1, n_lower=1, lp=True)  # vertex: m + active = n
    args = torch_args(data, grad=True)
    x, *_, status = solve_qp(*args, backend=backend, settings=SETTINGS)
    assert status.tolist() == [Status.SOLVED] * 2
    np.testing.assert_allclose(x.detach().numpy(), x_star, atol=1e-7)

    # P = 0 cannot be perturbed entrywise (the QP would turn non-convex): check the others.
    def f(*a: torch.Tensor) -> torch.Tensor:
        return solve_qp(args[0].detach(), *a, backend=backend, settings=SETTINGS)[0]

    assert torch.autograd.gradcheck(f, args[1:], eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def _corrupt_invalid(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    bad = {k: v.copy() for k, v in data.items()}
    bad["q"][1, 0] = np.nan
    return bad


def _corrupt_unbounded(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Element 1 becomes an unbounded LP: P = 0, no binding constraint along -q."""
    bad = {k: v.copy() for k, v in data.items()}
    bad["P"][1], bad["A"][1], bad["b"][1], bad["C"][1] = 0.0, 0.0, 0.0, 0.0
    bad["l"][1], bad["u"][1] = -1.0, 1.0
    bad["q"][1] = 1.0
    return bad


@pytest.mark.parametrize("backend", TORCH_BACKENDS)
@pytest.mark.parametrize("corrupt", [_corrupt_invalid, _corrupt_unbounded])
def test_torch_on_failure_modes(backend: str, corrupt: object) -> None:
    data, _ = make_qp(3, batch=3)
    bad = corrupt(data)  # type: ignore[operator]
    good_rows = [0, 2]
    ref_args = torch_args({k: v[good_rows] for k, v in data.items()}, grad=True)
    ref = solve_qp(*ref_args, backend=backend, settings=SETTINGS)
    ref[0].sum().backward()

    expected = ParameterError if corrupt is _corrupt_invalid else SolverError
    with pytest.raises(expected, match=r"batch elements.*1") as info:
        solve_qp(*torch_args(bad), backend=backend, settings=SETTINGS, on_failure="raise")
    if expected is SolverError:
        assert info.value.indices == [1]

    for mode in ("nan", "ignore"):
        args = torch_args(bad, grad=True)
        out = solve_qp(*args, backend=backend, settings=SETTINGS, on_failure=mode)
        assert not Status(int(out[5][1])).ok
        if corrupt is _corrupt_invalid:
            assert int(out[5][1]) == Status.NUMERICAL_ERROR
        if mode == "nan" or corrupt is _corrupt_invalid:
            assert torch.isnan(out[0][1]).all()
        for o, r in zip(out, ref, strict=False):
            np.testing.assert_allclose(o[good_rows].detach().numpy(), r.detach().numpy(), atol=1e-8)
        torch.nan_to_num(out[0][good_rows]).sum().backward()
        for a, r in zip(args, ref_args, strict=False):
            assert torch.equal(a.grad[1], torch.zeros_like(a.grad[1]))
            np.testing.assert_allclose(a.grad[good_rows].numpy(), r.grad.numpy(), atol=1e-7)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(P=d["P"].half()), "P is torch.float16; qpdsl computes in float32 or float64"),
        (lambda d: d.update(q=d["q"][:, :3]), "P has shape"),
        (lambda d: d.update(b=d["b"].repeat(2, 1)), "different batch sizes"),
        (lambda d: d.update(C=d["C"].to_sparse()), "C is a torch.sparse_coo tensor"),
        (lambda d: d.update({k: v.to("meta") for k, v in d.items()}), "P is on the meta device"),
        (lambda d: d.update(q=d["q"].to("meta")), "one device"),
        (lambda d: d.update(b=d["b"].to(torch.complex128)), "b is complex"),
        (lambda d: d.update(A=None), "A is None but b is not"),
        (
            lambda d: d["P"].__setitem__((1, 0, 0), float("inf")),
            r"P has NaN or Inf entries in batch elements \[1\]",
        ),
        (lambda d: d["C"].__setitem__((0, 1, 1), float("nan")), r"C has NaN .* batch elements \[0\]"),
        (
            lambda d: d["u"].__setitem__((1, 2), float("nan")),
            r"l or u has NaN entries in batch elements \[1\]",
        ),
        (lambda d: d["l"].__setitem__((0, 3), float("inf")), r"l has \+inf"),
        (lambda d: d["l"].__setitem__((1, 3), 1e6), r"l > u somewhere in batch elements \[1\]"),
    ],
)
def test_torch_parameter_errors(change: object, message: str) -> None:
    data, _ = make_qp(4)
    args = dict(zip(NAMES, torch_args(data), strict=False))
    change(args)  # type: ignore[operator]
    with pytest.raises(ParameterError, match=message):
        solve_qp(*args.values(), backend="proxsuite", settings=SETTINGS)


def test_torch_infinite_bounds_and_missing_constraints_are_accepted() -> None:
    data, x_star = make_qp(5, m=1, p=4, n_upper=1, n_lower=1)
    data["u"][:, 3], data["l"][:, 2] = np.inf, -np.inf  # inactive rows lose one side
    x = solve_qp(*torch_args(data), backend="proxsuite", settings=SETTINGS)[0]
    np.testing.assert_allclose(x.numpy(), x_star, atol=1e-7)
    P, q = torch_args(data)[:2]
    x, y, z, *_ = solve_qp(P, q, None, None, None, None, None, backend="proxsuite", settings=SETTINGS)
    assert y.shape == (2, 0) and z.shape == (2, 0)
    np.testing.assert_allclose(
        x.numpy(), -np.linalg.solve(data["P"], data["q"][..., None])[..., 0], atol=1e-7
    )


def test_torch_bad_option_values() -> None:
    args = torch_args(make_qp(6)[0])
    with pytest.raises(ParameterError, match="on_failure"):
        solve_qp(*args, on_failure="skip")
    with pytest.raises(ParameterError, match="P is a str that is not a real numeric array"):
        solve_qp("P", *args[1:])
    # numpy arrays and lists adapt to the tensors beside them, as in the problem layers
    x_np = solve_qp(args[0].numpy(), args[1].tolist(), *args[2:])[0]
    np.testing.assert_allclose(x_np.numpy(), solve_qp(*args)[0].numpy(), atol=1e-12)
    if "jax" in available_backends():
        with pytest.raises(BackendNotFound, match="qpdsl.jax"):
            solve_qp(*args, backend="jax")


@pytest.mark.parametrize("backend", TORCH_BACKENDS)
def test_torch_float32(backend: str) -> None:
    data, x_star = make_qp(7)
    args = torch_args(data, dtype=torch.float32, grad=True)
    x, y, z, se, si, status = solve_qp(*args, backend=backend)
    assert x.dtype == y.dtype == z.dtype == se.dtype == torch.float32 and status.dtype == torch.int64
    np.testing.assert_allclose(x.detach().numpy(), x_star, atol=1e-3)
    x.sum().backward()
    ref = torch_args(data, grad=True)
    solve_qp(*ref, backend=backend, settings=SETTINGS)[0].sum().backward()
    for a, r in zip(args, ref, strict=False):
        assert a.grad.dtype == torch.float32
        np.testing.assert_allclose(a.grad.numpy(), r.grad.numpy(), atol=1e-2, rtol=1e-2)


def test_torch_no_grad_builds_no_graph_and_gradients_of_duals() -> None:
    data, _ = make_qp(8)
    args = torch_args(data, grad=True)
    with torch.no_grad():
        out = solve_qp(*args, settings=SETTINGS)
    assert all(o.grad_fn is None for o in out)
    # Only a gradient on z: the gradients must still reach every input.
    z = solve_qp(*args, settings=SETTINGS)[2]
    grads = torch.autograd.grad(z[:, 0].sum(), args)
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in (grads[0], grads[1], grads[6]))


def test_qplayer_warm_start_reuses_previous_solution(monkeypatch: pytest.MonkeyPatch) -> None:
    solver = get_backend("proxsuite")
    seen: list[WarmStart | None] = []
    original = solver.solve

    def spy(data, settings, warm_start=None, shiftable=None):  # type: ignore[no-untyped-def]
        seen.append(warm_start)  # what the layer hands over is checked here, not the backend's use of it
        return original(data, settings)

    monkeypatch.setattr(solver, "solve", spy)
    data, x_star = make_qp(9)
    layer = QPLayer(backend="proxsuite", settings=SETTINGS, warm_start=True)
    first = layer(*torch_args(data))
    second = layer(*torch_args(data))
    assert seen[0] is None and seen[-1] is not None
    np.testing.assert_allclose(np.asarray(seen[-1].x), first[0].numpy())
    np.testing.assert_allclose(second[0].numpy(), x_star, atol=1e-7)
    layer(*torch_args(make_qp(9, batch=3)[0]))  # another batch shape: no warm start
    assert seen[-1] is None


def _run_isolated(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.parametrize(("module", "other"), [("qpdsl.torch", "jax"), ("qpdsl.jax", "torch")])
def test_import_isolation(module: str, other: str) -> None:
    run = _run_isolated(f"""
        import sys
        import {module}
        assert "{other}" not in sys.modules, "importing {module} imported {other}"
    """)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize(("module", "other"), [("qpdsl.torch", "jax"), ("qpdsl.jax", "torch")])
def test_backend_lookup_does_not_import_the_other_framework(module: str, other: str) -> None:
    run = _run_isolated(f"""
        import sys
        import {module}
        from qpdsl.backends import get_backend
        get_backend("proxsuite")
        assert "{other}" not in sys.modules, "looking up a backend from {module} imported {other}"
    """)
    assert run.returncode == 0, run.stderr


# ------------------------------------------------------------------------------------- JAX

jax = pytest.importorskip("jax")
jnp = jax.numpy
jax.config.update("jax_enable_x64", True)
from jax.test_util import check_grads  # noqa: E402

from qpdsl.jax import solve_qp as jax_solve_qp  # noqa: E402


def jax_args(data: dict[str, np.ndarray]) -> list[jax.Array]:
    return [jnp.asarray(data[k]) for k in NAMES]


@pytest.mark.parametrize("backend", JAX_BACKENDS)
def test_jax_jit_vmap_match_eager(backend: str) -> None:
    data, x_star = make_qp(10, batch=3)
    args = jax_args(data)
    eager = jax_solve_qp(*args, backend=backend, settings=SETTINGS)
    np.testing.assert_allclose(eager[0], x_star, atol=1e-7)
    jitted = jax.jit(lambda *a: jax_solve_qp(*a, backend=backend, settings=SETTINGS))(*args)
    per_element = jax.vmap(lambda *a: jax_solve_qp(*a, backend=backend, settings=SETTINGS))(*args)
    for e, j, v in zip(eager, jitted, per_element, strict=False):
        np.testing.assert_allclose(j, e, atol=1e-9)
        np.testing.assert_allclose(v, e, atol=1e-9)


@pytest.mark.parametrize("backend", JAX_BACKENDS)
def test_jax_check_grads_fwd_and_rev(backend: str) -> None:
    data, _ = make_qp(11, batch=1, n=3, p=3)
    args = jax_args(data)

    def f(*a: jax.Array) -> tuple[jax.Array, ...]:
        return jax_solve_qp(*a, backend=backend, settings=SETTINGS)[:3]

    check_grads(f, args, order=1, modes=("fwd", "rev"), eps=1e-6, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", JAX_BACKENDS)
def test_jax_grad_matches_torch_and_works_under_jit_and_vmap(backend: str) -> None:
    data, _ = make_qp(12, batch=2)
    targs = torch_args(data, grad=True)
    torch_backend = backend if backend in TORCH_BACKENDS else "proxsuite"
    solve_qp(*targs, backend=torch_backend, settings=SETTINGS)[0].sum().backward()

    def loss(*a: jax.Array) -> jax.Array:
        return jax_solve_qp(*a, backend=backend, settings=SETTINGS)[0].sum()

    argnums = tuple(range(7))
    grads = jax.grad(loss, argnums)(*jax_args(data))
    jitted = jax.jit(jax.grad(loss, argnums))(*jax_args(data))
    per_element = jax.vmap(jax.grad(loss, argnums))(*jax_args(data))
    for g, j, v, t in zip(grads, jitted, per_element, targs, strict=False):
        np.testing.assert_allclose(g, t.grad.numpy(), atol=1e-7)
        np.testing.assert_allclose(j, g, atol=1e-9)
        np.testing.assert_allclose(v, g, atol=1e-9)


@pytest.mark.parametrize("backend", JAX_BACKENDS)
def test_jax_worked_example_grad(backend: str) -> None:
    args = [a[0] for a in jax_args(worked_example())]

    def x_of(*a: jax.Array) -> jax.Array:
        out = jax_solve_qp(*a, backend=backend, settings=SETTINGS)
        return out[0][0]

    out = jax_solve_qp(*args, backend=backend, settings=SETTINGS)
    assert int(out[5]) == Status.SOLVED_CLOSEST_FEASIBLE
    np.testing.assert_allclose([out[0][0], out[3][0], out[4][0]], [4.0, -1.0, 1.0], atol=1e-7)
    grads = dict(zip(NAMES, jax.grad(x_of, argnums=tuple(range(7)))(*args), strict=False))
    np.testing.assert_allclose([grads["b"][0], grads["u"][0], grads["l"][0]], [0.5, 0.5, 0.0], atol=1e-6)
    fwd = jax.jvp(
        x_of,
        tuple(args),
        tuple(jnp.zeros_like(a) for a in args[:3])
        + (jnp.ones(1),)
        + tuple(jnp.zeros_like(a) for a in args[4:]),
    )[1]
    np.testing.assert_allclose(fwd, 0.5, atol=1e-6)


@pytest.mark.parametrize("backend", JAX_BACKENDS)
def test_jax_on_failure(backend: str) -> None:
    data, _ = make_qp(13, batch=3)
    bad = _corrupt_invalid(data)
    ref = jax_solve_qp(*jax_args({k: v[[0, 2]] for k, v in data.items()}), backend=backend, settings=SETTINGS)
    out = jax_solve_qp(*jax_args(bad), backend=backend, settings=SETTINGS, on_failure="nan")
    assert int(out[5][1]) == Status.NUMERICAL_ERROR and np.isnan(out[0][1]).all()
    for o, r in zip(out, ref, strict=False):
        np.testing.assert_allclose(o[np.array([0, 2])], r, atol=1e-8)
    grads = jax.grad(
        lambda q: jnp.nansum(
            jax_solve_qp(
                *jax_args(bad)[:1],
                q,
                *jax_args(bad)[2:],
                backend=backend,
                settings=SETTINGS,
                on_failure="nan",
            )[0]
        )
    )(jnp.asarray(bad["q"]))
    assert np.all(np.asarray(grads[1]) == 0) and np.isfinite(grads).all()

    with pytest.raises(ParameterError, match=r"batch elements \[1\]"):
        jax_solve_qp(*jax_args(bad), backend=backend, settings=SETTINGS)
    with pytest.raises(Exception, match=r"invalid QP data: .* in batch elements \[1\]"):
        jax.block_until_ready(
            jax.jit(lambda *a: jax_solve_qp(*a, backend=backend, settings=SETTINGS))(*jax_args(bad))
        )
    unbounded = _corrupt_unbounded(data)
    with pytest.raises(SolverError, match="batch elements 1"):
        jax_solve_qp(*jax_args(unbounded), backend=backend, settings=SETTINGS)


def test_jax_parameter_errors() -> None:
    data, _ = make_qp(14)
    args = jax_args(data)
    with pytest.raises(ParameterError, match="P has shape"):
        jax_solve_qp(args[0][:, :3], *args[1:], backend="proxsuite")
    with pytest.raises(ParameterError, match="float32 or float64.*got float16 for P"):
        jax_solve_qp(args[0].astype(jnp.float16), *args[1:], backend="proxsuite")
    with pytest.raises(ParameterError, match="must be real"):
        jax_solve_qp(args[0].astype(jnp.complex64), *args[1:], backend="proxsuite")
    # integer arrays adapt to the floating inputs beside them, as in the torch functions
    rounded = list(args)
    for k in (2, 3, 4):  # A, b, C
        rounded[k] = jnp.round(4 * args[k])
    as_int = [a.astype(jnp.int32) if k in (2, 3, 4) else a for k, a in enumerate(rounded)]
    x_int = jax_solve_qp(*as_int, backend="proxsuite", settings=SETTINGS)[0]
    assert x_int.dtype == rounded[1].dtype
    x_float = jax_solve_qp(*rounded, backend="proxsuite", settings=SETTINGS)[0]
    np.testing.assert_allclose(np.asarray(x_int), np.asarray(x_float), atol=1e-12)
    if "torch" in available_backends():
        with pytest.raises(BackendNotFound, match="qpdsl.torch"):
            jax_solve_qp(*args, backend="torch")


@pytest.mark.parametrize("backend", JAX_BACKENDS)
def test_jax_warm_start_same_solution_and_gradients(backend: str) -> None:
    """A warm start (eager and under jit) changes neither the solution nor its gradients."""
    from qpdsl.qp import WarmStart

    data, x_star = make_qp(13, batch=3)
    args = jax_args(data)
    x, y, z, *_ = jax_solve_qp(*args, backend=backend, settings=SETTINGS)
    warm = WarmStart(x, y, z)
    warm_x = jax_solve_qp(*args, backend=backend, settings=SETTINGS, warm_start=warm)[0]
    jitted = jax.jit(lambda a, w: jax_solve_qp(*a, backend=backend, settings=SETTINGS, warm_start=w)[0])
    np.testing.assert_allclose(warm_x, x_star, atol=1e-7)
    np.testing.assert_allclose(jitted(args, WarmStart(x[0], None, None)), x_star, atol=1e-7)

    def loss(a: list[jax.Array], w: WarmStart | None) -> jax.Array:
        return jax_solve_qp(*a, backend=backend, settings=SETTINGS, warm_start=w)[0].sum()

    for g_warm, g_cold in zip(jax.grad(loss)(args, warm), jax.grad(loss)(args, None), strict=True):
        np.testing.assert_allclose(g_warm, g_cold, atol=1e-7)
    with pytest.raises(ParameterError, match=r"warm_start\.y has shape"):
        jax_solve_qp(*args, backend=backend, warm_start=WarmStart(x, jnp.zeros((3, y.shape[1] + 1)), z))


def test_jax_solve_qp_lists_adapt_like_numbers() -> None:
    """In ``qpdsl.jax.solve_qp`` Python lists adapt to the arrays' dtype, as numbers do and as in a
    problem's JAX function (float32 here; a list made it float64); numpy arrays promote as JAX does."""
    P, q = jnp.eye(2, dtype=jnp.float32), jnp.array([1.0, -1.0], dtype=jnp.float32)
    x = jax_solve_qp(P, q, None, None, [[1.0, 0.0]], [-0.5], [0.5])[0]
    assert x.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(x), [-0.5, 1.0], atol=1e-5)
    x = jax_solve_qp(P, q, None, None, np.array([[1.0, 0.0]]), [-0.5], [0.5])[0]
    assert x.dtype == jnp.float64
