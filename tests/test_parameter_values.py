"""Parameters by identity, and their values checked wherever they are given.

Values assigned to ``Parameter.value`` are checked like values passed to ``solve``; names
are a convenience that must not pick one of two parameters silently; a psd parameter may be
any square matrix whose symmetric part is PSD.
"""

from __future__ import annotations

import numpy as np
import pytest

import qpdsl as qd
import qpdsl.validation as validation

pytest.importorskip("proxsuite")


def small_problem():
    x = qd.Variable(3, name="x")
    p = qd.Parameter(name="p")
    q = qd.Parameter(3, name="q", nonneg=True)
    prob = qd.Problem(qd.Minimize(qd.sum_squares(x - p) + q @ x))
    return prob, x, p, q


# ---------------------------------------------------------------- names


def test_ambiguous_name_is_refused():
    x = qd.Variable(2, name="x")
    a1, a2 = qd.Parameter(name="a"), qd.Parameter(name="a")
    prob = qd.Problem(qd.Minimize(qd.sum_squares(x) + a1 * x[0] + a2 * x[1]))
    with pytest.raises(qd.ParameterError, match=r"2 parameters named 'a'.*Parameter objects"):
        prob.solve({"a": 5.0}, backend="proxsuite")
    sol = prob.solve({a1: 2.0, a2: -4.0}, backend="proxsuite")  # by object: fine
    np.testing.assert_allclose(sol[x], [-1.0, 2.0], atol=1e-7)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_layer_parameter_listed_twice(framework):
    pytest.importorskip(framework)
    prob, x, p, q = small_problem()
    make = prob.to_torch if framework == "torch" else prob.to_jax
    with pytest.raises(qd.ParameterError, match="p is listed twice"):
        make(parameters=[p, q, p], variables=[x], backend="proxsuite")


# ---------------------------------------------------------------- Parameter.value


def test_value_assignment_is_converted():
    prob, x, p, q = small_problem()
    p.value = 2
    q.value = [0, 0, 0]
    assert isinstance(p.value, np.ndarray) and p.value.shape == () and p.value.dtype == float
    assert q.value.shape == (3,) and q.value.dtype == float
    sol = prob.solve(backend="proxsuite")
    np.testing.assert_allclose(sol[x], [2.0, 2.0, 2.0], atol=1e-7)
    p.value = None
    with pytest.raises(qd.ParameterError, match="has no value"):
        prob.solve(backend="proxsuite")


@pytest.mark.parametrize(
    ("attr", "value", "fragment"),
    [
        ("p", "abc", "not numeric"),
        ("p", 1 + 2j, "complex"),
        ("q", [1.0, 2.0], "expected shape (3,)"),
        ("q", [[1.0, 2.0, 3.0]], "expected shape (3,)"),
        ("p", float("nan"), "NaN or Inf"),
        ("q", [1.0, np.inf, 0.0], "NaN or Inf"),
        ("q", [1.0, -1.0, 0.0], "declared nonneg"),
    ],
)
def test_value_assignment_is_checked(attr, value, fragment):
    _, _, p, q = small_problem()
    param = {"p": p, "q": q}[attr]
    with pytest.raises(qd.ParameterError) as info:
        param.value = value
    assert fragment in str(info.value), str(info.value)
    assert param.value is None  # a refused value leaves the old one


def test_value_at_construction_is_checked():
    with pytest.raises(qd.ParameterError, match="declared nonneg"):
        qd.Parameter(2, nonneg=True, value=[1.0, -1.0])
    with pytest.raises(qd.ParameterError, match="negative eigenvalue"):
        qd.Parameter((2, 2), psd=True, value=np.diag([1.0, -1.0]))


# ---------------------------------------------------------------- complex values


def test_complex_values_passed_to_solve_are_refused():
    prob, x, p, q = small_problem()
    with pytest.raises(qd.ParameterError, match="complex"):
        prob.solve({p: 1.0 + 2.0j, q: np.zeros(3)}, backend="proxsuite")
    with pytest.raises(qd.ParameterError, match="complex"):
        prob.solve({p: 1.0, q: np.array([1.0 + 0j, 0.0, 1.0])}, backend="proxsuite")


# ---------------------------------------------------------------- psd parameters


def psd_problem():
    x = qd.Variable(2, name="x")
    S = qd.Parameter((2, 2), psd=True, name="S")
    prob = qd.Problem(qd.Minimize(0.5 * qd.quad_form(x, S) - qd.sum(x)), [x <= 10])
    return prob, x, S


def test_unsymmetric_psd_value_uses_symmetric_part():
    prob, x, S = psd_problem()
    M = np.array([[2.0, 1.5], [-0.5, 3.0]])  # symmetric part [[2, .5], [.5, 3]] is PD
    sym = (M + M.T) / 2
    sol = prob.solve({S: M}, backend="proxsuite")
    np.testing.assert_allclose(sol[x], np.linalg.solve(sym, np.ones(2)), atol=1e-7)
    P = prob.compile().apply(np.append(M.reshape(-1), 1.0)[None]).dense().P[0]
    np.testing.assert_allclose(P, P.T)
    np.testing.assert_allclose(P, 2 * 0.5 * sym)


def test_psd_checked_on_symmetric_part():
    prob, x, S = psd_problem()
    M = np.array([[1.0, 3.0], [-3.0, 1.0]])  # not symmetric, symmetric part I: fine
    prob.solve({S: M}, backend="proxsuite")
    with pytest.raises(qd.ParameterError, match="negative eigenvalue"):
        prob.solve({S: np.array([[1.0, 3.0], [1.0, 1.0]])}, backend="proxsuite")  # sym part indefinite


def test_psd_check_needs_no_eigendecomposition_when_psd(monkeypatch):
    S = qd.Parameter((3, 3), psd=True, name="S")
    rng = np.random.default_rng(0)
    F = rng.standard_normal((4, 3, 3))
    batch = F @ np.swapaxes(F, 1, 2)
    batch[1] = np.diag([1.0, 0.0, 2.0])  # semidefinite: Cholesky of the shifted matrix still succeeds

    def no_eig(*args, **kwargs):
        raise AssertionError("eigvalsh called on a PSD batch")

    monkeypatch.setattr(validation, "_smallest_eigenvalues", no_eig)
    validation.check_parameter_values(S, batch)
    batch[2] = np.diag([1.0, -1.0, 2.0])
    monkeypatch.undo()
    with pytest.raises(qd.ParameterError, match=r"negative eigenvalue in batch element\(s\) 2"):
        validation.check_parameter_values(S, batch)


def test_torch_layer_accepts_unsymmetric_psd_value():
    torch = pytest.importorskip("torch")
    prob, x, S = psd_problem()
    layer = prob.to_torch(parameters=[S], variables=[x], backend="proxsuite")
    M = torch.tensor([[2.0, 0.7], [0.1, 3.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m: layer(m)[0], (M,), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_psd_check_matches_eigenvalues_in_every_framework(dtype):
    """``not_psd`` (a compiled kernel for numpy, batched Cholesky for torch) flags exactly the
    matrices with an eigenvalue clearly below zero, judged by numpy's eigenvalues; a zero matrix
    and a matrix with NaN entries are not flagged (the finiteness check reports the latter)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    n = 9
    F = rng.standard_normal((40, n, n))
    mats = F @ np.swapaxes(F, 1, 2)
    # shift some by a multiple of their scale: clearly indefinite or clearly definite
    shift = rng.choice([-0.05, 0.0, 0.05], size=40)
    mats = mats + shift[:, None, None] * np.abs(mats).max(axis=(1, 2))[:, None, None] * np.eye(n)
    mats[3] = np.diag([1.0] * (n - 1) + [0.0])  # semidefinite
    mats[4] = 0.0
    mats[5, 1, 2] = np.nan
    mats[6] += np.triu(rng.standard_normal((n, n)), 1) * 50.0  # unsymmetric: only the symmetric part counts
    mats = mats.astype(dtype)
    sym = ((mats + np.swapaxes(mats, 1, 2)) / 2).astype(np.float64)
    finite = np.isfinite(sym).all(axis=(1, 2))
    smallest = np.full(40, np.inf)
    smallest[finite] = np.linalg.eigvalsh(sym[finite])[:, 0]
    scale = np.abs(np.where(finite[:, None, None], sym, 0.0)).max(axis=(1, 2))
    expected = smallest < -0.01 * scale
    clearly_psd = smallest > -1e-8 * scale
    assert expected.sum() > 5 and clearly_psd.sum() > 5
    for got in (validation.not_psd(mats), validation.not_psd(torch.from_numpy(mats)).numpy()):
        assert got[expected].all()
        assert not got[clearly_psd | ~finite].any()
