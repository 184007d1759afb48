"""qd.from_cvxpy: cvxpy problems imported, compiled, solved, compared with cvxpy's own solve."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

cp = pytest.importorskip("cvxpy")

import qpdsl as qd  # noqa: E402
from qpdsl.problem import collect_parameter_values  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore:.*NonPos.*"),
]

OBJ_RTOL = 1e-6
SOL_ATOL = 1e-5
CLARABEL = dict(solver="CLARABEL", tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)


# ---------------------------------------------------------------- reference solve of the standard form


def standard_form_solve(qprob: qd.Problem) -> tuple[float, np.ndarray]:
    """Compile ``qprob``, apply its parameters' values and solve the standard form with cvxpy + Clarabel.

    Independent of qpdsl's backends: checks the importer and the compiler only.
    """
    c = qprob.compile()
    values, batch, _ = collect_parameter_values(c.parameters, {})
    d = c.apply(c.stack_theta(values, batch)).dense()
    P, q, r = d.P[0], d.q[0], float(np.asarray(d.r)[0]) if d.r is not None else 0.0
    x = cp.Variable(c.n)
    cons = []
    if c.n_eq:
        cons.append(d.A[0] @ x == d.b[0])
    if c.n_in:
        u, lo = d.u[0], d.l[0]
        fu, fl = np.isfinite(u), np.isfinite(lo)
        if fu.any():
            cons.append(d.C[0][fu] @ x <= u[fu])
        if fl.any():
            cons.append(d.C[0][fl] @ x >= lo[fl])
    Ps = (P + P.T) / 2
    obj = 0.5 * cp.quad_form(x, cp.psd_wrap(Ps)) + q @ x + r if np.any(Ps) else q @ x + r
    ref = cp.Problem(cp.Minimize(obj), cons)
    ref.solve(**CLARABEL)
    assert ref.status == "optimal", ref.status
    return qprob.objective.sign * ref.value, x.value


def variable_value(qprob: qd.Problem, xs: np.ndarray, var: cp.Variable) -> np.ndarray:
    qvar = qprob.cvxpy_map[var]
    sl = qprob.compile().variables[qvar]
    return xs[sl.offset : sl.offset + sl.size].reshape(sl.shape)


def check(problem: cp.Problem, unique: list | tuple = ()) -> qd.Problem:
    """Import, solve the standard form, compare objective and the ``unique`` variables with cvxpy."""
    qprob = qd.from_cvxpy(problem)
    value, xs = standard_form_solve(qprob)
    problem.solve(**CLARABEL)
    assert problem.status == "optimal"
    assert abs(value - problem.value) <= OBJ_RTOL * max(1.0, abs(problem.value)), (value, problem.value)
    for var in unique:
        np.testing.assert_allclose(variable_value(qprob, xs, var), var.value, atol=SOL_ATOL, rtol=0)
    return qprob


rng = np.random.default_rng(7)


# ---------------------------------------------------------------- problems


def test_lasso():
    n, m = 12, 8
    x = cp.Variable(n, name="x")
    A = cp.Parameter((m, n), name="A", value=rng.standard_normal((m, n)))
    b = cp.Parameter(m, name="b", value=rng.standard_normal(m))
    lam = cp.Parameter(nonneg=True, name="lam", value=0.4)
    prob = cp.Problem(
        cp.Minimize(cp.sum_squares(A @ x - b) + lam * cp.norm1(x)), [x <= 1, x >= -1, cp.sum(x) == 0]
    )
    q = check(prob)
    assert {p.name for p in q.parameters()} == {"A", "b", "lam"}
    assert q.cvxpy_map[lam].nonneg and q.cvxpy_map[x].name == "x"


def test_ridge_unique_solution():
    n, m = 6, 10
    x = cp.Variable(n, name="x")
    A = cp.Parameter((m, n), value=rng.standard_normal((m, n)))
    b = cp.Parameter(m, value=rng.standard_normal(m))
    prob = cp.Problem(
        cp.Minimize(cp.sum_squares(A @ x - b) + 0.1 * cp.sum_squares(x) + cp.norm1(x)), [x <= 0.5]
    )
    check(prob, unique=[x])


def test_huber_regression():
    n, m = 5, 30
    x = cp.Variable(n)
    A = cp.Parameter((m, n), value=rng.standard_normal((m, n)))
    b = cp.Parameter(m, value=rng.standard_normal(m) * 3)
    prob = cp.Problem(cp.Minimize(cp.sum(cp.huber(A @ x - b, 1.5)) + 0.01 * cp.sum_squares(x)))
    check(prob, unique=[x])


def test_huber_parameter_threshold():
    x = cp.Variable(4)
    M = cp.Parameter(nonneg=True, value=0.7)
    b = rng.standard_normal(4) * 2
    prob = cp.Problem(cp.Minimize(cp.sum(cp.huber(x - b, M)) + cp.sum_squares(x)))
    check(prob, unique=[x])


def test_portfolio_psd_parameter():
    n = 8
    F = rng.standard_normal((n, n))
    w = cp.Variable(n, name="w")
    Sigma = cp.Parameter((n, n), PSD=True, name="Sigma", value=F @ F.T / n + 0.1 * np.eye(n))
    mu = cp.Parameter(n, name="mu", value=rng.standard_normal(n))
    prob = cp.Problem(cp.Maximize(mu @ w - 2.0 * cp.quad_form(w, Sigma)), [cp.sum(w) == 1, w >= 0, w <= 0.4])
    q = check(prob, unique=[w])
    assert q.cvxpy_map[Sigma].psd


def test_lp():
    n, m = 10, 6
    x = cp.Variable(n, nonneg=True)
    c = cp.Parameter(n, value=rng.uniform(0.5, 2.0, n))
    A = rng.standard_normal((m, n))
    prob = cp.Problem(cp.Minimize(c @ x), [A @ x >= -1, cp.sum(x) == 3, x <= 2])
    q = check(prob)  # LP solutions need not be unique: compare the objective only
    # nonneg=True is a user constraint (with a dual and a shift), not a compiler row
    qx = q.cvxpy_map[x]
    assert any(c.rhs is qx and c.lhs.describe() == "0" for c in q.constraints)


def test_mpc():
    nx, nu, T = 3, 2, 8
    A = np.eye(nx) + 0.1 * rng.standard_normal((nx, nx))
    B = 0.3 * rng.standard_normal((nx, nu))
    X = cp.Variable((nx, T + 1), name="X")
    U = cp.Variable((nu, T), name="U")
    x0 = cp.Parameter(nx, name="x0", value=rng.standard_normal(nx))
    cons = [X[:, 0] == x0, cp.abs(U) <= 0.5]
    cons += [X[:, t + 1] == A @ X[:, t] + B @ U[:, t] for t in range(T)]
    prob = cp.Problem(
        cp.Minimize(cp.sum_squares(X) + 0.1 * cp.sum_squares(U) + 10 * cp.norm_inf(X[:, T])), cons
    )
    check(prob, unique=[X, U])


def test_svm():
    m, n = 40, 3
    feats = rng.standard_normal((m, n))
    labels = np.sign(feats @ rng.standard_normal(n) + 0.3 * rng.standard_normal(m))
    w = cp.Variable(n)
    b0 = cp.Variable()
    lam = cp.Parameter(nonneg=True, value=0.5)
    loss = cp.sum(cp.pos(1 - cp.multiply(labels, feats @ w + b0)))
    prob = cp.Problem(cp.Minimize(loss / m + lam * cp.sum_squares(w)))
    check(prob, unique=[w])


def test_matrix_variable():
    W = rng.standard_normal((3, 4))
    X = cp.Variable((3, 4), name="X")
    prob = cp.Problem(
        cp.Minimize(
            cp.sum_squares(X - W)
            + cp.sum(cp.pos(cp.sum(X, axis=0) - 1))
            + cp.norm1(X)
            + cp.sum(cp.maximum(X[:, 1], -X[:, 2]))
        ),
        [
            cp.cumsum(X, axis=1)[:, -1] <= 2,
            cp.diag(X[:, :3]) >= -0.1,
            X.T[0] == cp.mean(X, axis=0)[:3],
            cp.trace(X[:, 1:]) <= 1,
        ],
    )
    check(prob, unique=[X])


def test_reshape_orders_and_stacking():
    x = cp.Variable(6)
    Y = cp.Variable((2, 3))
    t = rng.standard_normal(6)
    T2 = rng.standard_normal((3, 2))
    obj = (
        cp.sum_squares(cp.reshape(x, (3, 2), order="F") - T2)
        + cp.sum_squares(cp.reshape(Y, (3, 2), order="C") - T2)
        + cp.sum_squares(cp.vec(Y, order="F") - t)
        + cp.sum(cp.abs(cp.hstack([x[:2], Y[0]])))
        + cp.sum_squares(cp.vstack([Y, cp.reshape(x[:3], (1, 3), order="C")]))
    )
    prob = cp.Problem(
        cp.Minimize(obj),
        [
            cp.diag(cp.reshape(x[:4], (2, 2), order="F")) <= 0.2,
            cp.concatenate([x[:2], Y[1, :2]], axis=0) >= -1,
        ],
    )
    check(prob, unique=[x, Y])


def test_quadratic_atoms():
    x = cp.Variable(5)
    Q = rng.standard_normal((5, 5))
    Q = Q @ Q.T
    c = rng.standard_normal(5)
    obj = (
        cp.quad_form(x, Q)
        + cp.sum(cp.power(x - 1, 2))
        + cp.sum(cp.square(x[:2]))
        + cp.quad_over_lin(x, 4.0)
        + c @ x
    )
    prob = cp.Problem(cp.Minimize(obj), [cp.max(x) <= 1, cp.min(x) >= -1, cp.sum(cp.minimum(x, 0.2)) >= -2])
    check(prob, unique=[x])


def test_piecewise_linear_maximize():
    x = cp.Variable(4)
    c = rng.standard_normal(4)
    obj = cp.Maximize(
        c @ x
        - cp.norm_inf(x - 1)
        - cp.sum(cp.neg(x))
        - 2 * cp.sum(cp.pos(x - 2))
        + cp.min(cp.hstack([x, -x + 3]))
        - cp.sum_squares(x)
    )
    prob = cp.Problem(obj, [cp.norm1(x) <= 6])
    check(prob, unique=[x])


def test_total_variation_parameter():
    n = 30
    b = cp.Parameter(n, name="b", value=np.repeat([0.0, 1.0, -0.5], 10) + 0.2 * rng.standard_normal(n))
    lam = cp.Parameter(nonneg=True, name="lam", value=0.5)
    x = cp.Variable(n, name="x")
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x - b) + lam * cp.norm1(cp.diff(x))))
    check(prob, unique=[x])


def test_axis_reductions():
    X = cp.Variable((3, 4))
    W = rng.standard_normal((3, 4))
    obj = (
        cp.sum_squares(X - W)
        + cp.sum(cp.max(X, axis=1))
        + cp.sum(cp.norm1(X, axis=0))
        - cp.sum(cp.min(X, axis=0, keepdims=True))
        + cp.sum(cp.norm_inf(X, axis=1))
    )
    cons = [cp.sum(X, axis=1, keepdims=True) <= np.ones((3, 1)), cp.mean(X) >= -1]
    check(cp.Problem(cp.Minimize(obj), cons), unique=[X])


def test_variable_attributes_and_constraint_objects():
    x = cp.Variable(4, nonpos=True)
    y = cp.Variable(3, bounds=[-0.5, 0.5])
    S = cp.Variable((2, 2), symmetric=True)
    t = rng.standard_normal(4) + 0.5
    obj = (
        cp.sum_squares(x - t)
        + cp.sum_squares(y - 2 * t[:3])
        + cp.sum_squares(S - np.array([[1.0, 2.0], [0.0, 1.0]]))
    )
    cons = [cp.Zero(x[0] - y[0] + 0.1), cp.NonNeg(y[1] + 0.4), cp.NonPos(S[0, 0] - 0.5)]
    check(cp.Problem(cp.Minimize(obj), cons), unique=[x, y, S])


def test_misc_affine():
    x = cp.Variable(3)
    M = cp.Variable((3, 3))
    p = cp.Parameter(3, value=rng.standard_normal(3))
    P = cp.Parameter((2, 3), value=rng.standard_normal((2, 3)))
    obj = (
        cp.sum_squares(M - np.eye(3))
        + cp.sum_squares(x - p)
        + cp.sum_squares(cp.upper_tri(M))
        + cp.sum_squares(cp.diag(x, k=1)[:3, 1:] - 1)
        + cp.sum(cp.abs(cp.diag(M, k=1)))
        + cp.sum_squares(P @ x + cp.broadcast_to(cp.sum(x), (2,)))
        + cp.sum_squares(x / 2 - p)
    )
    cons = [x @ np.ones((3, 2)) <= 3, cp.sum(cp.multiply(p, x)) <= 1, p.T @ M <= 2]
    check(cp.Problem(cp.Minimize(obj), cons), unique=[x, M])


def test_parameter_matmul_shapes():
    """Every orientation of Parameter @ expression and expression @ Parameter (the compiler's fast path)."""
    x = cp.Variable(3)
    Y = cp.Variable((2, 3))
    P = cp.Parameter((3, 2), value=rng.standard_normal((3, 2)))
    Q = cp.Parameter((4, 3), value=rng.standard_normal((4, 3)))
    p = cp.Parameter(3, value=rng.standard_normal(3))
    obj = (
        cp.sum_squares(P.T @ x - 1)
        + cp.sum_squares(x @ P - 2)
        + cp.sum_squares(Y @ Q.T - 1)
        + cp.sum_squares(Q @ Y.T)
        + cp.sum_squares(P @ Y[:, :2] - 1)
        + cp.sum_squares(Y @ P - 3)
        + cp.sum_squares(Y.T @ P.T + 1)
        + cp.sum_squares(x)
        + cp.sum_squares(Y)
        + p @ x
    )
    check(cp.Problem(cp.Minimize(obj), [Q @ x <= 1, p @ Y.T >= -1]), unique=[x, Y])


def test_parameter_values_and_names_carry_over():
    x = cp.Variable(2, name="x")
    b = cp.Parameter(2, name="b", value=[1.0, 2.0])
    q = qd.from_cvxpy(cp.Problem(cp.Minimize(cp.sum_squares(x - b))))
    qb = q.cvxpy_map[b]
    assert qb.name == "b" and np.array_equal(qb.value, [1.0, 2.0])
    unset = cp.Parameter(2)
    q2 = qd.from_cvxpy(cp.Problem(cp.Minimize(cp.sum_squares(x - unset))))
    assert q2.cvxpy_map[unset].value is None


def test_translate_hook():
    from qpdsl.cvxpy_import import translate, translate_params

    x = cp.Variable(2, name="x")
    b = cp.Parameter(2, name="b", value=[1.0, 2.0])
    con = x >= 0
    q = qd.from_cvxpy(cp.Problem(cp.Minimize(cp.sum_squares(x - b)), [con]))
    qx, qb, qc = q.cvxpy_map[x], q.cvxpy_map[b], q.cvxpy_map[con]
    assert translate_params(q, {b: 1, "b": 2}) == {qb: 1, "b": 2}  # names pass through (solve looks them up)
    assert translate(q, [x, con, qx]) == [qx, qc, qx]
    assert translate(q, (b,)) == (qb,)
    assert translate(q, x) is qx
    plain = qd.Problem(qd.Minimize(qd.sum_squares(qx)))
    assert translate(plain, {b: 1}) == {b: 1}  # not an imported problem: unchanged


def _hook_wired() -> bool:
    import qpdsl.problem

    return "translate" in inspect.getsource(qpdsl.problem)


def _has(backend: str) -> bool:
    try:
        return backend in qd.available_backends()
    except Exception:  # noqa: BLE001 - a broken backend registry must not break this file's other tests
        return False


@pytest.mark.skipif(not _hook_wired(), reason="problem.py does not call qpdsl.cvxpy_import.translate yet")
@pytest.mark.skipif(not _has("proxsuite"), reason="proxsuite backend not available")
def test_solve_with_cvxpy_keys():
    n, m = 6, 10
    x = cp.Variable(n, name="x")
    A = cp.Parameter((m, n), value=rng.standard_normal((m, n)))
    b = cp.Parameter(m, value=rng.standard_normal(m))
    cons = [x <= 0.3]
    prob = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b) + 0.1 * cp.sum_squares(x)), cons)
    q = qd.from_cvxpy(prob)
    A1, b1 = rng.standard_normal((m, n)), rng.standard_normal(m)
    sol = q.solve({A: A1, b: b1}, backend="proxsuite", eps_abs=1e-9, eps_rel=0)
    A.value, b.value = A1, b1
    prob.solve(**CLARABEL)
    np.testing.assert_allclose(sol[x], x.value, atol=SOL_ATOL)
    assert abs(sol.objective - prob.value) <= 1e-6 * max(1.0, abs(prob.value))
    np.testing.assert_allclose(sol.dual(cons[0]), cons[0].dual_value, atol=1e-4)


# ---------------------------------------------------------------- unsupported


def _raises(expr_or_problem, match: str) -> None:
    prob = expr_or_problem
    with pytest.raises(qd.ModelError, match=match):
        qd.from_cvxpy(prob)


def test_unsupported_atoms_raise():
    x = cp.Variable(3)
    p = cp.Parameter(pos=True, value=2.0)
    _raises(cp.Problem(cp.Minimize(cp.norm2(x))), "second-order cone")
    _raises(cp.Problem(cp.Minimize(cp.norm(x, 3))), "not QP-representable")
    _raises(cp.Problem(cp.Minimize(cp.sum(cp.exp(x)))), "exponential cone")
    _raises(cp.Problem(cp.Minimize(cp.sum(cp.power(x, 3)))), "power 3")
    _raises(cp.Problem(cp.Minimize(cp.quad_over_lin(x, p))), "non-constant denominator")
    _raises(
        cp.Problem(cp.Minimize(cp.sum_largest(x, 2))), r"sum_largest.*not QP-representable or not supported"
    )
    _raises(cp.Problem(cp.Minimize(cp.sum(x)), [cp.SOC(x[0], x[1:])]), "not a QP constraint")
    _raises(cp.Problem(cp.Minimize(cp.sum(cp.Variable(3, integer=True)))), "integer")
    _raises(cp.Problem(cp.Minimize(cp.sum(x / p))), "divides by a non-constant")


def test_non_dpp_product_of_parameters_is_rewritten():
    x = cp.Variable(3)
    a = cp.Parameter(value=1.5)
    b = cp.Parameter(value=2.0)
    prob = qd.from_cvxpy(cp.Problem(cp.Minimize(cp.sum_squares(x) + a * (b * cp.sum(x)))))
    sol = prob.solve(backend="proxsuite")
    np.testing.assert_allclose(sol[prob.cvxpy_map[x]], -np.full(3, 1.5), atol=1e-7)


def test_non_dpp_and_non_convex_raise():
    x = cp.Variable(3)
    g = cp.Parameter(nonneg=True, value=1.0)
    q = cp.Parameter((3, 3), PSD=True, value=np.eye(3))
    with pytest.raises(qd.ModelError, match="products of parameters"):
        qd.from_cvxpy(cp.Problem(cp.Minimize(g * cp.quad_form(x, q))))
    with pytest.raises(qd.ModelError, match="not convex"):
        qd.from_cvxpy(cp.Problem(cp.Minimize(-cp.sum_squares(x))))
    with pytest.raises(qd.ModelError, match="quadratic"):
        qd.from_cvxpy(cp.Problem(cp.Minimize(cp.sum(x)), [cp.sum_squares(x) <= 1]))


# ---------------------------------------------------------------- parameter values and variable attributes


def test_parameter_values_are_read_at_solve_time():
    x = cp.Variable(2)
    a = cp.Parameter(value=1.0)
    prob = qd.from_cvxpy(cp.Problem(cp.Minimize(cp.sum_squares(x - a))))
    a.value = 5.0  # after the import
    np.testing.assert_allclose(prob.solve(backend="proxsuite")[prob.cvxpy_map[x]], [5.0, 5.0], atol=1e-7)
    b = cp.Parameter()
    prob = qd.from_cvxpy(cp.Problem(cp.Minimize(cp.sum_squares(x - b))))
    with pytest.raises(qd.ParameterError, match="has no value"):
        prob.solve(backend="proxsuite")
    b.value = -2.0
    np.testing.assert_allclose(prob.solve(backend="proxsuite")[prob.cvxpy_map[x]], [-2.0, -2.0], atol=1e-7)


def test_infinite_bounds_stay_infinite_and_bounds_are_user_constraints():
    lo, hi = np.array([-np.inf, 0.0, -1.0]), np.array([1.0, np.inf, np.inf])
    x = cp.Variable(3, bounds=[lo, hi])
    z = cp.Variable(2, nonneg=True)
    target = np.array([3.0, -3.0, -3.0])
    cvx = cp.Problem(cp.Minimize(cp.sum_squares(x - target) + cp.sum_squares(z + 1)))
    prob = qd.from_cvxpy(cvx)
    qp = prob.compile()
    data = qp.apply(np.ones((1, qp.n_theta + 1))).dense()
    bounds = np.concatenate([data.l[0], data.u[0]])
    assert not np.any(np.isfinite(bounds) & (np.abs(bounds) > 1e10))  # no 1e20 stand-ins
    # every inequality row belongs to a user constraint (shiftable), none is a compiler row
    user_rows = sum(r.stop - r.start for r in qp.constraints.values() if r.kind == "in")
    assert user_rows == qp.n_in
    assert set(qp.constraints) == set(prob.constraints)
    sol = prob.solve(backend="proxsuite")
    np.testing.assert_allclose(sol[prob.cvxpy_map[x]], [1.0, 0.0, -1.0], atol=1e-7)
    np.testing.assert_allclose(sol[prob.cvxpy_map[z]], [0.0, 0.0], atol=1e-7)
