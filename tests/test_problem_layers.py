"""Problem.to_torch / Problem.to_jax end to end: the worked example, batching, outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import qpdsl as qd

BACKENDS = [b for b in ("cpu", "proxsuite", "torch", "qpsolvers:piqp") if b in qd.available_backends()]


def worked_problem() -> tuple[qd.Problem, dict[str, object]]:
    x = qd.Variable(1, name="x")
    b = qd.Parameter(1, name="b")
    u = qd.Parameter(1, name="u")
    eq, upper, lower = x == b, x <= u, x >= -3
    prob = qd.Problem(qd.Minimize(0.5 * qd.sum_squares(x)), [eq, upper, lower])
    return prob, {"x": x, "b": b, "u": u, "eq": eq, "upper": upper, "lower": lower}


def t(values: list[float] | float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_worked_example_unbatched(backend: str) -> None:
    prob, s = worked_problem()
    layer = prob.to_torch(
        parameters=[s["b"], s["u"]],
        variables=[s["x"], qd.Shift(s["eq"]), qd.Shift(s["upper"])],
        backend=backend,
    )
    b, u = t([5.0]), t([3.0])
    x, shift_eq, shift_up = layer(b, u)
    assert x.shape == (1,)
    np.testing.assert_allclose(x.item(), 4.0, atol=1e-7)
    np.testing.assert_allclose([shift_eq.item(), shift_up.item()], [-1.0, 1.0], atol=1e-7)
    x.sum().backward()
    np.testing.assert_allclose([b.grad.item(), u.grad.item()], [0.5, 0.5], atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_worked_example_batched_mixes_feasible_and_infeasible(backend: str) -> None:
    prob, s = worked_problem()
    layer = prob.to_torch(
        parameters=[s["b"], s["u"]], variables=[s["x"], qd.Shift(s["lower"])], backend=backend
    )
    b = t([[5.0], [1.0], [-5.0]])
    u = t([3.0])  # unbatched: broadcast, its gradient summed over the batch
    x, shift_low = layer(b, u)
    np.testing.assert_allclose(x.detach().numpy().ravel(), [4.0, 1.0, -4.0], atol=1e-7)
    # x >= -3 is relaxed by 1 for b = -5 (user-facing shift of lhs - rhs <= 0 is positive)
    np.testing.assert_allclose(shift_low.detach().numpy().ravel(), [0.0, 0.0, 1.0], atol=1e-7)
    x.sum().backward()
    np.testing.assert_allclose(b.grad.numpy().ravel(), [0.5, 1.0, 0.5], atol=1e-6)
    np.testing.assert_allclose(u.grad.numpy(), [0.5], atol=1e-6)


def test_numpy_solve_matches_layer_statuses_and_duals() -> None:
    prob, s = worked_problem()
    sol = prob.solve({s["b"]: [[5.0], [1.0]], s["u"]: [3.0]})
    assert sol.status == ["solved_closest_feasible", "solved"]
    np.testing.assert_allclose(sol[s["x"]].ravel(), [4.0, 1.0], atol=1e-7)
    # feasible element: x = b is the only active constraint, its dual is -x (P x + A'y = 0)
    np.testing.assert_allclose(sol.dual(s["eq"])[1], [-1.0], atol=1e-7)
    np.testing.assert_allclose(sol.dual(s["lower"])[1], [0.0], atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_through_a_modelled_problem(backend: str) -> None:
    rng = np.random.default_rng(3)
    n, m = 5, 3
    x = qd.Variable(n, name="x")
    F = qd.Parameter((m, n), name="F")
    g = qd.Parameter(m, name="g")
    c = qd.Parameter(n, name="c")
    prob = qd.Problem(
        qd.Minimize(0.5 * qd.sum_squares(F @ x - g) + 0.5 * qd.sum_squares(x) + c @ x),
        [x <= 0.3, qd.sum(x) == 0.2],
    )
    layer = prob.to_torch(parameters=[F, g, c], variables=[x], backend=backend, eps_abs=1e-12)
    args = [
        torch.tensor(rng.standard_normal(shape), dtype=torch.float64, requires_grad=True)
        for shape in ((2, m, n), (m,), (2, n))
    ]
    assert torch.autograd.gradcheck(lambda *a: layer(*a)[0], args, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_to_jax_worked_example_grad_and_jit() -> None:
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    prob, s = worked_problem()
    f = prob.to_jax(parameters=[s["b"], s["u"]], variables=[s["x"]], backend="proxsuite")

    def loss(b: jax.Array, u: jax.Array) -> jax.Array:
        return f(b, u)[0].sum()

    b, u = jnp.array([5.0]), jnp.array([3.0])
    np.testing.assert_allclose(float(jax.jit(loss)(b, u)), 4.0, atol=1e-7)
    gb, gu = jax.grad(loss, argnums=(0, 1))(b, u)
    np.testing.assert_allclose([float(gb[0]), float(gu[0])], [0.5, 0.5], atol=1e-6)
