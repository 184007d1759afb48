"""First-call (compile) time of a qpdsl JAX function, cold and from the persistent cache, beside qpax.

A 10-variable problem with one equality and ten inequalities, batch 8, float64: ``jax.jit`` of
the solve, ``jax.jit(jax.grad(...))`` of a loss through it, and both under ``jax.vmap`` over two
such batches, each timed at its first call in a fresh process (a child per row), so the figure
is what a user waits for once per shape.

- ``qpdsl[jax]``, ``on_failure="raise"`` (the default) and ``"nan"``; ``cold``: JAX's
  persistent compilation cache set to an empty folder; ``cached``: a second process with the
  cache the first one filled (JAX does not cache programs with host callbacks, which
  ``"raise"`` under ``jit`` needs);
- ``qpdsl[jax]`` with ``compiler_options={"xla_cpu_use_fusion_emitters": False}`` on both
  ``jax.jit`` calls (XLA:CPU's older loop emitters: one option of the user's own ``jit``, no
  global setting), cold;
- ``qpax``: the same QPs (``l <= C x <= u`` as two one-sided blocks), ``vmap``-ed, cold.

    python benchmarks/jax_compile.py [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

N, BATCH = 10, 8


LEGACY_EMITTERS = {"xla_cpu_use_fusion_emitters": False}


def _child(kind: str, on_failure: str) -> dict[str, float]:
    """Time the first and the second call of ``jit(f)`` and the first of ``jit(grad)``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    if os.environ.get("QPDSL_BENCH_CACHE"):
        jax.config.update("jax_compilation_cache_dir", os.environ["QPDSL_BENCH_CACHE"])
    v = jnp.asarray(np.random.default_rng(0).standard_normal((BATCH, N)))
    if kind == "qpdsl":
        import qpdsl as qd

        x = qd.Variable(N, name="x")
        a = qd.Parameter(N, name="a")
        prob = qd.Problem(qd.Minimize(qd.sum_squares(x - a)), [x >= 0, qd.sum(x) == 1])
        layer = prob.to_jax(parameters=[a], backend="jax", on_failure=on_failure)

        def f(v: Any) -> Any:
            return layer(v)[0]

    else:
        import qpax

        Q, A, b = jnp.eye(N), jnp.ones((1, N)), jnp.ones(1)
        G, h = -jnp.eye(N), jnp.zeros(N)

        def f(v: Any) -> Any:
            return jax.vmap(lambda a: qpax.solve_qp_primal(Q, -a, A, b, G, h))(v)

    def timed(fn: Any) -> float:
        t = time.perf_counter()
        jax.block_until_ready(fn(v))
        return time.perf_counter() - t

    options = json.loads(os.environ.get("QPDSL_BENCH_OPTIONS", "{}"))
    jitted = jax.jit(f, compiler_options=options)
    first = timed(jitted)
    again = min(timed(jitted) for _ in range(5))
    grad = timed(jax.jit(jax.grad(lambda v: f(v).sum()), compiler_options=options))
    v = jnp.stack([v, v + 1.0])  # two mapped problems of the batch's shape
    mapped = timed(jax.jit(jax.vmap(f), compiler_options=options))
    mapped_grad = timed(jax.jit(jax.vmap(jax.grad(lambda v: f(v).sum())), compiler_options=options))
    return {
        "jit_s": first,
        "jit_again_s": again,
        "jit_grad_s": grad,
        "jit_vmap_s": mapped,
        "jit_vmap_grad_s": mapped_grad,
    }


def _run(kind: str, on_failure: str, cache: str | None, options: dict | None = None) -> dict[str, float]:
    skip = ("JAX_COMPILATION_CACHE_DIR", "QPDSL_BENCH_CACHE", "QPDSL_BENCH_OPTIONS")
    env = {k: v for k, v in os.environ.items() if k not in skip}
    if cache:
        env["QPDSL_BENCH_CACHE"] = cache
    if options:
        env["QPDSL_BENCH_OPTIONS"] = json.dumps(options)
    env.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, on_failure]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run() -> list[dict[str, Any]]:
    rows = []
    for on_failure in ("raise", "nan"):
        with tempfile.TemporaryDirectory() as cache:
            rows.append(
                {
                    "method": "qpdsl[jax]",
                    "on_failure": on_failure,
                    "cache": "cold",
                    **_run("qpdsl", on_failure, cache),
                }
            )
            rows.append(
                {
                    "method": "qpdsl[jax]",
                    "on_failure": on_failure,
                    "cache": "cached",
                    **_run("qpdsl", on_failure, cache),
                }
            )
    rows.append(
        {
            "method": "qpdsl[jax]",
            "on_failure": "raise",
            "cache": "cold",
            "compiler_options": LEGACY_EMITTERS,
            **_run("qpdsl", "raise", None, LEGACY_EMITTERS),
        }
    )
    try:
        rows.append({"method": "qpax", "on_failure": "-", "cache": "cold", **_run("qpax", "-", None)})
    except subprocess.CalledProcessError as exc:
        print(f"qpax failed: {exc.stderr.strip().splitlines()[-1] if exc.stderr else exc}", file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "ON_FAILURE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(*args.child)))
        return
    rows = run()
    head = f"{'method':<12} {'on_failure':<10} {'cache':<7} {'options':<8}"
    print(f"{head} {'jit s':>7} {'again ms':>9} {'jit(grad) s':>12} {'jit(vmap) s':>12} {'vmap(grad) s':>13}")
    for r in rows:
        options = "legacy" if r.get("compiler_options") else "-"
        print(
            f"{r['method']:<12} {r['on_failure']:<10} {r['cache']:<7} {options:<8} {r['jit_s']:7.2f} "
            f"{1e3 * r['jit_again_s']:9.2f} {r['jit_grad_s']:12.2f} {r['jit_vmap_s']:12.2f} "
            f"{r['jit_vmap_grad_s']:13.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
