"""Gradients of qpdsl's torch layers against cvxpylayers and central finite differences.

Each problem is written twice, once in qpdsl and once in cvxpy (DPP, ``cvxpylayers.torch.CvxpyLayer``),
with the same parameters. The data are random but chosen so that the problem is strictly feasible and
the active set is well defined (strict complementarity with a margin), so the solution map is
differentiable and central finite differences are meaningful.

Loss: ``sum(x * v)`` for a fixed random ``v``; gradients are compared w.r.t. every parameter.

Tolerances: errors are max |difference| over all gradient entries, divided by max(1, max |gradient|).
Measured with cvxpy 1.9.3, cvxpylayers 1.2.0, diffcp 1.1.9, SCS 3.3.1 on the three problems below and
on seeds 10..15 of each (float64):

* qpdsl (proxsuite and torch backends, eps_abs=1e-12) vs central finite differences of the qpdsl
  layer (step 1e-6): 4e-11 .. 7e-10. Asserted at ``FD_TOL`` = 1e-6.
* cvxpylayers (DIFFCP: SCS eps=1e-12, ``mode="dense"``) vs qpdsl: 1e-15 .. 1.2e-12.
  Asserted at ``CVXPYLAYERS_TOL`` = 1e-8.
* cvxpylayers with its default derivative mode (``"lsqr"``, iterative) vs qpdsl: 1e-13 .. 1.3e-7
  (a sum_squares variant of the first QP with SCS eps=1e-10: 3e-7). Asserted at
  ``CVXPYLAYERS_LSQR_TOL`` = 1e-5. Against FD it is off by the same amount wherever that exceeds FD's
  own ~1e-10 error, so the gap is cvxpylayers' iterative derivative, not qpdsl.
* torch vs proxsuite backend: <= 3.4e-13. Asserted at 1e-7.
* Solutions: qpdsl vs cvxpy/Clarabel(tol 1e-12) <= 4e-13; asserted at ``SOL_TOL`` = 1e-7.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
cp = pytest.importorskip("cvxpy")
cvxpylayers_torch = pytest.importorskip("cvxpylayers.torch")
pytest.importorskip("diffcp")

import qpdsl as qd  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

FD_STEP = 1e-6
FD_TOL = 1e-6
CVXPYLAYERS_TOL = 1e-8
CVXPYLAYERS_LSQR_TOL = 1e-5
SOL_TOL = 1e-7
MARGIN = 1e-3  # strict complementarity margin required of the random data

# n_jobs_*=1: serial diffcp (no thread pool on a loaded machine).
SCS_TIGHT = {"eps": 1e-12, "max_iters": 200_000, "n_jobs_forward": 1, "n_jobs_backward": 1}
SCS_DENSE = {**SCS_TIGHT, "mode": "dense"}
SCS_LSQR = {**SCS_TIGHT, "mode": "lsqr"}

BACKENDS = ["proxsuite", "torch"]


@dataclass
class Case:
    name: str
    qprob: Any
    qparams: list
    qvar: Any
    cprob: Any
    cparams: list
    cvar: Any
    values: list  # numpy arrays, one per parameter (same order in both)
    v: np.ndarray  # loss weights
    margin: Callable[[np.ndarray], float]  # strict-complementarity margin at the reference solution


# ------------------------------------------------------------------------------------------ problems


def _general_qp(seed: int = 0) -> Case:
    """min 1/2 x'Qx + q'x  s.t.  A x == b, G x <= h   (Q constant PD; q, A, b, G, h parameters)."""
    rng = np.random.default_rng(seed)
    n, me, mi = 6, 2, 8
    M = rng.standard_normal((n, n))
    Q0 = M @ M.T / n + np.eye(n)
    A0 = rng.standard_normal((me, n))
    G0 = rng.standard_normal((mi, n))
    x0 = rng.standard_normal(n)
    b0 = A0 @ x0
    h0 = G0 @ x0 + rng.uniform(0.5, 1.5, mi)  # x0 strictly feasible
    q0 = 3.0 * rng.standard_normal(n)  # large enough to push several rows active
    v = rng.standard_normal(n)

    x = qd.Variable(n, name="x")
    q, A, b = qd.Parameter(n, name="q"), qd.Parameter((me, n), name="A"), qd.Parameter(me, name="b")
    G, h = qd.Parameter((mi, n), name="G"), qd.Parameter(mi, name="h")
    qprob = qd.Problem(qd.Minimize(0.5 * qd.quad_form(x, Q0) + q @ x), [A @ x == b, G @ x <= h])

    xc = cp.Variable(n)
    qc, Ac, bc = cp.Parameter(n), cp.Parameter((me, n)), cp.Parameter(me)
    Gc, hc = cp.Parameter((mi, n)), cp.Parameter(mi)
    ineq = Gc @ xc <= hc
    cprob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(xc, Q0) + qc @ xc), [Ac @ xc == bc, ineq])

    def margin(_x: np.ndarray) -> float:
        slack = h0 - G0 @ xc.value
        dual = ineq.dual_value
        return float(np.min(np.maximum(slack, dual)))

    return Case(
        "qp", qprob, [q, A, b, G, h], x, cprob, [qc, Ac, bc, Gc, hc], xc, [q0, A0, b0, G0, h0], v, margin
    )


def _lasso(seed: int = 1) -> Case:
    """min 1/2 ||F x - g||^2 + lam ||x||_1   (F, g, lam >= 0 parameters)."""
    rng = np.random.default_rng(seed)
    n, m = 6, 8
    F0 = rng.standard_normal((m, n))
    g0 = rng.standard_normal(m)
    lam0 = np.array(1.0)
    v = rng.standard_normal(n)

    x = qd.Variable(n, name="x")
    F, g = qd.Parameter((m, n), name="F"), qd.Parameter(m, name="g")
    lam = qd.Parameter((), name="lam", nonneg=True)
    qprob = qd.Problem(qd.Minimize(0.5 * qd.sum_squares(F @ x - g) + lam * qd.norm1(x)), [])

    xc = cp.Variable(n)
    Fc, gc, lamc = cp.Parameter((m, n)), cp.Parameter(m), cp.Parameter(nonneg=True)
    cprob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(Fc @ xc - gc) + lamc * cp.norm1(xc)))

    def margin(_x: np.ndarray) -> float:
        xs = xc.value
        grad = F0.T @ (F0 @ xs - g0)
        # nonzero entries away from 0; zero entries with |grad| strictly inside [-lam, lam]
        per = np.where(np.abs(xs) > 1e-6, np.abs(xs), float(lam0) - np.abs(grad))
        return float(np.min(per))

    return Case("lasso", qprob, [F, g, lam], x, cprob, [Fc, gc, lamc], xc, [F0, g0, lam0], v, margin)


def _lp_box(seed: int = 2) -> Case:
    """min c'x  s.t.  A x == b, lo <= x <= hi   (c, A, b, lo, hi parameters)."""
    rng = np.random.default_rng(seed)
    n, me = 6, 2
    A0 = rng.standard_normal((me, n))
    lo0 = -rng.uniform(0.5, 1.5, n)
    hi0 = rng.uniform(0.5, 1.5, n)
    x0 = rng.uniform(0.5 * lo0, 0.5 * hi0)
    b0 = A0 @ x0  # x0 strictly inside the box
    c0 = rng.standard_normal(n)
    v = rng.standard_normal(n)

    x = qd.Variable(n, name="x")
    c, A, b = qd.Parameter(n, name="c"), qd.Parameter((me, n), name="A"), qd.Parameter(me, name="b")
    lo, hi = qd.Parameter(n, name="lo"), qd.Parameter(n, name="hi")
    qprob = qd.Problem(qd.Minimize(c @ x), [A @ x == b, x >= lo, x <= hi])

    xc = cp.Variable(n)
    cc, Ac, bc = cp.Parameter(n), cp.Parameter((me, n)), cp.Parameter(me)
    loc, hic = cp.Parameter(n), cp.Parameter(n)
    lower, upper = xc >= loc, xc <= hic
    cprob = cp.Problem(cp.Minimize(cc @ xc), [Ac @ xc == bc, lower, upper])

    def margin(_x: np.ndarray) -> float:
        xs = xc.value
        lo_m = np.maximum(xs - lo0, lower.dual_value)
        hi_m = np.maximum(hi0 - xs, upper.dual_value)
        # a nondegenerate vertex: exactly n - me bounds active
        n_active = int(np.sum(np.minimum(xs - lo0, hi0 - xs) < 1e-7))
        assert n_active == n - me, n_active
        return float(min(lo_m.min(), hi_m.min()))

    return Case(
        "lp_box",
        qprob,
        [c, A, b, lo, hi],
        x,
        cprob,
        [cc, Ac, bc, loc, hic],
        xc,
        [c0, A0, b0, lo0, hi0],
        v,
        margin,
    )


BUILDERS = {"qp": _general_qp, "lasso": _lasso, "lp_box": _lp_box}


# ------------------------------------------------------------------------------------------ helpers


def _available(backend: str) -> None:
    if backend not in qd.available_backends():
        pytest.skip(f"backend {backend!r} not available")


def _grads(layer: Callable, case: Case, **call_kwargs: Any) -> tuple[np.ndarray, list[np.ndarray]]:
    ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in case.values]
    (xs,) = layer(*ts, **call_kwargs)
    (xs * torch.tensor(case.v, dtype=torch.float64)).sum().backward()
    return xs.detach().numpy(), [t.grad.numpy().copy() for t in ts]


def _fd_grads(layer: Callable, case: Case, step: float = FD_STEP) -> list[np.ndarray]:
    """Central finite differences of the loss, all perturbations solved as one batch."""
    sizes = [int(np.size(a)) for a in case.values]
    total = sum(sizes)
    batches = [np.repeat(np.asarray(a, dtype=np.float64)[None], 2 * total, axis=0) for a in case.values]
    k = 0
    for i, a in enumerate(case.values):
        flat = batches[i].reshape(2 * total, -1)
        for j in range(np.size(a)):
            flat[2 * k, j] += step
            flat[2 * k + 1, j] -= step
            k += 1
        batches[i] = flat.reshape(batches[i].shape)
    with torch.no_grad():
        (xs,) = layer(*[torch.tensor(bt) for bt in batches])
    loss = xs.numpy() @ case.v
    d = (loss[0::2] - loss[1::2]) / (2 * step)
    out, k = [], 0
    for a, s in zip(case.values, sizes, strict=True):
        out.append(d[k : k + s].reshape(np.shape(a)))
        k += s
    return out


def _max_rel_err(g1: list[np.ndarray], g2: list[np.ndarray]) -> float:
    """max |g1 - g2| over all parameters, relative to max(1, max |g2|)."""
    scale = max(1.0, max(float(np.abs(g).max()) for g in g2))
    return max(float(np.abs(a - b).max()) for a, b in zip(g1, g2, strict=True)) / scale


_CACHE: dict[Any, Any] = {}


def _case(name: str) -> Case:
    key = ("case", name)
    if key not in _CACHE:
        case = BUILDERS[name]()
        for p, val in zip(case.cparams, case.values, strict=True):
            p.value = val
        case.cprob.solve(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
        assert case.cprob.status == "optimal"
        assert case.cprob.is_dpp()
        _CACHE[key] = case
    return _CACHE[key]


def _qpdsl(name: str, backend: str) -> tuple[np.ndarray, list[np.ndarray], Any]:
    key = ("qpdsl", name, backend)
    if key not in _CACHE:
        case = _case(name)
        layer = case.qprob.to_torch(
            parameters=case.qparams, variables=[case.qvar], backend=backend, eps_abs=1e-12
        )
        _CACHE[key] = (*_grads(layer, case), layer)
    return _CACHE[key]


def _cvxpylayers(name: str, solver_args: dict) -> tuple[np.ndarray, list[np.ndarray]]:
    key = ("cvxpylayers", name, tuple(sorted(solver_args.items())))
    if key not in _CACHE:
        case = _case(name)
        layer = cvxpylayers_torch.CvxpyLayer(case.cprob, parameters=case.cparams, variables=[case.cvar])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _CACHE[key] = _grads(layer, case, solver_args=dict(solver_args))
    return _CACHE[key]


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("name", list(BUILDERS))
def test_data_strictly_complementary(name):
    """The random data have a well-defined active set, so gradients exist and FD is valid."""
    case = _case(name)
    assert case.margin(case.cvar.value) > MARGIN


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(BUILDERS))
def test_qpdsl_gradient_matches_finite_differences(name, backend):
    _available(backend)
    case = _case(name)
    x, g, layer = _qpdsl(name, backend)
    np.testing.assert_allclose(x, case.cvar.value, atol=SOL_TOL)
    fd = _fd_grads(layer, case)
    err = _max_rel_err(g, fd)
    assert err < FD_TOL, f"{name}/{backend}: qpdsl vs FD {err:.2e}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(BUILDERS))
def test_qpdsl_gradient_matches_cvxpylayers(name, backend):
    _available(backend)
    x_q, g_q, _ = _qpdsl(name, backend)
    x_c, g_c = _cvxpylayers(name, SCS_DENSE)
    np.testing.assert_allclose(x_c, x_q, atol=SOL_TOL)
    err = _max_rel_err(g_c, g_q)
    assert err < CVXPYLAYERS_TOL, f"{name}/{backend}: cvxpylayers(dense) vs qpdsl {err:.2e}"


@pytest.mark.parametrize("name", list(BUILDERS))
def test_cvxpylayers_default_lsqr_mode_agrees_loosely(name):
    """cvxpylayers' default iterative (lsqr) derivative is less accurate; still agrees to 1e-5."""
    backend = next((b for b in BACKENDS if b in qd.available_backends()), None)
    if backend is None:
        pytest.skip("no qpdsl torch backend")
    _, g_q, _ = _qpdsl(name, backend)
    _, g_c = _cvxpylayers(name, SCS_LSQR)
    err = _max_rel_err(g_c, g_q)
    assert err < CVXPYLAYERS_LSQR_TOL, f"{name}: cvxpylayers(lsqr) vs qpdsl {err:.2e}"


@pytest.mark.parametrize("name", list(BUILDERS))
def test_qpdsl_backends_agree(name):
    for b in BACKENDS:
        _available(b)
    _, g_p, _ = _qpdsl(name, "proxsuite")
    _, g_t, _ = _qpdsl(name, "torch")
    assert _max_rel_err(g_t, g_p) < 1e-7
