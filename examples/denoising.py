"""Total-variation denoising of 1-D signals, with the regularisation weight learned by gradient descent.

The layer is the TV denoiser

    minimize  ||x - y||^2 + lam ||D x||_1

where y is a noisy signal, D the (n-1) x n forward-difference operator (a ``scipy.sparse``
matrix, a constant of the problem) and lam >= 0 the regularisation weight. Both y and lam are
layer inputs (``prob.to_torch(parameters=[y, lam], ...)``). On a few training signals
(piecewise-constant clean signals plus Gaussian noise) lam = exp(t) is learned by L-BFGS on
the mean squared error between the denoised and the clean signals, with the gradient in t
coming through the layer. The learned lam is compared with the best lam of a grid search on
the same training signals, both scored on held-out test signals.

    python examples/denoising.py                      # n = 100, 4 training / 4 test signals, ~7 s
    python examples/denoising.py --n 200 --signals 8 --backend torch
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

import qpdsl as qd


def tv_layer(n: int, backend: str) -> torch.nn.Module:
    """The TV denoiser as a layer: (y of shape (batch, n), lam) -> (x of shape (batch, n),)."""
    D = sp.diags([-np.ones(n - 1), np.ones(n - 1)], [0, 1], shape=(n - 1, n), format="csr")
    x = qd.Variable(n, name="x")
    y = qd.Parameter(n, name="y")
    lam = qd.Parameter(nonneg=True, name="lam")
    prob = qd.Problem(qd.Minimize(qd.sum_squares(x - y) + lam * qd.norm1(D @ x)))
    return prob.to_torch(parameters=[y, lam], variables=[x], backend=backend)


def make_signals(
    count: int, n: int, jumps: int, noise: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` piecewise-constant clean signals of length ``n`` and their noisy copies."""
    clean = np.empty((count, n))
    for i in range(count):
        cuts = np.sort(rng.choice(np.arange(1, n), size=jumps, replace=False))
        levels = rng.normal(size=jumps + 1)
        clean[i] = np.repeat(levels, np.diff(np.concatenate([[0], cuts, [n]])))
    noisy = clean + noise * rng.normal(size=clean.shape)
    return torch.tensor(noisy), torch.tensor(clean)


def mse(layer: torch.nn.Module, noisy: torch.Tensor, clean: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the denoised signals (``lam`` scalar, or one value per signal)."""
    (x,) = layer(noisy, lam)
    return ((x - clean) ** 2).mean()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--backend", default="auto", help="a name from qd.available_backends(), or auto (chosen per call)"
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: n = 40, 2 signals, 3 jumps, 6 iterations, 5 grid points",
    )
    ap.add_argument("--n", type=int, default=100, help="signal length")
    ap.add_argument("--signals", type=int, default=4, help="training signals (and as many test signals)")
    ap.add_argument("--jumps", type=int, default=6, help="jumps per clean signal")
    ap.add_argument("--noise", type=float, default=0.3, help="noise standard deviation")
    ap.add_argument("--lam0", type=float, default=0.1, help="initial lam")
    ap.add_argument("--max-iter", type=int, default=15, help="L-BFGS iterations on log(lam)")
    ap.add_argument("--grid", type=int, default=9, help="grid-search points, log-spaced in [0.05, 5]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.signals, args.jumps, args.max_iter, args.grid = 40, 2, 3, 6, 5
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Learn lam, run the grid search; returns the learned and grid lam with their errors."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    train_y, train_c = make_signals(args.signals, args.n, args.jumps, args.noise, rng)
    test_y, test_c = make_signals(args.signals, args.n, args.jumps, args.noise, rng)
    layer = tv_layer(args.n, args.backend)

    t0 = time.perf_counter()
    log_lam = torch.tensor(math.log(args.lam0), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_lam], lr=1.0, max_iter=args.max_iter, line_search_fn="strong_wolfe")
    path = []

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = mse(layer, train_y, train_c, log_lam.exp())
        loss.backward()
        path.append((math.exp(float(log_lam.detach())), float(loss.detach()), float(log_lam.grad)))
        return loss

    opt.step(closure)
    learn_s = time.perf_counter() - t0
    lam_learned = math.exp(float(log_lam.detach()))

    t0 = time.perf_counter()
    grid = np.geomspace(0.05, 5.0, args.grid)
    k = args.signals
    with torch.no_grad():
        (x,) = layer(train_y.repeat(len(grid), 1), torch.tensor(grid).repeat_interleave(k))
    grid_mse = ((x - train_c.repeat(len(grid), 1)) ** 2).reshape(len(grid), -1).mean(1).numpy()
    lam_grid = float(grid[np.argmin(grid_mse)])
    grid_s = time.perf_counter() - t0

    with torch.no_grad():
        noisy = (0.0, float(((train_y - train_c) ** 2).mean()), float(((test_y - test_c) ** 2).mean()))
        rows = {"noisy input (lam = 0)": noisy}
        for name, lam in (
            ("initial lam", args.lam0),
            ("learned lam", lam_learned),
            ("grid-search lam", lam_grid),
        ):
            lam_t = torch.tensor(lam, dtype=torch.float64)
            rows[name] = (
                lam,
                float(mse(layer, train_y, train_c, lam_t)),
                float(mse(layer, test_y, test_c, lam_t)),
            )

    print(f"TV denoising ({args.backend}): n = {args.n}, {k} training / {k} test signals, noise {args.noise}")
    print(
        f"L-BFGS on log(lam): {len(path)} layer calls in {learn_s:.1f} s; grid of {args.grid}: {grid_s:.1f} s"
    )
    print(f"\n{'':<22} {'lam':>7} {'train MSE':>10} {'test MSE':>9}")
    for name, (lam, train, test) in rows.items():
        print(f"{name:<22} {lam:>7.3f} {train:>10.5f} {test:>9.5f}")
    return {
        "config": vars(args),
        "lam_learned": lam_learned,
        "lam_grid": lam_grid,
        "path": path,
        "grid": grid.tolist(),
        "grid_mse": grid_mse.tolist(),
        "table": {name: {"lam": r[0], "train_mse": r[1], "test_mse": r[2]} for name, r in rows.items()},
        "learn_s": learn_s,
        "grid_s": grid_s,
    }


if __name__ == "__main__":
    main()
