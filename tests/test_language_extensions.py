"""Models beyond cvxpy's DPP that qpdsl rewrites with auxiliary variables.

Each model is compared with the hand-rewritten cvxpy model (which is DPP) solved by Clarabel:
the same solution, and the same gradients (qpdsl's torch layer against central finite
differences of cvxpy's solution, along a few random directions). The problems are strictly
convex and the data generic, so the active set is locally constant and the solution map
differentiable.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import qpdsl as qd

cp = pytest.importorskip("cvxpy")
torch = pytest.importorskip("torch")
pytest.importorskip("proxsuite")

CLARABEL = dict(
    solver="CLARABEL",
    tol_gap_abs=1e-13,
    tol_gap_rel=1e-13,
    tol_feas=1e-13,
    tol_ktratio=1e-11,
    max_iter=500,
)
SETTINGS = dict(eps_abs=1e-11, eps_rel=0.0)


class Case:
    """A qpdsl model, its parameters and outputs, and the hand-rewritten cvxpy model."""

    def __init__(
        self,
        problem: qd.Problem,
        parameters: list[qd.Parameter],
        outputs: list[qd.Variable],
        cvxpy_problem: cp.Problem,
        cvxpy_parameters: list[cp.Parameter],
        cvxpy_outputs: list[cp.Variable],
        values: list[np.ndarray],
    ):
        self.problem, self.parameters, self.outputs = problem, parameters, outputs
        self.cvx, self.cvx_parameters, self.cvx_outputs = cvxpy_problem, cvxpy_parameters, cvxpy_outputs
        self.values = [np.asarray(v, dtype=float) for v in values]
        assert cvxpy_problem.is_dpp()

    def cvxpy_solution(self, values: list[np.ndarray]) -> np.ndarray:
        for p, v in zip(self.cvx_parameters, values, strict=True):
            p.value = v
        self.cvx.solve(**CLARABEL)
        assert self.cvx.status == "optimal"
        return np.concatenate([np.ravel(v.value) for v in self.cvx_outputs])

    def qpdsl_solution(self) -> np.ndarray:
        sol = self.problem.solve(
            dict(zip(self.parameters, self.values, strict=True)), backend="proxsuite", **SETTINGS
        )
        assert sol.status == "solved"
        return np.concatenate([np.ravel(sol[v]) for v in self.outputs])


def check_case(case: Case, n_directions: int = 3, h: float = 1e-5, rtol: float = 1e-6) -> None:
    # the same solution
    reference = case.cvxpy_solution(case.values)
    np.testing.assert_allclose(case.qpdsl_solution(), reference, atol=1e-6, rtol=1e-6)

    # the same gradients: d/dtheta of <g, x*(theta)>, along random directions
    rng = np.random.default_rng(7)
    g = rng.standard_normal(reference.size)
    layer = case.problem.to_torch(
        parameters=case.parameters, variables=case.outputs, backend="proxsuite", **SETTINGS
    )
    args = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in case.values]
    outs = layer(*args)
    x = torch.cat([o.reshape(-1) for o in outs])
    np.testing.assert_allclose(x.detach().numpy(), reference, atol=1e-6, rtol=1e-6)
    (x @ torch.as_tensor(g)).backward()
    grads = [a.grad.numpy() for a in args]
    for _ in range(n_directions):
        d = [rng.standard_normal(v.shape) for v in case.values]
        plus = case.cvxpy_solution([v + h * dv for v, dv in zip(case.values, d, strict=True)])
        minus = case.cvxpy_solution([v - h * dv for v, dv in zip(case.values, d, strict=True)])
        finite_difference = g @ (plus - minus) / (2 * h)
        analytic = sum(float(np.sum(gr * dv)) for gr, dv in zip(grads, d, strict=True))
        assert analytic == pytest.approx(finite_difference, rel=rtol, abs=rtol), (analytic, finite_difference)


# ---------------------------------------------------------------- the models


def multiply_case() -> Case:
    """``multiply(y, X @ w - c)`` with y and X both parameters (in the objective and a constraint)."""
    m, n = 6, 3
    rng = np.random.default_rng(0)
    values = [
        rng.standard_normal(m),
        rng.standard_normal((m, n)),
        rng.standard_normal(m),
        rng.standard_normal(n),
    ]

    w = qd.Variable(n, name="w")
    y, X, c, w0 = (qd.Parameter(np.shape(v), name=k) for k, v in zip("yXcw", values, strict=True))
    margin = qd.multiply(y, X @ w - c)
    prob = qd.Problem(qd.Minimize(qd.sum_squares(w - w0) + 0.3 * qd.sum(margin)), [margin >= -0.5])

    wc = cp.Variable(n)
    t = cp.Variable(m)
    yc, Xc, cc, w0c = (cp.Parameter(np.shape(v)) for v in values)
    mc = cp.multiply(yc, t)
    cvx = cp.Problem(
        cp.Minimize(cp.sum_squares(wc - w0c) + 0.3 * cp.sum(mc)), [mc >= -0.5, t == Xc @ wc - cc]
    )
    return Case(prob, [y, X, c, w0], [w], cvx, [yc, Xc, cc, w0c], [wc], values)


def quadratic_of_product_case() -> Case:
    """``sum_squares(multiply(y, X @ w - c))``: a quadratic atom of a product of parameters."""
    m, n = 7, 3
    rng = np.random.default_rng(1)
    values = [rng.uniform(0.5, 2.0, m), rng.standard_normal((m, n)), rng.standard_normal(m)]

    w = qd.Variable(n, name="w")
    y, X, c = (qd.Parameter(np.shape(v), name=k) for k, v in zip("yXc", values, strict=True))
    prob = qd.Problem(
        qd.Minimize(qd.sum_squares(qd.multiply(y, X @ w - c)) + 0.1 * qd.sum_squares(w)), [w <= 0.2]
    )

    wc, t = cp.Variable(n), cp.Variable(m)
    yc, Xc, cc = (cp.Parameter(np.shape(v)) for v in values)
    cvx = cp.Problem(
        cp.Minimize(cp.sum_squares(cp.multiply(yc, t)) + 0.1 * cp.sum_squares(wc)),
        [wc <= 0.2, t == Xc @ wc - cc],
    )
    return Case(prob, [y, X, c], [w], cvx, [yc, Xc, cc], [wc], values)


def matmul_case() -> Case:
    """``M @ (X @ w - c)`` and ``p * (w - v)``: parameters times parameter-affine terms."""
    n, k, m = 3, 5, 4
    rng = np.random.default_rng(2)
    values = [
        rng.standard_normal((m, k)),
        rng.standard_normal((k, n)),
        rng.standard_normal(k),
        1.5,
        rng.standard_normal(n),
    ]

    w = qd.Variable(n, name="w")
    M, X, c, p, v = (
        qd.Parameter(np.shape(val), name=name) for name, val in zip("MXcpv", values, strict=True)
    )
    prob = qd.Problem(qd.Minimize(qd.sum_squares(M @ (X @ w - c)) + qd.sum_squares(w)), [p * (w - v) <= 0.3])

    wc, t, s = cp.Variable(n), cp.Variable(k), cp.Variable(n)
    Mc, Xc, cc, pc, vc = (cp.Parameter(np.shape(val)) for val in values)
    cvx = cp.Problem(
        cp.Minimize(cp.sum_squares(Mc @ t) + cp.sum_squares(wc)),
        [t == Xc @ wc - cc, s == wc - vc, pc * s <= 0.3],
    )
    return Case(prob, [M, X, c, p, v], [w], cvx, [Mc, Xc, cc, pc, vc], [wc], values)


def lasso_case() -> Case:
    """``lam * norm1(x - x_prev)``: a nonneg parameter times a convex atom of parameter-affine terms."""
    m, n = 8, 4
    rng = np.random.default_rng(3)
    values = [rng.standard_normal((m, n)), rng.standard_normal(m), 0.4, rng.standard_normal(n)]

    x = qd.Variable(n, name="x")
    A, b = qd.Parameter((m, n), name="A"), qd.Parameter(m, name="b")
    lam, x_prev = qd.Parameter(nonneg=True, name="lam"), qd.Parameter(n, name="x_prev")
    prob = qd.Problem(qd.Minimize(0.5 * qd.sum_squares(A @ x - b) + lam * qd.norm1(x - x_prev)))

    xc, t = cp.Variable(n), cp.Variable(n)
    Ac, bc, lamc, xpc = cp.Parameter((m, n)), cp.Parameter(m), cp.Parameter(nonneg=True), cp.Parameter(n)
    cvx = cp.Problem(
        cp.Minimize(0.5 * cp.sum_squares(Ac @ xc - bc) + lamc * cp.sum(t)), [t >= xc - xpc, t >= xpc - xc]
    )
    return Case(prob, [A, b, lam, x_prev], [x], cvx, [Ac, bc, lamc, xpc], [xc], values)


def svm_case() -> Case:
    """``C * sum(pos(1 - multiply(y, X @ w + b)))`` with labels, features and C all parameters."""
    m, n = 12, 3
    rng = np.random.default_rng(4)
    labels = np.where(rng.standard_normal(m) > 0, 1.0, -1.0)
    features = rng.standard_normal((m, n)) + 0.8 * labels[:, None]
    values = [labels, features, 0.7]

    w, b = qd.Variable(n, name="w"), qd.Variable(name="b")
    y, X, C = qd.Parameter(m, name="y"), qd.Parameter((m, n), name="X"), qd.Parameter(nonneg=True, name="C")
    hinge = qd.sum(qd.pos(1 - qd.multiply(y, X @ w + b)))
    prob = qd.Problem(qd.Minimize(0.5 * qd.sum_squares(w) + 0.05 * qd.square(b) + C * hinge))

    wc, bc, t, u = cp.Variable(n), cp.Variable(), cp.Variable(m), cp.Variable(m)
    yc, Xc, Cc = cp.Parameter(m), cp.Parameter((m, n)), cp.Parameter(nonneg=True)
    cvx = cp.Problem(
        cp.Minimize(0.5 * cp.sum_squares(wc) + 0.05 * cp.square(bc) + Cc * cp.sum(u)),
        [t == Xc @ wc + bc, u >= 0, u >= 1 - cp.multiply(yc, t)],
    )
    return Case(prob, [y, X, C], [w, b], cvx, [yc, Xc, Cc], [wc, bc], values)


CASES: dict[str, Callable[[], Case]] = {
    "multiply": multiply_case,
    "quadratic_of_product": quadratic_of_product_case,
    "matmul": matmul_case,
    "lasso": lasso_case,
    "svm": svm_case,
}


@pytest.mark.parametrize("name", list(CASES))
def test_extension_matches_cvxpy(name: str) -> None:
    check_case(CASES[name]())


# ---------------------------------------------------------------- structure of the rewrites


def test_rewrite_rows_are_compiler_rows() -> None:
    """The auxiliary equalities belong to no user constraint: duals and shifts show user rows only."""
    case = multiply_case()
    qp = case.problem.compile()
    assert set(qp.constraints) == set(case.problem.constraints)
    user_rows = sum(r.stop - r.start for r in qp.constraints.values() if r.kind == "eq")
    assert qp.n_eq > user_rows  # the t == X @ w - c rows exist, as compiler rows
    assert set(qp.variables) == {case.outputs[0]}


def test_parameter_times_parameter_data() -> None:
    """A product of two parameters in the data (``x <= p * q``) goes through an auxiliary variable too."""
    x = qd.Variable(2, name="x")
    p, q = qd.Parameter(name="p"), qd.Parameter(2, name="q")
    prob = qd.Problem(qd.Maximize(qd.sum(x)), [x <= p * q])
    sol = prob.solve({p: 3.0, q: np.array([1.0, -2.0])}, backend="proxsuite")
    np.testing.assert_allclose(sol[x], [3.0, -6.0], atol=1e-6)


def test_parameter_times_parametric_quadratic_is_refused() -> None:
    w = qd.Variable(3, name="w")
    gamma = qd.Parameter(nonneg=True, name="gamma")
    Sigma = qd.Parameter((3, 3), psd=True, name="Sigma")
    with pytest.raises(qd.ModelError) as info:
        qd.Problem(qd.Minimize(gamma * qd.quad_form(w, Sigma) - qd.sum(w)), [qd.sum(w) == 1])
    msg = str(info.value)
    for fragment in (
        "gamma * quad_form(w, Sigma)",
        "products of parameters",
        "one Parameter(psd=True)",
        "sum_squares(F @ w)",
    ):
        assert fragment in msg, msg
