"""Property-based robustness suite: random DSL models against cvxpy + Clarabel, on every backend.

One generator (:func:`specs`) draws a model description: a vector variable, a sum of random
atoms (LP and QP terms), random constraints (affine, atoms, duplicated, zero rows,
rank-deficient or inconsistent equalities, empty boxes), data as Parameters or constants,
feasible / tight / random / conflicting right-hand sides, and huge or tiny scales. The same
description is rendered once in qpdsl and once in cvxpy (:func:`render`), and every backend
must agree with cvxpy + Clarabel:

* the same status class: optimal <-> ``solved``, infeasible <-> ``solved_closest_feasible``
  (or ``dual_infeasible`` when the closest feasible QP is unbounded), unbounded <->
  ``dual_infeasible``. ``max_iter`` / ``numerical_error`` count as *declined*: honest, but a
  mismatch, allowed only on badly scaled cases (and counted);
* an ok status must come with a point that satisfies the user's constraints (checked by cvxpy
  at that point) and an objective within tolerance; for infeasible problems the shift and the
  objective of the closest feasible QP (DESIGN §5) are checked against a cvxpy reference
  computed on qpdsl's standard form.

``QPDSL_HYPOTHESIS_PROFILE`` selects the profile: ``ci`` (default: derandomized, fast) or
``long`` (by hand). Counts of what was tried and found wrong are printed at the end of the
module and written to ``$QPDSL_ROBUSTNESS_JSON`` (default: ``robustness_counts.json`` in
pytest's base temp directory). The JAX backend compiles once per shape, so it solves the
standard form padded to one fixed size (extra variables pinned at 0 by ``P = I``, zero
equality rows ``0 = 0``, free inequality rows): the padded QP has the same solution, status,
shift and objective.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from scipy.optimize import lsq_linear

hypothesis = pytest.importorskip("hypothesis")
cp = pytest.importorskip("cvxpy")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import qpdsl as qd  # noqa: E402
from qpdsl.problem import collect_parameter_values  # noqa: E402

# ---------------------------------------------------------------- profiles and counters

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile(
    "long",
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
PROFILE = os.environ.get("QPDSL_HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "long"):
    raise ValueError(f"QPDSL_HYPOTHESIS_PROFILE must be 'ci' or 'long', not {PROFILE!r}")
BASE = settings.get_profile(PROFILE)
# Examples per property. The long profile draws 10 000 models; ``QPDSL_ROBUSTNESS_MODELS`` scales
# every count to about that many models in all.
EXAMPLES = {
    "ci": {"models": 40, "degenerate": 15, "shapes": 15, "wide": 8, "imported": 10, "warm": 3, "jit": 2},
    "long": {
        "models": 4400,
        "degenerate": 1800,
        "shapes": 1500,
        "wide": 1300,
        "imported": 1000,
        "warm": 100,
        "jit": 100,
    },
}[PROFILE]
if os.environ.get("QPDSL_ROBUSTNESS_MODELS"):
    _factor = int(os.environ["QPDSL_ROBUSTNESS_MODELS"]) / sum(EXAMPLES.values())
    EXAMPLES = {k: max(1, round(v * _factor)) for k, v in EXAMPLES.items()}

WANTED = ["cpu", "proxsuite", "torch", "jax", "qpsolvers:clarabel"]
AVAILABLE = set(qd.available_backends())
BACKENDS = [b for b in WANTED if b in AVAILABLE]
if "jax" in BACKENDS:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from qpdsl.jax import solve_qp as jax_solve_qp

# The fixed size every QP is padded to for the JAX backend (larger ones skip JAX, counted).
PAD_N, PAD_EQ, PAD_IN = 40, 16, 64

TIMES: Counter[str] = Counter()  # seconds spent per backend
COUNTS: dict[str, Any] = {
    "profile": PROFILE,
    "examples": 0,
    "reference": Counter(),  # cvxpy's verdicts
    "backends": {b: Counter() for b in BACKENDS},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def report(request: pytest.FixtureRequest, *lines: str) -> None:
    """Write lines to the terminal, past pytest's output capture (also without ``-s``)."""
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)


def counts_json() -> dict[str, Any]:
    """The counts so far, as saved."""
    return {
        "profile": COUNTS["profile"],
        "examples": COUNTS["examples"],
        "wrong examples": COUNTS.get("wrong examples", 0),
        "reference": dict(COUNTS["reference"]),
        "backends": {b: dict(c) for b, c in COUNTS["backends"].items()},
        "seconds": {b: round(t, 1) for b, t in TIMES.items()},
        "wrong": COUNTS.get("wrong list", []),
    }


def save_counts(path: str) -> dict[str, Any]:
    out = counts_json()
    with open(path, "w") as fh:
        json.dump(out, fh, indent=1, sort_keys=True)
    return out


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Print and save the counts once the module's tests ran (with ``$QPDSL_ROBUSTNESS_JSON`` set,
    also every 25 models while they run)."""
    yield
    path = os.environ.get("QPDSL_ROBUSTNESS_JSON") or str(
        tmp_path_factory.getbasetemp() / "robustness_counts.json"
    )
    out = save_counts(path)
    report(
        request, f"robustness counts ({PROFILE} profile, saved to {path}):", json.dumps(out, sort_keys=True)
    )


# ---------------------------------------------------------------- the model description

TERMS = (
    "lin", "sum_squares", "quad_form", "square", "norm1", "norm_inf",
    "abs", "pos", "neg", "max", "min", "maximum", "minimum", "huber",
)  # fmt: skip
LP_TERMS = ("lin", "norm1", "norm_inf", "abs", "pos", "neg", "max", "min", "maximum", "minimum")
CONSTRAINTS = ("le", "ge", "eq", "box", "norm1", "norm_inf", "abs", "max", "min", "sum")
INEQUALITIES = tuple(c for c in CONSTRAINTS if c != "eq")
SHAPES = ("eq", "ineq", "none")  # only equalities, only inequalities, no constraints
VAR_ATTRS = ("free", "bounds", "nonneg")
RHS = ("slack", "tight", "random", "conflict")
EQ_KINDS = ("generic", "dup", "zero", "rankdef", "inconsistent")


@dataclass
class Spec:
    """A random model: structure drawn by hypothesis, numbers from a seeded generator."""

    n: int
    seed: int
    maximize: bool
    terms: list[tuple[str, bool]]  # (kind, data as Parameters?)
    constraints: list[tuple[str, str, bool]]  # (kind, rhs or equality kind, data as Parameters?)
    duplicate_last: bool = False
    obj_exp: int = 0  # objective scaled by 10**obj_exp
    con_exp: int = 0  # constraints scaled by 10**con_exp
    scaled_rows: bool = False  # each constraint row scaled by its own 10**U(-con_exp, con_exp)
    imported: bool = False  # rendered in cvxpy only and imported with qd.from_cvxpy
    var_attr: str = "free"  # the cvxpy variable's attribute: free, bounds, nonneg

    @property
    def hard(self) -> bool:
        """Scaled (data over 2 or more decades): solvers may honestly decline or lose accuracy."""
        return self.obj_exp != 0 or self.con_exp != 0


@st.composite
def specs(
    draw: st.DrawFn,
    lp: bool | None = None,
    degenerate: bool = False,
    shape: str | None = None,
    wide: bool = False,
    imported: bool = False,
) -> Spec:
    """Random model descriptions.

    Parameters
    ----------
    lp
        Only piecewise-linear terms (None: either).
    degenerate
        Focus on duplicated, zero, rank-deficient and inconsistent equality rows and tight
        constraints.
    shape
        ``"eq"``: only equality constraints, ``"ineq"``: only inequalities, ``"none"``: no
        constraints (the atoms' own rows remain); None: any mix.
    wide
        Data and bounds over 10^±8 mixed within one model: every constraint row scaled by its
        own 10**U(-8, 8) (or ±6), boxes with bounds near 10^8, the objective scaled by 10^±8 or 1.
    imported
        Rendered in cvxpy only (variable free, with ``bounds=`` or ``nonneg=True``) and
        imported with ``qd.from_cvxpy``.
    """
    n = draw(st.integers(1, 4))
    if lp is None:
        lp = draw(st.booleans())
    pool = LP_TERMS if lp else TERMS
    terms = draw(st.lists(st.tuples(st.sampled_from(pool), st.booleans()), min_size=1, max_size=3))
    if shape == "none":
        cons = []
    elif shape == "eq":
        cons = draw(
            st.lists(
                st.tuples(st.just("eq"), st.sampled_from(EQ_KINDS), st.booleans()), min_size=1, max_size=3
            )
        )
    elif shape == "ineq":
        cons = draw(
            st.lists(
                st.tuples(st.sampled_from(INEQUALITIES), st.sampled_from(RHS), st.booleans()),
                min_size=1,
                max_size=4,
            )
        )
    elif wide:
        kinds = st.sampled_from(CONSTRAINTS + ("far", "far"))
        cons = draw(
            st.lists(st.tuples(kinds, st.sampled_from(RHS + EQ_KINDS), st.booleans()), min_size=1, max_size=4)
        )
    elif degenerate:
        cons = draw(
            st.lists(
                st.one_of(
                    st.tuples(st.just("eq"), st.sampled_from(EQ_KINDS), st.booleans()),
                    st.tuples(st.sampled_from(CONSTRAINTS), st.just("tight"), st.booleans()),
                ),
                min_size=1,
                max_size=4,
            )
        )
    else:
        cons = draw(
            st.lists(
                st.tuples(
                    st.sampled_from(CONSTRAINTS),
                    st.sampled_from(RHS + EQ_KINDS),
                    st.booleans(),
                ),
                min_size=1,
                max_size=4,
            )
        )
    exps = st.sampled_from([0, 0, 0, 0, -2, 2, -4, 4])
    if wide:
        con_exp, obj_exp = draw(st.sampled_from([8, -8, 6, -6])), draw(st.sampled_from([0, 0, 8, -8]))
    else:
        con_exp, obj_exp = draw(exps), draw(exps)
    return Spec(
        n=n,
        seed=draw(st.integers(0, 2**32 - 1)),
        maximize=draw(st.booleans()),
        terms=terms,
        constraints=cons,
        duplicate_last=bool(cons) and draw(st.booleans()),
        obj_exp=obj_exp,
        con_exp=con_exp,
        scaled_rows=wide or draw(st.booleans()),
        imported=imported,
        var_attr=draw(st.sampled_from(VAR_ATTRS)) if imported else "free",
    )


# ---------------------------------------------------------------- rendering in qpdsl and in cvxpy


class QdLib:
    """Renders into qpdsl; data flagged as parameters become Parameters (values kept). Atoms
    (``sum_squares``, ``norm1``, ...) are looked up on the module, so both libraries share names."""

    name = "qd"
    module: Any = qd

    def __init__(self) -> None:
        self.values: dict[Any, np.ndarray] = {}
        self.count = 0

    def __getattr__(self, atom: str) -> Any:
        return getattr(self.module, atom)

    def variable(
        self, n: int, attr: str = "free", bounds: tuple[np.ndarray, np.ndarray] | None = None
    ) -> Any:
        return qd.Variable(n, name="x")

    def data(self, value: np.ndarray | float, param: bool, **attrs: Any) -> Any:
        if not param:
            return value if isinstance(value, np.ndarray) else float(value)
        self.count += 1
        value = np.asarray(value, dtype=float)
        p = qd.Parameter(value.shape, name=f"p{self.count}", **attrs)
        self.values[p] = value
        return p

    def problem(self, maximize: bool, objective: Any, constraints: list[Any]) -> Any:
        return qd.Problem(qd.Maximize(objective) if maximize else qd.Minimize(objective), constraints)


class CpLib(QdLib):
    """Renders into cvxpy with every datum a constant."""

    name = "cp"
    module = cp

    def quad_form(self, x: Any, Q: Any) -> Any:
        return cp.quad_form(x, Q, assume_PSD=True)

    def variable(
        self, n: int, attr: str = "free", bounds: tuple[np.ndarray, np.ndarray] | None = None
    ) -> Any:
        if attr == "bounds":
            return cp.Variable(n, name="x", bounds=list(bounds))
        return cp.Variable(n, name="x", nonneg=attr == "nonneg")

    def data(self, value: np.ndarray | float, param: bool, **attrs: Any) -> Any:
        return value if isinstance(value, np.ndarray) else float(value)

    def problem(self, maximize: bool, objective: Any, constraints: list[Any]) -> Any:
        return cp.Problem(cp.Maximize(objective) if maximize else cp.Minimize(objective), constraints)


@dataclass
class Rendered:
    problem: Any
    x: Any
    constraints: list[Any] = field(default_factory=list)
    values: dict[Any, np.ndarray] = field(default_factory=dict)
    bounds: tuple[np.ndarray, np.ndarray] | None = None  # the variable's own bounds (imported models)


def render(spec: Spec, L: QdLib) -> Rendered:
    """Build the model of ``spec`` with library ``L`` (same numbers for both libraries)."""
    rng = np.random.default_rng(spec.seed)
    n = spec.n
    x0 = rng.standard_normal(n)
    bounds = None
    if spec.var_attr == "nonneg":
        x0 = np.abs(x0)  # the constraints below are built around x0
        bounds = (np.zeros(n), np.full(n, np.inf))
    elif spec.var_attr == "bounds":
        lo, hi = x0 - rng.uniform(0.1, 1.0, n), x0 + rng.uniform(0.1, 1.0, n)
        lo[rng.random(n) < 0.3] = -np.inf
        hi[rng.random(n) < 0.3] = np.inf
        bounds = (lo, hi)
    x = L.variable(n, spec.var_attr, bounds)
    s_obj = 10.0**spec.obj_exp
    s_con = 10.0**spec.con_exp

    def affine(param: bool, k: int | None = None) -> tuple[Any, Any, np.ndarray, np.ndarray]:
        """``F x - g`` with F (k, n), its data, and its value at x0."""
        k = int(rng.integers(1, 4)) if k is None else k
        F, g = rng.standard_normal((k, n)), rng.standard_normal(k)
        return L.data(F, param) @ x - L.data(g, param), F, g, F @ x0 - g

    # ---- objective: a sum of convex terms (Maximize renders -sum)
    parts = []
    for kind, param in spec.terms:
        w = float(rng.uniform(0.2, 2.0))
        if kind == "lin":
            parts.append(L.data(rng.standard_normal(n), param) @ x)
            continue
        if kind == "quad_form":
            rank = int(rng.integers(0, n + 1))
            M = rng.standard_normal((n, rank))
            Q = M @ M.T  # PSD, possibly singular (rank 0: the zero matrix)
            parts.append(L.quad_form(x, L.data(Q, param, psd=True)))
            continue
        expr, *_ = affine(param)
        if kind == "sum_squares":
            # a weight Parameter times sum_squares(Parameter @ x) is not DPP: one of them is constant
            weight = L.data(w, not param, nonneg=True)
            parts.append(weight * L.sum_squares(expr))
        elif kind == "square":
            parts.append(L.sum(L.square(expr)))
        elif kind == "norm1":
            weight = L.data(w, not param, nonneg=True)  # a nonneg parameter times a constant-data atom
            parts.append(weight * L.norm1(expr))
        elif kind == "norm_inf":
            parts.append(L.norm_inf(expr))
        elif kind == "abs":
            parts.append(L.sum(L.abs(expr)))
        elif kind == "pos":
            parts.append(L.sum(L.pos(expr)))
        elif kind == "neg":
            parts.append(L.sum(L.neg(expr)))
        elif kind == "max":
            parts.append(L.max(expr))
        elif kind == "min":
            parts.append(-L.min(expr))
        elif kind == "maximum":
            parts.append(L.sum(L.maximum(expr, L.data(rng.standard_normal(expr.shape), param))))
        elif kind == "minimum":
            parts.append(-L.sum(L.minimum(expr, L.data(rng.standard_normal(expr.shape), param))))
        elif kind == "huber":
            M = float(rng.uniform(0.1, 2.0))
            parts.append(L.sum(L.huber(expr, L.data(M, not param, nonneg=True))))
        else:  # pragma: no cover - the generator only draws the kinds above
            raise AssertionError(kind)
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    objective = s_obj * total
    if spec.maximize:
        objective = -objective

    # ---- constraints
    cons: list[Any] = []

    def rhs(value: np.ndarray, mode: str, upper: bool) -> np.ndarray:
        """A right-hand side for ``value <= rhs`` (``upper``) or ``value >= rhs`` at x0."""
        sign = 1.0 if upper else -1.0
        if mode == "tight":
            return value
        if mode == "random":
            return value + rng.standard_normal(np.shape(value))
        return value + sign * rng.uniform(0.1, 1.0, np.shape(value))  # slack (and conflict)

    def row_scale(k: int) -> np.ndarray:
        if not spec.scaled_rows or spec.con_exp == 0:
            return np.full(k, s_con)
        e = abs(spec.con_exp)
        return 10.0 ** rng.uniform(-e, e, k)

    for kind, mode, param in spec.constraints:
        if mode in EQ_KINDS and kind != "eq":
            mode = "slack"
        if kind == "eq":
            mode = mode if mode in EQ_KINDS else "generic"
            k = int(rng.integers(1, n + 1))
            A = rng.standard_normal((k, n))
            if mode in ("dup", "inconsistent"):
                A = np.vstack([A, A[:1]])
            elif mode == "zero":
                A = np.vstack([A, np.zeros((1, n))])
            elif mode == "rankdef":
                A = rng.standard_normal((k + 1, 1)) @ A[:1]
            b = A @ x0
            if mode == "inconsistent":
                b[-1] += float(rng.uniform(0.5, 2.0))
            s = row_scale(A.shape[0])
            cons.append(L.data(s[:, None] * A, param) @ x == L.data(s * b, param))
            continue
        if kind == "far":  # a box with bounds near 10^8 (or beyond) around x0
            s = row_scale(n)
            width = 10.0 ** rng.uniform(7.0, 9.0, n)
            cons.append(L.multiply(s, x) >= L.data(s * (x0 - width), param))
            cons.append(L.multiply(s, x) <= L.data(s * (x0 + width), param))
            continue
        if kind == "box":
            width = rng.uniform(0.1, 1.0, n)
            lo, hi = x0 - width, x0 + width
            if mode == "tight":
                lo = x0.copy()
            elif mode == "random":
                lo, hi = x0 + rng.standard_normal(n), x0 + rng.standard_normal(n)
            elif mode == "conflict":
                lo, hi = hi, lo  # lo > hi: empty box
            s = row_scale(n)
            cons.append(L.multiply(s, x) >= L.data(s * lo, param))
            cons.append(L.multiply(s, x) <= L.data(s * hi, param))
            continue
        expr, F, g, at_x0 = affine(param)
        s = float(row_scale(1)[0])
        if kind in ("le", "ge", "abs"):
            upper = kind != "ge"
            value = np.abs(at_x0) if kind == "abs" else at_x0
            r = rhs(value, mode, upper)
            if kind == "abs":
                r = np.maximum(r, 0.0) if mode != "random" else r
                cons.append(L.abs(s * expr) <= L.data(s * r, param))
            elif upper:
                cons.append(s * expr <= L.data(s * r, param))
            else:
                cons.append(s * expr >= L.data(s * r, param))
            if mode == "conflict":  # the opposite side beyond the first: empty
                if kind == "abs":
                    cons.append(L.sum(expr) >= float(np.sum(np.abs(r))) + 1.0)
                elif upper:
                    cons.append(s * expr >= L.data(s * (r + 1.0), param))
                else:
                    cons.append(s * expr <= L.data(s * (r - 1.0), param))
            continue
        atoms = {
            "norm1": (L.norm1, np.abs(at_x0).sum(), True),
            "norm_inf": (L.norm_inf, np.abs(at_x0).max(), True),
            "max": (L.max, at_x0.max(), True),
            "min": (L.min, at_x0.min(), False),
            "sum": (L.sum, at_x0.sum(), True),
        }
        fn, value, upper = atoms[kind]
        r = float(rhs(np.asarray(value), mode, upper))
        if mode == "conflict" and kind in ("norm1", "norm_inf"):
            r = -abs(r) - 0.5  # a norm below a negative number
        lhs = fn(s * expr)
        cons.append(lhs <= s * r if upper else lhs >= s * r)
        if mode == "conflict" and kind in ("max", "min", "sum"):
            # min <= max: asking the other one to sit beyond r empties the set
            other = {"max": L.min, "min": L.max, "sum": L.sum}[kind](s * expr)
            cons.append(other >= s * (r + 1.0) if upper else other <= s * (r - 1.0))
    if spec.duplicate_last and cons:
        cons.append(cons[-1])  # the same constraint object twice: duplicated rows
    return Rendered(L.problem(spec.maximize, objective, cons), x, cons, L.values, bounds)


# ---------------------------------------------------------------- references


@dataclass
class Reference:
    """cvxpy + Clarabel's verdict: ``solved``, ``infeasible``, ``unbounded`` or ``unknown``."""

    status: str
    value: float | None = None


_CP_STATUS = {cp.OPTIMAL: "solved", cp.INFEASIBLE: "infeasible", cp.UNBOUNDED: "unbounded"}


def cvx_solve(problem: Any, tol: float = 1e-10) -> bool:
    """Solve with Clarabel at tight tolerances; whether cvxpy reached a verdict."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "solution may be inaccurate": status says so
            problem.solve(solver=cp.CLARABEL, tol_gap_abs=tol, tol_gap_rel=tol, tol_feas=tol, max_iter=500)
    except cp.error.SolverError:
        return False
    return problem.status in _CP_STATUS


def cvx_reference(problem: Any) -> Reference:
    if not cvx_solve(problem):
        return Reference("unknown")
    status = _CP_STATUS.get(problem.status, "unknown")
    return Reference(status, float(problem.value) if status == "solved" else None)


def standard_form(prob: qd.Problem, values: dict[Any, np.ndarray]) -> dict[str, np.ndarray]:
    """qpdsl's standard-form data of one element (dense numpy, no batch dimension)."""
    qp = prob.compile()
    vals, batch, _ = collect_parameter_values(qp.parameters, values)
    data = qp.apply(qp.stack_theta(vals, batch)).dense()
    out = {k: np.asarray(getattr(data, k), dtype=float)[0] for k in ("P", "q", "A", "b", "C", "l", "u")}
    out["r"] = np.asarray(0.0 if data.r is None else data.r, dtype=float).reshape(-1)[0]
    p, m = out["b"].size, out["l"].size
    out["eq_user"] = np.ones(p, bool) if qp.shiftable.eq is None else np.asarray(qp.shiftable.eq, bool)
    out["in_user"] = np.ones(m, bool) if qp.shiftable.ineq is None else np.asarray(qp.shiftable.ineq, bool)
    return out


def std_objective(d: dict[str, np.ndarray], x: np.ndarray) -> float:
    return float(0.5 * x @ d["P"] @ x + d["q"] @ x + d["r"])


@dataclass
class ClosestReference:
    """DESIGN §5 on the standard form, by cvxpy: the minimal shift s* and the shifted QP's verdict."""

    s_eq: np.ndarray
    s_in: np.ndarray
    status: str  # of the shifted QP
    value: float | None


def closest_reference(d: dict[str, np.ndarray]) -> ClosestReference | None:
    """The minimal shift of the user's rows (``d["eq_user"]``, ``d["in_user"]``: the others, added
    by the compiler, stay hard) and the shifted QP's verdict."""
    n, p, m = d["q"].size, d["b"].size, d["l"].size
    if p + m == 0:
        return None
    user_eq, user_in = d["eq_user"], d["in_user"]
    # s* by bounded-variable least squares (an exact active-set method, unlike an interior point
    # whose duality-gap test leaves errors of order sqrt(tolerance) in s): over (x, w),
    # min |Ax - b|^2 + |Cx - w|^2 with l <= w <= u, so that Cx - w = Cx - clip(Cx, l, u).
    # The compiler's rows are hard: weighted by 1e6 (relative to the user's rows) in the least
    # squares, then checked (a reference that cannot meet them is no reference).
    w_eq, w_in = np.where(user_eq, 1.0, 1e6), np.where(user_in, 1.0, 1e6)
    M = np.block([[w_eq[:, None] * d["A"], np.zeros((p, m))], [w_in[:, None] * d["C"], -np.diag(w_in)]])
    lower = np.concatenate([np.full(n, -np.inf), d["l"]])
    upper = np.concatenate([np.full(n, np.inf), d["u"]])
    rhs = np.concatenate([w_eq * d["b"], np.zeros(m)])
    ls = lsq_linear(M, rhs, bounds=(lower, upper), method="bvls", tol=1e-14, max_iter=1000)
    if ls.status < 1:
        return None
    x_ls = ls.x[:n]
    hard = np.concatenate(
        [
            (d["A"] @ x_ls - d["b"])[~user_eq],
            (d["C"] @ x_ls - np.clip(d["C"] @ x_ls, d["l"], d["u"]))[~user_in],
        ]
    )
    if np.abs(hard).max(initial=0.0) > 1e-9 * (1.0 + np.abs(x_ls).max(initial=0.0)):
        return None
    ax, cx = d["A"] @ x_ls, d["C"] @ x_ls
    s_eq, s_in = ax - d["b"], cx - np.clip(cx, d["l"], d["u"])
    tol = 1e-7 * (1.0 + np.abs(np.concatenate([ax, cx, [0.0]])).max())
    violated = np.abs(s_in) > tol
    x2 = cp.Variable(n)
    cons = []
    if d["b"].size:
        cons.append(d["A"] @ x2 == ax)
    if violated.any():
        cons.append(d["C"][violated] @ x2 == cx[violated])
    keep = ~violated
    lo, hi = np.minimum(d["l"], cx)[keep], np.maximum(d["u"], cx)[keep]
    if np.isfinite(hi).any():
        cons.append(d["C"][keep][np.isfinite(hi)] @ x2 <= hi[np.isfinite(hi)])
    if np.isfinite(lo).any():
        cons.append(d["C"][keep][np.isfinite(lo)] @ x2 >= lo[np.isfinite(lo)])
    P = 0.5 * (d["P"] + d["P"].T)
    obj = 0.5 * cp.quad_form(x2, P, assume_PSD=True) + d["q"] @ x2 + d["r"]
    shifted = cp.Problem(cp.Minimize(obj), cons)
    ref = cvx_reference(shifted)
    return ClosestReference(s_eq, s_in, ref.status, ref.value)


# ---------------------------------------------------------------- running the backends


@dataclass
class Outcome:
    status: str
    x: np.ndarray  # standard-form x
    s_eq: np.ndarray
    s_in: np.ndarray
    objective: float | None  # as reported to the user (None when not reported)


# In the ci profile the torch and jax backends stop after 100 outer iterations (default 1000): on this
# CPU each iteration costs milliseconds, and an infeasible problem whose infeasibility the ALM
# does not certify runs to the limit before the closest-feasible stage takes over.
OPTIONS: dict[str, dict[str, Any]] = (
    {"torch": {"max_iter": 100}, "jax": {"max_iter": 100}} if PROFILE == "ci" else {}
)


def run_backend(
    backend: str, prob: qd.Problem, values: dict[Any, np.ndarray], d: dict[str, np.ndarray]
) -> Outcome | None:
    """Solve with one backend; None when the case is skipped (too large to pad for JAX)."""
    if backend == "jax":
        return run_jax_padded(d)
    sol = prob.solve(values, backend=backend, **OPTIONS.get(backend, {}))
    objective = float(sol.objective) if sol.statuses[0].ok else None
    return Outcome(sol.status, sol.raw.x[0], sol.raw.shift_eq[0], sol.raw.shift_in[0], objective)


def pad(d: dict[str, np.ndarray]) -> list[np.ndarray] | None:
    """The QP of ``d`` padded to (PAD_N, PAD_EQ, PAD_IN): extra variables with P = I, each extra
    equality row pinning its own extra variable at 0, extra inequality rows free (-inf, +inf)."""
    n, p, m = d["q"].size, d["b"].size, d["l"].size
    extra_eq = PAD_EQ - p
    if n > PAD_N or p > PAD_EQ or m > PAD_IN or PAD_N - n < extra_eq:
        return None
    P = np.eye(PAD_N)
    P[:n, :n] = d["P"]
    q = np.zeros(PAD_N)
    q[:n] = d["q"]
    A, b = np.zeros((PAD_EQ, PAD_N)), np.zeros(PAD_EQ)
    A[:p, :n], b[:p] = d["A"], d["b"]
    A[p + np.arange(extra_eq), n + np.arange(extra_eq)] = 1.0
    C, l, u = np.zeros((PAD_IN, PAD_N)), np.full(PAD_IN, -np.inf), np.full(PAD_IN, np.inf)
    C[:m, :n], l[:m], u[:m] = d["C"], d["l"], d["u"]
    return [P, q, A, b, C, l, u]


def run_jax_padded(d: dict[str, np.ndarray]) -> Outcome | None:
    from qpdsl.solve import Shiftable

    padded = pad(d)
    if padded is None:
        return None
    n, p, m = d["q"].size, d["b"].size, d["l"].size
    # only the user's rows may shift (the padding's rows are consistent and stay hard)
    shiftable = Shiftable(
        np.concatenate([d["eq_user"], np.zeros(PAD_EQ - p, bool)]),
        np.concatenate([d["in_user"], np.zeros(PAD_IN - m, bool)]),
    )
    x, _, _, s_eq, s_in, status = jax_solve_qp(
        *(jnp.asarray(a) for a in padded),
        on_failure="ignore",
        shiftable=shiftable,
        settings=qd.Settings(**OPTIONS.get("jax", {})),
    )
    label = qd.Status(int(status)).label
    return Outcome(label, np.asarray(x)[:n], np.asarray(s_eq)[:p], np.asarray(s_in)[:m], None)


# ---------------------------------------------------------------- judging one outcome


@dataclass
class Tolerances:
    """Acceptance thresholds for a solver accuracy of 1e-9 (absolute residuals) on the standard form.

    Constraint rows carry scales between ``lo`` and ``hi``: a residual of 1e-9 in a row of norm
    ``lo`` moves ``x`` by 1e-9 / ``lo``, so objective and shift errors grow with ``hi / lo``; a
    solver with relative tolerances (Clarabel) leaves violations proportional to ``hi``.
    """

    feas: float  # violation of a user constraint, as written
    obj: float  # absolute objective error
    shift: float  # absolute error of the shift s*


def tolerances(spec: Spec, value: float) -> Tolerances:
    s_o = 10.0**spec.obj_exp
    e = abs(spec.con_exp) if spec.scaled_rows else spec.con_exp
    hi, lo = max(1.0, 10.0**e), min(1.0, 10.0 ** (-e if spec.scaled_rows else e))
    ratio = hi / lo
    # absolute floor: the solvers' tolerances are absolute (1e-9), whatever the objective's scale
    return Tolerances(feas=1e-7 * hi, obj=1e-6 * (abs(value) + s_o) * ratio + 1e-8, shift=1e-6 * ratio)


def user_violation(cvx: Rendered, x: np.ndarray) -> float:
    """The largest violation of a user constraint at the point stored in ``cvx.x``, and of the
    variable's own bounds at ``x`` (which cvxpy's constraints do not include)."""
    viol = max([float(np.max(c.violation(), initial=0.0)) for c in cvx.constraints], default=0.0)
    if cvx.bounds is not None:
        viol = max(viol, float(np.max(np.maximum(cvx.bounds[0] - x, x - cvx.bounds[1]), initial=0.0)))
    return viol


def shifted_violation(d: dict[str, np.ndarray], out: Outcome) -> float:
    """How far ``out.x`` is from the constraints shifted by ``out``'s shift (standard form)."""
    x, s_in = out.x, out.s_in
    eq = d["A"] @ x - d["b"] - out.s_eq
    cx = d["C"] @ x
    lo, hi = d["l"] + np.minimum(s_in, 0.0), d["u"] + np.maximum(s_in, 0.0)
    return float(np.abs(np.concatenate([eq, cx - np.clip(cx, lo, hi), [0.0]])).max())


def second_opinion(spec: Spec, value: float, reference: float, tol: float) -> str:
    """Why a feasible point whose objective differs from cvxpy + Clarabel's is right after all
    (empty when it is not): it beats the reference, or cvxpy + PIQP agrees with it."""
    sense = -1.0 if spec.maximize else 1.0
    if sense * (value - reference) < -tol:
        return "better than the cvxpy + Clarabel reference"
    other = render(spec, CpLib()).problem
    try:
        other.solve(solver=cp.PIQP, eps_abs=1e-10, eps_rel=1e-10, max_iter=1000)
    except (cp.error.SolverError, ValueError):
        return ""
    if other.status == cp.OPTIMAL and abs(value - float(other.value)) <= tol:
        return "agrees with cvxpy + PIQP where cvxpy + Clarabel is off"
    return ""


def judge(
    spec: Spec,
    ref: Reference,
    cvx: Rendered,
    d: dict[str, np.ndarray],
    x_slice: slice,
    out: Outcome,
    backend: str = "",
) -> tuple[str, str]:
    """``(verdict, why)`` for one backend's outcome.

    Verdicts: ``agree``; ``declined`` (``max_iter`` / ``numerical_error``: honest); ``inaccurate``
    (status ``inaccurate``: the backend's claim failed verification, honest); ``mismatch``
    (another status class than cvxpy's, but no ok status with a wrong point); ``imprecise`` (a
    closest feasible point whose shift or objective misses the reference: on rows of norm r the
    least-squares feasibility problem has curvature r², so an absolute tolerance of 1e-9 leaves
    errors of 1e-9 / r² in x); ``wrong`` (a ``solved`` point that violates the constraints or has
    the wrong objective, a closest feasible point outside its own shifted constraints). Declined,
    mismatch and imprecise are allowed on badly scaled cases only, inaccurate also on third-party
    solvers (``qpsolvers:*``), whose claims verification exists to check.
    """
    # an interior point (qpsolvers:clarabel) stops on a duality-gap test: its least-squares
    # feasibility solve leaves shift errors of order sqrt(tolerance), about 1e-5 here
    loose = 10.0 if backend.startswith("qpsolvers:") else 1.0
    if out.status in ("max_iter", "numerical_error"):
        return "declined", f"{out.status} where cvxpy says {ref.status}"
    if out.status == "inaccurate":
        return "inaccurate", f"the claim failed verification where cvxpy says {ref.status}"
    if out.status == "dual_infeasible":
        if ref.status in ("unbounded", "unknown"):
            return "agree", ""
        if ref.status == "infeasible":
            closest = closest_reference(d)
            if closest is None or closest.status in ("unbounded", "unknown"):
                return "agree", ""
        return "mismatch", f"dual_infeasible where cvxpy says {ref.status} ({ref.value})"
    if out.status not in ("solved", "solved_closest_feasible"):
        return "wrong", f"unexpected status {out.status}"
    if not np.all(np.isfinite(out.x)):
        return "wrong", f"{out.status} with non-finite x {out.x}"
    # an ok status: look at the point through cvxpy
    x_user = out.x[x_slice]
    # cvxpy refuses a value outside the variable's bounds; a closest feasible point may lie there
    # (the bounds are the user's rows and shift too), so it is stored without that check
    cvx.x.save_value(np.asarray(x_user, dtype=float))
    value_at_x = float(cvx.problem.objective.value)
    tol = tolerances(spec, ref.value if ref.value is not None else value_at_x)
    if out.objective is not None and abs(out.objective - value_at_x) > tol.obj:
        return "wrong", f"reported objective {out.objective!r}, the point's objective is {value_at_x!r}"
    viol = user_violation(cvx, x_user)
    if out.status == "solved":
        if viol > tol.feas:
            return "wrong", f"solved, but the point violates a constraint by {viol:.3g} > {tol.feas:.3g}"
        if ref.status == "solved" and abs(value_at_x - ref.value) > tol.obj:
            better = second_opinion(spec, value_at_x, ref.value, tol.obj)
            if better:
                return "agree", better
            return "wrong", f"solved with objective {value_at_x!r}, cvxpy {ref.value!r}"
        if ref.status == "unbounded":
            return "mismatch", f"solved (objective {value_at_x!r}) where cvxpy says unbounded"
        return "agree", ""  # cvxpy's "infeasible": by less than the tolerance, as x shows
    # solved_closest_feasible: the point must satisfy the constraints shifted by the reported shift
    gap = shifted_violation(d, out)
    if gap > tol.feas:
        return "wrong", f"closest feasible point violates its shifted constraints by {gap:.3g}"
    if ref.status == "solved":
        if viol <= tol.feas and abs(value_at_x - ref.value) <= tol.obj:
            return "agree", ""  # a shift within the tolerance
        if loose > 1.0 and viol <= 1e-4 * max(1.0, 10.0 ** abs(spec.con_exp)):
            # an interior point's least-squares solve: the shift is known to about sqrt(1e-9)
            return "imprecise", f"solved_closest_feasible with a shift of {viol:.3g} where cvxpy says solved"
        return "mismatch", f"solved_closest_feasible (violation {viol:.3g}) where cvxpy says solved"
    if ref.status == "unbounded":
        return "mismatch", "solved_closest_feasible where cvxpy says unbounded"
    closest = closest_reference(d)
    if closest is None or closest.status == "unknown":
        return "agree", ""
    s_ref = np.concatenate([closest.s_eq, closest.s_in])
    s_out = np.concatenate([out.s_eq, out.s_in])
    err = float(np.abs(s_out - s_ref).max(initial=0.0))
    if err > loose * tol.shift * (1.0 + np.abs(s_ref).max(initial=0.0)):
        # x satisfies the constraints shifted by s_out (checked above), so s_out is achievable; the
        # minimal shift is unique, and one no longer than cvxpy's is at least as close to it (a
        # flat least-squares problem leaves cvxpy's components loose while its norm is tight).
        if float(s_out @ s_out) <= float(s_ref @ s_ref) * (1.0 + tol.shift) + tol.shift:
            return "agree", ""
        return "imprecise", f"shift {s_out} differs from the minimal shift {s_ref} by {err:.3g}"
    if closest.status != "solved":
        return "mismatch", f"solved_closest_feasible but the shifted QP is {closest.status}"
    f_out = std_objective(d, out.x)
    if abs(f_out - closest.value) > loose * tolerances(spec, closest.value).obj:
        return "imprecise", f"closest feasible objective {f_out!r}, reference {closest.value!r}"
    return "agree", ""


def check_spec(spec: Spec, backends: list[str] | None = None) -> list[str]:
    """Run every backend on ``spec``, count the outcomes, and return what was wrong."""
    cvx = render(spec, CpLib())
    if spec.imported:
        imported = qd.from_cvxpy(cvx.problem)
        model = Rendered(imported, imported.cvxpy_map[cvx.x])
    else:
        model = render(spec, QdLib())
    ref = cvx_reference(cvx.problem)
    COUNTS["examples"] += 1
    if COUNTS["examples"] % 25 == 0 and os.environ.get("QPDSL_ROBUSTNESS_JSON"):
        save_counts(os.environ["QPDSL_ROBUSTNESS_JSON"])
    COUNTS["reference"][ref.status] += 1
    d = standard_form(model.problem, model.values)
    sl = model.problem.compile().variables[model.x]
    x_slice = slice(sl.offset, sl.offset + sl.size)
    wrong = []
    for backend in backends or BACKENDS:
        counts = COUNTS["backends"][backend]
        start = time.perf_counter()
        out = run_backend(backend, model.problem, model.values, d)
        TIMES[backend] += time.perf_counter() - start
        if out is None:
            counts["skipped (too large to pad)"] += 1
            continue
        verdict, why = judge(spec, ref, cvx, d, x_slice, out, backend)
        if verdict == "agree" and why:
            counts[f"agree ({why})"] += 1
        counts["tried"] += 1
        counts[f"{ref.status}->{out.status}"] += 1
        # where cvxpy + Clarabel reached no verdict there is no status class to match (the ok-status
        # checks above still apply); elsewhere a well-scaled model must get cvxpy's class
        # a third-party solver's claims are what verification checks: refused claims (inaccurate)
        # and its interior-point least-squares shifts (imprecise) are counted, not failed
        strict = ("declined", "mismatch") + (
            () if backend.startswith("qpsolvers:") else ("imprecise", "inaccurate")
        )
        if verdict in strict and not spec.hard and ref.status != "unknown":
            verdict, why = "wrong", f"{why} (a well-scaled case)"
        elif verdict in ("declined", "inaccurate") and not spec.hard and ref.status == "solved":
            counts[f"{verdict} (well-scaled)"] += 1
        counts[verdict] += 1
        if verdict == "wrong":
            wrong.append(f"{backend}: {why}")
    return wrong


# ---------------------------------------------------------------- the properties


def run_property(strategy: st.SearchStrategy[Spec], examples: int) -> None:
    """Check every example of ``strategy``. In the ci profile the first wrong one fails at once
    (and hypothesis shrinks it); in the long profile every example runs, the wrong ones are
    collected (and counted) and reported together at the end."""
    found: list[str] = []

    @settings(BASE, max_examples=examples)
    @given(strategy)
    def check(spec: Spec) -> None:
        wrong = check_spec(spec)
        if wrong and PROFILE == "long":
            found.append(f"{spec!r}\n  " + "\n  ".join(wrong))
            COUNTS.setdefault("wrong list", []).append(found[-1])
            COUNTS["wrong examples"] = COUNTS.get("wrong examples", 0) + 1
            return
        assert not wrong, "\n".join(wrong)

    check()
    assert not found, f"{len(found)} wrong examples:\n" + "\n".join(found)


def test_random_models_match_cvxpy() -> None:
    """Random LPs and QPs, feasible or not, any scale: every backend agrees with cvxpy."""
    run_property(specs(), EXAMPLES["models"])


def test_degenerate_models_match_cvxpy() -> None:
    """Duplicated, zero, rank-deficient and inconsistent equality rows; tight constraints."""
    run_property(specs(degenerate=True), EXAMPLES["degenerate"])


def test_models_of_each_constraint_shape_match_cvxpy() -> None:
    """Only equalities, only inequalities, no constraints (the atoms' rows remain)."""
    run_property(st.sampled_from(SHAPES).flatmap(lambda shape: specs(shape=shape)), EXAMPLES["shapes"])


def test_models_over_sixteen_decades_match_cvxpy() -> None:
    """Data and bounds over 10^±8 mixed within one model: honest declines allowed, never a wrong point."""
    run_property(specs(wide=True), EXAMPLES["wide"])


def test_imported_cvxpy_models_match_cvxpy() -> None:
    """cvxpy models with free, ``bounds=`` and ``nonneg=True`` variables through ``qd.from_cvxpy``."""
    run_property(specs(imported=True), EXAMPLES["imported"])


# ---------------------------------------------------------------- warm-started layers


WARM_BACKENDS = [b for b in ("cpu", "proxsuite", "torch", "qpsolvers:clarabel") if b in AVAILABLE]
FAULTS = ("ok", "ok", "ok", "nan", "unbounded", "infeasible")
EXPECTED = {
    "ok": "solved",
    "nan": "numerical_error",
    "unbounded": "dual_infeasible",
    "infeasible": "solved_closest_feasible",
}


@dataclass
class WarmCase:
    """A parametric QP ``min x'Qx + c'x s.t. g'x in [-h0, h1], R x <= h_R`` and a sequence of batches."""

    n: int
    rows: int  # rows of R (at most n - 2, so that an unbounded direction exists)
    seed: int
    faults: list[list[str]]  # per call, per batch element


@st.composite
def warm_cases(draw: st.DrawFn) -> WarmCase:
    n = draw(st.integers(2, 4))
    batch = draw(st.integers(2, 4))
    calls = draw(st.integers(2, 4))
    faults = draw(
        st.lists(
            st.lists(st.sampled_from(FAULTS), min_size=batch, max_size=batch), min_size=calls, max_size=calls
        )
    )
    return WarmCase(n, draw(st.integers(0, n - 2)), draw(st.integers(0, 2**32 - 1)), faults)


def warm_batch(case: WarmCase, G: np.ndarray, faults: list[str], rng: np.random.Generator) -> list[Any]:
    """Parameter values (Q, c, h) of one batch; each element is ok or carries its fault."""
    torch = pytest.importorskip("torch")
    n = case.n
    Qs, cs, hs = [], [], []
    for fault in faults:
        x0 = rng.standard_normal(n)
        M = rng.standard_normal((n, n))
        Q, c = M @ M.T + 0.1 * np.eye(n), rng.standard_normal(n)
        h = G @ x0 + rng.uniform(0.1, 1.0, G.shape[0])
        h[:2] = np.abs(G[0] @ x0) + 1.0  # the slab -h0 <= g'x <= h1
        if fault == "nan":
            c[0] = np.nan
        elif fault == "infeasible":
            h[:2] = -1.0  # g'x <= -1 and g'x >= 1
        elif fault == "unbounded":
            # Q = 0 and c along -d, where G d = 0 (G has at most n - 1 independent rows)
            d = np.linalg.svd(G)[2][-1]
            Q, c = np.zeros((n, n)), -d
        Qs.append(Q)
        cs.append(c)
        hs.append(h)
    return [torch.tensor(np.array(a)) for a in (Qs, cs, hs)]


@pytest.mark.parametrize("backend", WARM_BACKENDS)
def test_warm_started_layers_over_batches_with_failing_elements(backend: str) -> None:
    """A sequence of batches through ``to_torch(warm_start=True, on_failure="nan")``, some
    elements NaN, unbounded or infeasible: every call gives the statuses and values of a cold
    layer, a failed element never poisons the next call."""
    torch = pytest.importorskip("torch")

    @settings(BASE, max_examples=EXAMPLES["warm"])
    @given(warm_cases())
    def check(case: WarmCase) -> None:
        rng = np.random.default_rng(case.seed)
        n = case.n
        g = rng.standard_normal(n)
        G = np.vstack([g, -g, rng.standard_normal((case.rows, n))])
        x = qd.Variable(n, name="x")
        Q, c = qd.Parameter((n, n), name="Q", psd=True), qd.Parameter(n, name="c")
        h = qd.Parameter(G.shape[0], name="h")
        prob = qd.Problem(qd.Minimize(qd.quad_form(x, Q) + c @ x), [G @ x <= h])
        options = OPTIONS.get(backend, {})
        warm = prob.to_torch(
            parameters=[Q, c, h], variables=[x], backend=backend, warm_start=True, on_failure="nan", **options
        )
        cold = prob.to_torch(
            parameters=[Q, c, h], variables=[x], backend=backend, on_failure="nan", **options
        )
        for faults in case.faults:
            values = warm_batch(case, G, faults, rng)
            (xw,), (xc,) = warm(*values), cold(*values)
            got = [qd.Status(int(v)).label for v in warm.last_status]
            want = [qd.Status(int(v)).label for v in cold.last_status]
            assert got == want, (faults, got, want)
            for i, fault in enumerate(faults):
                COUNTS["backends"].setdefault(f"warm {backend}", Counter())[f"{fault}->{got[i]}"] += 1
                if fault in ("nan", "unbounded"):
                    assert got[i] == EXPECTED[fault], (faults, got)
                if not qd.Status[got[i].upper()].ok:
                    assert torch.isnan(xw[i]).all() and torch.isnan(xc[i]).all()
                    continue
                assert got[i] == EXPECTED[fault], (faults, got)
                scale = 1.0 + float(torch.abs(xc[i]).max())
                assert float(torch.abs(xw[i] - xc[i]).max()) <= 1e-6 * scale, (faults, i, xw[i], xc[i])

    check()


# ---------------------------------------------------------------- eager and jax.jit

JIT_BATCH = 2 if PROFILE == "ci" else 8  # eager JAX compiles per bucket (1, 2, 4, ...): few in ci
JIT_BACKENDS = [b for b in ("jax", "cpu", "proxsuite") if b in BACKENDS]
_JITTED: dict[str, Any] = {}


def padded_batch(batch: list[Spec]) -> list[np.ndarray]:
    """The standard forms of ``batch``, padded to one shape and stacked (a model too large to
    pad becomes the trivial QP ``min |x|²/2``)."""
    out = []
    for spec in batch:
        model = render(spec, QdLib())
        padded = pad(standard_form(model.problem, model.values))
        if padded is None:
            padded = pad(
                {
                    "P": np.eye(1),
                    "q": np.zeros(1),
                    "A": np.zeros((0, 1)),
                    "b": np.zeros(0),
                    "C": np.zeros((0, 1)),
                    "l": np.zeros(0),
                    "u": np.zeros(0),
                }
            )
        out.append(padded)
    return [np.stack(arrays) for arrays in zip(*out, strict=True)]


@pytest.mark.skipif("jax" not in BACKENDS, reason="the jax backend is not installed")
@pytest.mark.parametrize("backend", JIT_BACKENDS)
def test_eager_and_jit_agree(backend: str) -> None:
    """Batches of random models solved by ``qpdsl.jax.solve_qp`` eagerly and under ``jax.jit``:
    the same statuses, objectives and shifts within tolerance. Every batch has one padded
    shape, so each backend compiles once."""
    from functools import partial

    if backend not in _JITTED:
        _JITTED[backend] = jax.jit(partial(jax_solve_qp, backend=backend, on_failure="ignore"))

    @settings(BASE, max_examples=EXAMPLES["jit"])
    @given(st.lists(specs(), min_size=JIT_BATCH, max_size=JIT_BATCH))
    def check(batch: list[Spec]) -> None:
        arrays = [jnp.asarray(a) for a in padded_batch(batch)]
        eager = jax_solve_qp(*arrays, backend=backend, on_failure="ignore")
        jitted = _JITTED[backend](*arrays)
        P, q = np.asarray(arrays[0]), np.asarray(arrays[1])
        s_e, s_j = np.asarray(eager[5]), np.asarray(jitted[5])
        counts = COUNTS["backends"].setdefault(f"jit {backend}", Counter())
        for i in range(JIT_BATCH):
            e, j = qd.Status(int(s_e[i])), qd.Status(int(s_j[i]))
            counts[f"{e.label}->{j.label}"] += 1
            assert e == j, (batch[i], e.label, j.label)
            if not e.ok:
                continue
            f = [
                float(0.5 * x @ P[i] @ x + q[i] @ x)
                for x in (np.asarray(eager[0][i]), np.asarray(jitted[0][i]))
            ]
            tol = 1e-6 * (1.0 + abs(f[0])) * (10.0 ** abs(batch[i].con_exp)) ** 2
            assert abs(f[0] - f[1]) <= tol, (batch[i], f)
            for k in (3, 4):
                a, b = np.asarray(eager[k][i]), np.asarray(jitted[k][i])
                assert (
                    np.abs(a - b).max(initial=0.0)
                    <= 1e-6 * (1.0 + np.abs(a).max(initial=0.0)) * (10.0 ** abs(batch[i].con_exp)) ** 2
                ), (batch[i], a, b)

    check()


@pytest.mark.skipif("jax" not in BACKENDS, reason="the jax backend is not installed")
def test_jax_closest_feasible_lp_found_by_the_long_profile() -> None:
    """Found by the long profile (a well-scaled model): torch and proxsuite gave the closest
    feasible solution, jax reported max_iter (primal residual 0, dual 2e-13, complementarity
    never passing) until its driver refreshed the products K x as the torch one does. The
    shifted QP is built here with the closest-feasible stage's own helpers (feasibility solve
    by proxsuite) and solved by both ALM drivers."""
    from qpdsl.backends import get_backend
    from qpdsl.backends.jax_backend import solve_raw as jax_solve_raw
    from qpdsl.backends.torch_backend import solve_raw as torch_solve_raw
    from qpdsl.qp import QPData, Settings
    from qpdsl.solve import Shiftable, closest

    constraints = [("norm1", "conflict", False), ("min", "inconsistent", False), ("max", "slack", True)]
    spec = Spec(n=4, seed=4, maximize=False, terms=[("min", True), ("min", True)], constraints=constraints)
    model = render(spec, QdLib())
    d = standard_form(model.problem, model.values)
    data = QPData(*(np.asarray(d[k])[None] for k in ("P", "q", "A", "b", "C", "l", "u")))
    feas = get_backend("proxsuite").solve(closest._feasibility_qp(data, Shiftable()), Settings())
    shift = closest.closest_shift(data, np.asarray(feas.x)[:, : data.n], 1e-9)
    assert bool(shift.shifted[0])  # infeasible
    shifted = closest.shifted_data(data, shift)
    torch = pytest.importorskip("torch")
    on_torch = torch_solve_raw(shifted.map_arrays(torch.as_tensor), Settings())
    assert on_torch.statuses() == [qd.Status.SOLVED]
    on_jax = jax_solve_raw(shifted.map_arrays(jnp.asarray), Settings())
    assert on_jax.statuses() == [qd.Status.SOLVED]


def test_closest_feasible_point_on_widened_hard_rows_passes_verification() -> None:
    """Found by the long profile (a well-scaled LP): the least-squares point violates two hard
    (epigraph) rows by 3e-10 and 6e-10, within the feasibility solve's tolerance, so the shifted
    QP widens them to contain it. torch and jax solved that QP to 1e-9 but their point, with
    multipliers 1 on those rows, had a duality gap of 1.01e-9 on the unwidened bounds and was
    reported ``inaccurate``. Closest-feasible points are now verified on the QP that was
    solved, and every backend agrees with cvxpy."""
    constraints = [
        ("norm1", "conflict", False),
        ("abs", "conflict", True),
        ("le", "tight", False),
        ("abs", "conflict", True),
    ]
    spec = Spec(
        n=4,
        seed=1931,
        maximize=True,
        terms=[("minimum", False), ("max", False), ("max", False)],
        constraints=constraints,
        scaled_rows=True,
    )
    assert check_spec(spec, [b for b in ("cpu", "torch") if b in BACKENDS]) == []


def test_infeasible_model_whose_closest_feasible_qp_is_unbounded() -> None:
    """Found by the long profile (a well-scaled model, cvxpy: infeasible): the closest feasible
    QP is unbounded. torch and proxsuite reported ``dual_infeasible``; ``cpu`` found the first
    solve infeasible and the shifted solve unbounded, but returned its last iterate instead of
    the direction and the claim was dropped as ``inaccurate``. The ALM backends now return the
    direction as x, and the shifted solve's unbounded claim stands when it is a descent direction."""
    spec = Spec(
        n=4,
        seed=1,
        maximize=True,
        terms=[("pos", True), ("pos", True), ("max", False)],
        constraints=[("le", "conflict", False)],
        duplicate_last=True,
    )
    assert check_spec(spec, [b for b in ("cpu", "torch", "proxsuite") if b in BACKENDS]) == []
