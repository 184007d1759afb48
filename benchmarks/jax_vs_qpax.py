"""qpdsl's ``jax`` backend against qpax at equal accuracy, the two timed alternately in one process.

``jax_batch`` runs every solver in its own child process (so that an XLA hang cannot stop it),
one after the other; on a shared machine the load then differs between solvers. Here the two
jitted forward + backward functions (loss ``sum(x * v)``) are called in turn, so both see the
same load. qpdsl runs at its default accuracy (eps 1e-9) and qpax with ``solver_tol`` 1e-8,
which give solutions within about 3e-10 of each other (see ``jax_batch``). Same random batches
as ``jax_batch`` (batch 64, seed n).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/jax_vs_qpax.py [--sizes 50 100] [--repeats 11] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from common import DATA_KEYS, random_dense_batch  # noqa: E402

BATCH = 64
QPAX_TOL = 1e-8


def compare(n: int, repeats: int) -> dict[str, Any]:
    """Median fwd+bwd times of qpdsl[jax] and qpax (tol 1e-8) on one batch, calls alternating."""
    import jax
    import jax.numpy as jnp
    import qpax

    import qpdsl.jax

    jax.config.update("jax_enable_x64", True)
    data = random_dense_batch(BATCH, n, n // 5, n, seed=n)
    args = tuple(jnp.asarray(data[k]) for k in DATA_KEYS)
    v = jnp.asarray(data["v"])

    def qpax_one(P: Any, q: Any, A: Any, b: Any, C: Any, l: Any, u: Any) -> Any:
        G, h = jnp.concatenate([C, -C]), jnp.concatenate([u, -l])
        return qpax.solve_qp_primal(P, q, A, b, G, h, solver_tol=QPAX_TOL)

    solvers = {
        "qpdsl[jax]": lambda *a: qpdsl.jax.solve_qp(*a, backend="jax")[0],
        f"qpax tol {QPAX_TOL:.0e}": jax.vmap(qpax_one),
    }
    steps = {name: jax.jit(jax.grad(lambda a, w, f=f: (f(*a) * w).sum())) for name, f in solvers.items()}
    for step in steps.values():
        jax.block_until_ready(step(args, v))
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            jax.block_until_ready(step(args, v))
            times[name].append(time.perf_counter() - t0)
    medians = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    ours, theirs = medians.values()
    return {
        "n": n,
        "batch": BATCH,
        "repeats": repeats,
        "fwd_bwd_ms": medians,
        "ratio_qpdsl_over_qpax": ours / theirs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        row = compare(n, args.repeats)
        rows.append(row)
        times = ", ".join(f"{k} {v:.1f} ms" for k, v in row["fwd_bwd_ms"].items())
        print(f"n={n}: fwd+bwd {times}; qpdsl / qpax {row['ratio_qpdsl_over_qpax']:.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"benchmark": "jax_vs_qpax", "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
