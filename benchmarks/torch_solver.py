"""The ``torch`` backend over batch sizes 1…1024, beside proxsuite.

Random feasible dense QPs (``P = M M' + 1e-2 I``, ``A``, ``C`` standard normal,
``b = A x0``, ``l, u = C x0 -/+ U(0, 1)``), float64, tolerance 1e-9 (absolute, both
solvers), single thread. Two comparisons per batch size:

- forward: :func:`qpdsl.backends.torch_backend.solve_raw` against proxsuite dense solved in a
  loop (what proxsuite's QPLayer does in its forward);
- forward + backward of ``sum(x * v)`` through the layers: ``qpdsl.torch.solve_qp(...,
  backend="torch")`` against proxsuite's QPLayer (``QPFunction``, default settings).

Both sides are timed in the same process, interleaved, so that their ratio is meaningful on a
loaded machine; the table shows medians.

Usage: ``python benchmarks/torch_solver.py [--quick] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# Runnable as a script from anywhere: qpdsl from the checkout when not installed.
sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from qpdsl.testing import random_feasible_qps  # noqa: E402

EPS = 1e-9
SIZES = ((50, 10, 50), (100, 20, 100))  # (n, n_eq, n_in)
BATCHES = (1, 4, 16, 64, 256, 1024)


def solve_proxsuite(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    """proxsuite dense, one element at a time (what proxsuite's QPLayer does in its forward).

    Returns the solutions, iteration counts and the number of elements proxsuite did not solve.
    """
    import proxsuite

    P, q, A, b, C, l, u = arrays
    batch, n = q.shape
    xs, iters = np.empty((batch, n)), np.empty(batch)
    failed = 0
    for i in range(batch):
        qp = proxsuite.proxqp.dense.QP(n, b.shape[1], l.shape[1])
        qp.settings.eps_abs, qp.settings.eps_rel = EPS, 0.0
        qp.init(P[i], q[i], A[i], b[i], C[i], l[i], u[i])
        qp.solve()
        xs[i], iters[i] = qp.results.x, qp.results.info.iter
        failed += qp.results.info.status != proxsuite.proxqp.QPSolverOutput.PROXQP_SOLVED
    return xs, iters, failed


def solve_ours(arrays: list[np.ndarray]):
    import torch

    from qpdsl.backends.torch_backend import solve_raw
    from qpdsl.qp import QPData, Settings

    data = QPData(*[torch.as_tensor(a) for a in arrays])
    return solve_raw(data, Settings(eps_abs=EPS))


def layer_step(solve: Any, arrays: list[np.ndarray], v: np.ndarray) -> Any:
    """Forward and backward of ``sum(x * v)`` through a torch layer ``solve(P, q, A, b, C, l, u) -> x``."""
    import torch

    inputs = [torch.tensor(a, requires_grad=True) for a in arrays]
    x = solve(*inputs)
    return torch.autograd.grad((x * torch.as_tensor(v)).sum(), inputs, allow_unused=True)


def layers() -> dict[str, Any]:
    """The two layers timed forward + backward (QPLayer only where proxsuite has its torch module)."""
    import qpdsl.torch

    out = {"ours": lambda *a: qpdsl.torch.solve_qp(*a, backend="torch")[0]}
    try:
        from proxsuite.torch.qplayer import QPFunction

        fn = QPFunction(eps=EPS)  # its default too
        out["qplayer"] = lambda *a: fn(*a)[0]
    except ImportError as err:
        print(f"proxsuite's QPLayer unavailable ({err}); forward+backward is timed for qpdsl only")
    return out


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def run(quick: bool = False, repeat: int | None = None) -> list[dict]:
    """Time both sides on every size and batch; print and return one row per (size, batch)."""
    import torch

    torch.set_num_threads(1)
    repeat = repeat or (3 if quick else 5)
    batches = (1, 64) if quick else BATCHES
    steps = layers()
    rows = []
    header = (
        f"{'n':>4} {'p':>3} {'m':>4} {'batch':>5} | {'fwd ms':>8} {'proxsuite':>9} {'ratio':>6} | "
        f"{'fwd+bwd ms':>10} {'qplayer':>9} {'ratio':>6} | {'it ours':>7} {'it prox':>7} | "
        f"{'max res':>8} {'|x-x_px|':>8}"
    )
    print(header)
    print("-" * len(header))
    for n, p, m in SIZES:
        solve_ours(random_feasible_qps(2, n, p, m, seed=1))  # warm up
        for batch in batches:
            arrays = random_feasible_qps(batch, n, p, m, seed=batch + n)
            v = np.random.default_rng(batch).standard_normal((batch, n))
            # Fewer repeats where one call takes seconds.
            reps = repeat if batch * n <= 64 * 100 else max(1, min(repeat, 3))
            t_ours, t_prox = [], []
            t_step: dict[str, list[float]] = {name: [] for name in steps}
            for _ in range(reps):
                dt, res = _timed(solve_ours, arrays)
                t_ours.append(dt)
                dt, (x_px, it_px, px_failed) = _timed(solve_proxsuite, arrays)
                t_prox.append(dt)
                for name, solve in steps.items():
                    t_step[name].append(_timed(layer_step, solve, arrays, v)[0])
            x = res.x.numpy()
            row = dict(
                n=n,
                p=p,
                m=m,
                batch=batch,
                repeats=reps,
                ours_ms=1e3 * statistics.median(t_ours),
                proxsuite_ms=1e3 * statistics.median(t_prox),
                iters_ours=float(res.iterations.double().mean()),
                iters_proxsuite=float(it_px.mean()),
                max_res=float(torch.maximum(res.prim_res, res.dual_res).max()),
                max_dx=float(np.abs(x - x_px).max()),
                solved=bool((res.status == 0).all()),
                proxsuite_failed=int(px_failed),
            )
            row["ratio"] = row["ours_ms"] / row["proxsuite_ms"]
            for name, times in t_step.items():
                row[f"{name}_fwd_bwd_ms"] = 1e3 * statistics.median(times)
            fb = row["ours_fwd_bwd_ms"]
            qpl = row.get("qplayer_fwd_bwd_ms")
            row["fwd_bwd_ratio"] = fb / qpl if qpl else None
            rows.append(row)
            print(
                f"{n:>4} {p:>3} {m:>4} {batch:>5} | {row['ours_ms']:>8.1f} {row['proxsuite_ms']:>9.1f} "
                f"{row['ratio']:>6.2f} | {fb:>10.1f} {qpl or float('nan'):>9.1f} "
                f"{row['fwd_bwd_ratio'] or float('nan'):>6.2f} | {row['iters_ours']:>7.1f} "
                f"{row['iters_proxsuite']:>7.1f} | {row['max_res']:>8.1e} {row['max_dx']:>8.1e}",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batches 1 and 64 only, 3 repeats")
    parser.add_argument("--repeat", type=int, default=None)
    args = parser.parse_args()
    run(args.quick, args.repeat)
