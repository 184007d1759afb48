"""The backward's KKT solves (qpdsl/diff/kkt.py): Cholesky path, retry, LU fallback, jit."""

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


def _solve(P: np.ndarray, G: np.ndarray, a: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    t = [torch.as_tensor(v) for v in (P, G, a, rhs)]
    solver = kkt.kkt_solver(torch_xp(), *t[:3])
    return solver.solve(t[3]).numpy()


def torch_xp():
    import array_api_compat.torch as xp

    return xp


@pytest.mark.parametrize("rank", [None, 3, 0], ids=["strictly convex", "rank 3", "LP"])
def test_solve_matches_a_dense_solve(rank: int | None) -> None:
    P, G, a = _problem(6, 12, 14, seed=1, rank=rank)
    # K is nonsingular when the active rows span null(P) (and, for an LP, are exactly n)
    a[:] = 0.0
    a[:, : 12 if rank == 0 else 10] = 1.0
    rhs = np.random.default_rng(3).standard_normal((6, 12 + a.shape[1]))
    expected = np.linalg.solve(_dense(P, G, a), rhs[..., None])[..., 0]
    got = _solve(P, G, a, rhs)
    assert np.max(np.abs(got - expected)) < 1e-9 * np.max(np.abs(expected))


def test_lu_fallback_gives_the_same_answer(monkeypatch: pytest.MonkeyPatch) -> None:
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


def test_failed_cholesky_is_retried_with_more_regularisation(monkeypatch: pytest.MonkeyPatch) -> None:
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
    t = [torch.as_tensor(v) for v in (P, G, a)]
    solver = kkt.kkt_solver(torch_xp(), *t)
    assert len(calls) == 2 and bool(solver.chol_ok.all())
    d = solver.d.numpy()
    assert d[0] == pytest.approx(100 * d[1] * solver.scale[0].item() / solver.scale[1].item())
    rhs = np.random.default_rng(9).standard_normal((3, 18))
    expected = np.linalg.solve(_dense(P, G, a), rhs[..., None])[..., 0]
    got = solver.solve(torch.as_tensor(rhs)).numpy()
    assert np.max(np.abs(got - expected)) < 1e-9 * np.max(np.abs(expected))


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
