"""The ``cpu`` backend's torch layer against proxsuite's QPLayer over batch sizes and problem sizes.

Two sweeps of random feasible dense QPs (:func:`common.random_dense_batch`; ``n // 5``
equalities and ``n`` inequalities, 10 and 50 at n = 50), float64, default settings, forward and
forward + backward (the gradients of ``sum(x * v)`` with respect to every data item):

- batch 1 ... 1024 at n = 50;
- n = 10 ... 500 at batch 64.

Each point is the median wall time of ``--repeats`` calls after one untimed call (fewer when a
call takes longer than ``--budget`` / repeats), the two layers' calls interleaved. ``x_diff``
is max |x_cpu - x_QPLayer| (both solve to 1e-9). Writes the JSON and one PNG per sweep.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/cpu_curves.py [--quick] [--repeats 5]
        [--json benchmarks/results/cpu_curves.json] [--img docs/img]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from common import interleaved_times, random_dense_batch
from peers import TorchPeer, qpdsl_peer, qplayer_peer

BATCHES = (1, 4, 16, 64, 256, 1024)
SIZES = (10, 25, 50, 100, 200, 500)
QUICK_BATCHES = (1, 16, 64)
QUICK_SIZES = (10, 50)
BATCH_N = 50
SIZE_BATCH = 64


def _point(peers: list[TorchPeer], batch: int, n: int, repeats: int, budget: float) -> list[dict[str, Any]]:
    n_eq, n_in = (10, 50) if n == 50 else (n // 5, n)
    data = random_dense_batch(batch, n, n_eq, n_in)
    rows, xs, fns = [], {}, {}
    for peer in peers:
        peer.prepare(data)
        fns[f"fwd {peer.name}"] = lambda p=peer: p.forward(data)
        fns[f"tot {peer.name}"] = lambda p=peer: p.forward_backward(data)
    timed = interleaved_times(fns, repeats, budget)
    for peer in peers:
        (t_fwd, state), (t_tot, _) = timed[f"fwd {peer.name}"], timed[f"tot {peer.name}"]
        xs[peer.name] = peer.solution(state)
        rows.append(
            {"peer": peer.name, "batch": batch, "n": n, "forward_s": t_fwd, "forward_backward_s": t_tot}
        )
        print(
            f"  batch {batch:5d} n {n:4d} {peer.name:<12} fwd {t_fwd * 1e3:9.1f} ms  "
            f"fwd+bwd {t_tot * 1e3:9.1f} ms",
            flush=True,
        )
    if len(xs) == 2:
        a, b = xs.values()
        diff = float(abs(a - b).max())
        for r in rows:
            r["x_diff"] = diff
    return rows


def run(quick: bool = False, repeats: int | None = None, budget: float = 30.0) -> dict[str, Any]:
    """Both sweeps; ``{"config", "batch_sweep": [rows], "size_sweep": [rows]}``."""
    import torch

    repeats = repeats or (2 if quick else 5)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # QPLayer's backward allocates in the default dtype
    try:
        peers = [qpdsl_peer("cpu"), qplayer_peer()]
        print(f"# batch sweep at n = {BATCH_N}")
        batches = QUICK_BATCHES if quick else BATCHES
        batch_rows = [r for b in batches for r in _point(peers, b, BATCH_N, repeats, budget)]
        print(f"# size sweep at batch {SIZE_BATCH}")
        sizes = QUICK_SIZES if quick else SIZES
        size_rows = [r for n in sizes for r in _point(peers, SIZE_BATCH, n, repeats, budget)]
    finally:
        torch.set_default_dtype(previous)
    config = {
        "repeats": repeats,
        "budget_s": budget,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
    }
    return {"benchmark": "cpu_curves", "config": config, "batch_sweep": batch_rows, "size_sweep": size_rows}


def plot(result: dict[str, Any], batch_png: Path, size_png: Path) -> None:
    """One PNG per sweep: median times of both peers (log-log) and the cpu/QPLayer ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result["config"]
    note = (
        f"{cfg['cpus']} CPUs, load {cfg['load_average_1min']:.1f}, OMP_NUM_THREADS={cfg['omp_num_threads']}"
    )
    for key, axis, fixed, path in (
        ("batch_sweep", "batch", f"n = {BATCH_N}", batch_png),
        ("size_sweep", "n", f"batch {SIZE_BATCH}", size_png),
    ):
        rows = result[key]
        if not rows:
            continue
        fig, (ax, ax_r) = plt.subplots(1, 2, figsize=(11, 4.2))
        peers = list(dict.fromkeys(r["peer"] for r in rows))
        for peer in peers:
            mine = [r for r in rows if r["peer"] == peer]
            xs = [r[axis] for r in mine]
            ax.plot(xs, [r["forward_backward_s"] * 1e3 for r in mine], marker="o", label=f"{peer} fwd+bwd")
            ax.plot(xs, [r["forward_s"] * 1e3 for r in mine], marker=".", ls="--", label=f"{peer} fwd")
        ax.set(xscale="log", yscale="log", xlabel=axis, ylabel="ms per call (median)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        ax.set_title(f"random dense QPs, {fixed}, float64")
        base = {r[axis]: r for r in rows if r["peer"] == "qplayer"}
        cpu = [r for r in rows if r["peer"] == "qpdsl[cpu]" and r[axis] in base]
        xs = [r[axis] for r in cpu]
        for what, style in (("forward_backward_s", "o-"), ("forward_s", ".--")):
            ratios = [r[what] / base[r[axis]][what] for r in cpu]
            ax_r.plot(xs, ratios, style, label=f"{'fwd+bwd' if what.startswith('forward_b') else 'fwd'}")
        ax_r.axhline(1.0, color="k", lw=0.8)
        ax_r.axhline(0.15, color="r", lw=0.8, ls=":", label="0.15")
        ax_r.set(xscale="log", yscale="log", xlabel=axis, ylabel="qpdsl[cpu] time / QPLayer time")
        ax_r.grid(alpha=0.3, which="both")
        ax_r.legend(fontsize=8)
        fig.suptitle(f"qpdsl[cpu] vs proxsuite QPLayer ({note})", fontsize=9)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="three batch sizes and two problem sizes")
    parser.add_argument("--repeats", type=int, help="timed calls per point (5; 2 with --quick)")
    parser.add_argument("--budget", type=float, default=30.0, help="seconds of timed calls per point at most")
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--json", type=Path, default=root / "benchmarks" / "results" / "cpu_curves.json")
    parser.add_argument("--img", type=Path, default=root / "docs" / "img")
    args = parser.parse_args(argv)
    result = run(args.quick, args.repeats, args.budget)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    plot(result, args.img / "cpu_curves_batch.png", args.img / "cpu_curves_n.png")


if __name__ == "__main__":
    main()
