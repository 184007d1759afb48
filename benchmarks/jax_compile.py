"""First-call (compile) time of a qpdsl JAX function: ``jax.jit`` of the solve and of its gradient.

A 10-variable problem with one equality and ten inequalities, batch 8, the ``jax`` backend,
float64. Each figure is the time of the first call in a fresh process (run the script once per
measurement; the second call of the jitted function is printed to show it is cached).

    python benchmarks/jax_compile.py
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import qpdsl as qd  # noqa: E402


def main() -> None:
    n = 10
    x = qd.Variable(n, name="x")
    a = qd.Parameter(n, name="a")
    prob = qd.Problem(qd.Minimize(qd.sum_squares(x - a)), [x >= 0, qd.sum(x) == 1])
    f = prob.to_jax(parameters=[a], backend="jax")
    v = jnp.asarray(np.random.default_rng(0).standard_normal((8, n)))

    def timed(fn: object) -> float:
        t = time.perf_counter()
        jax.block_until_ready(fn(v))  # type: ignore[operator]
        return time.perf_counter() - t

    jitted = jax.jit(f)
    first, again = timed(jitted), timed(jitted)
    grad = timed(jax.jit(jax.grad(lambda v: f(v)[0].sum())))
    print(f"jit: first call {first:.1f} s (again {again:.3f} s); jit(grad): first call {grad:.1f} s")


if __name__ == "__main__":
    main()
