"""Monotone smoothing regression through a QP layer, with the smoothing weight learned on held-out data.

Each noisy dose-response curve (samples y at m fixed doses t) is fitted by a piecewise-linear
function with values w at n equally spaced knots:

    minimize    ||B w - y||^2 + lam ||D2 w||^2
    subject to  D1 w >= 0                              (the fit is nondecreasing)

where B (m x n) interpolates the knots at the doses, D1 and D2 are first and second
differences and lam >= 0 weighs smoothness. The layer ``prob.to_torch(parameters=[y, lam])``
fits a whole batch of curves at once. lam = exp(t) is learned by Adam on the squared error of
the fits at *other* doses (a validation set of noisy samples), once for the monotone layer and
once for the same problem without the constraint. The gradient with respect to t and to y is
checked once against central finite differences. The table compares the two fits' validation
error, their error against the true curves and how many fits are monotone.

    python examples/constrained_regression.py                 # 8 curves, 30 knots, ~5 s
    python examples/constrained_regression.py --noise 0.5 --backend torch
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

import qpdsl as qd


def interpolation_matrix(t: np.ndarray, n: int) -> np.ndarray:
    """Rows of weights that interpolate linearly between ``n`` equally spaced knots on [0, 1] at ``t``."""
    pos = np.clip(t, 0.0, 1.0) * (n - 1)
    left = np.minimum(pos.astype(int), n - 2)
    frac = pos - left
    B = np.zeros((len(t), n))
    B[np.arange(len(t)), left] = 1.0 - frac
    B[np.arange(len(t)), left + 1] = frac
    return B


def fit_layer(B: np.ndarray, monotone: bool, backend: str) -> torch.nn.Module:
    """The smoothing fit as a layer: (y of shape (batch, m), lam) -> (w of shape (batch, n),)."""
    n = B.shape[1]
    w = qd.Variable(n, name="w")
    y = qd.Parameter(B.shape[0], name="y")
    lam = qd.Parameter(nonneg=True, name="lam")
    objective = qd.sum_squares(B @ w - y) + lam * qd.sum_squares(np.diff(np.eye(n), 2, axis=0) @ w)
    constraints = [np.diff(np.eye(n), axis=0) @ w >= 0] if monotone else []
    prob = qd.Problem(qd.Minimize(objective), constraints)
    return prob.to_torch(parameters=[y, lam], variables=[w], backend=backend, eps_abs=1e-11)


def true_curves(t: np.ndarray, centre: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """Increasing sigmoid dose-response curves, one row per curve."""
    return 1.0 / (1.0 + np.exp(-slope[:, None] * (t[None, :] - centre[:, None])))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--backend", default="auto", help="a name from qd.available_backends(), or auto (chosen per call)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="smoke test: 3 curves, 15 knots, 20 samples, 5 steps"
    )
    ap.add_argument("--curves", type=int, default=8)
    ap.add_argument("--knots", type=int, default=30)
    ap.add_argument(
        "--samples", type=int, default=40, help="noisy samples per curve (and as many for validation)"
    )
    ap.add_argument("--noise", type=float, default=0.15)
    ap.add_argument("--lam0", type=float, default=10.0, help="initial lam")
    ap.add_argument("--steps", type=int, default=30, help="Adam steps on log(lam)")
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.quick:
        args.curves, args.knots, args.samples, args.steps = 3, 15, 20, 5
    return args


def finite_difference_check(
    layer: torch.nn.Module,
    B_val: torch.Tensor,
    y: torch.Tensor,
    y_val: torch.Tensor,
    log_lam: float,
    seed: int,
) -> tuple[float, float]:
    """Relative errors of autograd's d loss / d log(lam) and of a directional derivative in y."""

    def loss(y_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        (w,) = layer(y_in, t.exp())
        return ((w @ B_val.T - y_val) ** 2).mean()

    t = torch.tensor(log_lam, dtype=torch.float64, requires_grad=True)
    y_in = y.clone().requires_grad_(True)
    loss(y_in, t).backward()
    direction = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    h = 1e-5
    with torch.no_grad():
        fd_t = (loss(y, t + h) - loss(y, t - h)) / (2 * h)
        fd_y = (loss(y + h * direction, t) - loss(y - h * direction, t)) / (2 * h)
    err_t = abs(float(t.grad) - float(fd_t)) / abs(float(fd_t))
    err_y = abs(float((y_in.grad * direction).sum()) - float(fd_y)) / abs(float(fd_y))
    return err_t, err_y


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Learn lam for the monotone and the unconstrained fit; returns the table's numbers and the checks."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    k, n = args.curves, args.knots
    centre, slope = rng.uniform(0.3, 0.7, k), rng.uniform(5.0, 15.0, k)
    t_fit, t_val = np.sort(rng.uniform(0, 1, args.samples)), np.sort(rng.uniform(0, 1, args.samples))
    t_fine = np.linspace(0, 1, 201)
    y_fit = torch.tensor(true_curves(t_fit, centre, slope) + args.noise * rng.normal(size=(k, args.samples)))
    y_val = torch.tensor(true_curves(t_val, centre, slope) + args.noise * rng.normal(size=(k, args.samples)))
    truth = torch.tensor(true_curves(t_fine, centre, slope))
    B_fit = interpolation_matrix(t_fit, n)
    B_val, B_fine = (
        torch.tensor(interpolation_matrix(t_val, n)),
        torch.tensor(interpolation_matrix(t_fine, n)),
    )

    layers = {
        "monotone": fit_layer(B_fit, True, args.backend),
        "unconstrained": fit_layer(B_fit, False, args.backend),
    }
    err_t, err_y = finite_difference_check(
        layers["monotone"], B_val, y_fit, y_val, math.log(args.lam0), args.seed
    )
    print(
        "finite-difference check of the monotone layer: "
        f"d/dlog(lam) rel. err {err_t:.1e}, d/dy rel. err {err_y:.1e}"
    )

    results: dict[str, dict[str, float]] = {}
    for name, layer in layers.items():
        t0 = time.perf_counter()
        log_lam = torch.tensor(math.log(args.lam0), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([log_lam], lr=args.lr)
        for _ in range(args.steps):
            (w,) = layer(y_fit, log_lam.exp())
            loss = ((w @ B_val.T - y_val) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            lam = log_lam.exp()
            (w,) = layer(y_fit, lam)
            results[name] = {
                "lam": float(lam),
                "validation_mse": float(((w @ B_val.T - y_val) ** 2).mean()),
                "true_rmse": float(((w @ B_fine.T - truth) ** 2).mean().sqrt()),
                "monotone_fits": int((w.diff(dim=1) >= -1e-8).all(dim=1).sum()),
                "seconds": time.perf_counter() - t0,
            }

    print(
        f"\n{k} curves, {args.samples} samples each (noise {args.noise}), {n} knots, "
        f"{args.steps} Adam steps on log(lam)"
    )
    header = ("fit", "learned lam", "validation MSE", "RMSE vs truth", "monotone fits", "seconds")
    print(f"{header[0]:<14} " + " ".join(f"{h:>{max(len(h), 7)}}" for h in header[1:]))
    for name, r in results.items():
        print(
            f"{name:<14} {r['lam']:>11.3f} {r['validation_mse']:>14.5f} {r['true_rmse']:>13.5f} "
            f"{r['monotone_fits']:>10d}/{k:<2d} {r['seconds']:>7.2f}"
        )
    return {"config": vars(args), "fd_rel_error_lam": err_t, "fd_rel_error_y": err_y, "results": results}


if __name__ == "__main__":
    main()
