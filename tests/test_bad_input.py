"""Bad input catalogue: every item is a typed qpdsl error whose message names the
offending thing and says what to change, or a documented per-element outcome.

Already covered elsewhere, not repeated here (see docs/robustness.md for the whole table):
``tests/test_model_errors.py`` (non-convex models, parameters outside the affine rules, shapes
and indices while modelling, empty problems, and ``Problem.solve``'s ParameterErrors: NaN/Inf
naming the batch element, shapes, non-PSD ``psd=True`` and negative ``nonneg=True`` values)
and ``tests/test_layers_standard.py`` (the standard-form ``solve_qp`` of both frameworks:
dtype, shape, batch-size and NaN/``l > u`` errors, ``on_failure`` on standard-form data).

Here: the same checks through the problem layers (``prob.to_torch`` / ``prob.to_jax``), one
failing element in a batch under each ``on_failure`` mode, devices, dtypes, non-numeric and
empty arguments, invalid settings and options, unbounded problems, iteration limits, and a
property: random misuse of the modelling language raises ``ModelError`` and nothing else.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

import qpdsl as qd
from qpdsl.qp import WarmStart

torch = pytest.importorskip("torch")

AVAILABLE = set(qd.available_backends())
TORCH_BACKENDS = [b for b in ("cpu", "proxsuite", "torch", "qpsolvers:clarabel") if b in AVAILABLE]
ALL_BACKENDS = [b for b in ("cpu", "proxsuite", "torch", "jax", "qpsolvers:clarabel") if b in AVAILABLE]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def expect(error: type[Exception], fn: Any, *fragments: str) -> str:
    """Call ``fn``; it must raise ``error`` (a QPDSLError) whose message holds every fragment."""
    with pytest.raises(error) as info:
        fn()
    assert isinstance(info.value, qd.QPDSLError), type(info.value)
    msg = str(info.value)
    for frag in fragments:
        assert re.search(re.escape(frag), msg), f"{frag!r} not in message: {msg}"
    return msg


class Model:
    """``min 1/2 x'Sx + q'x + lam |x|_1  s.t.  -1 <= x <= 1, sum(x) = 1/2`` with S psd, lam nonneg."""

    def __init__(self) -> None:
        self.x = qd.Variable(3, name="x")
        self.S = qd.Parameter((3, 3), name="S", psd=True)
        self.q = qd.Parameter(3, name="q")
        self.lam = qd.Parameter(name="lam", nonneg=True)
        objective = 0.5 * qd.quad_form(self.x, self.S) + self.q @ self.x + self.lam * qd.norm1(self.x)
        self.prob = qd.Problem(qd.Minimize(objective), [self.x >= -1, self.x <= 1, qd.sum(self.x) == 0.5])
        rng = np.random.default_rng(0)
        M = rng.standard_normal((4, 3, 3))
        self.Sv = M @ M.transpose(0, 2, 1) + 0.1 * np.eye(3)
        self.qv = rng.standard_normal((4, 3))
        self.lamv = np.array([0.1, 0.2, 0.3, 0.4])

    def args(self, fw: str, S: Any = None, q: Any = None, lam: Any = None) -> list[Any]:
        values = [self.Sv if S is None else S, self.qv if q is None else q, self.lamv if lam is None else lam]
        if fw == "torch":
            return [torch.tensor(np.asarray(v, dtype=float)) for v in values]
        import jax.numpy as jnp

        return [jnp.asarray(np.asarray(v, dtype=float)) for v in values]

    def layer(self, fw: str, backend: str | None = None, **kw: Any) -> Any:
        params = [self.S, self.q, self.lam]
        if fw == "torch":
            return self.prob.to_torch(params, [self.x], backend=backend or "proxsuite", **kw)
        return self.prob.to_jax(params, [self.x], backend=backend or "proxsuite", **kw)


@pytest.fixture(scope="module")
def model() -> Model:
    return Model()


def _frameworks() -> list[str]:
    out = ["torch"]
    try:
        import jax

        jax.config.update("jax_enable_x64", True)
        out.append("jax")
    except ImportError:  # pragma: no cover - jax is a dev dependency
        pass
    return out


FRAMEWORKS = _frameworks()


# ---------------------------------------------------------------- parameter values through the layers


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_layer_non_finite_names_parameter_and_element(model: Model, fw: str, bad: float) -> None:
    q = model.qv.copy()
    q[2, 1] = bad
    expect(
        qd.ParameterError,
        lambda: model.layer(fw)(*model.args(fw, q=q)),
        "parameter q",
        "NaN or Inf",
        "batch element(s) 2",
        "pass finite values",
    )


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_layer_non_psd_and_negative_nonneg_name_element(model: Model, fw: str) -> None:
    S = model.Sv.copy()
    S[1] = np.diag([1.0, -0.5, 1.0])
    expect(
        qd.ParameterError,
        lambda: model.layer(fw)(*model.args(fw, S=S)),
        "parameter S (psd=True)",
        "negative eigenvalue in batch element(s) 1",
        "positive semidefinite",
    )
    S = model.Sv.copy()
    S[3, 0, 2] += 0.5  # unsymmetric, with the same symmetric part: a valid value
    S[3, 2, 0] -= 0.5
    model.layer(fw)(*model.args(fw, S=S))
    expect(
        qd.ParameterError,
        lambda: model.layer(fw)(*model.args(fw, lam=[0.1, -1.0, 0.2, 0.0])),
        "parameter lam",
        "nonneg",
        "batch element(s) 1",
        ">= 0",
    )


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_layer_shapes_batch_sizes_and_argument_count(model: Model, fw: str) -> None:
    layer = model.layer(fw)
    expect(
        qd.ParameterError,
        lambda: layer(*model.args(fw, q=np.ones(4))),
        "parameter q",
        "expected shape (3,)",
        "got (4,)",
    )
    expect(
        qd.ParameterError,
        lambda: layer(*model.args(fw, q=np.ones((2, 3)))),
        "batch size 2",
        "batch size 4 of parameter S",
        "same leading dimension",
    )
    expect(qd.ParameterError, lambda: layer(*model.args(fw)[:2]), "takes 3 arguments (S, q, lam)", "got 2")
    empty = model.args(fw, S=np.eye(3), q=np.ones((0, 3)), lam=0.1)
    expect(qd.ParameterError, lambda: layer(*empty), "parameter q has batch size 0", "at least one")
    expect(
        qd.ParameterError,
        lambda: model.prob.solve({model.S: np.eye(3), model.q: np.ones((0, 3)), model.lam: 0.1}),
        "batch size 0",
    )


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_layer_non_numeric_and_complex_arguments(model: Model, fw: str) -> None:
    layer = model.layer(fw)
    S, _, lam = model.args(fw)
    expect(qd.ParameterError, lambda: layer(S, "abc", lam), "argument for parameter q", "real numeric")
    if fw == "torch":
        cplx = torch.ones(4, 3, dtype=torch.complex128)
    else:
        import jax.numpy as jnp

        cplx = jnp.ones((4, 3), dtype=jnp.complex128)
    expect(
        qd.ParameterError, lambda: layer(S, cplx, lam), "argument for parameter q is complex", "real values"
    )


def test_torch_layer_dtypes_and_devices(model: Model) -> None:
    layer = model.layer("torch")
    S, q, lam = model.args("torch")
    expect(qd.ParameterError, lambda: layer(S.half(), q, lam), "parameter S", "float16", ".double()")
    expect(
        qd.ParameterError,
        lambda: layer(S, q.to("meta"), lam),
        "different devices",
        "q on meta",
        ".to(device)",
    )
    expect(
        qd.ParameterError,
        lambda: layer(S.to("meta"), q.to("meta"), lam.to("meta")),
        "parameter S",
        "meta device",
    )
    expect(qd.ParameterError, lambda: layer(S.to_sparse(), q, lam), "parameter S", "sparse", ".to_dense()")
    # mixed float32 / float64 arguments: computed in the widest, as torch promotes them
    (x,) = layer(S.float(), q, lam)
    assert x.dtype == torch.float64


def test_jax_layer_dtype(model: Model) -> None:
    jnp = pytest.importorskip("jax.numpy")
    layer = model.layer("jax")
    S, q, lam = model.args("jax")
    expect(qd.ParameterError, lambda: layer(S.astype(jnp.float16), q, lam), "float32 or float64", "float16")


# ---------------------------------------------------------------- settings, options, backends


def test_invalid_on_failure_and_settings(model: Model) -> None:
    expect(
        qd.ParameterError, lambda: model.layer("torch", on_failure="skip"), "on_failure", "'skip'", "'nan'"
    )
    values = {model.S: model.Sv[0], model.q: model.qv[0], model.lam: 0.1}
    for kw, frag in (
        ({"max_iter": 0}, "Settings.max_iter=0"),
        ({"max_iter": 2.5}, "an integer >= 1"),
        ({"eps_abs": -1e-9}, "Settings.eps_abs=-1e-09"),
        ({"eps_abs": float("nan")}, "a finite number >= 0"),
        ({"eps_rel": float("inf")}, "Settings.eps_rel=inf"),
    ):
        expect(qd.ParameterError, lambda kw=kw: model.prob.solve(values, **kw), frag, "pass")
        expect(qd.ParameterError, lambda kw=kw: model.layer("torch", **kw), frag)
    # a layer's option, not a solver option: say so instead of listing solver options
    expect(
        qd.ParameterError,
        lambda: model.prob.solve(values, on_failure="nan"),
        "takes no on_failure",
        "Solution.status",
        "to_torch",
    )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_unknown_backend_option(model: Model, backend: str) -> None:
    values = {model.S: model.Sv[0], model.q: model.qv[0], model.lam: 0.1}
    if backend == "jax":
        pytest.importorskip("jax").config.update("jax_enable_x64", True)
    expect(
        qd.ParameterError, lambda: model.prob.solve(values, backend=backend, not_an_option=1), "not_an_option"
    )


def test_unknown_backend_and_solver(model: Model) -> None:
    values = {model.S: model.Sv[0], model.q: model.qv[0], model.lam: 0.1}
    expect(qd.BackendNotFound, lambda: model.prob.solve(values, backend="nope"), "unknown backend 'nope'")
    expect(
        qd.BackendNotFound,
        lambda: model.prob.solve(values, backend="qpsolvers:nope"),
        "'nope' is not installed",
        "pip install",
    )


def test_warm_start_shape(model: Model) -> None:
    values = {model.S: model.Sv[0], model.q: model.qv[0], model.lam: 0.1}
    n = model.prob.compile().n
    expect(
        qd.ParameterError,
        lambda: model.prob.solve(values, backend="proxsuite", warm_start=WarmStart(x=np.zeros(n + 2))),
        "warm_start.x",
        f"({n},)",
    )


# ---------------------------------------------------------------- one failing element in a batch


def _solve_alone(model: Model, layer: Any, fw: str, rows: list[int]) -> list[Any]:
    out = []
    for i in rows:
        S, q, lam = model.args(fw, S=model.Sv[i], q=model.qv[i], lam=model.lamv[i])
        out.append(layer(S, q, lam)[0])
    return out


@pytest.mark.parametrize("backend", TORCH_BACKENDS)
def test_torch_one_nan_element(model: Model, backend: str) -> None:
    """A NaN in element 1: ``raise`` names it; ``nan`` / ``ignore`` give NaN rows for it, and the
    other elements' values and gradients are exactly those of solving them alone."""
    q = model.qv.copy()
    q[1, 0] = np.nan
    expect(
        qd.ParameterError,
        lambda: model.layer("torch", backend)(*model.args("torch", q=q)),
        "batch element(s) 1",
    )
    for mode in ("nan", "ignore"):
        layer = model.layer("torch", backend, on_failure=mode)
        S, qt, lam = (a.requires_grad_() for a in model.args("torch", q=q))
        (x,) = layer(S, qt, lam)
        assert torch.isnan(x[1]).all()
        x[[0, 2, 3]].sum().backward()
        assert torch.equal(qt.grad[1], torch.zeros(3)) and torch.equal(S.grad[1], torch.zeros(3, 3))
        for i in (0, 2, 3):
            Si, qi, li = (
                a.requires_grad_() for a in model.args("torch", model.Sv[i], model.qv[i], model.lamv[i])
            )
            (xi,) = layer(Si, qi, li)
            assert torch.equal(x[i], xi)
            xi.sum().backward()
            assert torch.equal(qt.grad[i], qi.grad) and torch.equal(S.grad[i], Si.grad)
            assert torch.equal(lam.grad[i], li.grad)


UNBOUNDED_BATCH = [[-1.0, 1.0], [1.0, -1.0], [-2.0, 0.5]]  # element 1 is unbounded


def _unbounded_model() -> tuple[qd.Problem, qd.Variable, qd.Parameter]:
    """``min c'x s.t. x >= 0``: unbounded exactly when some c_i < 0."""
    x = qd.Variable(2, name="x")
    c = qd.Parameter(2, name="c")
    return qd.Problem(qd.Minimize(c @ x + 0.5 * qd.sum_squares(x[0])), [x >= 0]), x, c


@pytest.mark.parametrize("backend", TORCH_BACKENDS)
def test_torch_one_unbounded_element(backend: str) -> None:
    prob, x, c = _unbounded_model()
    cv = torch.tensor(UNBOUNDED_BATCH, dtype=torch.float64)
    msg = expect(
        qd.SolverError,
        lambda: prob.to_torch([c], [x], backend=backend)(cv),
        "batch elements 1 (dual_infeasible)",
        "bounded below?",
        "on_failure='nan'",
    )
    with pytest.raises(qd.SolverError) as info:
        prob.to_torch([c], [x], backend=backend)(cv)
    assert info.value.indices == [1] and info.value.statuses == ["dual_infeasible"], msg
    for mode in ("nan", "ignore"):
        layer = prob.to_torch([c], [x], backend=backend, on_failure=mode)
        ct = cv.clone().requires_grad_()
        (xs,) = layer(ct)
        if mode == "nan":
            assert torch.isnan(xs[1]).all()
        torch.nan_to_num(xs[[0, 2]]).sum().backward()
        assert torch.equal(ct.grad[1], torch.zeros(2))
        for i in (0, 2):
            ci = cv[i].clone().requires_grad_()
            (xi,) = layer(ci)
            assert torch.equal(xs[i], xi)
            xi.sum().backward()
            assert torch.equal(ct.grad[i], ci.grad)


def test_jax_one_nan_and_one_unbounded_element(model: Model) -> None:
    """The JAX layer on the jax backend: a NaN element gets NaN rows, the other
    elements are exactly what the same batch gives without the bad element; one unbounded
    element raises naming it, or gets NaN rows. (Every distinct shape costs a jit compile: the
    batch size stays 4, then 3.)"""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    q = model.qv.copy()
    q[1, 0] = np.nan
    expect(
        qd.ParameterError, lambda: model.layer("jax", "jax")(*model.args("jax", q=q)), "batch element(s) 1"
    )
    layer = model.layer("jax", "jax", on_failure="nan")
    S, qj, lam = model.args("jax", q=q)
    (x,) = layer(S, qj, lam)
    assert bool(jnp.isnan(x[1]).all())
    clean = model.qv.copy()
    clean[1] = clean[0]
    (ref,) = layer(*model.args("jax", q=clean))
    rows = np.array([0, 2, 3])
    np.testing.assert_array_equal(np.asarray(x[rows]), np.asarray(ref[rows]))

    prob, xv, c = _unbounded_model()
    cv = jnp.asarray(UNBOUNDED_BATCH)
    with pytest.raises(qd.SolverError, match=r"batch elements 1 \(dual_infeasible\)"):
        prob.to_jax([c], [xv], backend="jax")(cv)
    (xs,) = prob.to_jax([c], [xv], backend="jax", on_failure="nan")(cv)
    assert bool(jnp.isnan(xs[1]).all()) and np.isfinite(np.asarray(xs[np.array([0, 2])])).all()


# ---------------------------------------------------------------- unbounded problems, iteration limits


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_unbounded_problem_status(backend: str) -> None:
    """Unbounded below: status ``dual_infeasible`` (objective NaN), on every backend."""
    if backend == "jax":
        pytest.importorskip("jax").config.update("jax_enable_x64", True)
    prob, _, c = _unbounded_model()
    sol = prob.solve({c: np.array(UNBOUNDED_BATCH)}, backend=backend)
    assert sol.status == ["solved", "dual_infeasible", "solved"]
    assert np.isnan(sol.objective[1]) and np.isfinite(sol.objective[[0, 2]]).all()
    if backend != "jax":  # (one more jit compile)
        x = qd.Variable(2, name="x")
        free = qd.Problem(qd.Minimize(qd.sum(x)))  # no constraints at all
        assert free.solve(backend=backend).status == "dual_infeasible"


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_iteration_limit(model: Model, backend: str) -> None:
    """``max_iter=1``: status ``max_iter``; a layer raises a SolverError saying to raise max_iter."""
    if backend == "jax":
        pytest.importorskip("jax").config.update("jax_enable_x64", True)
    values = {model.S: model.Sv[0], model.q: model.qv[0], model.lam: 0.1}
    # jax: without the closest-feasible stage, whose extra solves would each be compiled
    kw: dict[str, Any] = {"max_iter": 1} | ({"closest_feasible": False} if backend == "jax" else {})
    assert model.prob.solve(values, backend=backend, **kw).status == "max_iter"
    fw = "jax" if backend == "jax" else "torch"
    layer = model.layer(fw, backend, **kw)
    args = model.args(fw, S=model.Sv[0], q=model.qv[0], lam=0.1)
    # an unbatched call: the message names no batch element (the user passed none)
    msg = expect(
        qd.SolverError, lambda: layer(*args), "the QP solve failed (max_iter)", "raise settings.max_iter"
    )
    assert "batch element" not in msg
    batched = model.args(fw, S=model.Sv[:2], q=model.qv[:2], lam=0.1)
    expect(qd.SolverError, lambda: layer(*batched), "batch elements 0 (max_iter), 1 (max_iter)")


def test_messages_name_batch_elements_only_for_batched_input() -> None:
    """Invalid data: unbatched input gets a message without indices, batched input names each
    invalid element once, and the error carries ``indices``; a mis-shaped argument is described
    as the shape to pass, a 0-dim bound is blamed itself, and a failed call leaves no status of
    an earlier call on the layer."""
    from qpdsl.torch import QPLayer, solve_qp

    P_bad = torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    q, C, lo, up = (
        torch.zeros(2, dtype=torch.float64),
        torch.eye(2, dtype=torch.float64),
        -torch.ones(2),
        torch.ones(2),
    )
    with pytest.raises(qd.ParameterError) as info:
        solve_qp(P_bad, q, None, None, C, lo, up)
    msg = str(info.value)
    assert "P is not positive semidefinite" in msg and "batch element" not in msg, msg
    assert info.value.indices == [0]
    P_two = torch.stack([torch.eye(2, dtype=torch.float64), P_bad])
    with pytest.raises(qd.ParameterError) as info:
        solve_qp(P_two, q, None, None, C, lo, up)
    msg = str(info.value)
    assert msg.count("batch element") == 1 and "in batch elements [1]" in msg, msg
    assert info.value.indices == [1]
    P_many = torch.stack([P_bad] * 30)  # a long list is cut short; err.indices holds all of it
    with pytest.raises(qd.ParameterError) as info:
        solve_qp(P_many, q, None, None, C, lo, up)
    assert "in batch elements [0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 20 more]" in str(info.value)
    assert info.value.indices == list(range(30))
    expect(
        qd.ParameterError, lambda: solve_qp(P_two, q, None, None, C, torch.tensor(-1.0), up), "l has shape ()"
    )

    layer = QPLayer()
    layer(torch.eye(2, dtype=torch.float64), q, None, None, C, lo, up)
    assert layer.last_status is not None
    with pytest.raises(qd.ParameterError):
        layer(P_bad, q, None, None, C, lo, up)
    assert layer.last_status is None

    A = qd.Parameter((4, 3), name="A")
    x = qd.Variable(3, name="x")
    prob = qd.Problem(qd.Minimize(qd.sum_squares(A @ x)), [x >= -1, qd.sum(x) == 1])
    expect(
        qd.ParameterError,
        lambda: prob.to_torch([A], [x])(torch.ones(4, 4, dtype=torch.float64)),
        "expected shape (4, 3) (or (batch, 4, 3)), got (4, 4)",
    )


def test_constant_constraints() -> None:
    """A constraint without variables is kept: when false, the closest feasible QP relaxes it."""
    x = qd.Variable(2, name="x")
    c = qd.Constant(3.0) <= 2.0
    prob = qd.Problem(qd.Minimize(qd.sum_squares(x - 1)), [c])
    sol = prob.solve()
    assert sol.status == "solved_closest_feasible"
    np.testing.assert_allclose(sol.shift[c], 1.0, atol=1e-8)
    np.testing.assert_allclose(sol[x], [1.0, 1.0], atol=1e-8)


# ---------------------------------------------------------------- misuse of the modelling language

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

LEAVES = ("x", "y", "p", "g", "P", "S", "q", "one", "M")
UNARY = ("neg", "sum", "abs", "pos", "square", "sum_squares", "norm1", "norm_inf", "max", "min", "huber", "T")
BINARY = ("add", "sub", "mul", "matmul", "div", "maximum", "minimum", "quad_form", "hstack", "index")


@st.composite
def expressions(draw: st.DrawFn, depth: int = 3) -> tuple[str, ...] | str:
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from(LEAVES))
    if draw(st.booleans()):
        return (draw(st.sampled_from(UNARY)), draw(expressions(depth - 1)))
    return (draw(st.sampled_from(BINARY)), draw(expressions(depth - 1)), draw(expressions(depth - 1)))


def build(tree: Any, leaves: dict[str, Any]) -> Any:
    if isinstance(tree, str):
        return leaves[tree]
    op, *args = tree
    a = [build(t, leaves) for t in args]
    if op in ("T", "index"):  # methods: on a qpdsl expression (a plain number has none)
        a = [u if isinstance(u, qd.Expression) else qd.Constant(u) for u in a]
    unary = {
        "neg": lambda u: -u, "sum": qd.sum, "abs": qd.abs, "pos": qd.pos, "square": qd.square,
        "sum_squares": qd.sum_squares, "norm1": qd.norm1, "norm_inf": qd.norm_inf, "max": qd.max,
        "min": qd.min, "huber": qd.huber, "T": lambda u: u.T,
    }  # fmt: skip
    if op in unary:
        return unary[op](*a)
    binary = {
        "add": lambda u, v: u + v, "sub": lambda u, v: u - v, "mul": lambda u, v: u * v,
        "matmul": lambda u, v: u @ v, "div": lambda u, v: u / v, "maximum": qd.maximum,
        "minimum": qd.minimum, "quad_form": qd.quad_form, "hstack": lambda u, v: qd.hstack([u, v]),
        "index": lambda u, v: u[0],
    }  # fmt: skip
    return binary[op](*a)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(expressions(), expressions(), st.sampled_from(["min", "max"]), st.sampled_from(["<=", ">=", "=="]))
def test_random_model_misuse_raises_model_error_only(obj: Any, rhs: Any, sense: str, relation: str) -> None:
    """Random expressions, objectives and constraints: either a problem is built, or a ModelError
    is raised (never TypeError, AttributeError, numpy or scipy errors)."""
    leaves = {
        "x": qd.Variable(3, name="x"),
        "y": qd.Variable(name="y"),
        "p": qd.Parameter(name="p"),
        "g": qd.Parameter(name="g", nonneg=True, value=1.0),
        "P": qd.Parameter((3, 3), name="P"),
        "S": qd.Parameter((3, 3), name="S", psd=True),
        "q": qd.Parameter(3, name="q"),
        "one": 1.0,
        "M": np.arange(1.0, 10.0).reshape(3, 3),
    }
    try:
        f = build(obj, leaves)
        lhs = build(rhs, leaves)
        constraint = {"<=": lambda: lhs <= 1.0, ">=": lambda: lhs >= 1.0, "==": lambda: lhs == 1.0}[
            relation
        ]()
        objective = qd.Minimize(qd.sum(f)) if sense == "min" else qd.Maximize(qd.sum(f))
        qd.Problem(objective, [constraint])
    except qd.ModelError as exc:
        assert str(exc)  # a message


def test_number_divided_by_expression_is_model_error() -> None:
    """Found by the misuse property: ``1.0 / x`` raised a bare TypeError (fixed in expression.py)."""
    x = qd.Variable(3, name="x")
    with pytest.raises(qd.ModelError, match="division by x"):
        _ = 1.0 / x


def test_layer_parameter_errors_list_every_invalid_parameter_and_element() -> None:
    """A layer's ParameterError names each invalid parameter (not only the first) and holds the
    invalid batch elements in ``indices``, as ``solve_qp``'s does."""
    x = qd.Variable(3, name="x")
    q = qd.Parameter(3, name="q")
    lam = qd.Parameter(nonneg=True, name="lam")
    prob = qd.Problem(qd.Minimize(qd.sum_squares(x) + q @ x + lam * qd.norm1(x)), [x <= 1])
    layer = prob.to_torch(parameters=[q, lam], variables=[x])
    q_b = torch.ones(40, 3, dtype=torch.float64)
    q_b[3:33, 0] = float("nan")
    lam_b = torch.full((40,), 0.1, dtype=torch.float64)
    lam_b[35] = -1.0
    with pytest.raises(qd.ParameterError) as info:
        layer(q_b, lam_b)
    msg = str(info.value)
    assert "parameter q: NaN or Inf in batch element(s) 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 and 20 more" in msg
    assert "parameter lam is declared nonneg but is negative in batch element(s) 35" in msg
    assert info.value.indices == [*range(3, 33), 35]


def test_vmap_of_a_jax_layer_applies_on_failure_to_each_mapped_element() -> None:
    """Under ``jax.vmap`` each mapped element is a problem of its own: with ``on_failure="nan"``
    an element with NaN data gets NaN outputs and the others are solved, as for a batched call;
    it raised, calling the value "shared by the batch". A value vmap does not map (in_axes None)
    is shared, and still raises."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    x = qd.Variable(3, name="x")
    q = qd.Parameter(3, name="q")
    u = qd.Parameter(3, name="u")
    prob = qd.Problem(qd.Minimize(0.5 * qd.sum_squares(x) + q @ x), [qd.sum(x) == 0.5, x <= u, x >= -1])
    fn = prob.to_jax(parameters=[q, u], variables=[x], backend="cpu", on_failure="nan")
    Q = np.random.default_rng(0).standard_normal((5, 3))
    Q[3, 1] = np.nan
    U = np.ones((5, 3))
    batched = np.asarray(fn(Q, U)[0])
    mapped = np.asarray(jax.vmap(fn)(Q, U)[0])
    assert np.isnan(mapped).any(axis=1).tolist() == [False, False, False, True, False]
    np.testing.assert_allclose(mapped, batched, atol=1e-12)
    U_bad = np.ones(3)
    U_bad[0] = np.nan
    with pytest.raises(qd.ParameterError, match="parameter u: NaN or Inf in its value"):
        jax.vmap(fn, in_axes=(0, None))(np.nan_to_num(Q), U_bad)
