"""The ``cpu`` backend against ``proxsuite`` on the dense batch benchmark's problems: forward only.

One batch of random feasible dense QPs per size (:func:`common.random_dense_batch`), solved at
the default settings (float64, eps_abs 1e-9) by ``get_backend(name).solve``; median wall
times and the largest error of x against cvxpy + Clarabel at 1e-12. Run it once with
``OMP_NUM_THREADS=1`` and once without to see the single- and multi-threaded times.

Usage::

    python benchmarks/cpu_backend.py [--batch 64] [--n 50 100] [--repeats 5] [--no-reference]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import numpy as np
from common import DATA_KEYS, median_time, random_dense_batch, reference
from dense_batch import SIZES

from qpdsl.backends import get_backend
from qpdsl.qp import QPData, Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--n", type=int, nargs="+", default=[50, 100])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-reference", action="store_true", help="skip the Clarabel reference")
    args = parser.parse_args(argv)
    import torch  # the cpu backend follows torch's thread count, as in a torch model

    print(
        f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    t0 = time.perf_counter()
    get_backend("cpu").solve(_tiny(), Settings())
    print(f"first cpu call (compile or cache load): {time.perf_counter() - t0:.2f} s")
    for n in args.n:
        n_eq, n_in = SIZES.get(n, (n // 5, n))
        data = random_dense_batch(args.batch, n, n_eq, n_in)
        qp = QPData(*(data[k] for k in DATA_KEYS))
        x_ref = None if args.no_reference else reference(data)[0]
        for name in ("cpu", "proxsuite"):
            backend = get_backend(name)
            t, res = median_time(lambda b=backend, d=qp: b.solve(d, Settings()), args.repeats)
            ok = sum(s.ok for s in res.statuses())
            err = "" if x_ref is None else f", max|x - x_ref| {np.abs(res.x - x_ref).max():.1e}"
            print(
                f"n={n} ({n_eq} eq, {n_in} ineq) batch {args.batch} {name:>9}: {t * 1e3:8.1f} ms "
                f"({t * 1e3 / args.batch:.3f} ms/element), solved {ok}/{args.batch}, "
                f"mean iterations {np.mean(res.iterations):.1f}{err}"
            )


def _tiny() -> QPData:
    return QPData(*(random_dense_batch(1, 4, 1, 4)[k] for k in DATA_KEYS))


if __name__ == "__main__":
    main()
