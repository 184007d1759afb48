"""Shared pieces of the benchmarks: random dense QP batches, reference solutions and timing.

A batch is a dict of float64 numpy arrays with a leading batch dimension, in the standard
form ``min 1/2 x'Px + q'x  s.t.  A x = b,  l <= C x <= u``, plus ``v``, the weights of the
scalar loss ``sum(x * v)`` whose gradients the benchmarks time and compare.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

Batch = dict[str, np.ndarray]

# XLA's multi-threaded Eigen pool on the CPU can wedge (a jitted call never returns, every worker
# idle); it hit two long runs here. Single-threaded Eigen avoids it; every benchmark imports this
# module before jax. See docs/layers.md.
_NO_EIGEN_THREADS = "--xla_cpu_multi_thread_eigen=false"
if _NO_EIGEN_THREADS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_NO_EIGEN_THREADS}".strip()
DATA_KEYS = ("P", "q", "A", "b", "C", "l", "u")


def random_dense_batch(batch: int, n: int, n_eq: int, n_in: int, seed: int = 0) -> Batch:
    """The issues' random feasible dense QPs (:func:`qpdsl.testing.random_feasible_qps`) plus a
    loss direction ``v`` for ``sum(x * v)``."""
    from qpdsl.testing import random_feasible_qps

    out = dict(zip(DATA_KEYS, random_feasible_qps(batch, n, n_eq, n_in, seed), strict=True))
    out["v"] = np.random.default_rng(seed + 1).standard_normal((batch, n))
    return out


def reference(data: Batch, active_tol: float = 1e-7) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Solutions by cvxpy + Clarabel at tight tolerances, and the exact gradients of ``sum(x * v)``.

    The gradients come from the KKT system restricted to the active constraints (exact where
    the active set is strictly complementary, which random data give almost surely). ``dP``
    is symmetric, as it is for every layer that symmetrises P.
    """
    import cvxpy as cp

    B, n = data["q"].shape
    xs = np.empty((B, n))
    grads = {k: np.empty_like(data[k]) for k in DATA_KEYS}
    for i in range(B):
        P, q, A, b, C, l, u, v = (data[k][i] for k in (*DATA_KEYS, "v"))
        x = cp.Variable(n)
        upper, lower = C @ x <= u, C @ x >= l
        prob = cp.Problem(
            cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(P)) + q @ x), [A @ x == b, upper, lower]
        )
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
        xs[i] = x.value
        on_upper = upper.dual_value > active_tol
        on_lower = lower.dual_value > active_tol
        grads_i = _kkt_gradients(P, q, A, C, xs[i], v, on_upper | on_lower)
        for k in ("P", "q", "A", "b", "C"):
            grads[k][i] = grads_i[k]
        grads["u"][i] = np.where(on_upper, grads_i["h"], 0.0)
        grads["l"][i] = np.where(on_lower, grads_i["h"], 0.0)
    return xs, grads


def _kkt_gradients(
    P: np.ndarray,
    q: np.ndarray,
    A: np.ndarray,
    C: np.ndarray,
    x: np.ndarray,
    v: np.ndarray,
    active: np.ndarray,
) -> dict[str, np.ndarray]:
    """Adjoint of the active-set KKT system."""
    n, m = x.size, A.shape[0]
    G = np.vstack([A, C[active]])
    # Multipliers from stationarity P x + q + G' lam = 0 (exact at the reference solution).
    lam = np.linalg.lstsq(G.T, -(P @ x + q), rcond=None)[0]
    K = np.block([[P, G.T], [G, np.zeros((G.shape[0], G.shape[0]))]])
    w = np.linalg.solve(K, -np.concatenate([v, np.zeros(G.shape[0])]))
    wx, wg = w[:n], w[n:]
    y, wy = lam[:m], wg[:m]
    z = np.zeros(C.shape[0])
    wz = np.zeros(C.shape[0])
    z[active], wz[active] = lam[m:], wg[m:]
    return {
        "P": 0.5 * (np.outer(wx, x) + np.outer(x, wx)),
        "q": wx,
        "A": np.outer(wy, x) + np.outer(y, wx),
        "b": -wy,
        "C": np.outer(wz, x) + np.outer(z, wx),
        "h": -wz,
    }


def median_time(fn: Callable[[], Any], repeats: int, budget_s: float = 60.0) -> tuple[float, Any]:
    """Median wall time of ``fn()`` over ``repeats`` calls after one untimed call; and its last value.

    Fewer repeats (at least one) are made when they would take more than ``budget_s`` by the
    untimed call's duration, so that a slow peer does not hold up the whole benchmark.
    """
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(max(1, min(repeats, int(budget_s / max(first, 1e-9))))):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def interleaved_times(
    fns: dict[str, Callable[[], Any]], repeats: int, budget_s: float = 60.0
) -> dict[str, tuple[float, Any]]:
    """Median wall time of every ``fns[key]()`` over ``repeats`` rounds, and its last value.

    Each function is called once untimed; then every round calls each function once, in turn,
    so that a change of the machine's load during the run weighs on all of them alike (on a
    shared machine this keeps the ratios honest). A function that would take more than
    ``budget_s`` over the rounds (by its untimed call) drops out after fewer, at least one.
    """
    first, out, times = {}, {}, {key: [] for key in fns}
    for key, fn in fns.items():
        t0 = time.perf_counter()
        out[key] = fn()
        first[key] = time.perf_counter() - t0
    rounds = {key: max(1, min(repeats, int(budget_s / max(first[key], 1e-9)))) for key in fns}
    for r in range(repeats):
        for key, fn in fns.items():
            if r < rounds[key]:
                t0 = time.perf_counter()
                out[key] = fn()
                times[key].append(time.perf_counter() - t0)
    return {key: (statistics.median(times[key]), out[key]) for key in fns}


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def grad_error(grads: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> float:
    """Largest relative error over the data items, each relative to the reference's max magnitude.

    ``P`` is compared by its symmetric part: only that part enters the QP.
    """
    worst = 0.0
    for k, r in ref.items():
        g = grads.get(k)
        if g is None:
            continue
        g = np.asarray(g)
        if k == "P":
            g = 0.5 * (g + np.swapaxes(g, -1, -2))
        worst = max(worst, max_abs_diff(g, r) / max(1.0, float(np.max(np.abs(r)))))
    return worst
