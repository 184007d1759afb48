"""Random dense QP batches in JAX: qpdsl's ``jax`` backend beside qpax and jaxopt's OSQP.

For each size one batch of random feasible QPs (:func:`common.random_dense_batch`: ``P = M M' +
1e-2 I``, ``A, C`` standard normal, ``b = A x0``, ``l, u = C x0 -/+ U(0, 1)``), float64. Every
solver is a jitted JAX function of the whole batch (qpdsl through :func:`qpdsl.jax.solve_qp`,
the peers vmapped over the batch); the loss for the backward pass is ``sum(x * v)``. Reported:

- ``compile_fwd_s``, ``compile_fwd_bwd_s``: lowering + XLA compilation of the forward and of the
  forward+backward function (once per shape);
- ``fwd_ms``, ``fwd_bwd_ms``: median wall time of the compiled functions;
- ``x_err``: max |x - x_ref| against proxsuite (dense, eps_abs 1e-10);
- two extra rows compare at matched accuracy: qpdsl stopped at qpax's default tolerance
  (``eps_abs`` 1e-5) and qpax asked for ``solver_tol`` 1e-8;
- ``grad_dist``: largest relative distance (:func:`common.grad_error`) of the peer's gradients
  from qpdsl's exact ones (qpax's are smoothed by its relaxation, target_kappa=1e-3); for qpdsl
  itself, from the gradients of the same layer on the ``proxsuite`` backend.

Run with ``OMP_NUM_THREADS=1`` on a shared machine and read the ratios.

Every solver runs in a child process with a time limit (``--time-limit``, 600 s): a solver
that hangs is reported as failed instead of stopping the benchmark.

Usage::

    python benchmarks/jax_batch.py [--quick] [--json PATH] [--time-limit S]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import numpy as np  # noqa: E402
from common import DATA_KEYS, grad_error, median_time, random_dense_batch  # noqa: E402

SIZES = ((50, 10, 50), (100, 20, 100))  # (n, n_eq, n_in)
LOOSE_EPS = 1e-5  # qpax's default solver_tol
TIGHT_QPAX_TOL = 1e-8  # qpax asked for about the accuracy of qpdsl's default
# Per solver and size. qpax at n=100 hung in XLA twice here (every thread idle); a child process
# with a time limit keeps such a hang from stopping the benchmark.
TIME_LIMIT_S = 600.0


def proxsuite_reference(data: dict[str, np.ndarray]) -> np.ndarray:
    """Solutions from proxsuite's dense solver, one element at a time."""
    import proxsuite

    P, q, A, b, C, l, u = (data[k] for k in DATA_KEYS)
    xs = []
    for i in range(q.shape[0]):
        qp = proxsuite.proxqp.dense.QP(q.shape[1], b.shape[1], l.shape[1])
        qp.settings.eps_abs, qp.settings.eps_rel = 1e-10, 0.0
        qp.settings.eps_primal_inf = 1e-12
        qp.init(P[i], q[i], A[i], b[i], C[i], l[i], u[i])
        qp.solve()
        xs.append(qp.results.x.copy())
    return np.array(xs)


def _stack(C: Any, l: Any, u: Any) -> tuple[Any, Any]:
    """``l <= C x <= u`` as ``G x <= h``."""
    import jax.numpy as jnp

    return jnp.concatenate([C, -C]), jnp.concatenate([u, -l])


def solvers(quick: bool) -> dict[str, Callable[..., Any]]:
    """Batched solve functions ``f(P, q, A, b, C, l, u) -> x`` of the solvers that import here."""
    import jax

    import qpdsl.jax as qj
    from qpdsl import Settings

    loose = Settings(eps_abs=LOOSE_EPS)
    out: dict[str, Callable[..., Any]] = {
        "qpdsl[jax]": lambda *a: qj.solve_qp(*a, backend="jax")[0],
        # The same solver stopped at qpax's default tolerance, for a comparison at equal accuracy.
        f"qpdsl[jax] eps {LOOSE_EPS:.0e}": lambda *a: qj.solve_qp(*a, backend="jax", settings=loose)[0],
    }
    try:
        import qpax

        def qpax_one(P: Any, q: Any, A: Any, b: Any, C: Any, l: Any, u: Any) -> Any:
            G, h = _stack(C, l, u)
            return qpax.solve_qp_primal(P, q, A, b, G, h)  # defaults: solver_tol 1e-5, target_kappa 1e-3

        def qpax_tight(P: Any, q: Any, A: Any, b: Any, C: Any, l: Any, u: Any) -> Any:
            G, h = _stack(C, l, u)
            return qpax.solve_qp_primal(P, q, A, b, G, h, solver_tol=TIGHT_QPAX_TOL)

        out["qpax"] = jax.vmap(qpax_one)
        out[f"qpax tol {TIGHT_QPAX_TOL:.0e}"] = jax.vmap(qpax_tight)
    except ImportError:
        pass
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from jaxopt import OSQP

        osqp = OSQP(tol=1e-6, maxiter=1000 if quick else 4000)

        def osqp_one(P: Any, q: Any, A: Any, b: Any, C: Any, l: Any, u: Any) -> Any:
            G, h = _stack(C, l, u)
            return osqp.run(params_obj=(P, q), params_eq=(A, b), params_ineq=(G, h)).params.primal

        out["jaxopt-osqp"] = jax.vmap(osqp_one)
    except ImportError:
        pass
    return out


def _compiled(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    import jax

    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def bench_one(name: str, solve: Callable[..., Any], args: tuple, v: Any, repeats: int) -> dict[str, Any]:
    import jax

    def loss(data: tuple, weights: Any) -> Any:
        return (solve(*data) * weights).sum()

    fwd, c_fwd = _compiled(solve, *args)
    bwd, c_bwd = _compiled(jax.grad(loss), args, v)
    t_fwd, x = median_time(lambda: jax.block_until_ready(fwd(*args)), repeats)
    t_bwd, grads = median_time(lambda: jax.block_until_ready(bwd(args, v)), repeats)
    return {
        "solver": name,
        "compile_fwd_s": c_fwd,
        "compile_fwd_bwd_s": c_bwd,
        "fwd_ms": 1e3 * t_fwd,
        "fwd_bwd_ms": 1e3 * t_bwd,
        "x": np.asarray(x),
        "grads": {k: np.asarray(g) for k, g in zip(DATA_KEYS, grads, strict=True)},
    }


def _solve_in_child(
    name: str, batch: int, n: int, n_eq: int, n_in: int, repeats: int, quick: bool, folder: Path, limit: float
) -> dict[str, Any]:
    """Time one solver in a child process (``--one``), so that a hung XLA computation cannot stop
    the benchmark: after ``limit`` seconds the child is killed and the row says so."""
    out = folder / f"{abs(hash(name))}_{n}.npz"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--one",
        name,
        "--size",
        str(batch),
        str(n),
        str(n_eq),
        str(n_in),
        "--repeats",
        str(repeats),
        "--npz",
        str(out),
    ] + (["--quick"] if quick else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"solver": name, "failed": f"no result within {limit:.0f} s (killed)"}
    if proc.returncode != 0 or not out.exists():
        return {
            "solver": name,
            "failed": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "crashed",
        }
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    saved = np.load(out)
    row["x"] = saved["x"]
    row["grads"] = {k: saved[k] for k in DATA_KEYS}
    return row


def _one(name: str, batch: int, n: int, n_eq: int, n_in: int, repeats: int, quick: bool, npz: Path) -> None:
    """The child's side of :func:`_solve_in_child`: time ``name`` and save its solution and gradients."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    data = random_dense_batch(batch, n, n_eq, n_in, seed=n)
    args = tuple(jnp.asarray(data[k]) for k in DATA_KEYS)
    row = bench_one(name, solvers(quick)[name], args, jnp.asarray(data["v"]), repeats)
    np.savez(npz, x=row.pop("x"), **row.pop("grads"))
    print(json.dumps(row))


def bench_size(
    batch: int, n: int, n_eq: int, n_in: int, repeats: int, quick: bool, limit: float
) -> list[dict[str, Any]]:
    import tempfile

    import jax
    import jax.numpy as jnp

    import qpdsl.jax as qj

    data = random_dense_batch(batch, n, n_eq, n_in, seed=n)
    args = tuple(jnp.asarray(data[k]) for k in DATA_KEYS)
    v = jnp.asarray(data["v"])
    x_ref = proxsuite_reference(data)
    # Exact gradients of the same layer on the proxsuite backend (host callback), the yardstick.
    ref_grad = jax.jit(jax.grad(lambda a, w: (qj.solve_qp(*a, backend="proxsuite")[0] * w).sum()))(args, v)
    ref_grads = {k: np.asarray(g) for k, g in zip(DATA_KEYS, ref_grad, strict=True)}

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in solvers(quick):
            print(f"  n={n}: {name} ...", file=sys.stderr, flush=True)
            row = _solve_in_child(name, batch, n, n_eq, n_in, repeats, quick, Path(folder), limit)
            row.update(n=n, n_eq=n_eq, n_in=n_in, batch=batch)
            if "x" in row:
                row["x_err"] = float(np.max(np.abs(row.pop("x") - x_ref)))
            rows.append(row)
    ours = rows[0].get("grads")
    base = rows[0]
    for row in rows:
        if "failed" in row:
            continue
        grads = row.pop("grads")
        target = ref_grads if row["solver"] == "qpdsl[jax]" else ours
        if target is not None:
            row["grad_dist"] = grad_error(grads, target)
            row["grad_dist_by_item"] = {k: grad_error({k: grads[k]}, {k: target[k]}) for k in DATA_KEYS}
        if "failed" not in base:
            row["fwd_ratio"] = row["fwd_ms"] / base["fwd_ms"]
            row["fwd_bwd_ratio"] = row["fwd_bwd_ms"] / base["fwd_bwd_ms"]
    return rows


def run(quick: bool = False, limit: float = TIME_LIMIT_S) -> dict[str, Any]:
    """Benchmark every size; ``quick``: batch 16, n=50 only, 3 repeats, jaxopt capped at 1000 iterations.

    Each solver runs in a child process given ``limit`` seconds (compilation and every repeat).
    """
    import jax

    jax.config.update("jax_enable_x64", True)
    batch, sizes, repeats = (16, SIZES[:1], 3) if quick else (64, SIZES, 5)
    rows = []
    for n, n_eq, n_in in sizes:
        rows.extend(bench_size(batch, n, n_eq, n_in, repeats, quick, limit))
    return {
        "benchmark": "jax_batch",
        "quick": quick,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "jax": jax.__version__,
        "rows": rows,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'n':>4} {'solver':<20} {'compile fwd/fwd+bwd s':>22} {'fwd ms':>9} {'x':>6} "
        f"{'fwd+bwd ms':>11} {'x':>6} {'max|x-x_ref|':>13} {'grad dist':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if "failed" in r:
            lines.append(f"{r['n']:>4} {r['solver']:<20} failed: {r['failed']}")
            continue
        lines.append(
            f"{r['n']:>4} {r['solver']:<20} {r['compile_fwd_s']:>10.1f} / {r['compile_fwd_bwd_s']:<9.1f} "
            f"{r['fwd_ms']:>9.1f} {r.get('fwd_ratio', math.nan):>6.2f} {r['fwd_bwd_ms']:>11.1f} "
            f"{r.get('fwd_bwd_ratio', math.nan):>6.2f} {r['x_err']:>13.1e} "
            f"{r.get('grad_dist', math.nan):>10.1e}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batch, n=50 only")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT_S, help="seconds per solver and size")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--npz", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        _one(args.one, *args.size, args.repeats, args.quick, args.npz)
        return
    res = run(quick=args.quick, limit=args.time_limit)
    print(format_table(res["rows"]))
    print("ratios: time / qpdsl[jax] time; grad dist: qpdsl vs its proxsuite backend, peers vs qpdsl")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
