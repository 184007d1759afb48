"""Learn the rules of 4x4 Sudoku with a differentiable LP/QP layer (the OptNet Sudoku task).

A board is one-hot encoded as x in R^64 (cell (r, c) holds digit d  <=>  x[16 r + 4 c + d] = 1).
The layer is

    LP:  minimize  -p'x                    subject to  A x = b,  0 <= x <= 1
    QP:  minimize  -p'x + 0.05 ||x||^2     subject to  A x = b,  x >= 0     (P = 0.1 I, as OptNet)

where p is the puzzle (the one-hot of its given cells) and A (m x 64), b are *learned* from
(puzzle, solution) pairs alone: the network is never told the rules. b = A z0 with a learned
z0 in (0, 1)^64 keeps every learned problem feasible (which qpth needs). The loss is the mean
squared error between x and the one-hot solution; the test error is the fraction of boards with
at least one wrong cell after taking the argmax digit of every cell.

The LP learns too, only more slowly than the QP: its solution is a vertex whose m = 40 basic
entries move with A and b (the derivative is defined there and is not zero), but the vertex
has to become nearly integral before the per-cell argmax is right everywhere. The defaults
(6 blanks, 20 epochs) give it enough steps to get there within a few minutes on 2 cores;
with 8 blanks and 10 epochs the LP test error stays near 1.

Models (each skipped with a message when it cannot run here):

    qpdsl-lp[auto], qpdsl-lp[proxsuite], qpdsl-lp[torch]   the LP (P = 0) through prob.to_torch
    qpdsl-qp[auto], qpdsl-qp[proxsuite], qpdsl-qp[torch]   the QP (P = 0.1 I); auto is the default
                                                            backend (here: cpu)
    optnet-qp[qpth]                         OptNet's layer (needs P > 0: the QP)
    qplayer-qp, qplayer-lp                  proxsuite's QPLayer on the same data

Run ``python examples/sudoku.py`` (the project demo, a few minutes on 2 cores) or
``python examples/sudoku.py --quick`` for a smoke test (1 epoch, 40 training / 20 test puzzles).
Results (per-epoch curves as JSON, a PNG plot when matplotlib is installed) go to ``--out``
(default ``results/``, ignored by git); ``--img docs/img`` also writes them where the
documentation shows them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _peers import RESULTS, ModelSpec, Timer, float64, format_table, progress, usable_models  # noqa: E402

import qpdsl as qd  # noqa: E402

N = 4  # board side
BOX = 2  # box side
NX = N * N * N  # one-hot size

MODELS = [
    ModelSpec("qpdsl-lp[auto]", "qpdsl", "auto", "lp"),
    ModelSpec("qpdsl-lp[proxsuite]", "qpdsl", "proxsuite", "lp"),
    ModelSpec("qpdsl-lp[torch]", "qpdsl", "torch", "lp"),
    ModelSpec("qpdsl-qp[auto]", "qpdsl", "auto", "qp"),
    ModelSpec("qpdsl-qp[proxsuite]", "qpdsl", "proxsuite", "qp"),
    ModelSpec("qpdsl-qp[torch]", "qpdsl", "torch", "qp"),
    ModelSpec("optnet-qp[qpth]", "qpth", None, "qp"),
    ModelSpec("qplayer-qp", "qplayer", None, "qp"),
    ModelSpec("qplayer-lp", "qplayer", None, "lp"),
]


# ---------------------------------------------------------------- puzzles


def all_grids() -> np.ndarray:
    """Every valid 4x4 Sudoku grid (there are 288), digits 0..3, by backtracking."""
    grids: list[np.ndarray] = []
    g = -np.ones((N, N), dtype=int)

    def ok(r: int, c: int, d: int) -> bool:
        br, bc = BOX * (r // BOX), BOX * (c // BOX)
        return d not in g[r] and d not in g[:, c] and d not in g[br : br + BOX, bc : bc + BOX]

    def fill(k: int) -> None:
        if k == N * N:
            grids.append(g.copy())
            return
        r, c = divmod(k, N)
        for d in range(N):
            if ok(r, c, d):
                g[r, c] = d
                fill(k + 1)
                g[r, c] = -1

    fill(0)
    return np.stack(grids)


BASE = np.array([[0, 1, 2, 3], [2, 3, 0, 1], [1, 0, 3, 2], [3, 2, 1, 0]])


def random_grid(rng: np.random.Generator) -> np.ndarray:
    """A random valid grid: permute the digits, rows within bands, bands, columns within stacks,
    stacks of a base grid, and transpose with probability 1/2 (this reaches all 288 grids)."""
    g = rng.permutation(N)[BASE]
    rows = np.concatenate([BOX * band + rng.permutation(BOX) for band in rng.permutation(N // BOX)])
    cols = np.concatenate([BOX * stack + rng.permutation(BOX) for stack in rng.permutation(N // BOX)])
    g = g[rows][:, cols]
    return g.T.copy() if rng.random() < 0.5 else g


def make_puzzle(grid: np.ndarray, blanks: int, rng: np.random.Generator, grids: np.ndarray) -> np.ndarray:
    """A mask of given cells: up to ``blanks`` cells removed in random order, keeping the solution unique."""
    given = np.ones((N, N), dtype=bool)
    removed = 0
    for k in rng.permutation(N * N):
        if removed == blanks:
            break
        r, c = divmod(int(k), N)
        given[r, c] = False
        matches = np.all((grids == grid) | ~given, axis=(1, 2)).sum()
        if matches == 1:
            removed += 1
        else:
            given[r, c] = True
    return given


def one_hot(grid: np.ndarray, given: np.ndarray | None = None) -> np.ndarray:
    x = np.zeros((N, N, N))
    r, c = np.indices((N, N))
    x[r, c, grid] = 1.0
    if given is not None:
        x[~given] = 0.0
    return x.reshape(NX)


def make_dataset(size: int, blanks: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` (puzzle, solution) pairs as float64 tensors (size, 64)."""
    grids = all_grids()
    puzzles, solutions = [], []
    for _ in range(size):
        grid = random_grid(rng)
        given = make_puzzle(grid, blanks, rng, grids)
        puzzles.append(one_hot(grid, given))
        solutions.append(one_hot(grid))
    return torch.tensor(np.array(puzzles)), torch.tensor(np.array(solutions))


def board_errors(x: torch.Tensor, solution: torch.Tensor) -> torch.Tensor:
    """1.0 for each board with at least one wrong cell after the per-cell argmax."""
    guess = x.reshape(-1, N * N, N).argmax(-1)
    truth = solution.reshape(-1, N * N, N).argmax(-1)
    return (guess != truth).any(-1).double()


# ---------------------------------------------------------------- model


def sudoku_problem(m: int, quadratic: bool) -> tuple[qd.Problem, list[qd.Parameter], qd.Variable]:
    """The layer's problem in qpdsl's modelling language; returns (problem, layer parameters, x)."""
    x = qd.Variable(NX, name="x")
    A = qd.Parameter((m, NX), name="A")
    b = qd.Parameter(m, name="b")
    p = qd.Parameter(NX, name="p")
    if quadratic:  # OptNet's layer: P = 0.1 I, x >= 0
        problem = qd.Problem(qd.Minimize(-p @ x + 0.05 * qd.sum_squares(x)), [A @ x == b, x >= 0])
    else:  # the LP needs x <= 1 to stay bounded whatever A becomes during training
        problem = qd.Problem(qd.Minimize(-p @ x), [A @ x == b, x >= 0, x <= 1])
    return problem, [A, b, p], x


class SudokuNet(torch.nn.Module):
    """puzzle -> relaxed one-hot solution, through a layer whose constraint data are learned."""

    def __init__(self, layer: torch.nn.Module, m: int, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.A = torch.nn.Parameter(torch.rand(m, NX, generator=gen, dtype=torch.float64))
        # z0 = sigmoid(w) starts at the uniform board 1/4 (which satisfies the true rules)
        self.w = torch.nn.Parameter(torch.full((NX,), math.log(0.25 / 0.75), dtype=torch.float64))
        self.layer = layer

    def forward(self, puzzles: torch.Tensor) -> torch.Tensor:
        b = self.A @ torch.sigmoid(self.w)
        (x,) = self.layer(self.A, b, puzzles)
        return x


# ---------------------------------------------------------------- training


def train_model(
    spec: ModelSpec, data: dict[str, torch.Tensor], args: argparse.Namespace, show_progress: bool
) -> dict[str, Any]:
    problem, params, x = sudoku_problem(args.m, quadratic=spec.variant == "qp")
    net = SudokuNet(spec.build(problem, params, [x]), args.m, args.seed)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    n_train = data["train_p"].shape[0]

    def evaluate() -> float:
        with torch.no_grad():
            errs = [
                board_errors(net(p), s)
                for p, s in zip(
                    data["test_p"].split(args.batch_size), data["test_s"].split(args.batch_size), strict=True
                )
            ]
        return float(torch.cat(errs).mean())

    hist: dict[str, Any] = {
        "epoch": [0],
        "train_loss": [None],
        "train_error": [None],
        "test_error": [evaluate()],
        "epoch_s": [],
        "forward_s": [],
        "backward_s": [],
    }
    batches = math.ceil(n_train / args.batch_size)
    bar = progress(
        args.epochs * batches, f"{spec.name:>20}", disable=not show_progress, leave=True, dynamic_ncols=True
    )
    try:
        for epoch in range(1, args.epochs + 1):
            timer = Timer()
            losses, errors = [], []
            t0 = time.perf_counter()
            for idx in torch.randperm(n_train, generator=gen).split(args.batch_size):
                p, s = data["train_p"][idx], data["train_s"][idx]
                with timer("forward"):
                    out = net(p)
                    loss = torch.nn.functional.mse_loss(out, s)
                opt.zero_grad()
                with timer("backward"):
                    loss.backward()
                opt.step()
                losses.append(float(loss.detach()) * len(idx))
                errors.append(board_errors(out.detach(), s))
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            epoch_s = time.perf_counter() - t0
            test_error = evaluate()
            hist["epoch_s"].append(epoch_s)
            hist["forward_s"].append(timer.total.get("forward", 0.0))
            hist["backward_s"].append(timer.total.get("backward", 0.0))
            hist["epoch"].append(epoch)
            hist["train_loss"].append(sum(losses) / n_train)
            hist["train_error"].append(float(torch.cat(errors).mean()))
            hist["test_error"].append(test_error)
            bar.set_postfix(loss=f"{hist['train_loss'][-1]:.4f}", test_err=f"{hist['test_error'][-1]:.2f}")
    except Exception as exc:  # noqa: BLE001 - a failing model is reported, the others go on
        hist["failed"] = f"epoch {len(hist['epoch'])}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        print(f"\n{spec.name} failed at {hist['failed']}", flush=True)
    finally:
        bar.close()
    return hist


def plot(results: dict[str, dict[str, Any]], path: Path, title: str) -> bool:
    """Draw the training curves into ``path``; returns False (and draws nothing) without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", flush=True)
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, h in results.items():
        style = "-" if name.startswith("qpdsl") else "--"
        ep = h["epoch"]
        axes[0].plot(ep[1:], h["train_loss"][1:], style, marker="o", ms=3, label=name)
        axes[1].plot(ep[1:], h["train_error"][1:], style, marker="o", ms=3, label=name)
        axes[2].plot(ep, h["test_error"], style, marker="o", ms=3, label=name)
    for ax, label in zip(
        axes,
        ["training loss (MSE)", "training error (boards wrong)", "test error (boards wrong)"],
        strict=True,
    ):
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].set_ylim(-0.02, 1.02)
    axes[2].set_ylim(-0.02, 1.02)
    axes[2].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 epoch, 40 training / 20 test puzzles")
    ap.add_argument(
        "--models",
        default="",
        help="comma-separated model names (default: all): " + ", ".join(s.name for s in MODELS),
    )
    ap.add_argument("--train-size", type=int, default=200)
    ap.add_argument("--test-size", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--blanks", type=int, default=6, help="cells removed per puzzle (solution kept unique)")
    ap.add_argument("--m", type=int, default=40, help="rows of the learned A")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0: torch's default; 1 is fastest for these small batches)",
    )
    ap.add_argument(
        "--out", default=str(RESULTS), help="folder of sudoku.json and sudoku.png (default: %(default)s)"
    )
    ap.add_argument("--img", default=None, help="also write sudoku.json and sudoku.png here (e.g. docs/img)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.train_size, args.test_size = 1, 40, 20
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the example; returns {"models": {name: curves}, "config": ..., "skipped": [...]}."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skipped: list[str] = []

    def log_skip(msg: str) -> None:
        skipped.append(msg)
        print(msg, flush=True)

    with float64():
        rng = np.random.default_rng(args.seed)
        train_p, train_s = make_dataset(args.train_size, args.blanks, rng)
        test_p, test_s = make_dataset(args.test_size, args.blanks, rng)
        data = {"train_p": train_p, "train_s": train_s, "test_p": test_p, "test_s": test_s}
        wanted = [w.strip() for w in args.models.split(",") if w.strip()] or None
        specs = usable_models(MODELS, wanted, log_skip)
        print(
            f"4x4 Sudoku: {args.train_size} training / {args.test_size} test puzzles, {args.blanks} blanks, "
            f"learned A: {args.m}x{NX}, {args.epochs} epochs, batch {args.batch_size}, "
            f"{torch.get_num_threads()} torch threads",
            flush=True,
        )
        results = {}
        for spec in specs:
            results[spec.name] = train_model(spec, data, args, show_progress=not args.no_progress)

    rows = []
    for name, h in results.items():
        n = len(h["epoch_s"])
        rows.append(
            [
                name,
                f"{h['train_loss'][-1]:.4f}" if n else "-",
                f"{h['test_error'][0]:.2f}",
                f"{h['test_error'][-1]:.2f}",
                f"{np.mean(h['epoch_s']):.2f}" if n else "-",
                f"{np.mean(h['forward_s']):.2f}" if n else "-",
                f"{np.mean(h['backward_s']):.2f}" if n else "-",
                h.get("failed", "ok")[:70],
            ]
        )
    table = format_table(
        [
            "model",
            "final train loss",
            "test error (init)",
            "final test error",
            "s / epoch",
            "forward s / epoch",
            "backward s / epoch",
            "status",
        ],
        rows,
    )
    print("\n" + table, flush=True)
    config = {k: v for k, v in vars(args).items() if k not in ("out", "img", "no_progress")}
    config.update(
        torch_threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(),
        command="python examples/sudoku.py " + " ".join(sys.argv[1:] if argv is None else argv),
    )
    report = {"config": config, "skipped": skipped, "models": results, "table": table}
    title = (
        f"4x4 Sudoku, learned A ({args.m}x{NX}) and b; {args.train_size} train / {args.test_size} test "
        f"puzzles, {args.blanks} blanks"
    )
    for folder in [out] + ([Path(args.img)] if args.img else []):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "sudoku.json").write_text(json.dumps(report, indent=1))
        drawn = bool(results) and plot(results, folder / "sudoku.png", title)
        print(
            f"wrote {folder / 'sudoku.json'}" + (f" and {folder / 'sudoku.png'}" if drawn else ""), flush=True
        )
    return report


if __name__ == "__main__":
    main()
