"""The backward's KKT solves (qpdsl/diff/kkt.py): Cholesky path, retry, LU fallback, jit.

Float64 host arrays take the compiled kernels (``qpdsl.backends.cpu_alm.kkt``), other arrays
the array code; the ``path`` fixture runs a test on both, checked against dense solves.
"""

from __future__ import annotations

import numpy as np
import pytest

from qpdsl.diff import kkt

torch = pytest.importorskip("torch")


def _problem(batch: int, n: int, k: int, seed: int, rank: int | None = None) -> tuple[np.ndarray, ...]:
    """P PSD of the given rank (n if None), G standard normal, about half the rows active."""
    rng = np.random.default_rng(seed)
    r = n if rank is None else rank
    M = rng.standard_normal((batch, n, r))
    P = M @ M.transpose(0, 2, 1) / n
    G = rng.standard_normal((batch, k, n))
    a = (rng.random((batch, k)) < 0.5).astype(float)
    return P, G, a


def _dense(P: np.ndarray, G: np.ndarray, a: np.ndarray) -> np.ndarray:
    GJ = G * a[:, :, None]
    top = np.concatenate([P, GJ.transpose(0, 2, 1)], axis=2)
    bottom = np.concatenate([GJ, np.stack([np.diag(ai - 1.0) for ai in a])], axis=2)
    return np.concatenate([top, bottom], axis=1)


@pytest.fixture(params=["compiled", "array"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "array":
        monkeypatch.setattr(kkt, "_compiled_solver", lambda *args: None)
    return request.param


def _solve(P: np.ndarray, G: np.ndarray, a: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    t = [torch.as_tensor(v) for v in (P, G, a, rhs)]
    solver = kkt.kkt_solver(torch_xp(), *t[:3])
    return solver.solve(t[3]).numpy()


def torch_xp():
    import array_api_compat.torch as xp

    return xp


@pytest.mark.parametrize("rank", [None, 3, 0], ids=["strictly convex", "rank 3", "LP"])
def test_solve_matches_a_dense_solve(rank: int | None, path: str) -> None:
    P, G, a = _problem(6, 12, 14, seed=1, rank=rank)
    # K is nonsingular when the active rows span null(P) (and, for an LP, are exactly n)
    a[:] = 0.0
    a[:, : 12 if rank == 0 else 10] = 1.0
    rhs = np.random.default_rng(3).standard_normal((6, 12 + a.shape[1]))
    expected = np.linalg.solve(_dense(P, G, a), rhs[..., None])[..., 0]
    got = _solve(P, G, a, rhs)
    assert np.max(np.abs(got - expected)) < 1e-9 * np.max(np.abs(expected))


def test_float64_host_arrays_take_the_compiled_kernels() -> None:
    P, G, a = _problem(2, 5, 4, seed=2)
    assert kkt.kkt_solver(torch_xp(), *(torch.as_tensor(v) for v in (P, G, a))).compiled
    assert kkt.kkt_solver(np, P, G, a).compiled
    as32 = (torch.as_tensor(v, dtype=torch.float32) for v in (P, G, a))
    assert not kkt.kkt_solver(torch_xp(), *as32).compiled


def test_numpy_and_torch_give_the_same_answer() -> None:
    P, G, a = _problem(3, 8, 6, seed=10)
    rhs = np.random.default_rng(11).standard_normal((3, 14))
    got = kkt.kkt_solver(np, P, G, a).solve(rhs)
    assert isinstance(got, np.ndarray)
    assert np.array_equal(got, _solve(P, G, a, rhs))


def test_lu_fallback_gives_the_same_answer(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """With no refinement steps allowed every element is unsettled and goes through the LU path."""
    P, G, a = _problem(4, 10, 8, seed=4)
    rhs = np.random.default_rng(5).standard_normal((4, 18))
    expected = np.linalg.solve(_dense(P, G, a), rhs[..., None])[..., 0]
    monkeypatch.setattr(kkt, "REFINE_STEPS", 0)
    called = []
    original = kkt.KKTSolver._solve_lu

    def spy(self: kkt.KKTSolver, r: object) -> object:
        called.append(r.shape[0])
        return original(self, r)

    monkeypatch.setattr(kkt.KKTSolver, "_solve_lu", spy)
    got = _solve(P, G, a, rhs)
    assert called == [4]
    assert np.max(np.abs(got - expected)) < 1e-9 * np.max(np.abs(expected))


def test_failed_cholesky_is_retried_with_more_regularisation(
    monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """A factorisation that fails (here: made to fail for element 0, as rounding can make it
    when |G|^2 / d dwarfs P) is retried with 100 times the regularisation; the refinement
    against K still reaches the exact solution."""
    P, G, a = _problem(3, 10, 8, seed=6)
    calls = []
    original = kkt.cholesky_ex

    def first_fails(H: object) -> object:
        L, ok = original(H)
        if not calls:
            ok = ok.clone()
            ok[0] = False
        calls.append(1)
        return L, ok

    monkeypatch.setattr(kkt, "cholesky_ex", first_fails)
    monkeypatch.setattr(kkt, "_compiled_solver", lambda *args: None)
    t = [torch.as_tensor(v) for v in (P, G, a)]
    solver = kkt.kkt_solver(torch_xp(), *t)
    assert len(calls) == 2 and bool(solver.chol_ok.all())
    d = solver.d.numpy()
    assert d[0] == pytest.approx(100 * d[1] * solver.scale[0].item() / solver.scale[1].item())
    rhs = np.random.default_rng(9).standard_normal((3, 18))
    expected = np.linalg.solve(_dense(P, G, a), rhs[..., None])[..., 0]
    got = solver.solve(torch.as_tensor(rhs)).numpy()
    assert np.max(np.abs(got - expected)) < 1e-9 * np.max(np.abs(expected))


def test_compiled_factorisation_is_retried_with_more_regularisation() -> None:
    """Element 0's ``P = -c I`` (no rows in the system) is indefinite beyond ``d`` but not beyond
    ``100 d``: its factor is of ``P + 100 d I``; element 1 factors at ``d``; element 2, beyond
    both, gets an identity factor and ``ok`` False."""
    from qpdsl.backends.cpu_alm import kkt as kernels

    n, k = 4, 3
    d0 = float(np.sqrt(np.finfo(np.float64).eps))  # every scale is 1: |P|, |G| <= 1
    P = np.zeros((3, n, n))
    P[0] = -10 * d0 * np.eye(n)
    P[1] = np.eye(n)
    P[2] = -1e3 * d0 * np.eye(n)
    G, a = np.ones((3, k, n)), np.zeros((3, k))
    U, ok, scale, d = kernels.factor(P, G, a, d0, kkt.RETRY)
    assert ok.tolist() == [True, True, False]
    assert scale.tolist() == [1.0, 1.0, 1.0]
    assert d.tolist() == [kkt.RETRY * d0, d0, d0]
    for e in (0, 1):
        expected = P[e] + d[e] * np.eye(n)
        assert np.allclose(U[e].T @ U[e], expected, rtol=1e-12, atol=1e-15)
    assert np.array_equal(U[2], np.eye(n))


def test_jit_gives_the_eager_answer() -> None:
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    P, G, a = _problem(5, 9, 7, seed=7)
    rhs = np.random.default_rng(8).standard_normal((5, 16))
    eager = _solve(P, G, a, rhs)

    @jax.jit
    def solve(P: object, G: object, a: object, rhs: object) -> object:
        return kkt.kkt_solver(jnp, P, G, a).solve(rhs)

    traced = np.asarray(solve(*(jnp.asarray(v) for v in (P, G, a, rhs))))
    assert np.max(np.abs(traced - eager)) < 1e-10 * np.max(np.abs(eager))
