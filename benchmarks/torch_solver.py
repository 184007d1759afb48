"""Forward-solve time of the ``torch`` backend against proxsuite dense solved in a loop.

Random feasible dense QPs (``P = M M' + 1e-2 I``, ``A``, ``C`` standard normal,
``b = A x0``, ``l, u = C x0 -/+ U(0, 1)``), float64, tolerance 1e-9 (absolute, both
solvers), single thread. Both solvers are timed in the same process, interleaved, so that
their ratio is meaningful on a loaded machine; the table shows medians.

Usage: ``python benchmarks/torch_solver.py [--quick] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from qpdsl.testing import random_feasible_qps  # noqa: E402

EPS = 1e-9
SIZES = ((50, 10, 50), (100, 20, 100))  # (n, n_eq, n_in)
BATCHES = (1, 64, 256)




def solve_proxsuite(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """proxsuite dense, one element at a time (what proxsuite's QPLayer does in its forward)."""
    import proxsuite

    P, q, A, b, C, l, u = arrays
    batch, n = q.shape
    xs, iters = np.empty((batch, n)), np.empty(batch)
    for i in range(batch):
        qp = proxsuite.proxqp.dense.QP(n, b.shape[1], l.shape[1])
        qp.settings.eps_abs, qp.settings.eps_rel = EPS, 0.0
        qp.init(P[i], q[i], A[i], b[i], C[i], l[i], u[i])
        qp.solve()
        xs[i], iters[i] = qp.results.x, qp.results.info.iter
    return xs, iters


def solve_ours(arrays: list[np.ndarray]):
    import torch

    from qpdsl.backends.torch_backend import solve_raw
    from qpdsl.qp import QPData, Settings

    data = QPData(*[torch.as_tensor(a) for a in arrays])
    return solve_raw(data, Settings(eps_abs=EPS))


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def run(quick: bool = False, repeat: int | None = None) -> list[dict]:
    """Time both solvers on every size; print and return one row per (size, batch)."""
    import torch

    torch.set_num_threads(1)
    repeat = repeat or (3 if quick else 5)
    batches = (1, 64) if quick else BATCHES
    rows = []
    header = (
        f"{'n':>4} {'p':>3} {'m':>4} {'batch':>5} | {'ours ms':>9} {'proxsuite ms':>12} {'ratio':>6} | "
        f"{'it ours':>7} {'it prox':>7} | {'max res':>8} {'|x-x_px|':>8}"
    )
    print(header)
    print("-" * len(header))
    for n, p, m in SIZES:
        for batch in batches:
            arrays = random_feasible_qps(batch, n, p, m, seed=batch + n)
            solve_ours(random_feasible_qps(2, n, p, m, seed=1))  # warm up
            t_ours, t_prox = [], []
            for _ in range(repeat):
                dt, res = _timed(solve_ours, arrays)
                t_ours.append(dt)
                dt, (x_px, it_px) = _timed(solve_proxsuite, arrays)
                t_prox.append(dt)
            x = res.x.numpy()
            row = dict(
                n=n,
                p=p,
                m=m,
                batch=batch,
                ours_ms=1e3 * statistics.median(t_ours),
                proxsuite_ms=1e3 * statistics.median(t_prox),
                iters_ours=float(res.iterations.double().mean()),
                iters_proxsuite=float(it_px.mean()),
                max_res=float(torch.maximum(res.prim_res, res.dual_res).max()),
                max_dx=float(np.abs(x - x_px).max()),
                solved=bool((res.status == 0).all()),
            )
            row["ratio"] = row["ours_ms"] / row["proxsuite_ms"]
            rows.append(row)
            print(
                f"{n:>4} {p:>3} {m:>4} {batch:>5} | {row['ours_ms']:>9.1f} {row['proxsuite_ms']:>12.1f} "
                f"{row['ratio']:>6.2f} | {row['iters_ours']:>7.1f} {row['iters_proxsuite']:>7.1f} | "
                f"{row['max_res']:>8.1e} {row['max_dx']:>8.1e}",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batches 1 and 64 only, 3 repeats")
    parser.add_argument("--repeat", type=int, default=None)
    args = parser.parse_args()
    run(args.quick, args.repeat)
