"""The backward pass alone: ``qpdsl.diff.qp_vjp`` on torch tensors, at the solutions of proxsuite.

The same random dense batches as the other benchmarks (``P = M M' + 1e-2 I``, ``A, C`` standard
normal, n/5 equalities, n two-sided inequalities), solved once by the ``proxsuite`` backend;
then the pullback of ``sum(x * v)`` to P, q, A, b, C, l, u is timed (median of repeats, after one
untimed call). Runs on any commit that has ``qpdsl.diff.qp_vjp``, so two checkouts can be
compared with the same command::

    OMP_NUM_THREADS=1 python benchmarks/backward.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from common import DATA_KEYS, random_dense_batch  # noqa: E402

SIZES = ((64, 50), (256, 100), (1024, 100))  # (batch, n)
QUICK_SIZES = ((64, 50),)


def time_backward(batch: int, n: int, repeats: int) -> dict[str, Any]:
    """Median time of one ``qp_vjp`` call for a batch of random QPs."""
    import torch

    from qpdsl.backends import get_backend
    from qpdsl.diff import qp_vjp
    from qpdsl.qp import QPData, QPResult, Settings

    torch.set_num_threads(1)
    arrays = random_dense_batch(batch, n, n // 5, n, seed=0)
    data = QPData(*(torch.as_tensor(arrays[k]) for k in DATA_KEYS))
    res = get_backend("proxsuite").solve(data.map_arrays(lambda t: t.numpy()), Settings(), None)
    fields = {
        f.name: getattr(res, f.name)
        if f.name == "extras" or getattr(res, f.name) is None
        else torch.as_tensor(getattr(res, f.name))
        for f in dataclasses.fields(res)
    }
    result = QPResult(**fields)
    v = torch.as_tensor(arrays["v"])
    qp_vjp(data, result, v)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        qp_vjp(data, result, v)
        times.append(time.perf_counter() - t0)
    return {"batch": batch, "n": n, "backward_s": statistics.median(times), "repeats": repeats}


def run(quick: bool = False) -> dict[str, Any]:
    rows = [time_backward(b, n, 3 if b >= 1024 else 7) for b, n in (QUICK_SIZES if quick else SIZES)]
    for r in rows:
        print(f"  batch {r['batch']:>5}  n {r['n']:>4}  backward {1e3 * r['backward_s']:8.1f} ms")
    return {"benchmark": "backward", "quick": quick, "results": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 64, n=50 only")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    res = run(args.quick)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
