"""How fast could the batched ALM of the ``torch`` backend be on this CPU? A lower bound.

Counts the work of one solve of the random dense batch of ``torch_solver.py`` (element
iterations, and rows refactorised), times the batched linear algebra that every iteration
must do at least (three passes over ``K = [P; A; C]``: ``K dx``, ``G'[v, r]``, and the
triangular solves; one Cholesky with its Hessian per refactorised element; for the backward,
one Cholesky per element and two iterations' passes), and compares the resulting floor,
which leaves out every elementwise operation and all Python, with the solve's measured time
and with proxsuite's QPLayer (forward + backward, same process). It also counts the tensor
operations per iteration (views excluded), on the CPU driver and on its GPU branch run on the
CPU: on a GPU each is a kernel launch.

Usage: ``python benchmarks/alm_floor.py [--n 50] [--batch 64] [--repeat 7] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from qpdsl.testing import random_feasible_qps  # noqa: E402


def _median_us(fn: Any, repeat: int = 200) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        times.append((time.perf_counter() - t0) / repeat)
    return statistics.median(times) * 1e6


def primitives(batch: int, n: int, p: int, m: int) -> dict[str, float]:
    """Microseconds per call of the batched kernels one iteration needs, for the whole batch."""
    gen = torch.Generator().manual_seed(0)
    K = torch.randn(batch, n + p + m, n, dtype=torch.float64, generator=gen)
    G = K[:, n:]
    x = torch.randn(batch, n, dtype=torch.float64, generator=gen)
    rows = torch.randn(batch, 2, p + m, dtype=torch.float64, generator=gen)
    H = K[:, :n].mT @ K[:, :n] + torch.eye(n, dtype=torch.float64)
    L = torch.linalg.cholesky(H)
    with torch.inference_mode():
        return {
            "K_dx": _median_us(lambda: x[:, None, :] @ K.mT),
            "G_t_rows": _median_us(lambda: rows @ G),
            "two_triangular_solves": _median_us(
                lambda: torch.linalg.solve_triangular(
                    L.mT, torch.linalg.solve_triangular(L, x[..., None], upper=False), upper=True
                )
            ),
            "hessian_and_cholesky": _median_us(
                lambda: torch.linalg.cholesky_ex(torch.baddbmm(H, G.mT, G)), repeat=20
            ),
        }


def count_work(arrays: list[np.ndarray]) -> dict[str, int]:
    """Element iterations and elements refactorised in one solve of the torch backend."""
    from qpdsl.backends import torch_backend as tb
    from qpdsl.qp import QPData, Settings

    refactored = [0]
    original = tb._Factorizer._refactor

    def counting(self: Any, data: Any, st: Any, active: Any, index: Any, ok: Any) -> Any:
        refactored[0] += int(index.numel())
        return original(self, data, st, active, index, ok)

    tb._Factorizer._refactor = counting
    try:
        res = tb.solve_raw(QPData(*[torch.as_tensor(a) for a in arrays]), Settings(eps_abs=1e-9))
    finally:
        tb._Factorizer._refactor = original
    return {
        "element_iterations": int(res.iterations.sum()),
        "max_iterations": int(res.iterations.max()),
        "refactorised_elements": refactored[0],
    }


def count_ops(arrays: list[np.ndarray], gpu_branch: bool) -> float:
    """Tensor operations (views excluded) per driver iteration of one torch solve.

    ``gpu_branch``: run the driver's GPU loop (full steps, no compaction) on the CPU.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    from qpdsl.backends import torch_backend as tb
    from qpdsl.qp import QPData, Settings

    class Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if not func.is_view:
                Count.ops += 1
            return func(*args, **(kwargs or {}))

    steps = [0]
    newton, compacts = tb.core.newton, tb.compacts

    def counting(*args: Any, **kwargs: Any) -> Any:
        steps[0] += 1
        return newton(*args, **kwargs)

    tb.core.newton = counting
    if gpu_branch:
        tb.compacts = lambda device: False
    data = QPData(*[torch.as_tensor(a) for a in arrays])
    try:
        with Count():
            tb.solve_raw(data, Settings(eps_abs=1e-9))
    finally:
        tb.core.newton, tb.compacts = newton, compacts
    return Count.ops / steps[0]


def measured(arrays: list[np.ndarray], repeat: int) -> dict[str, float]:
    """Median seconds: torch backend forward, and forward + backward of qpdsl[torch] and QPLayer."""
    import torch_solver as ts

    out: dict[str, list[float]] = {"forward": [], "ours_fwd_bwd": [], "qplayer_fwd_bwd": []}
    layer = ts.layers()
    v = np.random.default_rng(1).standard_normal(arrays[1].shape)
    for _ in range(repeat):  # interleaved, so that load hits all three alike
        out["forward"].append(ts._timed(ts.solve_ours, arrays)[0])
        out["ours_fwd_bwd"].append(ts._timed(ts.layer_step, layer["ours"], arrays, v)[0])
        if "qplayer" in layer:
            out["qplayer_fwd_bwd"].append(ts._timed(ts.layer_step, layer["qplayer"], arrays, v)[0])
    return {k: statistics.median(t) for k, t in out.items() if t}


def run(n: int, batch: int, repeat: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    p, m = n // 5, n
    arrays = [np.asarray(a) for a in random_feasible_qps(batch, n, p, m, seed=0)]
    work = count_work(arrays)
    prim = primitives(batch, n, p, m)
    per_iteration = prim["K_dx"] + prim["G_t_rows"] + prim["two_triangular_solves"]
    # Kernels cost in proportion to the elements they process (true from batch 16 or so).
    floor_s = 1e-6 * (
        work["element_iterations"] / batch * per_iteration
        + work["refactorised_elements"] / batch * prim["hessian_and_cholesky"]
    )
    # The backward factorises one n-square matrix per element and makes a few passes over K.
    floor_backward_s = 1e-6 * (prim["hessian_and_cholesky"] + 2 * per_iteration)
    times = measured(arrays, repeat)
    result = {
        "n": n,
        "batch": batch,
        "work": work,
        "primitives_us": prim,
        "floor_forward_s": floor_s,
        "floor_backward_s": floor_backward_s,
        "ops_per_iteration": count_ops(arrays, gpu_branch=False),
        "ops_per_iteration_gpu_branch": count_ops(arrays, gpu_branch=True),
    }
    result.update({f"{k}_s": t for k, t in times.items()})
    if "qplayer_fwd_bwd" in times:
        result["floor_fwd_bwd_ratio"] = (floor_s + floor_backward_s) / times["qplayer_fwd_bwd"]
        result["ours_fwd_bwd_ratio"] = times["ours_fwd_bwd"] / times["qplayer_fwd_bwd"]
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run(args.n, args.batch, args.repeat)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
