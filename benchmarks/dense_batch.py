"""Random dense QP batches: qpdsl's backends against the peers, forward and forward+backward.

For each size, one batch of random feasible QPs (see :func:`common.random_dense_batch`) is
solved by every available peer, the peers' calls interleaved round after round
(:func:`common.interleaved_times`); the table gives median wall times, their ratio to proxsuite's
QPLayer, the largest error of x against cvxpy + Clarabel, and the largest relative error of
the gradients of ``sum(x * v)`` against the exact active-set KKT gradients.

Usage::

    python benchmarks/dense_batch.py [--batch 64] [--n 50 100] [--repeats 5] [--quick]
                                     [--peers qpdsl qplayer ...] [--dtype float64|float32] [--json PATH]

With ``--dtype float32`` the data are rounded to float32 and every peer gets float32 tensors;
the reference solves the rounded data in float64 (the accuracy to expect is then about 1e-5).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# Runnable as a script from anywhere: its siblings, and qpdsl from the checkout when not installed.
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import numpy as np
from common import grad_error, interleaved_times, max_abs_diff, random_dense_batch, reference
from peers import JaxPeer, TorchPeer, peers

# n -> (n_eq, n_in) of the two standard sizes; other n get n // 5 equalities and n inequalities.
SIZES = {50: (10, 50), 100: (20, 100)}
BASELINE = "qplayer"


def bench_size(
    batch: int,
    n: int,
    repeats: int,
    candidates: list[TorchPeer | JaxPeer],
    seed: int = 0,
    dtype: str = "float64",
) -> list[dict[str, Any]]:
    """Time every peer on one random batch of size ``batch`` with ``n`` variables."""
    n_eq, n_in = SIZES.get(n, (n // 5, n))
    data = random_dense_batch(batch, n, n_eq, n_in, seed=seed)
    if dtype == "float32":  # the problem is the rounded one; its reference is solved in float64
        data = {k: v.astype(np.float32).astype(np.float64) for k, v in data.items()}
    t0 = time.perf_counter()
    x_ref, g_ref = reference(data)
    if dtype == "float32":
        data = {k: v.astype(np.float32) for k, v in data.items()}
    print(
        f"\n# batch={batch} n={n} n_eq={n_eq} n_in={n_in} {dtype}  "
        f"(reference: {time.perf_counter() - t0:.1f} s)"
    )
    rows, ready = [], []
    for peer in candidates:
        row: dict[str, Any] = {
            "peer": peer.name,
            "batch": batch,
            "n": n,
            "n_eq": n_eq,
            "n_in": n_in,
            "dtype": dtype,
        }
        rows.append(row)
        try:  # a failing peer is a result, not a crash: first a checked call of each
            peer.prepare(data)
            peer.forward(data)
            peer.forward_backward(data)
        except Exception as exc:  # noqa: BLE001
            row["error"] = f"{type(exc).__name__}: {exc}"
            print(f"  {peer.name}: failed: {row['error']}")
            continue
        ready.append((peer, row))
    # the peers' calls interleaved, round after round (see common.interleaved_times)
    fns: dict[str, Any] = {}
    for peer, _ in ready:
        fns[f"fwd {peer.name}"] = lambda p=peer: p.forward(data)
        fns[f"tot {peer.name}"] = lambda p=peer: p.forward_backward(data)
    timed = interleaved_times(fns, repeats)
    for peer, row in ready:
        (t_fwd, state), (t_tot, grads) = timed[f"fwd {peer.name}"], timed[f"tot {peer.name}"]
        row.update(
            forward_s=t_fwd,
            forward_backward_s=t_tot,
            x_err=max_abs_diff(peer.solution(state), x_ref),
            grad_err=grad_error(grads, g_ref),
        )
        print(f"  {peer.name}: fwd {t_fwd * 1e3:.1f} ms, fwd+bwd {t_tot * 1e3:.1f} ms")
    _add_ratios(rows)
    return rows


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    base = next((r for r in rows if r["peer"] == BASELINE and "error" not in r), None)
    for r in rows:
        if base is None or "error" in r:
            continue
        r["forward_ratio"] = r["forward_s"] / base["forward_s"]
        r["forward_backward_ratio"] = r["forward_backward_s"] / base["forward_backward_s"]


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the rows (times in ms, ratios vs QPLayer)."""
    head = (
        f"{'n':>4} {'peer':<24} {'fwd ms':>10} {'fwd+bwd ms':>11} {'fwd x':>7} {'f+b x':>7} "
        f"{'max|x-x*|':>10} {'grad rel err':>12}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['n']:>4} {r['peer']:<24} failed: {r['error'][:80]}")
            continue
        ratios = [
            f"{r[k]:7.2f}" if k in r else f"{'-':>7}" for k in ("forward_ratio", "forward_backward_ratio")
        ]
        lines.append(
            f"{r['n']:>4} {r['peer']:<24} {r['forward_s'] * 1e3:10.1f} {r['forward_backward_s'] * 1e3:11.1f} "
            f"{ratios[0]} {ratios[1]} {r['x_err']:10.1e} {r['grad_err']:12.1e}"
        )
    return "\n".join(lines)


def run(
    quick: bool = False,
    batch: int | None = None,
    sizes: list[int] | None = None,
    repeats: int | None = None,
    include: set[str] | None = None,
    dtype: str = "float64",
) -> dict[str, Any]:
    """Run the benchmark and return ``{"config": ..., "results": [row, ...]}``.

    ``quick`` shrinks it to one small batch (a smoke run of every peer, about a minute);
    ``dtype`` is the data's (float64 or float32).
    """
    import torch

    batch = batch or (8 if quick else 64)
    sizes = sizes or ([50] if quick else sorted(SIZES))
    repeats = repeats or (2 if quick else 5)
    # QPLayer's backward allocates its gradients in the default dtype; the data are float64.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        candidates = peers(include)
        rows = [row for n in sizes for row in bench_size(batch, n, repeats, candidates, dtype=dtype)]
    finally:
        torch.set_default_dtype(previous)
    config = {
        "batch": batch,
        "sizes": sizes,
        "repeats": repeats,
        "dtype": dtype,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],  # timings are only comparable on an idle machine
    }
    return {"benchmark": "dense_batch", "config": config, "results": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, help="batch size (64; 8 with --quick)")
    parser.add_argument("--n", type=int, nargs="+", help="numbers of variables (50 100; 50 with --quick)")
    parser.add_argument("--repeats", type=int, help="timed repeats per measurement (5; 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--peers", nargs="+", help="only peers whose name starts with one of these")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64", help="data dtype")
    parser.add_argument("--json", type=Path, help="write the results as JSON to this path")
    args = parser.parse_args(argv)
    peers_in = set(args.peers) if args.peers else None
    result = run(args.quick, args.batch, args.n, args.repeats, peers_in, args.dtype)
    print()
    print(format_table(result["results"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
