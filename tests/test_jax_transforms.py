"""A ``to_jax`` function and ``qpdsl.jax.solve_qp`` under JAX transformations around and inside them.

The problem ``min ||y||^2 + c'y  s.t.  y >= -1`` has the closed-form solution
``y = max(-c / 2, -1)``, the independent reference of every check here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import qpdsl as qd

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

import qpdsl.jax as qj  # noqa: E402

C = np.array([[1.0, 2.0], [-1.0, 0.5], [3.0, -1.0], [0.2, 4.0]])


def exact(c: np.ndarray) -> np.ndarray:
    return np.maximum(-np.asarray(c) / 2, -1.0)


def exact_grad(c: np.ndarray) -> np.ndarray:
    """d sum(y) / dc."""
    return np.where(-np.asarray(c) / 2 > -1.0, -0.5, 0.0)


def layer(on_failure: str = "raise") -> Any:
    c = qd.Parameter(2, name="c")
    y = qd.Variable(2, name="y")
    prob = qd.Problem(qd.Minimize(qd.sum_squares(y) + c @ y), [y >= -1])
    return prob.to_jax(parameters=[c], variables=[y], backend="jax", on_failure=on_failure)


def test_vmap_of_a_cond_with_a_mapped_predicate() -> None:
    """A batched predicate makes ``vmap`` batch every operand of both branches, constants included."""
    f = layer()

    def branch(v: Any) -> Any:
        return jax.lax.cond(v[0] > 0, lambda: f(v)[0], lambda: -f(v)[0])

    want = exact(C) * np.where(C[:, :1] > 0, 1.0, -1.0)
    np.testing.assert_allclose(jax.vmap(branch)(C), want, atol=1e-7)
    np.testing.assert_allclose(jax.jit(jax.vmap(branch))(C), want, atol=1e-7)


def test_vmap_over_an_empty_axis() -> None:
    out = jax.vmap(layer())(np.zeros((0, 2)))[0]
    assert out.shape == (0, 2)


@pytest.mark.parametrize("transform", ["vmap(jit)", "vmap(checkpoint)", "vmap(grad)", "vmap(jvp)"])
def test_on_failure_nan_applies_to_each_mapped_element_through_inner_transforms(transform: str) -> None:
    """The mapped element with NaN data gets NaN outputs (zero derivatives); the others are solved."""
    f = layer("nan")
    bad = C.copy()
    bad[1, 0] = np.nan

    def loss(v: Any) -> Any:
        return f(v)[0].sum()

    fn = {
        "vmap(jit)": jax.vmap(lambda v: jax.jit(f)(v)[0]),
        "vmap(checkpoint)": jax.vmap(lambda v: jax.checkpoint(f)(v)[0]),
        "vmap(grad)": jax.vmap(jax.grad(loss)),
        "vmap(jvp)": jax.vmap(lambda v: jax.jvp(loss, (v,), (jnp.ones(2),))[1]),
    }[transform]
    out = np.asarray(fn(bad))
    good = [0, 2, 3]
    if transform in ("vmap(jit)", "vmap(checkpoint)"):
        assert np.isnan(out[1]).all()
        np.testing.assert_allclose(out[good], exact(C[good]), atol=1e-7)
    elif transform == "vmap(grad)":
        np.testing.assert_array_equal(out[1], 0.0)
        np.testing.assert_allclose(out[good], exact_grad(C[good]), atol=1e-7)
    else:
        assert out[1] == 0.0
        np.testing.assert_allclose(out[good], exact_grad(C[good]).sum(axis=1), atol=1e-7)


def test_errors_under_vmap_name_every_failing_element() -> None:
    """Indices count the flattened vmap and batch dimensions, as for a batched call."""

    def solve(q: Any) -> Any:
        P, C_, l, u = np.zeros((3, 3)), np.eye(3), -np.ones(3), np.full(3, np.inf)
        return qj.solve_qp(P, q, None, None, C_, l, u, backend="jax")[0]

    Q = np.array([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0], [1.0, -1.0, 1.0], [1.0, 1.0, -2.0]])  # 2, 3 unbounded
    for fn, arg in [(jax.vmap(solve), Q), (jax.vmap(jax.vmap(solve)), Q.reshape(2, 2, 3))]:
        with pytest.raises(qd.SolverError) as info:
            fn(arg)
        assert info.value.indices == [2, 3]
        assert "batch elements 2 (dual_infeasible), 3 (dual_infeasible)" in str(info.value)

    f = layer()
    bad = C.copy()
    bad[[1, 3], 0] = np.nan
    with pytest.raises(qd.ParameterError) as err:
        jax.vmap(f)(bad)
    assert err.value.indices == [1, 3]


def test_vmap_over_the_warm_start_alone() -> None:
    P, q, C_, l, u = np.eye(2), np.array([1.0, -1.0]), np.eye(2), -np.ones(2), np.ones(2)

    def solve(x0: Any) -> Any:
        return qj.solve_qp(P, q, None, None, C_, l, u, backend="jax", warm_start=qd.WarmStart(x0))[0]

    starts = np.array([[0.0, 0.0], [1.0, 1.0], [-5.0, 3.0]])
    want = np.tile([-1.0, 1.0], (3, 1))
    np.testing.assert_allclose(jax.vmap(solve)(starts), want, atol=1e-7)
    np.testing.assert_allclose(jax.jit(jax.vmap(solve))(starts), want, atol=1e-7)
    grads = jax.vmap(jax.grad(lambda x0: solve(x0).sum()))(starts)
    np.testing.assert_array_equal(grads, 0.0)  # the solution does not depend on the warm start


@pytest.mark.parametrize("order", ["hessian", "jacfwd(grad)", "jacrev(grad)", "jvp(grad)"])
def test_second_derivatives_are_refused(order: str) -> None:
    f = layer()

    def loss(v: Any) -> Any:
        return jnp.sum(f(v)[0] ** 2)

    v = jnp.array([1.0, 3.0])
    run = {
        "hessian": lambda: jax.hessian(loss)(v),
        "jacfwd(grad)": lambda: jax.jacfwd(jax.grad(loss))(v),
        "jacrev(grad)": lambda: jax.jacrev(jax.grad(loss))(v),
        "jvp(grad)": lambda: jax.jvp(jax.grad(loss), (v,), (jnp.ones(2),)),
    }[order]
    with pytest.raises(qd.NotSupportedError, match="no second derivatives"):
        run()
    np.testing.assert_allclose(jax.grad(loss)(v), 2 * exact(v) * exact_grad(v), atol=1e-7)


def _dot_precisions(jaxpr: Any) -> list[Any]:
    """The ``precision`` of every matrix product in ``jaxpr`` and its sub-jaxprs."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(eqn.params["precision"])
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found += _dot_precisions(inner)
    return found


@pytest.mark.parametrize("transform", ["jit", "vmap(jit)", "vmap(checkpoint)"])
def test_folded_solves_trace_products_in_full_precision(transform: str) -> None:
    """float32 products default to TF32 / bfloat16 passes on accelerators, which no solve converges
    through; a vmap of an existing jaxpr folds the solve after the caller's precision setting ended."""
    P, C_, l, u = np.eye(2), np.eye(2), -np.ones(2), np.ones(2)

    def solve(q: Any) -> Any:
        return qj.solve_qp(P, q, None, None, C_, l, u, backend="jax")[0]

    fn = {"jit": jax.jit(solve), "vmap(jit)": jax.vmap(jax.jit(solve))}.get(transform)
    fn = fn or jax.vmap(jax.checkpoint(solve))
    q = np.ones((2, 2) if transform != "jit" else 2, dtype=np.float32)
    precisions = _dot_precisions(jax.make_jaxpr(fn)(q).jaxpr)
    assert precisions
    highest = jax.lax.Precision.HIGHEST
    assert all(p is not None and all(x == highest for x in p) for p in precisions), set(map(str, precisions))


def test_an_invalid_shared_value_under_vmap_is_not_named_per_element() -> None:
    c = qd.Parameter(2, name="c")
    d = qd.Parameter(2, name="d")
    y = qd.Variable(2, name="y")
    prob = qd.Problem(qd.Minimize(qd.sum_squares(y) + c @ y), [y >= d])
    f = prob.to_jax(parameters=[c, d], variables=[y], backend="jax", on_failure="nan")
    with pytest.raises(Exception, match=r"d \(NaN or Inf, shared by the batch\):") as info:
        jax.jit(jax.vmap(lambda v: f(v, np.array([np.nan, 0.0]))[0]))(C[:2])
    assert "in batch elements" not in str(info.value)
