"""End-to-end model families: each written once in qpdsl and once in cvxpy with the same data.

Every family is solved through ``Problem.solve`` by every available backend (parametrised;
missing backends are skipped with a reason) and compared with cvxpy + Clarabel at tight
tolerances: the objective always, the solution where it is unique (strictly convex
objective), and the duals of user constraints where they are unique (cvxpy's sign
convention: nonnegative for ``<=`` and ``>=``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

import qpdsl as qd

cp = pytest.importorskip("cvxpy")

# ---------------------------------------------------------------- backends

# The qpsolvers solvers chosen here: an interior point (clarabel), a proximal interior point
# (piqp) and an exact active-set method (daqp); all reach 1e-9 on these small problems.
# QPDSL_TEST_BACKENDS="a,b,..." overrides the list.
WANTED_BACKENDS = (
    os.environ.get("QPDSL_TEST_BACKENDS", "").split(",")
    if os.environ.get("QPDSL_TEST_BACKENDS")
    else ["proxsuite", "qpsolvers:clarabel", "qpsolvers:piqp", "qpsolvers:daqp", "torch", "jax"]
)


@functools.lru_cache(maxsize=1)
def _available() -> tuple[set[str], str]:
    try:
        return set(qd.available_backends()), ""
    except Exception as exc:  # a backend module failing to import must not hide the others
        why = f"available_backends() raised {type(exc).__name__}: {exc}"
        try:
            return set(qd.available_backends()), why
        except Exception:
            return set(), why


def backend_params() -> list[Any]:
    names, why = _available()
    out = []
    for b in WANTED_BACKENDS:
        if b in names:
            out.append(b)
        else:
            reason = f"backend {b!r} is not available on this machine" + (f" ({why})" if why else "")
            out.append(pytest.param(b, marks=pytest.mark.skip(reason=reason)))
    return out


BACKENDS = backend_params()

# The jax backend compiles (jit) once per problem shape, a few seconds each on a CPU; by default it
# runs on a representative subset of families, and on all of them with QPDSL_TEST_FULL=1.
FULL = os.environ.get("QPDSL_TEST_FULL", "") not in ("", "0")
JAX_SUBSET = {
    "lasso",
    "portfolio_maximize",
    "lp_inequality",
    "mpc",
    "transport",
    "maximize_concave_min",
    "quad_form_psd_parameter",
    "huber_regression",
    "svm_l1",
    "slicing_indexing",
}


def prepare_backend(backend: str, family_name: str | None = None) -> None:
    """Per-backend setup: x64 for jax (the comparisons are at float64 accuracy), and the jax subset."""
    if backend == "jax":
        if family_name is not None and not FULL and family_name not in JAX_SUBSET:
            pytest.skip(
                "jax: a subset of families by default (jit per shape is slow); QPDSL_TEST_FULL=1 runs all"
            )
        import jax

        jax.config.update("jax_enable_x64", True)


# ---------------------------------------------------------------- tolerances

OBJ_RTOL, OBJ_ATOL = 1e-6, 1e-7
X_TOL = 1e-5
DUAL_TOL = 1e-5


def _close(actual: Any, expected: Any, tol: float, what: str) -> None:
    actual = np.asarray(actual, dtype=float)
    expected = np.asarray(expected, dtype=float)
    assert actual.size == expected.size, f"{what}: size {actual.shape} vs cvxpy's {expected.shape}"
    actual, expected = actual.reshape(expected.shape), expected
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    err = float(np.max(np.abs(actual - expected), initial=0.0))
    assert err <= tol * scale, (
        f"{what}: max abs error {err:.3g} > {tol * scale:.3g}\nqpdsl {actual}\ncvxpy {expected}"
    )


def _close_objective(actual: float, expected: float, what: str = "objective") -> None:
    assert np.isfinite(actual), f"{what}: {actual}"
    assert abs(actual - expected) <= OBJ_RTOL * abs(expected) + OBJ_ATOL, (
        f"{what}: qpdsl {actual!r} vs cvxpy {expected!r} (diff {abs(actual - expected):.3g})"
    )


def cvx_solve(problem: Any) -> None:
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11, max_iter=500)
    assert problem.status == cp.OPTIMAL, problem.status


# ---------------------------------------------------------------- the families


@dataclass
class Case:
    prob: qd.Problem
    params: dict[Any, Any]
    cvx: Any
    xs: list[tuple[Any, Any]] = field(default_factory=list)  # (qd variable, cvxpy variable): unique solution
    duals: list[tuple[Any, Any]] = field(
        default_factory=list
    )  # (qd constraint, cvxpy constraint): unique dual
    backend_options: dict[str, Any] = field(default_factory=dict)


FAMILIES: dict[str, Callable[[np.random.Generator], Case]] = {}


def family(fn: Callable[[np.random.Generator], Case]) -> Callable[[np.random.Generator], Case]:
    FAMILIES[fn.__name__] = fn
    return fn


def psd(rng: np.random.Generator, n: int, shift: float = 0.1) -> np.ndarray:
    M = rng.standard_normal((n, n))
    return M @ M.T / n + shift * np.eye(n)


@family
def least_squares(rng):
    m, n = 20, 8
    A0, b0 = rng.standard_normal((m, n)), rng.standard_normal(m)
    x = qd.Variable(n, name="x")
    prob = qd.Problem(qd.Minimize(qd.sum_squares(A0 @ x - b0)))
    xc = cp.Variable(n)
    return Case(prob, {}, cp.Problem(cp.Minimize(cp.sum_squares(A0 @ xc - b0))), xs=[(x, xc)])


@family
def least_squares_param(rng):
    # sum_squares(param @ x - param): compiled through an auxiliary variable w == A x - b
    m, n = 15, 6
    A0, b0 = rng.standard_normal((m, n)), rng.standard_normal(m)
    x, A, b = qd.Variable(n, name="x"), qd.Parameter((m, n), name="A"), qd.Parameter(m, name="b")
    prob = qd.Problem(qd.Minimize(qd.sum_squares(A @ x - b)))
    xc = cp.Variable(n)
    return Case(prob, {A: A0, b: b0}, cp.Problem(cp.Minimize(cp.sum_squares(A0 @ xc - b0))), xs=[(x, xc)])


@family
def constrained_least_squares(rng):
    m, n, k = 20, 10, 4
    A0, b0 = rng.standard_normal((m, n)), rng.standard_normal(m)
    G0 = rng.standard_normal((k, n))
    h0 = G0 @ np.full(n, 0.1) - 0.05  # makes the unconstrained optimum likely infeasible
    x = qd.Variable(n, name="x")
    G, h = qd.Parameter((k, n), name="G"), qd.Parameter(k, name="h")
    cons = [qd.sum(x) == 1, G @ x <= h, x >= -0.5]
    prob = qd.Problem(qd.Minimize(qd.sum_squares(A0 @ x - b0)), cons)
    xc = cp.Variable(n)
    cc = [cp.sum(xc) == 1, G0 @ xc <= h0, xc >= -0.5]
    return Case(
        prob,
        {G: G0, h: h0},
        cp.Problem(cp.Minimize(cp.sum_squares(A0 @ xc - b0)), cc),
        xs=[(x, xc)],
        duals=list(zip(cons, cc, strict=True)),
    )


@family
def lasso(rng):
    # lam * norm1 with Parameter(nonneg=True)
    m, n = 25, 10
    A0, b0 = rng.standard_normal((m, n)), rng.standard_normal(m)
    x, lam = qd.Variable(n, name="x"), qd.Parameter(name="lam", nonneg=True)
    prob = qd.Problem(qd.Minimize(qd.sum_squares(A0 @ x - b0) + lam * qd.norm1(x)))
    xc = cp.Variable(n)
    cvx = cp.Problem(cp.Minimize(cp.sum_squares(A0 @ xc - b0) + 2.0 * cp.norm1(xc)))
    return Case(prob, {lam: 2.0}, cvx, xs=[(x, xc)])


@family
def elastic_net(rng):
    m, n = 12, 15  # more features than samples: the ridge term makes it strictly convex
    A0, b0 = rng.standard_normal((m, n)), rng.standard_normal(m)
    x = qd.Variable(n, name="x")
    l1, l2 = qd.Parameter(name="l1", nonneg=True), qd.Parameter(name="l2", nonneg=True)
    prob = qd.Problem(
        qd.Minimize(0.5 * qd.sum_squares(A0 @ x - b0) + l1 * qd.norm1(x) + l2 * qd.sum_squares(x))
    )
    xc = cp.Variable(n)
    cvx = cp.Problem(
        cp.Minimize(0.5 * cp.sum_squares(A0 @ xc - b0) + 0.7 * cp.norm1(xc) + 0.3 * cp.sum_squares(xc))
    )
    return Case(prob, {l1: 0.7, l2: 0.3}, cvx, xs=[(x, xc)])


@family
def ridge_parameter_weight(rng):
    m, n = 10, 12
    A0, b0 = rng.standard_normal((m, n)), rng.standard_normal(m)
    x, gamma = qd.Variable(n, name="x"), qd.Parameter(name="gamma", nonneg=True)
    A, b = qd.Parameter((m, n), name="A"), qd.Parameter(m, name="b")
    prob = qd.Problem(qd.Minimize(qd.sum_squares(A @ x - b) + gamma * qd.sum_squares(x)))
    xc = cp.Variable(n)
    cvx = cp.Problem(cp.Minimize(cp.sum_squares(A0 @ xc - b0) + 0.5 * cp.sum_squares(xc)))
    return Case(prob, {gamma: 0.5, A: A0, b: b0}, cvx, xs=[(x, xc)])


@family
def huber_regression(rng):
    m, n = 30, 6
    A0 = rng.standard_normal((m, n))
    b0 = A0 @ rng.standard_normal(n) + 0.1 * rng.standard_normal(m)
    b0[::5] += 5 * rng.standard_normal(6)  # outliers land in the linear region
    x = qd.Variable(n, name="x")
    A, M = qd.Parameter((m, n), name="A"), qd.Parameter(name="M", nonneg=True)
    prob = qd.Problem(qd.Minimize(qd.sum(qd.huber(A @ x - b0, M)) + 0.01 * qd.sum_squares(x)))
    xc = cp.Variable(n)
    cvx = cp.Problem(cp.Minimize(cp.sum(cp.huber(A0 @ xc - b0, 0.8)) + 0.01 * cp.sum_squares(xc)))
    return Case(prob, {A: A0, M: 0.8}, cvx, xs=[(x, xc)])


@family
def quantile_regression(rng):
    m, n, tau = 30, 5, 0.3
    A0, b0 = rng.standard_normal((m, n)), rng.standard_normal(m)
    x = qd.Variable(n, name="x")
    r = A0 @ x - b0
    prob = qd.Problem(qd.Minimize(qd.sum(tau * qd.pos(r) + (1 - tau) * qd.neg(r))))
    xc = cp.Variable(n)
    rc = A0 @ xc - b0
    return Case(prob, {}, cp.Problem(cp.Minimize(cp.sum(tau * cp.pos(rc) + (1 - tau) * cp.neg(rc)))))


def _classification(rng, m, n):
    X0 = rng.standard_normal((m, n))
    y0 = np.sign(X0 @ rng.standard_normal(n) + 0.5 * rng.standard_normal(m))
    y0[y0 == 0] = 1.0
    return X0, y0


@family
def svm_hinge(rng):
    m, n = 24, 5
    X0, y0 = _classification(rng, m, n)
    w, b = qd.Variable(n, name="w"), qd.Variable(name="b")
    X, lam = qd.Parameter((m, n), name="X"), qd.Parameter(name="lam", nonneg=True)
    prob = qd.Problem(qd.Minimize(qd.sum(qd.pos(1 - qd.multiply(y0, X @ w + b))) + lam * qd.sum_squares(w)))
    wc, bc = cp.Variable(n), cp.Variable()
    cvx = cp.Problem(
        cp.Minimize(cp.sum(cp.pos(1 - cp.multiply(y0, X0 @ wc + bc))) + 0.2 * cp.sum_squares(wc))
    )
    return Case(prob, {X: X0, lam: 0.2}, cvx, xs=[(w, wc)])


@family
def svm_l1(rng):
    m, n = 24, 6
    X0, y0 = _classification(rng, m, n)
    w, b = qd.Variable(n, name="w"), qd.Variable(name="b")
    prob = qd.Problem(qd.Minimize(qd.norm1(w) + 2.0 * qd.sum(qd.pos(1 - y0 * (X0 @ w + b)))))
    wc, bc = cp.Variable(n), cp.Variable()
    cvx = cp.Problem(cp.Minimize(cp.norm1(wc) + 2.0 * cp.sum(cp.pos(1 - cp.multiply(y0, X0 @ wc + bc)))))
    return Case(prob, {}, cvx)


@family
def portfolio_maximize(rng):
    n = 10
    mu0, S0 = 0.1 * rng.standard_normal(n) + 0.05, psd(rng, n)
    w = qd.Variable(n, name="w")
    mu, Sigma = qd.Parameter(n, name="mu"), qd.Parameter((n, n), name="Sigma", psd=True)
    cons = [qd.sum(w) == 1, w >= 0, w <= 0.4]
    prob = qd.Problem(qd.Maximize(mu @ w - qd.quad_form(w, Sigma)), cons)
    wc = cp.Variable(n)
    cc = [cp.sum(wc) == 1, wc >= 0, wc <= 0.4]
    cvx = cp.Problem(cp.Maximize(mu0 @ wc - cp.quad_form(wc, S0)), cc)
    return Case(prob, {mu: mu0, Sigma: S0}, cvx, xs=[(w, wc)], duals=list(zip(cons, cc, strict=True)))


@family
def min_variance_portfolio(rng):
    n = 12
    mu0, S0 = 0.1 * rng.standard_normal(n) + 0.05, psd(rng, n)
    w = qd.Variable(n, name="w")
    rmin = qd.Parameter(name="rmin")
    cons = [qd.sum(w) == 1, mu0 @ w >= rmin]
    prob = qd.Problem(qd.Minimize(qd.quad_form(w, S0)), cons)
    wc = cp.Variable(n)
    r0 = float(np.sort(mu0)[-3])  # demanding: the return constraint is active
    cc = [cp.sum(wc) == 1, mu0 @ wc >= r0]
    return Case(
        prob,
        {rmin: r0},
        cp.Problem(cp.Minimize(cp.quad_form(wc, S0)), cc),
        xs=[(w, wc)],
        duals=list(zip(cons, cc, strict=True)),
    )


@family
def lp_standard_form(rng):
    m, n = 6, 14
    A0 = rng.standard_normal((m, n))
    b0 = A0 @ rng.uniform(0.5, 1.5, n)
    c0 = A0.T @ rng.standard_normal(m) + rng.uniform(0.1, 1.0, n)  # dual feasible: bounded
    x = qd.Variable(n, name="x", nonneg=True)
    A, b, c = qd.Parameter((m, n), name="A"), qd.Parameter(m, name="b"), qd.Parameter(n, name="c")
    prob = qd.Problem(qd.Minimize(c @ x), [A @ x == b])
    xc = cp.Variable(n, nonneg=True)
    return Case(prob, {A: A0, b: b0, c: c0}, cp.Problem(cp.Minimize(c0 @ xc), [A0 @ xc == b0]))


@family
def lp_inequality(rng):
    m, n = 20, 6
    G0 = rng.standard_normal((m, n))
    h0 = G0 @ rng.standard_normal(n) + rng.uniform(0.1, 1.0, m)
    c0 = -G0.T @ rng.uniform(0.1, 1.0, m)  # c = -G'lam with lam > 0: bounded below
    x = qd.Variable(n, name="x")
    G, h = qd.Parameter((m, n), name="G"), qd.Parameter(m, name="h")
    prob = qd.Problem(qd.Minimize(c0 @ x), [G @ x <= h])
    xc = cp.Variable(n)
    return Case(prob, {G: G0, h: h0}, cp.Problem(cp.Minimize(c0 @ xc), [G0 @ xc <= h0]))


@family
def box_qp(rng):
    # quad_form(x, constant PSD)
    n = 15
    P0, q0 = psd(rng, n), 2 * rng.standard_normal(n)
    x = qd.Variable(n, name="x")
    lo, hi = -0.5 * np.ones(n), rng.uniform(0.2, 1.0, n)
    cons = [x >= lo, x <= hi]
    prob = qd.Problem(qd.Minimize(0.5 * qd.quad_form(x, P0) + q0 @ x), cons)
    xc = cp.Variable(n)
    cc = [xc >= lo, xc <= hi]
    cvx = cp.Problem(cp.Minimize(0.5 * cp.quad_form(xc, P0) + q0 @ xc), cc)
    return Case(prob, {}, cvx, xs=[(x, xc)], duals=list(zip(cons, cc, strict=True)))


@family
def quad_form_psd_parameter(rng):
    # quad_form(x, Parameter(psd=True)) with parameter-dependent constraints A x <= b
    n, m = 8, 5
    P0, q0, A0 = psd(rng, n), rng.standard_normal(n), rng.standard_normal((m, n))
    b0 = A0 @ (0.1 * rng.standard_normal(n)) + 0.05
    x = qd.Variable(n, name="x")
    P, q = qd.Parameter((n, n), name="P", psd=True), qd.Parameter(n, name="q")
    A, b = qd.Parameter((m, n), name="A"), qd.Parameter(m, name="b")
    cons = [A @ x <= b]
    prob = qd.Problem(qd.Minimize(0.5 * qd.quad_form(x, P) + q @ x), cons)
    xc = cp.Variable(n)
    cc = [A0 @ xc <= b0]
    cvx = cp.Problem(cp.Minimize(0.5 * cp.quad_form(xc, P0) + q0 @ xc), cc)
    return Case(prob, {P: P0, q: q0, A: A0, b: b0}, cvx, xs=[(x, xc)], duals=list(zip(cons, cc, strict=True)))


@family
def quad_form_of_expression(rng):
    # quad_form of a non-trivial affine argument, with a constant and with a psd Parameter
    n = 6
    S0, T0, c0 = psd(rng, n), psd(rng, n), rng.standard_normal(n)
    x = qd.Variable(n, name="x")
    c, T = qd.Parameter(n, name="c"), qd.Parameter((n, n), name="T", psd=True)
    prob = qd.Problem(
        qd.Minimize(qd.quad_form(x - c, S0) + qd.quad_form(2 * x[::-1] + 1, T)), [qd.sum(x) >= 1]
    )
    xc = cp.Variable(n)
    cc = [cp.sum(xc) >= 1]
    cvx = cp.Problem(cp.Minimize(cp.quad_form(xc - c0, S0) + cp.quad_form(2 * xc[::-1] + 1, T0)), cc)
    return Case(prob, {c: c0, T: T0}, cvx, xs=[(x, xc)], duals=list(zip(prob.constraints, cc, strict=True)))


@family
def nonneg_least_squares(rng):
    m, n = 20, 10
    A0, b0 = rng.standard_normal((m, n)), rng.standard_normal(m)
    x = qd.Variable(n, name="x", nonneg=True)
    prob = qd.Problem(qd.Minimize(qd.sum_squares(A0 @ x - b0)))
    xc = cp.Variable(n, nonneg=True)
    return Case(prob, {}, cp.Problem(cp.Minimize(cp.sum_squares(A0 @ xc - b0))), xs=[(x, xc)])


@family
def transport(rng):
    # matrix variable with axis sums; a small quadratic makes the plan unique
    ms, nd = 4, 5
    C0 = rng.uniform(1, 3, (ms, nd))
    supply = rng.uniform(2, 3, ms)
    demand = rng.uniform(0.5, 1.0, nd) * supply.sum() / nd * 0.8
    X = qd.Variable((ms, nd), name="X", nonneg=True)
    C = qd.Parameter((ms, nd), name="C")
    cons = [X.sum(axis=1) <= supply, qd.sum(X, axis=0) == demand]
    prob = qd.Problem(qd.Minimize(qd.sum(qd.multiply(C, X)) + 0.05 * qd.sum_squares(X)), cons)
    Xc = cp.Variable((ms, nd), nonneg=True)
    cc = [cp.sum(Xc, axis=1) <= supply, cp.sum(Xc, axis=0) == demand]
    cvx = cp.Problem(cp.Minimize(cp.sum(cp.multiply(C0, Xc)) + 0.05 * cp.sum_squares(Xc)), cc)
    return Case(prob, {C: C0}, cvx, xs=[(X, Xc)], duals=list(zip(cons, cc, strict=True)))


@family
def assignment_relaxation(rng):
    n = 6
    C0 = rng.uniform(0, 1, (n, n))
    X = qd.Variable((n, n), name="X")
    prob = qd.Problem(qd.Minimize(qd.sum(C0 * X)), [X >= 0, X <= 1, X.sum(axis=0) == 1, X.sum(axis=1) == 1])
    Xc = cp.Variable((n, n))
    cvx = cp.Problem(
        cp.Minimize(cp.sum(cp.multiply(C0, Xc))),
        [Xc >= 0, Xc <= 1, cp.sum(Xc, axis=0) == 1, cp.sum(Xc, axis=1) == 1],
    )
    return Case(prob, {}, cvx)


@family
def mpc(rng):
    nx, nu, T = 4, 2, 8
    A0 = np.eye(nx) + 0.1 * rng.standard_normal((nx, nx))
    B0 = rng.standard_normal((nx, nu))
    x00 = 2 * rng.standard_normal(nx)
    X, U = qd.Variable((nx, T + 1), name="X"), qd.Variable((nu, T), name="U")
    A, B, x0 = qd.Parameter((nx, nx), name="A"), qd.Parameter((nx, nu), name="B"), qd.Parameter(nx, name="x0")
    cons = [X[:, 1:] == A @ X[:, :-1] + B @ U, X[:, 0] == x0, qd.abs(U) <= 0.5]
    prob = qd.Problem(qd.Minimize(qd.sum_squares(X) + 0.1 * qd.sum_squares(U)), cons)
    Xc, Uc = cp.Variable((nx, T + 1)), cp.Variable((nu, T))
    cc = [Xc[:, 1:] == A0 @ Xc[:, :-1] + B0 @ Uc, Xc[:, 0] == x00, cp.abs(Uc) <= 0.5]
    cvx = cp.Problem(cp.Minimize(cp.sum_squares(Xc) + 0.1 * cp.sum_squares(Uc)), cc)
    return Case(
        prob,
        {A: A0, B: B0, x0: x00},
        cvx,
        xs=[(X, Xc), (U, Uc)],
        duals=list(zip(cons[:2], cc[:2], strict=True)),
    )


@family
def mpc_loop(rng):
    # the same dynamics written one step at a time with vectors and a norm_inf input bound
    nx, nu, T = 3, 1, 6
    A0 = np.eye(nx) + 0.2 * rng.standard_normal((nx, nx))
    B0 = rng.standard_normal((nx, nu))
    x00 = rng.standard_normal(nx)
    A, B = qd.Parameter((nx, nx), name="A"), qd.Parameter((nx, nu), name="B")
    xs = [qd.Variable(nx, name=f"x{t}") for t in range(T + 1)]
    us = [qd.Variable(nu, name=f"u{t}") for t in range(T)]
    cons = [xs[0] == x00] + [xs[t + 1] == A @ xs[t] + B @ us[t] for t in range(T)]
    cons += [qd.norm_inf(u) <= 0.3 for u in us]
    prob = qd.Problem(
        qd.Minimize(sum(qd.sum_squares(x) for x in xs) + sum(qd.square(u[0]) for u in us)), cons
    )
    xcs = [cp.Variable(nx) for _ in range(T + 1)]
    ucs = [cp.Variable(nu) for _ in range(T)]
    cc = [xcs[0] == x00] + [xcs[t + 1] == A0 @ xcs[t] + B0 @ ucs[t] for t in range(T)]
    cc += [cp.norm_inf(u) <= 0.3 for u in ucs]
    cvx = cp.Problem(cp.Minimize(sum(cp.sum_squares(x) for x in xcs) + sum(cp.square(u[0]) for u in ucs)), cc)
    return Case(
        prob,
        {A: A0, B: B0},
        cvx,
        xs=list(zip(xs + us, xcs + ucs, strict=True)),
        duals=list(zip(cons[: T + 1], cc[: T + 1], strict=True)),
    )


@family
def total_variation(rng):
    n = 30
    y0 = np.repeat(rng.standard_normal(5), 6) + 0.3 * rng.standard_normal(n)
    x, y = qd.Variable(n, name="x"), qd.Parameter(n, name="y")
    lam = qd.Parameter(name="lam", nonneg=True)
    prob = qd.Problem(qd.Minimize(qd.sum_squares(x - y) + lam * qd.sum(qd.abs(x[1:] - x[:-1]))))
    xc = cp.Variable(n)
    cvx = cp.Problem(cp.Minimize(cp.sum_squares(xc - y0) + 0.5 * cp.sum(cp.abs(xc[1:] - xc[:-1]))))
    return Case(prob, {y: y0, lam: 0.5}, cvx, xs=[(x, xc)])


@family
def minimax_norm_inf(rng):
    m, n = 15, 5
    A0, b0 = rng.standard_normal((m, n)), rng.standard_normal(m)
    x = qd.Variable(n, name="x")
    prob = qd.Problem(qd.Minimize(qd.norm_inf(A0 @ x - b0)), [qd.norm_inf(x) <= 2])
    xc = cp.Variable(n)
    return Case(prob, {}, cp.Problem(cp.Minimize(cp.norm_inf(A0 @ xc - b0)), [cp.norm_inf(xc) <= 2]))


@family
def minimax_max(rng):
    m, n = 12, 4
    A0, b0 = rng.standard_normal((m, n)), rng.standard_normal(m)
    x = qd.Variable(n, name="x")
    A = qd.Parameter((m, n), name="A")
    prob = qd.Problem(qd.Minimize(qd.max(A @ x - b0) + 0.5 * qd.sum_squares(x)), [x <= 1])
    xc = cp.Variable(n)
    cc = [xc <= 1]
    cvx = cp.Problem(cp.Minimize(cp.max(A0 @ xc - b0) + 0.5 * cp.sum_squares(xc)), cc)
    return Case(prob, {A: A0}, cvx, xs=[(x, xc)])


@family
def chebyshev_approximation(rng):
    # fit a polynomial in the max-norm with bounded coefficients (LP in epigraph form)
    t = np.linspace(-1, 1, 25)
    V0 = np.vander(t, 5, increasing=True)
    f0 = np.abs(t) + 0.1 * np.sin(5 * t)
    c = qd.Variable(5, name="c")
    V, f = qd.Parameter((25, 5), name="V"), qd.Parameter(25, name="f")
    prob = qd.Problem(qd.Minimize(qd.max(qd.abs(V @ c - f))), [qd.abs(c) <= 3])
    cc_ = cp.Variable(5)
    cvx = cp.Problem(cp.Minimize(cp.max(cp.abs(V0 @ cc_ - f0))), [cp.abs(cc_) <= 3])
    return Case(prob, {V: V0, f: f0}, cvx)


@family
def maximum_minimum_atoms(rng):
    n = 8
    a0, c0 = rng.uniform(-0.8, 0.8, n), rng.standard_normal(n)
    x = qd.Variable(n, name="x")
    a = qd.Parameter(n, name="a")
    cons = [qd.minimum(x, 1 - x, a) >= -1, qd.maximum(x, -2 * x) <= 1.5]
    obj = qd.sum_squares(x - c0) + qd.sum(qd.maximum(x, 0.3 - x, a)) - qd.sum(qd.minimum(2 * x, 0.1))
    prob = qd.Problem(qd.Minimize(obj), cons)
    xc = cp.Variable(n)
    cc = [cp.minimum(xc, 1 - xc, a0) >= -1, cp.maximum(xc, -2 * xc) <= 1.5]
    objc = cp.sum_squares(xc - c0) + cp.sum(cp.maximum(xc, 0.3 - xc, a0)) - cp.sum(cp.minimum(2 * xc, 0.1))
    return Case(prob, {a: a0}, cp.Problem(cp.Minimize(objc), cc), xs=[(x, xc)])


@family
def max_min_axes(rng):
    m, n = 4, 5
    W0 = rng.standard_normal((m, n))
    X = qd.Variable((m, n), name="X")
    obj = (
        qd.sum_squares(X - W0)
        + qd.sum(qd.max(X, axis=0))
        + qd.sum(qd.max(X, axis=1))
        - qd.sum(qd.min(X, axis=-1))
    )
    cons = [qd.min(X, axis=0) >= -1, qd.max(X) <= 1.2]
    prob = qd.Problem(qd.Minimize(obj), cons)
    Xc = cp.Variable((m, n))
    objc = (
        cp.sum_squares(Xc - W0)
        + cp.sum(cp.max(Xc, axis=0))
        + cp.sum(cp.max(Xc, axis=1))
        - cp.sum(cp.min(Xc, axis=1))
    )
    cc = [cp.min(Xc, axis=0) >= -1, cp.max(Xc) <= 1.2]
    return Case(prob, {}, cp.Problem(cp.Minimize(objc), cc), xs=[(X, Xc)])


@family
def cumsum_inventory(rng):
    T = 12
    d0 = rng.uniform(0.5, 1.5, T)
    price0 = rng.uniform(1, 2, T)
    u = qd.Variable(T, name="order")
    d, s0 = qd.Parameter(T, name="demand"), qd.Parameter(name="s0")
    stock = s0 + qd.cumsum(u - d)
    cons = [stock >= 0, u <= 2, u >= 0]
    prob = qd.Problem(qd.Minimize(price0 @ u + 0.1 * qd.sum(stock) + 0.5 * qd.sum_squares(u)), cons)
    uc = cp.Variable(T)
    stockc = 0.5 + cp.cumsum(uc - d0)
    cc = [stockc >= 0, uc <= 2, uc >= 0]
    cvx = cp.Problem(cp.Minimize(price0 @ uc + 0.1 * cp.sum(stockc) + 0.5 * cp.sum_squares(uc)), cc)
    return Case(prob, {d: d0, s0: 0.5}, cvx, xs=[(u, uc)], duals=list(zip(cons, cc, strict=True)))


@family
def cumsum_matrix_axis(rng):
    m, n = 3, 5
    W0 = rng.standard_normal((m, n))
    X = qd.Variable((m, n), name="X")
    cons = [qd.cumsum(X, axis=1) <= 1, qd.cumsum(X, axis=0)[-1] >= -0.5]
    prob = qd.Problem(qd.Minimize(qd.sum_squares(X - 2 * W0)), cons)
    Xc = cp.Variable((m, n))
    cc = [cp.cumsum(Xc, axis=1) <= 1, cp.cumsum(Xc, axis=0)[-1] >= -0.5]
    cvx = cp.Problem(cp.Minimize(cp.sum_squares(Xc - 2 * W0)), cc)
    return Case(prob, {}, cvx, xs=[(X, Xc)], duals=list(zip(cons, cc, strict=True)))


@family
def diag_atoms(rng):
    n = 5
    W0 = rng.standard_normal((n, n))
    X, v = qd.Variable((n, n), name="X"), qd.Variable(n, name="v")
    cons = [qd.diag(X) >= 0.2, qd.diag(v) <= X + 1]
    prob = qd.Problem(
        qd.Minimize(qd.sum_squares(X - W0) + qd.sum_squares(qd.diag(v) - W0.T) + qd.sum(qd.diag(X))), cons
    )
    Xc, vc = cp.Variable((n, n)), cp.Variable(n)
    cc = [cp.diag(Xc) >= 0.2, cp.diag(vc) <= Xc + 1]
    cvx = cp.Problem(
        cp.Minimize(cp.sum_squares(Xc - W0) + cp.sum_squares(cp.diag(vc) - W0.T) + cp.sum(cp.diag(Xc))), cc
    )
    return Case(prob, {}, cvx, xs=[(X, Xc), (v, vc)], duals=list(zip(cons, cc, strict=True)))


@family
def hstack_vstack(rng):
    n = 4
    W0 = rng.standard_normal((2, n))
    M0 = rng.standard_normal((3, 2 * n))
    x, y = qd.Variable(n, name="x"), qd.Variable(n, name="y")
    Z = qd.Variable((3, n), name="Z")
    cons = [qd.hstack([x, y, Z[0]]) <= 0.8, qd.vstack([x, y]) >= -1]
    obj = (
        qd.sum_squares(qd.vstack([x, 2 * y]) - W0)
        + qd.sum_squares(qd.hstack([Z, 2 * Z]) - M0)
        + qd.sum(qd.vstack([Z, qd.reshape(x, (1, n))]))
    )
    prob = qd.Problem(qd.Minimize(obj), cons)
    xc, yc, Zc = cp.Variable(n), cp.Variable(n), cp.Variable((3, n))
    cc = [cp.hstack([xc, yc, Zc[0]]) <= 0.8, cp.vstack([xc, yc]) >= -1]
    objc = (
        cp.sum_squares(cp.vstack([xc, 2 * yc]) - W0)
        + cp.sum_squares(cp.hstack([Zc, 2 * Zc]) - M0)
        + cp.sum(cp.vstack([Zc, cp.reshape(xc, (1, n), order="C")]))
    )
    return Case(
        prob,
        {},
        cp.Problem(cp.Minimize(objc), cc),
        xs=[(x, xc), (y, yc), (Z, Zc)],
        duals=list(zip(cons, cc, strict=True)),
    )


@family
def reshape_and_flatten(rng):
    x = qd.Variable(12, name="x")
    W0, c0 = rng.standard_normal((3, 4)), rng.standard_normal(4)
    R = qd.reshape(x, (3, 4))
    cons = [R @ c0 <= 0.5, R.reshape((4, 3))[:, 0] >= -0.3, qd.reshape(x, (2, -1)).flatten()[-1] == 0.25]
    prob = qd.Problem(qd.Minimize(qd.sum_squares(R - W0)), cons)
    xc = cp.Variable(12)
    Rc = cp.reshape(xc, (3, 4), order="C")
    cc = [Rc @ c0 <= 0.5, cp.reshape(Rc, (4, 3), order="C")[:, 0] >= -0.3, xc[-1] == 0.25]
    cvx = cp.Problem(cp.Minimize(cp.sum_squares(Rc - W0)), cc)
    return Case(prob, {}, cvx, xs=[(x, xc)], duals=list(zip(cons, cc, strict=True)))


@family
def mean_atoms(rng):
    m, n = 5, 4
    W0 = rng.standard_normal((m, n))
    X = qd.Variable((m, n), name="X")
    target = qd.Parameter(n, name="target")
    t0 = rng.uniform(-0.1, 0.05, n)
    cons = [qd.mean(X, axis=0) == target, X.mean(axis=1) <= 0.1, qd.mean(X) >= -0.2]
    prob = qd.Problem(qd.Minimize(qd.sum_squares(X - W0)), cons)
    Xc = cp.Variable((m, n))
    cc = [cp.mean(Xc, axis=0) == t0, cp.mean(Xc, axis=1) <= 0.1, cp.mean(Xc) >= -0.2]
    cvx = cp.Problem(cp.Minimize(cp.sum_squares(Xc - W0)), cc)
    return Case(prob, {target: t0}, cvx, xs=[(X, Xc)], duals=list(zip(cons[:2], cc[:2], strict=True)))


@family
def slicing_indexing(rng):
    n = 10
    c0 = rng.standard_normal(n)
    W0 = rng.standard_normal((3, 4))
    x, Y = qd.Variable(n, name="x"), qd.Variable((3, 4), name="Y")
    idx = [0, 3, 7]
    cons = [
        x[::2] <= 0.5,
        x[idx] >= -0.2,
        x[-1] == x[0] + 0.1,
        Y[1, :] <= 0.3,
        Y[:, 2] >= Y[:, 1],
        Y[1:, ::2] <= x[1:3].reshape((1, 2)) + 1,
        Y[2, 3] == 0.0,
        x[np.array([True, False] * 5)][1] <= 0.7,
    ]
    prob = qd.Problem(qd.Minimize(qd.sum_squares(x - c0) + qd.sum_squares(Y - W0)), cons)
    xc, Yc = cp.Variable(n), cp.Variable((3, 4))
    cc = [
        xc[::2] <= 0.5,
        xc[idx] >= -0.2,
        xc[-1] == xc[0] + 0.1,
        Yc[1, :] <= 0.3,
        Yc[:, 2] >= Yc[:, 1],
        Yc[1:, ::2] <= cp.reshape(xc[1:3], (1, 2), order="C") + 1,
        Yc[2, 3] == 0.0,
        xc[2] <= 0.7,
    ]
    cvx = cp.Problem(cp.Minimize(cp.sum_squares(xc - c0) + cp.sum_squares(Yc - W0)), cc)
    return Case(prob, {}, cvx, xs=[(x, xc), (Y, Yc)], duals=list(zip(cons[2:4], cc[2:4], strict=True)))


@family
def transposes(rng):
    m, n = 3, 5
    W0, a0, B0 = rng.standard_normal((n, m)), rng.standard_normal(m), rng.standard_normal((n, 2))
    X = qd.Variable((m, n), name="X")
    B = qd.Parameter((n, 2), name="B")
    cons = [X.T @ a0 <= 0.4, (X @ B).T >= -2, X.T.T[0, 0] == 0.1]
    prob = qd.Problem(qd.Minimize(qd.sum_squares(X.T - W0) + qd.sum(qd.abs(X.T[1]))), cons)
    Xc = cp.Variable((m, n))
    cc = [Xc.T @ a0 <= 0.4, (Xc @ B0).T >= -2, Xc[0, 0] == 0.1]
    cvx = cp.Problem(cp.Minimize(cp.sum_squares(Xc.T - W0) + cp.sum(cp.abs(Xc.T[1]))), cc)
    return Case(prob, {B: B0}, cvx, xs=[(X, Xc)], duals=list(zip(cons[::2], cc[::2], strict=True)))


@family
def matrix_parameter_products(rng):
    # A @ X and X @ B with matrix parameters, elementwise parameter scaling, division by a constant
    m, k, n = 3, 4, 2
    A0, B0, w0, T0 = (
        rng.standard_normal((m, k)),
        rng.standard_normal((n, 3)),
        rng.uniform(0.5, 2, k),
        rng.standard_normal((m, n)),
    )
    X = qd.Variable((k, n), name="X")
    A, B, w = qd.Parameter((m, k), name="A"), qd.Parameter((n, 3), name="B"), qd.Parameter(k, name="w")
    cons = [X @ B <= 1, qd.multiply(w, X[:, 0]) >= -0.5]
    prob = qd.Problem(qd.Minimize(qd.sum_squares(A @ X - T0) + qd.sum_squares(X / 2)), cons)
    Xc = cp.Variable((k, n))
    cc = [Xc @ B0 <= 1, cp.multiply(w0, Xc[:, 0]) >= -0.5]
    cvx = cp.Problem(cp.Minimize(cp.sum_squares(A0 @ Xc - T0) + cp.sum_squares(Xc / 2)), cc)
    return Case(prob, {A: A0, B: B0, w: w0}, cvx, xs=[(X, Xc)], duals=list(zip(cons, cc, strict=True)))


@family
def scalar_variables(rng):
    a0 = rng.standard_normal(3)
    t, s = qd.Variable(name="t"), qd.Variable((), name="s")
    x = qd.Variable(3, name="x")
    p = qd.Parameter(name="p")
    cons = [qd.abs(x - a0) <= t, t + s >= p, s >= 0.1]
    prob = qd.Problem(qd.Minimize(t + qd.square(s) + qd.sum_squares(x)), cons)
    tc, sc, xc = cp.Variable(), cp.Variable(), cp.Variable(3)
    cc = [cp.abs(xc - a0) <= tc, tc + sc >= 1.5, sc >= 0.1]
    cvx = cp.Problem(cp.Minimize(tc + cp.square(sc) + cp.sum_squares(xc)), cc)
    return Case(
        prob, {p: 1.5}, cvx, xs=[(t, tc), (s, sc), (x, xc)], duals=list(zip(cons[1:], cc[1:], strict=True))
    )


@family
def norm_constraints(rng):
    n = 8
    c0 = 2 * rng.standard_normal(n)
    x = qd.Variable(n, name="x")
    r1, rinf = qd.Parameter(name="r1", nonneg=True), qd.Parameter(name="rinf")
    cons = [
        qd.norm1(x) <= r1,
        qd.norm_inf(x) <= rinf,
        qd.sum(qd.pos(x - 0.2)) <= 0.3,
        qd.sum(qd.neg(x)) <= 1.0,
    ]
    prob = qd.Problem(qd.Minimize(qd.sum_squares(x - c0)), cons)
    xc = cp.Variable(n)
    cc = [
        cp.norm1(xc) <= 3.0,
        cp.norm_inf(xc) <= 0.9,
        cp.sum(cp.pos(xc - 0.2)) <= 0.3,
        cp.sum(cp.neg(xc)) <= 1.0,
    ]
    cvx = cp.Problem(cp.Minimize(cp.sum_squares(xc - c0)), cc)
    return Case(prob, {r1: 3.0, rinf: 0.9}, cvx, xs=[(x, xc)], duals=list(zip(cons, cc, strict=True)))


@family
def maximize_concave_min(rng):
    m, n = 6, 5
    A0, b0 = rng.standard_normal((m, n)), rng.standard_normal(m)
    x = qd.Variable(n, name="x")
    A = qd.Parameter((m, n), name="A")
    cons = [qd.sum(x) <= 1]
    obj = qd.min(A @ x + b0) + qd.sum(qd.minimum(x, 0.2)) - qd.sum_squares(x) - qd.norm1(x - 0.1)
    prob = qd.Problem(qd.Maximize(obj), cons)
    xc = cp.Variable(n)
    cc = [cp.sum(xc) <= 1]
    objc = cp.min(A0 @ xc + b0) + cp.sum(cp.minimum(xc, 0.2)) - cp.sum_squares(xc) - cp.norm1(xc - 0.1)
    return Case(prob, {A: A0}, cp.Problem(cp.Maximize(objc), cc), xs=[(x, xc)])


@family
def parameter_scaled_quadratics(rng):
    # nonneg parameters scaling quadratic atoms (square, quad_form with a constant, huber)
    n = 6
    S0, c0 = psd(rng, n), rng.standard_normal(n)
    x = qd.Variable(n, name="x")
    a, b = qd.Parameter(name="a", nonneg=True), qd.Parameter(n, name="b", nonneg=True)
    obj = a * qd.quad_form(x, S0) + qd.sum(qd.multiply(b, qd.square(x - c0))) + a * qd.sum(qd.huber(x, 0.5))
    prob = qd.Problem(qd.Minimize(obj), [x >= -1])
    xc = cp.Variable(n)
    b0 = rng.uniform(0.1, 1.0, n)
    objc = (
        0.7 * cp.quad_form(xc, S0)
        + cp.sum(cp.multiply(b0, cp.square(xc - c0)))
        + 0.7 * cp.sum(cp.huber(xc, 0.5))
    )
    cc = [xc >= -1]
    return Case(
        prob,
        {a: 0.7, b: b0},
        cp.Problem(cp.Minimize(objc), cc),
        xs=[(x, xc)],
        duals=list(zip(prob.constraints, cc, strict=True)),
    )


@family
def equality_parameters_both_sides(rng):
    n, m = 7, 3
    E0, f0, g0 = rng.standard_normal((m, n)), rng.standard_normal(m), rng.standard_normal(m)
    x = qd.Variable(n, name="x")
    E, f, g = qd.Parameter((m, n), name="E"), qd.Parameter(m, name="f"), qd.Parameter(m, name="g")
    cons = [E @ x + f == 2 * g - E @ x, f <= x[:3] + 1]
    prob = qd.Problem(qd.Minimize(qd.sum_squares(x) + qd.sum(x)), cons)
    xc = cp.Variable(n)
    cc = [E0 @ xc + f0 == 2 * g0 - E0 @ xc, f0 <= xc[:3] + 1]
    cvx = cp.Problem(cp.Minimize(cp.sum_squares(xc) + cp.sum(xc)), cc)
    return Case(prob, {E: E0, f: f0, g: g0}, cvx, xs=[(x, xc)], duals=list(zip(cons, cc, strict=True)))


@family
def sparse_constant_data(rng):
    import scipy.sparse as sp

    m, n = 20, 15
    A0 = sp.random(m, n, density=0.2, random_state=np.random.RandomState(1), format="csr") + sp.eye(m, n)
    b0 = rng.standard_normal(m)
    x = qd.Variable(n, name="x")
    prob = qd.Problem(qd.Minimize(qd.sum_squares(qd.Constant(A0) @ x - b0) + qd.sum_squares(x)), [x <= 0.5])
    xc = cp.Variable(n)
    cc = [xc <= 0.5]
    cvx = cp.Problem(cp.Minimize(cp.sum_squares(A0 @ xc - b0) + cp.sum_squares(xc)), cc)
    return Case(prob, {}, cvx, xs=[(x, xc)], duals=list(zip(prob.constraints, cc, strict=True)))


@family
def vector_matrix_products(rng):
    n, k = 4, 3
    M0, c0, d0 = rng.standard_normal((n, k)), rng.standard_normal(k), rng.standard_normal(n)
    x = qd.Variable(n, name="x")
    M = qd.Parameter((n, k), name="M")
    cons = [x @ M <= c0, d0 @ x >= -1]
    prob = qd.Problem(qd.Minimize(qd.sum_squares(x - 1) + 0.5 * qd.sum_squares(x @ M0)), cons)
    xc = cp.Variable(n)
    cc = [xc @ M0 <= c0, d0 @ xc >= -1]
    cvx = cp.Problem(cp.Minimize(cp.sum_squares(xc - 1) + 0.5 * cp.sum_squares(xc @ M0)), cc)
    return Case(prob, {M: M0}, cvx, xs=[(x, xc)], duals=list(zip(cons, cc, strict=True)))


# ---------------------------------------------------------------- the tests

FAMILY_SEEDS = {name: i for i, name in enumerate(sorted(FAMILIES))}


@functools.cache
def reference(name: str) -> Case:
    """The family's case, with its cvxpy problem solved (built and solved once per session)."""
    case = FAMILIES[name](np.random.default_rng(1000 + FAMILY_SEEDS[name]))
    cvx_solve(case.cvx)
    return case


def test_enough_families():
    assert len(FAMILIES) >= 30


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_family(name: str, backend: str) -> None:
    prepare_backend(backend, name)
    case = reference(name)
    sol = case.prob.solve(case.params, backend=backend, **case.backend_options)
    # Third-party solvers stop on criteria of their own (relative, or none for the gap):
    # verification may decline their point at eps 1e-9 ("inaccurate"), never report it wrong.
    allowed = ("solved", "inaccurate") if backend.startswith("qpsolvers:") else ("solved",)
    assert sol.status in allowed, f"{name} with {backend}: status {sol.status}"
    if sol.status == "inaccurate":  # no objective is reported for a declined point; x must be close
        for v, vc in case.xs:
            _close(sol[v], vc.value, 10 * X_TOL, f"{name} with {backend}: variable {v.name}")
        return
    _close_objective(sol.objective, case.cvx.value, f"{name} with {backend}: objective")
    for v, vc in case.xs:
        _close(sol[v], vc.value, X_TOL, f"{name} with {backend}: variable {v.name}")
        assert sol[v].shape == v.shape
    for c, cc in case.duals:
        _close(sol.dual(c), cc.dual_value, DUAL_TOL, f"{name} with {backend}: dual of {c}")
    for c, s in sol.shift.items():
        assert np.all(s == 0) or np.max(np.abs(s)) < 1e-7, f"feasible problem reported a shift on {c}"


# ---------------------------------------------------------------- batches


def _batch_problem(m: int, n: int):
    x = qd.Variable(n, name="x")
    A, b = qd.Parameter((m, n), name="A"), qd.Parameter(m, name="b")
    lam, s = qd.Parameter(name="lam", nonneg=True), qd.Parameter(name="s")
    G = qd.Parameter((2, n), name="G")
    cons = [G @ x <= s, x >= -1]
    prob = qd.Problem(
        qd.Minimize(qd.sum_squares(A @ x - b) + lam * qd.norm1(x) + 0.1 * qd.sum_squares(x)), cons
    )
    return prob, x, (A, b, lam, s, G), cons


def _batch_reference(m: int, n: int, values: dict[str, np.ndarray], k: int):
    Ac, bc, Gc = cp.Parameter((m, n)), cp.Parameter(m), cp.Parameter((2, n))
    lamc, sc = cp.Parameter(nonneg=True), cp.Parameter()
    xc = cp.Variable(n)
    cc = [Gc @ xc <= sc, xc >= -1]
    pc = cp.Problem(
        cp.Minimize(cp.sum_squares(Ac @ xc - bc) + lamc * cp.norm1(xc) + 0.1 * cp.sum_squares(xc)), cc
    )
    out = []
    for i in range(k):
        for par, key in ((Ac, "A"), (bc, "b"), (Gc, "G"), (lamc, "lam"), (sc, "s")):
            v = values[key]
            par.value = v[i] if v.ndim > len(par.shape) else v
        cvx_solve(pc)
        out.append((pc.value, xc.value.copy(), [c.dual_value.copy() for c in cc]))
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_parameters_match_per_element_cvxpy(backend: str) -> None:
    prepare_backend(backend)
    rng = np.random.default_rng(7)
    m, n, k = 8, 5, 4
    values = {
        "A": rng.standard_normal((k, m, n)),
        "b": rng.standard_normal((k, m)),
        "lam": np.array(0.3),  # not batched: broadcast over the batch
        "s": rng.uniform(-0.5, 0.5, k),
        "G": rng.standard_normal((2, n)),  # not batched
    }
    prob, x, (A, b, lam, s, G), cons = _batch_problem(m, n)
    sol = prob.solve(
        {A: values["A"], b: values["b"], "lam": values["lam"], s: values["s"], G: values["G"]},
        backend=backend,
    )
    assert sol[x].shape == (k, n)
    assert list(sol.status) == ["solved"] * k
    assert np.shape(sol.objective) == (k,)
    for i, (obj, xv, duals) in enumerate(_batch_reference(m, n, values, k)):
        _close_objective(float(sol.objective[i]), obj, f"batch element {i}: objective")
        _close(sol[x][i], xv, X_TOL, f"batch element {i}: x")
        for c, dv in zip(cons, duals, strict=True):
            assert sol.dual(c).shape == (k, *c.shape)
            _close(sol.dual(c)[i], dv, DUAL_TOL, f"batch element {i}: dual of {c}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_of_one_keeps_batch_dimension(backend: str) -> None:
    prepare_backend(backend)
    case = reference("quad_form_psd_parameter")
    batched = {p: np.asarray(v)[None] for p, v in case.params.items()}
    sol = case.prob.solve(batched, backend=backend)
    single = case.prob.solve(case.params, backend=backend)
    ((x, _),) = case.xs[:1]
    assert sol[x].shape == (1, *x.shape)
    assert sol.status == ["solved"]
    np.testing.assert_allclose(sol[x][0], single[x], atol=1e-7)
    np.testing.assert_allclose(sol.objective[0], single.objective, rtol=1e-8, atol=1e-9)


def test_parameters_by_name_and_default_values() -> None:
    x = qd.Variable(3, name="x")
    c = qd.Parameter(3, name="c")
    w = qd.Parameter(name="w", nonneg=True, value=2.0)
    prob = qd.Problem(qd.Minimize(w * qd.sum_squares(x) - 2 * c @ x))
    names, _ = _available()
    backend = "proxsuite" if "proxsuite" in names else (sorted(names)[0] if names else None)
    if backend is None:
        pytest.skip("no backend available")
    sol = prob.solve({"c": [2.0, 4.0, 6.0]}, backend=backend)  # w = 2 from its default value
    np.testing.assert_allclose(sol[x], [1.0, 2.0, 3.0], atol=1e-6)
    assert abs(sol.objective + 28.0) < 1e-7


def test_apply_matches_parametric_maps() -> None:
    """``ParametricQP.apply`` (numpy: new or reused arrays; torch) equals ``T @ [theta; 1] + offset``."""
    rng = np.random.default_rng(3)
    n, m = 80, 40
    x = qd.Variable(n, name="x")
    A, b = qd.Parameter((m, n), name="A"), qd.Parameter(m, name="b")
    c, d = qd.Parameter(n, name="c"), qd.Parameter(n, name="d")
    lam, ub = qd.Parameter(nonneg=True, name="lam"), qd.Parameter(3, name="ub")
    objective = qd.sum_squares(A @ x - b) + lam * qd.norm1(x) + (c + 2 * d) @ x - c[:5] @ x[:5]
    cons = [x <= 1, x[:3] <= ub, -2 <= x, qd.sum(x) == 0]
    qp = qd.Problem(qd.Minimize(objective), cons).compile()
    theta = rng.standard_normal((5, qp.n_theta))
    theta_aug = np.hstack([theta, np.ones((5, 1))])
    fresh, with_ones = qp.apply(theta), qp.apply(theta_aug)
    previous = qp.apply(theta)
    reused = qp.apply(2 * theta, out=previous)
    torch = pytest.importorskip("torch")
    from_torch = qp.apply(torch.as_tensor(theta))
    for key, amap in qp.maps.items():
        want = np.asarray(amap.T @ theta_aug.T).T + (0 if amap.offset is None else amap.offset)
        want2 = np.asarray(amap.T @ np.hstack([2 * theta, np.ones((5, 1))]).T).T
        want2 = want2 + (0 if amap.offset is None else amap.offset)
        for data, expected in ((fresh, want), (with_ones, want), (reused, want2), (from_torch, want)):
            got = getattr(data, key)
            got = got.values if isinstance(got, qd.qp.SparseBatch) else got
            got = np.asarray(got).reshape(5, -1)
            np.testing.assert_allclose(got, expected.reshape(5, -1), rtol=1e-12, atol=1e-12, err_msg=key)
    assert reused.A.values is previous.A.values  # written in place
    kinds = {k: (len(p.runs), p.multi_pos.size, len(p.const_runs)) for k, p in _plans(qp).items()}
    assert kinds["A"][0] >= 1 and kinds["q"][0] >= 1 and kinds["q"][1] > 0 and kinds["C"][2] >= 1


def _plans(qp: Any) -> dict[str, Any]:
    return {k: m._cache["plan"] for k, m in qp.maps.items()}
