"""Every ModelError raised while building a model and every ParameterError raised by ``solve``.

Each message must name the offending expression (or parameter, and batch element where
batched) and say what to change.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import qpdsl as qd
from qpdsl.validation import check_parameter_values


@pytest.fixture
def m():
    """A small namespace of leaves shared by the model-error cases."""

    class M:
        x = qd.Variable(3, name="x")
        y = qd.Variable(4, name="y")
        X = qd.Variable((2, 3), name="X")
        p = qd.Parameter(name="p")
        g = qd.Parameter(name="g", nonneg=True)
        P = qd.Parameter((3, 3), name="P")
        S = qd.Parameter((3, 3), name="S", psd=True)
        q = qd.Parameter(3, name="q")

    return M


def raises_model(fn, *fragments: str) -> str:
    """Call fn, expect a ModelError whose message contains every fragment (regex-escaped)."""
    with pytest.raises(qd.ModelError) as info:
        fn()
    msg = str(info.value)
    for frag in fragments:
        assert re.search(re.escape(frag), msg), f"{frag!r} not in message: {msg}"
    assert isinstance(info.value, qd.QPDSLError)
    return msg


def objective_only(expr):
    return qd.Problem(qd.Minimize(expr))


def with_constraint(x, constraint):
    return qd.Problem(qd.Minimize(qd.sum(x)), [constraint])


# ---------------------------------------------------------------- curvature of the objective


def test_minimize_concave(m):
    raises_model(
        lambda: qd.Minimize(-qd.sum_squares(m.x)),
        "Minimize(-sum_squares(x))",
        "concave, not convex",
        "qd.Maximize",
    )


def test_maximize_convex(m):
    raises_model(
        lambda: qd.Maximize(qd.norm1(m.x)), "Maximize(norm1(x))", "convex, not concave", "qd.Minimize"
    )
    raises_model(lambda: qd.Maximize(qd.max(m.x)), "Maximize(max(x))", "not concave")


def test_minimize_min_is_concave(m):
    raises_model(lambda: qd.Minimize(qd.min(m.x)), "min(x)", "not convex")


def test_sum_of_convex_and_concave(m):
    raises_model(
        lambda: qd.Minimize(qd.sum_squares(m.x) - qd.norm1(m.x)),
        "sum_squares(x) - norm1(x)",
        "-norm1(x) (concave)",
        "must not mix convex and concave",
    )


def test_nonmonotone_atom_of_convex(m):
    raises_model(
        lambda: qd.Minimize(qd.sum(qd.abs(qd.abs(m.x)))),
        "offending expression is abs(abs(x))",
        "argument abs(x) is convex",
    )
    raises_model(lambda: qd.Minimize(qd.sum(qd.pos(-qd.abs(m.x)))), "pos(-abs(x))", "-abs(x) is concave")


def test_parameter_times_convex_without_nonneg(m):
    raises_model(lambda: qd.Minimize(m.p * qd.norm1(m.x)), "p * norm1(x)", "nonneg=True")
    raises_model(
        lambda: qd.Minimize(qd.sum((m.p + 1) * qd.square(m.x))), "(p + 1) * square(x)", "nonneg=True"
    )
    # a nonneg parameter with a minus sign is known to be nonpositive: concave, not unknown
    raises_model(
        lambda: qd.Minimize(qd.sum(-m.g * qd.square(m.x))), "-g * square(x)", "concave", "qd.Maximize"
    )
    raises_model(
        lambda: qd.Minimize(qd.sum(qd.multiply(np.array([1.0, -1.0, 1.0]), qd.square(m.x)))),
        "square(x)",
        "known sign",
    )


def test_nonneg_parameter_times_convex_is_fine(m):
    prob = qd.Problem(qd.Minimize(m.g * qd.norm1(m.x) + m.g * qd.sum_squares(m.x)))
    assert prob.compile().n >= 3


def test_objective_must_be_scalar(m):
    raises_model(lambda: qd.Minimize(m.x), "scalar", "(3,)", "sum it")


def test_objective_must_be_minimize_or_maximize(m):
    raises_model(lambda: qd.Problem(qd.sum(m.x)), "qd.Minimize(expr) or qd.Maximize(expr)")


# ---------------------------------------------------------------- constraints


def test_quadratic_in_constraint(m):
    raises_model(
        lambda: with_constraint(m.x, qd.sum_squares(m.x) <= 1),
        "sum_squares(x) <= 1",
        "only allowed in the objective",
    )
    raises_model(
        lambda: with_constraint(m.x, qd.square(m.x[0]) == 1), "square(x[0])", "only allowed in the objective"
    )
    raises_model(
        lambda: with_constraint(m.x, 1 >= qd.quad_form(m.x, np.eye(3))),
        "quad_form(x, ",
        "only allowed in the objective",
    )


def test_convex_on_the_right_of_le(m):
    raises_model(
        lambda: with_constraint(m.x, m.x <= qd.abs(m.x)),
        "x <= abs(x)",
        "larger side must be concave",
        "abs(x) is convex",
    )
    raises_model(lambda: with_constraint(m.x, qd.max(m.x) >= 1), "1 <= max(x)", "larger side must be concave")


def test_concave_on_the_left_of_le(m):
    raises_model(
        lambda: with_constraint(m.x, qd.min(m.x) <= 1),
        "min(x) <= 1",
        "smaller side must be convex",
        "min(x) is concave",
    )
    raises_model(
        lambda: with_constraint(m.x, 0 >= qd.minimum(m.x, 1)), "minimum(x, 1)", "smaller side must be convex"
    )


def test_non_affine_equality(m):
    raises_model(
        lambda: with_constraint(m.x, qd.abs(m.x) == 1), "abs(x) == 1", "both sides of == must be affine"
    )
    raises_model(lambda: with_constraint(m.x, 0 == qd.norm1(m.x)), "norm1(x)", "must be affine")


def test_strict_inequalities(m):
    raises_model(lambda: m.x < 1, "x < 1", "strict inequalities", "use <=")
    raises_model(lambda: m.x > m.y[:3], "x > y[:3]", "use >=")


def test_chained_comparison_and_truth_value(m):
    raises_model(lambda: 0 <= m.x <= 1, "truth value", "0 <= x")
    raises_model(lambda: bool(m.x), "truth value", "(x)")


def test_not_a_constraint(m):
    raises_model(
        lambda: qd.Problem(qd.Minimize(qd.sum(m.x)), [True]), "True is not a constraint", "==, <= or >="
    )


# ---------------------------------------------------------------- products and parameters (DPP)


def test_variable_times_variable(m):
    raises_model(lambda: m.x * m.x, "x * x", "both hold variables", "qd.quad_form")
    raises_model(lambda: m.x @ m.x, "x @ x", "both hold variables", "qd.sum_squares")
    raises_model(lambda: m.X @ qd.Variable(3, name="v"), "X @ v", "not affine")


def test_parameter_times_parameter_times_variable_is_rewritten(m):
    # an auxiliary variable keeps these affine in the parameters (tests/test_language_extensions.py)
    for expr in (m.p * m.p * m.x, (m.p * m.x) * m.p, m.P @ (m.P @ m.x)):
        qd.Problem(qd.Minimize(qd.sum_squares(m.x) + qd.sum(expr)))


def test_product_of_parameter_matrices_as_factor(m):
    raises_model(
        lambda: qd.Problem(qd.Minimize(qd.sum_squares(m.x) + qd.sum((m.P @ m.P) @ m.x))),
        "P @ P @ x",
        "itself a product of parameters",
        "the other way round",
    )


def test_parameter_scaling_parametric_quadratic(m):
    raises_model(
        lambda: qd.Problem(qd.Minimize(m.g * qd.quad_form(m.x, m.S))),
        "g * quad_form(x, S)",
        "products of parameters",
        "Parameter(psd=True)",
        "qd.sum_squares(F @ w)",
    )


def test_division_by_parameter(m):
    raises_model(lambda: m.x / m.p, "division by p", "numeric constants")
    raises_model(lambda: m.x / (m.x + 1), "division by x + 1")


def test_division_by_zero(m):
    raises_model(lambda: m.x / 0, "division of x by zero")


def test_matmul_with_scalar(m):
    raises_model(lambda: m.p @ m.x, "p @ x", "use * for scalars")


# ---------------------------------------------------------------- quadratic atoms


def test_quad_form_non_symmetric_constant(m):
    raises_model(
        lambda: qd.quad_form(m.x, np.triu(np.ones((3, 3)))), "quad_form(x, ", "not symmetric", "(Q + Q.T) / 2"
    )


def test_quad_form_indefinite_constant(m):
    raises_model(
        lambda: qd.quad_form(m.x, np.diag([1.0, -1.0, 1.0])),
        "quad_form(x, ",
        "not positive semidefinite",
        "smallest eigenvalue -1",
        "PSD",
    )


def test_quad_form_parameter_without_psd(m):
    raises_model(lambda: qd.quad_form(m.x, m.P), "quad_form(x, P)", "psd=True")


def test_quad_form_matrix_expression_or_variable(m):
    raises_model(lambda: qd.quad_form(m.x, 2 * m.S), "quad_form(x, 2 * S)", "Parameter(psd=True)")
    raises_model(lambda: qd.quad_form(m.x, qd.Variable((3, 3), name="V")), "V", "must not hold variables")


def test_quad_form_shapes(m):
    raises_model(lambda: qd.quad_form(m.x, np.eye(4)), "quad_form", "(4, 4)", "expected (3, 3)", "x")
    raises_model(
        lambda: qd.quad_form(qd.Variable((2, 2), name="Z"), np.eye(4)), "quad_form(Z", "must be a vector"
    )


def test_quadratic_inside_piecewise_linear_atom(m):
    raises_model(lambda: qd.pos(qd.square(m.x)), "pos(square(x))", "square(x) inside pos", "only be summed")
    raises_model(lambda: qd.abs(qd.sum_squares(m.x)), "abs(sum_squares(x))", "inside abs")
    raises_model(
        lambda: qd.max(qd.hstack([qd.sum_squares(m.x), 1.0])), "hstack([sum_squares(x), 1])", "inside max"
    )
    raises_model(lambda: qd.norm1(qd.quad_form(m.x, m.S) + m.x), "quad_form(x, S)", "inside norm1")


def test_quadratic_of_non_affine(m):
    raises_model(lambda: qd.square(qd.abs(m.x)), "square(abs(x))", "abs(x) is convex", "affine argument")
    raises_model(lambda: qd.sum_squares(qd.max(m.x)), "sum_squares(max(x))", "affine argument")
    raises_model(lambda: qd.huber(qd.pos(m.x)), "huber(pos(x)", "affine argument")


def test_huber_threshold(m):
    raises_model(lambda: qd.huber(m.x, -1.0), "huber(x, -1)", "nonnegative", "nonneg=True")
    raises_model(lambda: qd.huber(m.x, m.p), "huber(x, p)", "nonneg=True")
    raises_model(lambda: qd.huber(m.x, qd.Variable(name="M")), "huber(x, M)", "constant or parameter")


# ---------------------------------------------------------------- shapes, indices, arguments


def test_shape_mismatch_in_sum(m):
    raises_model(lambda: m.x + m.y, "x + y", "(3,), (4,)", "do not broadcast")


def test_shape_mismatch_in_elementwise_product(m):
    raises_model(lambda: qd.multiply(m.q, m.y), "q * y", "do not broadcast")


def test_shape_mismatch_in_constraint(m):
    raises_model(lambda: m.x == m.y, "constraint x == y", "do not broadcast")
    raises_model(lambda: m.X <= np.ones((3, 2)), "constraint X <= ", "(2, 3), (3, 2)")


def test_shape_mismatch_in_matmul(m):
    raises_model(lambda: np.ones((3, 4)) @ m.x, "@ x", "(3, 4) and (3,)", "not aligned")
    raises_model(lambda: m.X @ np.ones(4), "X @ ", "(2, 3) and (4,)", "not aligned")


def test_bad_index(m):
    raises_model(lambda: m.x[5], "index 5", "out of range for x", "(3,)")
    raises_model(lambda: m.x[0, 1], "out of range for x")
    raises_model(lambda: m.X[:, 3], "X", "(2, 3)")


def test_bad_axis_and_reshape(m):
    raises_model(lambda: qd.sum(m.x, axis=1), "sum over axis 1 of x")
    raises_model(lambda: qd.cumsum(m.x, axis=2), "cumsum over axis 2 of x")
    raises_model(lambda: qd.max(m.X, axis=2), "max over axis 2")
    raises_model(lambda: qd.reshape(m.x, (2, 2)), "cannot reshape x", "(2, 2)")


def test_stack_and_diag_shapes(m):
    raises_model(lambda: qd.hstack([m.X, qd.Variable((3, 3), name="W")]), "cannot stack", "(2, 3)", "(3, 3)")
    raises_model(lambda: qd.diag(m.X), "diag of non-square X", "(2, 3)")
    raises_model(lambda: qd.vstack([]), "at least one")


def test_bad_leaves(m):
    raises_model(lambda: qd.Variable((2, 2, 2)), "(2, 2, 2)", "at most 2 dimensions")
    raises_model(lambda: qd.Variable(0), "non-positive dimension")
    raises_model(lambda: qd.Parameter((2, 3), name="B", psd=True), "parameter B", "square matrix")
    raises_model(lambda: m.x + np.array([1.0, np.nan, 0.0]), "finite", "Parameter")


def test_mixed_list(m):
    raises_model(lambda: qd.Minimize([m.x[0], 1.0]), "qd.hstack or qd.vstack")


def test_maximum_needs_two_arguments(m):
    raises_model(lambda: qd.maximum(m.x), "at least two", "qd.max")
    raises_model(lambda: qd.minimum(m.x), "at least two", "qd.min")


def test_no_variables(m):
    raises_model(lambda: qd.Problem(qd.Minimize(m.p)), "no variables")
    raises_model(lambda: qd.Problem(qd.Minimize(qd.Constant(1.0)), []), "no variables")


# ---------------------------------------------------------------- ParameterError paths of solve


@pytest.fixture
def pp():
    x = qd.Variable(3, name="x")
    S = qd.Parameter((3, 3), name="S", psd=True)
    q = qd.Parameter(3, name="q")
    lam = qd.Parameter(name="lam", nonneg=True)
    prob = qd.Problem(qd.Minimize(qd.quad_form(x, S) + q @ x + lam * qd.norm1(x)), [x <= 1])
    good = {S: np.eye(3), q: np.ones(3), lam: 1.0}

    class PP:
        pass

    PP.x, PP.S, PP.q, PP.lam, PP.prob, PP.good = x, S, q, lam, prob, good
    return PP


def raises_param(pp, overrides, *fragments, drop=()):
    values = {**pp.good, **overrides}
    for k in drop:
        values.pop(k)
    with pytest.raises(qd.ParameterError) as info:
        pp.prob.solve(values)  # parameter checks come before any backend is used
    msg = str(info.value)
    for frag in fragments:
        assert re.search(re.escape(frag), msg), f"{frag!r} not in message: {msg}"
    assert isinstance(info.value, ValueError) and isinstance(info.value, qd.QPDSLError)
    return msg


def test_missing_parameter(pp):
    raises_param(pp, {}, "parameter lam", "no value", "pass it to solve()", drop=[pp.lam])


def test_unknown_parameter(pp):
    other = qd.Parameter(name="other")
    raises_param(pp, {other: 1.0}, "'other' is not a parameter of this problem", "S, q, lam")
    raises_param(pp, {"nope": 1.0}, "'nope' is not a parameter")


def test_parameter_by_unknown_object(pp):
    raises_param(pp, {pp.x: np.ones(3)}, "'x' is not a parameter")


def test_wrong_shape(pp):
    raises_param(pp, {pp.q: np.ones(4)}, "parameter q", "expected shape (3,)", "got (4,)")
    raises_param(pp, {pp.q: np.ones((2, 4))}, "parameter q", "got (2, 4)")
    raises_param(pp, {pp.S: np.eye(2)}, "parameter S", "(3, 3)", "got (2, 2)")
    raises_param(pp, {pp.lam: np.ones((2, 2))}, "parameter lam", "got (2, 2)")


def test_non_numeric(pp):
    raises_param(pp, {pp.q: "abc"}, "parameter q", "not numeric")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite(pp, bad):
    msg = raises_param(pp, {pp.q: np.array([1.0, bad, 1.0])}, "parameter q", "NaN or Inf", "finite")
    assert "batch" not in msg  # not batched: no batch element to name


def test_non_finite_batched_names_element(pp):
    q = np.ones((4, 3))
    q[2, 1] = np.nan
    raises_param(pp, {pp.q: q}, "parameter q", "batch element(s) 2")
    q[0, 0] = np.inf
    raises_param(pp, {pp.q: q}, "batch element(s) 0, 2")


def test_psd_parameter_unsymmetric_checked_on_symmetric_part(pp):
    # x'Mx only sees (M + M') / 2: an unsymmetric M with a PSD symmetric part is a valid value
    check_parameter_values(pp.S, np.triu(np.ones((3, 3)))[None])
    M = np.array([[1.0, 2.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # symmetric part indefinite
    raises_param(pp, {pp.S: M}, "parameter S", "negative eigenvalue", "(M + M.T) / 2")


def test_psd_parameter_indefinite(pp):
    raises_param(
        pp, {pp.S: np.diag([1.0, -1.0, 1.0])}, "parameter S", "negative eigenvalue", "positive semidefinite"
    )


def test_psd_parameter_batched_names_element(pp):
    S = np.stack([np.eye(3)] * 4)
    S[3] = np.diag([1.0, -0.5, 1.0])
    raises_param(pp, {pp.S: S}, "parameter S", "negative eigenvalue", "batch element(s) 3")
    S = np.stack([np.eye(3)] * 4)
    S[1, 0, 2] = 3.0
    raises_param(pp, {pp.S: S}, "parameter S", "negative eigenvalue", "batch element(s) 1")


def test_psd_parameter_tiny_asymmetry_and_semidefinite_accepted(pp):
    # rounding-level asymmetry and a singular PSD matrix are fine
    S = np.diag([1.0, 0.0, 2.0])
    S[0, 1] = 1e-14
    names = qd.available_backends() if _backends_load() else {}
    if "proxsuite" not in names:
        pytest.skip("proxsuite backend not available")
    sol = pp.prob.solve({**pp.good, pp.S: S}, backend="proxsuite")
    assert sol.status == "solved"


def _backends_load() -> bool:
    try:
        qd.available_backends()
    except Exception:
        try:
            qd.available_backends()
        except Exception:
            return False
    return True


def test_nonneg_parameter_negative(pp):
    msg = raises_param(pp, {pp.lam: -0.5}, "parameter lam", "nonneg", "negative", ">= 0")
    assert "batch" not in msg


def test_nonneg_parameter_negative_batched_names_element(pp):
    raises_param(pp, {pp.lam: np.array([1.0, 2.0, -3.0, 0.0])}, "parameter lam", "batch element(s) 2")


def test_mismatched_batch_sizes(pp):
    raises_param(
        pp,
        {pp.q: np.ones((2, 3)), pp.lam: np.ones(3)},
        "batch size",
        "3",
        "2",
        "parameter lam",
        "parameter q",
    )


def test_unbatched_invalid_value_broadcast_into_batch_is_not_blamed_on_elements(pp):
    msg = raises_param(pp, {pp.q: np.ones((5, 3)), pp.lam: -1.0}, "parameter lam", "negative")
    assert "batch element" not in msg


def test_parameter_default_value_is_checked(pp):
    with pytest.raises(qd.ParameterError, match="parameter w"):
        qd.Parameter(name="w", nonneg=True, value=-1.0)  # checked when given, not at solve time


# ---------------------------------------------------------------- operators qpdsl does not have


def test_not_equal(m):
    raises_model(lambda: m.x != 1, "x != 1", "no != constraint", "<=", ">=", "not a QP")
    raises_model(lambda: 1 != m.x, "!= constraint")


def test_single_constraint_not_in_a_list(m):
    raises_model(lambda: qd.Problem(qd.Minimize(qd.sum(m.x)), m.x >= 0), "a list", "[0 <= x]")


def test_power(m):
    raises_model(lambda: m.x**2, "x ** 2", "qd.square(x)", "qd.sum_squares(x)")
    raises_model(lambda: m.x**3, "x ** 3", "only")
    raises_model(lambda: 2**m.x, "2 ** x", "not")
    assert (m.x**1) is m.x


def test_axis_must_be_none_or_int(m):
    for fn in (qd.sum, qd.mean, qd.max, qd.min):
        raises_model(lambda fn=fn: fn(m.X, axis=(0, 1)), "axis=(0, 1)", "axis=None or an int")
    raises_model(lambda: m.X.sum(axis=(0, 1)), "axis=None or an int")
    raises_model(lambda: qd.cumsum(m.X, axis=(0,)), "an int")


def test_index_must_be_int_slice_or_int_array(m):
    raises_model(lambda: m.x[1.5], "x[1.5]", "int, a slice", "integer array")
    raises_model(lambda: m.x[np.array([0.0, 1.0])], "integer array")
    raises_model(lambda: m.X[0, 1.0], "int, a slice")
    raises_model(lambda: m.x[5], "out of range")


def test_division_by_variable(m):
    raises_model(lambda: m.x / m.y[:3], "division by y[:3]", "holds variables", "numeric constants")
    raises_model(lambda: 1 / m.x, "division by x", "holds variables")
    raises_model(lambda: m.x / m.p, "division by p", "1/p", "numeric constants")


def test_atom_of_data_only(m):
    # abs(p) would be an epigraph variable t >= |p| that nothing pushes down: refused, not mis-solved
    raises_model(lambda: qd.abs(m.p), "abs(p)", "not affine in the parameters", "own Parameter")
    raises_model(lambda: qd.maximum(m.q, 1.0), "maximum(q, 1)", "not affine in the parameters")
    raises_model(lambda: qd.abs(np.array([-3.0, 1.0])), "numeric constant", "numpy")
