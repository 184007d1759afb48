"""A Markowitz portfolio layer in JAX: jit, vmap over return scenarios, grad w.r.t. expected returns.

The layer maps an estimate mu of the assets' expected returns to the long-only, capped
mean-variance portfolio

    maximize    mu'w - gamma w'Sigma w
    subject to  sum(w) = 1,  0 <= w <= w_max,

exported with ``prob.to_jax(parameters=[mu], variables=[w])`` (backend ``auto``, which runs
``jax`` for JAX arrays). One jitted function maps a batch of return-estimate scenarios
through ``jax.vmap`` of the layer and returns the downstream loss (minus the mean *realised*
utility r_s'w_s - gamma w_s'Sigma w_s of each scenario's portfolio) together with ``jax.grad``
of that loss with respect to every scenario's mu. The script checks the portfolios against
``prob.solve`` with proxsuite and the gradient against central finite differences, and prints
the per-asset sensitivities.

    python examples/portfolio_jax.py                     # 8 assets, 64 scenarios (JIT compile ~15 s)
    python examples/portfolio_jax.py --backend proxsuite # proxsuite reached through jax.pure_callback
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from typing import Any

# XLA's multi-threaded Eigen pool on the CPU can wedge now and then (a jitted call never returns);
# single-threaded Eigen avoids it. Set before jax is imported; see docs/layers.md.
if "--xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen=false".strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import qpdsl as qd  # noqa: E402

jax.config.update("jax_enable_x64", True)


def portfolio_problem(
    sigma: np.ndarray, gamma: float, w_max: float
) -> tuple[qd.Problem, qd.Parameter, qd.Variable]:
    """The Markowitz problem with expected returns ``mu`` as its parameter; returns (problem, mu, w)."""
    n = sigma.shape[0]
    w = qd.Variable(n, name="w")
    mu = qd.Parameter(n, name="mu")
    prob = qd.Problem(
        qd.Maximize(mu @ w - gamma * qd.quad_form(w, sigma)),
        [qd.sum(w) == 1, w >= 0, w <= w_max],
    )
    return prob, mu, w


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--backend", default="auto", help="a name from qd.available_backends(), or auto (chosen per call)"
    )
    ap.add_argument("--quick", action="store_true", help="smoke test: 4 assets, 6 scenarios, w_max 0.6")
    ap.add_argument("--assets", type=int, default=8)
    ap.add_argument("--scenarios", type=int, default=64, help="batch of return estimates (vmapped)")
    ap.add_argument("--gamma", type=float, default=2.0, help="risk aversion")
    ap.add_argument("--w-max", type=float, default=0.4, help="cap on each weight")
    ap.add_argument("--noise", type=float, default=0.02, help="standard deviation of the estimates' error")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        args.assets, args.scenarios, args.w_max = 4, 6, 0.6
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the example; returns the checks, timings and per-asset sensitivities."""
    args = parse_args(argv)
    n, s = args.assets, args.scenarios
    rng = np.random.default_rng(args.seed)
    factors = rng.normal(scale=0.1, size=(n, 3))
    sigma = factors @ factors.T + np.diag(rng.uniform(0.005, 0.02, n))
    mu_true = rng.uniform(0.02, 0.10, n)
    mu_hat = mu_true + args.noise * rng.normal(size=(s, n))
    realised = rng.multivariate_normal(mu_true, sigma, size=s)

    prob, mu, w = portfolio_problem(sigma, args.gamma, args.w_max)
    layer = prob.to_jax(parameters=[mu], variables=[w], backend=args.backend, eps_abs=1e-10)
    sigma_j, realised_j = jnp.asarray(sigma), jnp.asarray(realised)

    def loss(mu_batch: jax.Array) -> tuple[jax.Array, jax.Array]:
        weights = jax.vmap(lambda m: layer(m)[0])(mu_batch)
        risk = jnp.einsum("si,ij,sj->s", weights, sigma_j, weights)
        utility = jnp.sum(realised_j * weights, axis=1) - args.gamma * risk
        return -jnp.mean(utility), weights

    step = jax.jit(jax.value_and_grad(loss, has_aux=True))

    t0 = time.perf_counter()
    (value, weights), grad = step(jnp.asarray(mu_hat))
    grad.block_until_ready()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    (value, weights), grad = step(jnp.asarray(mu_hat))
    grad.block_until_ready()
    run_s = time.perf_counter() - t0
    weights, grad = np.asarray(weights), np.asarray(grad)

    reference = prob.solve({mu: mu_hat}, backend="proxsuite", eps_abs=1e-10)[w]
    weight_err = float(np.abs(weights - reference).max())

    h = 1e-6
    direction = rng.normal(size=mu_hat.shape)
    (plus, _), _ = step(jnp.asarray(mu_hat + h * direction))
    (minus, _), _ = step(jnp.asarray(mu_hat - h * direction))
    fd = (float(plus) - float(minus)) / (2 * h)
    analytic = float(np.sum(grad * direction))
    grad_rel_err = abs(fd - analytic) / max(abs(analytic), 1e-12)

    print(
        f"Markowitz layer ({args.backend}): {n} assets, {s} scenarios, gamma {args.gamma}, w_max {args.w_max}"
    )
    print(
        f"  jit(value_and_grad(vmap(layer))): first call {compile_s:.1f} s (compile), "
        f"then {run_s * 1e3:.1f} ms"
    )
    print(f"  max |w - w_proxsuite| = {weight_err:.1e}")
    print(
        f"  directional derivative: grad {analytic:+.6e}, finite differences {fd:+.6e} "
        f"(rel. err {grad_rel_err:.1e})"
    )
    print(f"  mean realised utility of the portfolios: {-float(value):+.4f}")
    print(f"\n{'asset':>5} {'mu true':>8} {'mean w':>7} {'held in':>7} {'mean dloss/dmu':>14}")
    held = (weights > 1e-6).mean(axis=0)
    for i in range(n):
        row = f"{i:>5} {mu_true[i]:>8.4f} {weights[:, i].mean():>7.3f} {held[i]:>7.0%}"
        print(f"{row} {grad[:, i].mean():>14.2e}")
    return {
        "config": vars(args),
        "loss": float(value),
        "weights": weights,
        "grad": grad,
        "weight_error": weight_err,
        "grad_fd": fd,
        "grad_analytic": analytic,
        "grad_rel_error": grad_rel_err,
        "compile_s": compile_s,
        "run_s": run_s,
    }


if __name__ == "__main__":
    main()
