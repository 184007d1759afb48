"""What users of the layers notice: saving models, keyword arguments, lookups by name, reprs,
double backward, mixed dtypes, warnings, and backends that say what they cannot do."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import qpdsl as qd
from qpdsl.backends import available_backends

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)
A0 = RNG.standard_normal((4, 3))
B0 = RNG.standard_normal(4)


def least_squares() -> tuple[qd.Problem, qd.Parameter, qd.Parameter, qd.Variable]:
    A = qd.Parameter((4, 3), name="A")
    b = qd.Parameter(4, name="b")
    x = qd.Variable(3, name="x")
    prob = qd.Problem(qd.Minimize(qd.sum_squares(A @ x - b) + 0.1 * qd.sum_squares(x)), [x >= -1, x <= 1])
    return prob, A, b, x


class Model(torch.nn.Module):
    """A network holding a qpdsl layer, as a user would write it."""

    def __init__(self) -> None:
        super().__init__()
        prob, A, b, x = least_squares()
        self.lin = torch.nn.Linear(4, 4).double()
        self.qp = prob.to_torch([A, b], [x], backend="cpu", warm_start=True)

    def forward(self, A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.qp(A, self.lin(b))[0]


def _outputs_and_grads(model: torch.nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
    A = torch.tensor(A0, requires_grad=True)
    out = model(A, torch.tensor(B0))
    grads = torch.autograd.grad(out.square().sum(), [A, *model.parameters()])
    return out.detach(), list(grads)


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=240
    )


# ---------------------------------------------------------------- 1. saving models


def test_torch_save_keeps_outputs_and_gradients_and_drops_warm_starts() -> None:
    torch.manual_seed(0)
    model = Model()
    out, grads = _outputs_and_grads(model)
    assert model.qp._memory._warm is not None
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert loaded.qp._memory._warm is None  # warm starts are not part of the saved state
    out2, grads2 = _outputs_and_grads(loaded)
    torch.testing.assert_close(out2, out, atol=1e-7, rtol=1e-7)
    for g, g2 in zip(grads, grads2, strict=True):
        torch.testing.assert_close(g2, g, atol=1e-6, rtol=1e-6)
    layer = loaded.qp
    assert layer.parameters_in[0] is layer.problem.parameters()[0]  # identity inside the saved graph


def test_loaded_parameters_never_share_ids_with_new_ones(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(Model(), path)
    result = _run(
        f"""
        import sys, torch
        sys.path.insert(0, {str(ROOT / "tests")!r})
        import qpdsl as qd
        from test_layer_behaviour import Model
        model = torch.load({str(path)!r}, weights_only=False)
        A, b = model.qp.parameters_in
        fresh = [qd.Parameter(4, name=f"c{{i}}") for i in range(200)]
        old = {{e.id for e in (A, b)}}
        assert not old & {{p.id for p in fresh}}, "a new Parameter got the id of a loaded one"
        x = qd.Variable(3)
        prob = qd.Problem(qd.Minimize(qd.sum_squares(A @ x - b) + qd.sum(fresh[-1] @ (A @ x))))
        assert len(prob.parameters()) == 3, prob.parameters()
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_qplayer_pickles_without_its_warm_start() -> None:
    from qpdsl.torch import QPLayer

    layer = QPLayer(backend="cpu", warm_start=True)
    P = torch.eye(3, dtype=torch.float64) * 2
    q = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    C = torch.eye(3, dtype=torch.float64)
    lo, up = -torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    x = layer(P, q, None, None, C, lo, up)[0]
    (gq,) = torch.autograd.grad(x.sum(), q)
    loaded = pickle.loads(pickle.dumps(layer))
    assert loaded._memory._warm is None
    x2 = loaded(P, q, None, None, C, lo, up)[0]
    (gq2,) = torch.autograd.grad(x2.sum(), q)
    torch.testing.assert_close(x2, x)
    torch.testing.assert_close(gq2, gq)


# ---------------------------------------------------------------- 2. names


def test_torch_layer_takes_keywords() -> None:
    prob, A, b, x = least_squares()
    layer = prob.to_torch([A, b], [x], backend="cpu")
    At, bt = torch.tensor(A0), torch.tensor(B0)
    expected = layer(At, bt)[0]
    torch.testing.assert_close(layer(A=At, b=bt)[0], expected)
    torch.testing.assert_close(layer(At, b=bt)[0], expected)
    with pytest.raises(qd.ParameterError, match="no layer input has that name"):
        layer(At, c=bt)
    with pytest.raises(qd.ParameterError, match="given twice"):
        layer(At, bt, A=At)
    with pytest.raises(qd.ParameterError, match="missing arguments for b"):
        layer(A=At)


def test_jax_function_takes_keywords() -> None:
    jnp = pytest.importorskip("jax.numpy")
    prob, A, b, x = least_squares()
    f = prob.to_jax([A, b], [x], backend="cpu")
    Aj, bj = jnp.asarray(A0, dtype=jnp.float32), jnp.asarray(B0, dtype=jnp.float32)
    expected = f(Aj, bj)[0]
    np.testing.assert_allclose(f(A=Aj, b=bj)[0], expected)
    np.testing.assert_allclose(f(Aj, b=bj)[0], expected)
    with pytest.raises(qd.ParameterError, match="no layer input has that name"):
        f(Aj, c=bj)
    with pytest.raises(qd.ParameterError, match="given twice"):
        f(Aj, bj, b=bj)
    with pytest.raises(qd.ParameterError, match="missing arguments for A"):
        f(b=bj)


def test_solution_looks_variables_up_by_name() -> None:
    prob, A, b, x = least_squares()
    sol = prob.solve({"A": A0, "b": B0}, backend="cpu")
    np.testing.assert_array_equal(sol["x"], sol[x])
    with pytest.raises(qd.ModelError, match="no variable named 'y'") as info:
        sol["y"]
    assert isinstance(info.value, KeyError)
    with pytest.raises(KeyError, match="not a variable of this problem"):
        sol[qd.Variable(3, name="other")]


def test_solution_refuses_a_name_two_variables_share() -> None:
    x1, x2 = qd.Variable(2, name="x"), qd.Variable(2, name="x")
    prob = qd.Problem(qd.Minimize(qd.sum_squares(x1 - 1) + qd.sum_squares(x2 + 1)))
    sol = prob.solve(backend="cpu")
    with pytest.raises(qd.ModelError, match="2 variables named 'x'"):
        sol["x"]
    np.testing.assert_allclose(sol[x2], [-1.0, -1.0], atol=1e-6)


# ---------------------------------------------------------------- 3. repr


def test_solution_repr_is_short() -> None:
    prob, A, b, x = least_squares()
    sol = prob.solve({"A": A0, "b": B0}, backend="cpu")
    text = repr(sol)
    assert len(text) < 200, text
    assert text.startswith("Solution(status='solved', objective=")
    assert "variables=[x (3,)]" in text and text.endswith("batch=None)")
    batched = prob.solve({"A": np.stack([A0, A0]), "b": B0}, backend="cpu")
    assert "status=['solved', 'solved']" in repr(batched) and "batch=2" in repr(batched)


# ---------------------------------------------------------------- 4. double backward


def test_double_backward_is_refused_clearly() -> None:
    prob, A, b, x = least_squares()
    layer = prob.to_torch([A, b], [x], backend="cpu")
    At = torch.tensor(A0, requires_grad=True)
    out = layer(At, torch.tensor(B0))[0]
    (g,) = torch.autograd.grad(out.square().sum(), At, create_graph=True)
    (plain,) = torch.autograd.grad(layer(At, torch.tensor(B0))[0].square().sum(), At)
    torch.testing.assert_close(g.detach(), plain)  # first order is unaffected by create_graph
    with pytest.raises(qd.QPDSLError, match="second derivatives"):
        torch.autograd.grad(g.sum(), At)


# ---------------------------------------------------------------- 5. mixed dtypes


def _box_qp(dtype_q: torch.dtype) -> tuple[torch.Tensor, ...]:
    P = 2 * torch.eye(3, dtype=torch.float64)
    q = torch.tensor([1.0, -2.0, 0.5], dtype=dtype_q)
    C = torch.eye(3, dtype=torch.float32)
    return P, q, None, None, C, -torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float32)


def test_torch_solve_qp_and_qplayer_promote_mixed_floats() -> None:
    from qpdsl.torch import QPLayer, solve_qp

    for solve in (solve_qp, QPLayer(backend="cpu")):
        kwargs = {"backend": "cpu"} if solve is solve_qp else {}
        x = solve(*_box_qp(torch.float32), **kwargs)[0]
        assert x.dtype == torch.float64
        torch.testing.assert_close(
            x, torch.tensor([-0.5, 1.0, -0.25], dtype=torch.float64), atol=1e-6, rtol=0
        )


def test_torch_problem_layer_promotes_mixed_floats() -> None:
    prob, A, b, x = least_squares()
    layer = prob.to_torch([A, b], [x], backend="cpu")
    expected = layer(torch.tensor(A0), torch.tensor(B0))[0]
    for args in ((torch.tensor(A0).float(), torch.tensor(B0)), (torch.tensor(A0), torch.tensor(B0).float())):
        out = layer(*args)[0]
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def _clarabel_least_squares(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    cp = pytest.importorskip("cvxpy")
    x = cp.Variable(3)
    objective = cp.sum_squares(A @ x - b) + 0.1 * cp.sum_squares(x)
    cp.Problem(cp.Minimize(objective), [x >= -1, x <= 1]).solve(solver=cp.CLARABEL)
    return x.value


def test_torch_layer_and_solve_qp_take_the_same_inputs() -> None:
    """Integer tensors, a 0-dim float64 beside float32 tensors, and a batch of size 1 shared by
    a larger batch: the problem layer and solve_qp accept the same inputs and compute in the
    dtype torch promotes them to (solve_qp refused integers; the layer refused batch size 1
    and computed the 0-dim case in float64)."""
    from qpdsl.torch import solve_qp

    prob, A, b, x = least_squares()
    layer = prob.to_torch([A, b], [x])
    A_int, b_int = np.round(3 * A0), np.round(3 * B0)
    (x_int,) = layer(torch.tensor(A_int, dtype=torch.int64), torch.tensor(b_int, dtype=torch.int32))
    assert x_int.dtype == torch.float64
    np.testing.assert_allclose(x_int.numpy(), _clarabel_least_squares(A_int, b_int), atol=1e-6)
    P, q = 2 * A_int.T @ A_int + 0.2 * np.eye(3), -2 * A_int.T @ b_int
    box = (
        torch.eye(3, dtype=torch.int64),
        -torch.ones(3, dtype=torch.int64),
        torch.ones(3, dtype=torch.int64),
    )
    P_int, q_int = np.round(P * 10), np.round(q * 10)
    x_std = solve_qp(torch.tensor(P_int).long(), torch.tensor(q_int).long(), None, None, *box)[0]
    assert x_std.dtype == torch.float64
    cp = pytest.importorskip("cvxpy")
    xc = cp.Variable(3)
    objective = 0.5 * cp.quad_form(xc, P_int) + q_int @ xc
    cp.Problem(cp.Minimize(objective), [xc >= -1, xc <= 1]).solve(solver=cp.CLARABEL)
    np.testing.assert_allclose(x_std.numpy(), xc.value, atol=1e-6)

    # a 0-dim float64 does not widen float32 tensors, as in torch (ones(3) + tensor(1.0, float64))
    assert (torch.ones(3) + torch.tensor(1.0, dtype=torch.float64)).dtype == torch.float32
    lam = qd.Parameter(name="lam", nonneg=True)
    xs = qd.Variable(3, name="x")
    ridge = qd.Problem(
        qd.Minimize(qd.sum_squares(A @ xs - b) + lam * qd.sum_squares(xs)), [xs >= -1, xs <= 1]
    )
    out = ridge.to_torch([A, b, lam], [xs])(
        torch.tensor(A0, dtype=torch.float32),
        torch.tensor(B0, dtype=torch.float32),
        torch.tensor(0.1, dtype=torch.float64),
    )[0]
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), _clarabel_least_squares(A0, B0), atol=1e-4)
    Pt, qt = torch.tensor(2 * A0.T @ A0 + 0.2 * np.eye(3)).float(), torch.tensor(-2 * A0.T @ B0).float()
    C, lo, up = torch.eye(3), -torch.ones(3), torch.ones(3)
    x32 = solve_qp(Pt, qt, None, None, C, lo, torch.tensor(1.0, dtype=torch.float64) * up)[0]
    assert x32.dtype == torch.float32

    # a batch of size 1 is shared by a larger batch, as in solve_qp and numpy broadcasting
    bs = B0 + np.arange(5)[:, None] * 0.3
    (xb,) = layer(torch.tensor(A0)[None], torch.tensor(bs))
    assert xb.shape == (5, 3)
    for k in (0, 4):
        np.testing.assert_allclose(xb[k].numpy(), _clarabel_least_squares(A0, bs[k]), atol=1e-6)
    (x1,) = layer(torch.tensor(A0)[None], torch.tensor(B0))
    assert x1.shape == (1, 3)
    with pytest.raises(qd.ParameterError, match="batch size 5 differs from the batch size 2 of parameter A"):
        layer(torch.tensor(A0).expand(2, 4, 3), torch.tensor(bs))


@pytest.fixture
def x64() -> object:
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    return jax


def test_jax_functions_promote_mixed_floats(x64: object) -> None:
    import jax.numpy as jnp

    from qpdsl.jax import solve_qp

    P, q, _, _, C, lo, up = (None if t is None else jnp.asarray(t.numpy()) for t in _box_qp(torch.float32))
    x = solve_qp(P, q, None, None, C, lo, up, backend="cpu")[0]
    assert x.dtype == jnp.float64
    np.testing.assert_allclose(x, [-0.5, 1.0, -0.25], atol=1e-6)
    prob, A, b, xv = least_squares()
    f = prob.to_jax([A, b], [xv], backend="cpu")
    expected = f(jnp.asarray(A0), jnp.asarray(B0))[0]
    for args in (
        (jnp.asarray(A0, jnp.float32), jnp.asarray(B0)),
        (jnp.asarray(A0), jnp.asarray(B0, jnp.float32)),
    ):
        out = f(*args)[0]
        assert out.dtype == jnp.float64
        np.testing.assert_allclose(out, expected, atol=1e-5)


# ---------------------------------------------------------------- 6. warnings with JAX in float32


def test_no_repeated_warnings_with_jax_float32() -> None:
    pytest.importorskip("jax")
    result = _run(
        """
        import warnings
        import numpy as np, jax, jax.numpy as jnp
        import qpdsl as qd
        from qpdsl.jax import solve_qp
        assert not jax.config.jax_enable_x64
        A = qd.Parameter((4, 3), name="A"); b = qd.Parameter(4, name="b"); x = qd.Variable(3, name="x")
        prob = qd.Problem(qd.Minimize(qd.sum_squares(A @ x - b) + 0.1 * qd.sum_squares(x)), [x >= -1])
        A0, b0 = np.random.randn(4, 3).astype(np.float32), np.random.randn(4).astype(np.float32)

        def calls():
            for backend in ("jax", "cpu"):
                f = prob.to_jax([A, b], [x], backend=backend)
                f(A0, b0)
                jax.grad(lambda a: f(a, b0)[0].sum())(jnp.asarray(A0))
                prob.solve({"A": A0, "b": b0}, backend=backend)
                solve_qp(jnp.eye(2), jnp.ones(2), None, None, None, None, None, backend=backend)

        def record():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                calls()
            ours = [w for w in caught if "/qpdsl/" in w.filename or "jax_enable_x64" in str(w.message)]
            return [str(w.message) for w in ours]

        first, second = record(), record()
        assert len(first) <= 1, first
        assert not second, second
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]


# ---------------------------------------------------------------- 7. qpsolvers limits


def _needs(name: str) -> None:
    if name not in available_backends():
        pytest.skip(f"{name} is not installed")


def test_quadprog_refuses_a_singular_P_naming_solvers_that_work() -> None:
    _needs("qpsolvers:quadprog")
    A, b, x = qd.Parameter((4, 3), name="A"), qd.Parameter(4, name="b"), qd.Variable(3, name="x")
    # sum_squares(A @ x - b) is r'r over r = A x - b: x has no quadratic term of its own
    prob = qd.Problem(qd.Minimize(qd.sum_squares(A @ x - b)), [x >= -1, x <= 1])
    with pytest.raises(qd.BackendNotFound, match="positive definite.*qpsolvers:clarabel"):
        prob.solve({"A": A0, "b": B0}, backend="qpsolvers:quadprog")
    layer = prob.to_torch([A, b], [x], backend="qpsolvers:quadprog")
    with pytest.raises(qd.BackendNotFound, match="positive definite"):
        layer(torch.tensor(A0), torch.tensor(B0))


def test_quadprog_still_solves_a_strictly_convex_qp() -> None:
    _needs("qpsolvers:quadprog")
    x = qd.Variable(2, name="x")
    sol = qd.Problem(qd.Minimize(qd.sum_squares(x - 2)), [x <= 1]).solve(backend="qpsolvers:quadprog")
    assert sol.status == "solved"
    np.testing.assert_allclose(sol["x"], [1.0, 1.0], atol=1e-6)


@pytest.mark.parametrize("solver", ["daqp", "highs"])
def test_unbounded_lp_is_reported_or_explained(solver: str) -> None:
    _needs(f"qpsolvers:{solver}")
    x = qd.Variable(2, name="x")
    sol = qd.Problem(qd.Minimize(-x[0]), [x >= 0, x[1] <= 1]).solve(backend=f"qpsolvers:{solver}")
    if sol.status == "dual_infeasible":
        return
    messages = " ".join((sol.raw.extras or {}).get("messages", {}).values())
    assert "unbounded" in messages and solver in messages, (sol.status, sol.raw.extras)
