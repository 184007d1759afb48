"""Sparsemax as a QP layer: projection onto the probability simplex inside a torch classifier.

The layer maps scores y in R^k to the Euclidean projection of y onto the probability simplex,

    minimize    ||x - y||^2
    subject to  sum(x) = 1,  x >= 0,

which is sparsemax (Martins and Astudillo, 2016): like softmax it returns a probability vector,
unlike softmax it returns exact zeros. Written in qpdsl and exported with ``prob.to_torch``, it
is the last layer of a linear classifier trained with Adam on synthetic Gaussian blobs (squared
error to the one-hot label). The script checks the layer against the closed-form sort-based
projection (values and gradients, the latter against sparsemax's Jacobian
diag(s) - s s'/|s| on the support s) and prints one row per epoch.

    python examples/simplex_projection.py                       # 5 classes, 5 epochs, ~5 s
    python examples/simplex_projection.py --backend torch --epochs 10
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

import qpdsl as qd


def simplex_layer(k: int, backend: str) -> torch.nn.Module:
    """The sparsemax layer: scores (batch, k) -> probabilities (batch, k)."""
    x = qd.Variable(k, name="x")
    y = qd.Parameter(k, name="y")
    prob = qd.Problem(qd.Minimize(qd.sum_squares(x - y)), [qd.sum(x) == 1, x >= 0])
    return prob.to_torch(parameters=[y], variables=[x], backend=backend)


def project_simplex_sort(y: np.ndarray) -> np.ndarray:
    """Closed-form projection of each row of ``y`` onto the probability simplex (sort-based).

    Parameters
    ----------
    y : ndarray of shape (batch, k)

    Returns
    -------
    ndarray of shape (batch, k)
        ``max(y - tau, 0)`` with the threshold ``tau`` that makes each row sum to one.
    """
    u = -np.sort(-y, axis=1)
    css = np.cumsum(u, axis=1) - 1.0
    idx = np.arange(1, y.shape[1] + 1)
    rho = (u - css / idx > 0).sum(axis=1)
    tau = css[np.arange(len(y)), rho - 1] / rho
    return np.maximum(y - tau[:, None], 0.0)


def sparsemax_vjp(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``g @ J`` for sparsemax's Jacobian ``J = diag(s) - s s'/|s|`` at the output ``p`` (rows)."""
    s = (p > 0).astype(float)
    return s * (g - (g * s).sum(axis=1, keepdims=True) / s.sum(axis=1, keepdims=True))


def check_layer(layer: torch.nn.Module, k: int, batch: int, seed: int) -> tuple[float, float]:
    """Largest |layer - sort formula| over the values and the vector-Jacobian products."""
    rng = np.random.default_rng(seed)
    y = torch.tensor(rng.normal(scale=2.0, size=(batch, k)), requires_grad=True)
    g = rng.normal(size=(batch, k))
    (x,) = layer(y)
    (x * torch.tensor(g)).sum().backward()
    ref = project_simplex_sort(y.detach().numpy())
    value_err = float(np.abs(x.detach().numpy() - ref).max())
    grad_err = float(np.abs(y.grad.numpy() - sparsemax_vjp(ref, g)).max())
    return value_err, grad_err


def make_blobs(
    n: int, k: int, d: int, spread: float, rng: np.random.Generator, centres: np.ndarray | None = None
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """``n`` points in R^d from ``k`` Gaussian blobs; returns (features, labels, centres)."""
    if centres is None:
        centres = rng.normal(size=(k, d))
    labels = rng.integers(k, size=n)
    features = centres[labels] + spread * rng.normal(size=(n, d))
    return torch.tensor(features), torch.tensor(labels), centres


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--backend", default="auto", help="a name from qd.available_backends(), or auto (chosen per call)"
    )
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 epoch, 64 training / 64 test samples")
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--features", type=int, default=10)
    ap.add_argument("--spread", type=float, default=0.8, help="standard deviation of each blob")
    ap.add_argument("--train-size", type=int, default=256)
    ap.add_argument("--test-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.train_size, args.test_size = 1, 64, 64
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train the sparsemax classifier; returns the per-epoch history and the layer checks."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    k = args.classes
    layer = simplex_layer(k, args.backend)
    value_err, grad_err = check_layer(layer, k, batch=64, seed=args.seed)
    print(f"sparsemax layer ({args.backend}) vs sort-based projection on 64 random score vectors:")
    print(f"  max |x - x_sort| = {value_err:.1e}   max |grad - grad_sort| = {grad_err:.1e}")

    rng = np.random.default_rng(args.seed)
    train_x, train_y, centres = make_blobs(args.train_size, k, args.features, args.spread, rng)
    test_x, test_y, _ = make_blobs(args.test_size, k, args.features, args.spread, rng, centres)
    torch.manual_seed(args.seed)
    linear = torch.nn.Linear(args.features, k, dtype=torch.float64)
    opt = torch.optim.Adam(linear.parameters(), lr=args.lr)

    def evaluate() -> tuple[float, float, float]:
        with torch.no_grad():
            scores = linear(test_x)
            (p,) = layer(scores)
        ref = project_simplex_sort(scores.numpy())
        accuracy = float((p.argmax(1) == test_y).double().mean())
        nonzeros = float((p > 1e-8).double().sum(1).mean())
        return accuracy, nonzeros, float(np.abs(p.numpy() - ref).max())

    history: dict[str, list[float]] = {"train_loss": [], "test_accuracy": [], "nonzeros": [], "seconds": []}
    accuracy, nonzeros, proj_err = evaluate()
    print(f"\n{'epoch':>5} {'train loss':>10} {'test acc':>8} {'nonzeros/row':>12} {'seconds':>7}")
    print(f"{0:>5} {'-':>10} {accuracy:>8.3f} {nonzeros:>12.2f} {'-':>7}")
    max_proj_err = proj_err
    gen = torch.Generator().manual_seed(args.seed)
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        total = 0.0
        for idx in torch.randperm(args.train_size, generator=gen).split(args.batch_size):
            (p,) = layer(linear(train_x[idx]))
            target = torch.nn.functional.one_hot(train_y[idx], k).double()
            loss = ((p - target) ** 2).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        seconds = time.perf_counter() - t0
        accuracy, nonzeros, proj_err = evaluate()
        max_proj_err = max(max_proj_err, proj_err)
        history["train_loss"].append(total / args.train_size)
        history["test_accuracy"].append(accuracy)
        history["nonzeros"].append(nonzeros)
        history["seconds"].append(seconds)
        print(
            f"{epoch:>5} {total / args.train_size:>10.4f} {accuracy:>8.3f} {nonzeros:>12.2f} {seconds:>7.2f}"
        )
    print(f"\nmax |layer - sort formula| on the test outputs of every epoch: {max_proj_err:.1e}")
    return {
        "config": vars(args),
        "check_value_error": value_err,
        "check_grad_error": grad_err,
        "max_projection_error": max_proj_err,
        **history,
    }


if __name__ == "__main__":
    main()
