"""Compile speed: qpdsl against cvxpy (and, optionally, cvxpylayers) in one process.

Three measurements, each a median over repeats:

1. **Compile** the lasso-like problem ``minimize sum_squares(A x - b) + lam * norm1(x)`` s.t.
   ``-1 <= x <= 1``, ``sum(x) == 0`` with ``A`` an (n/2) x n Parameter (n = 1000): qpdsl's
   ``Problem(...)`` build + compile (a fresh problem each time, since compiling is cached)
   against cvxpy's first ``problem.get_problem_data(cp.CLARABEL)`` on a fresh problem (the two
   timed alternately, so that both see the same load), and, with ``--cvxpylayers``, building
   a ``cvxpylayers.torch.CvxpyLayer`` once.
2. **Apply parameters**: qpdsl ``qp.apply(theta)`` for a batch of 64 parameter sets (numpy),
   into new arrays and into the arrays of the previous batch (``qp.apply(theta, out=previous)``),
   against cvxpy re-applying ONE parameter set (setting drawn values and a second
   ``get_problem_data``, which reuses cvxpy's cached parameter program). Alongside, the memory
   floor: copying theta (64 x 500 501 numbers, about the volume of the values of A) into a
   new array and into an existing one.
3. **Scaling** with sparse structure: total-variation denoising
   ``minimize 1/2 sum_squares(x - b) + lam * norm1(D x)`` s.t. ``-1 <= x <= 1`` with ``D`` a
   scipy.sparse difference operator, ``b`` and ``lam`` Parameters, n = 1e3, 1e4, 1e5: compile
   time and the size of the ParametricQP maps (sum of nnz of the T matrices), which must grow
   linearly with the nonzeros of the problem; cvxpy's first ``get_problem_data`` alongside.

Usage::

    python benchmarks/compile.py [--quick] [--cvxpylayers] [--repeats 5] [--json PATH]

``run(quick)`` returns the results as a dict (for ``benchmarks/run.py``).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

# Runnable as a script from anywhere: qpdsl from the checkout when not installed.
sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

import numpy as np
import scipy.sparse as sp

import qpdsl as qd

BATCH = 64
CVXPY_MAX_N = 10_000  # cvxpy's get_problem_data densifies an (n, n_theta) array for the TV problem


def median_time(fn: Any, repeats: int, warmup: int = 1) -> tuple[float, Any]:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` others; and its last value."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def interleaved_median_times(fns: dict[str, Any], repeats: int) -> dict[str, float]:
    """Median wall time of each function, the calls alternating (one untimed call each first).

    On a shared machine load comes and goes; alternating the methods exposes them to the same
    load, so their ratio is steadier than that of two blocks of repeats timed one after another.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            gc.collect()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


# ---------------------------------------------------------------- problems


def lasso_qpdsl(n: int) -> qd.Problem:
    m = n // 2
    x = qd.Variable(n, name="x")
    A = qd.Parameter((m, n), name="A")
    b = qd.Parameter(m, name="b")
    lam = qd.Parameter(nonneg=True, name="lam")
    return qd.Problem(
        qd.Minimize(qd.sum_squares(A @ x - b) + lam * qd.norm1(x)), [x <= 1, x >= -1, qd.sum(x) == 0]
    )


def lasso_cvxpy(n: int, rng: np.random.Generator) -> tuple[Any, dict[str, Any]]:
    import cvxpy as cp

    m = n // 2
    x = cp.Variable(n, name="x")
    A = cp.Parameter((m, n), name="A", value=rng.standard_normal((m, n)))
    b = cp.Parameter(m, name="b", value=rng.standard_normal(m))
    lam = cp.Parameter(nonneg=True, name="lam", value=0.1)
    prob = cp.Problem(
        cp.Minimize(cp.sum_squares(A @ x - b) + lam * cp.norm1(x)), [x <= 1, x >= -1, cp.sum(x) == 0]
    )
    return prob, {"A": A, "b": b, "lam": lam, "x": x}


def difference_operator(n: int) -> sp.csr_matrix:
    return sp.diags([-np.ones(n - 1), np.ones(n - 1)], [0, 1], shape=(n - 1, n), format="csr")


def tv_qpdsl(n: int) -> qd.Problem:
    x = qd.Variable(n, name="x")
    b = qd.Parameter(n, name="b")
    lam = qd.Parameter(nonneg=True, name="lam")
    D = difference_operator(n)
    return qd.Problem(qd.Minimize(0.5 * qd.sum_squares(x - b) + lam * qd.norm1(D @ x)), [x <= 1, x >= -1])


def tv_cvxpy(n: int, rng: np.random.Generator) -> Any:
    import cvxpy as cp

    x = cp.Variable(n, name="x")
    b = cp.Parameter(n, name="b", value=rng.standard_normal(n))
    lam = cp.Parameter(nonneg=True, name="lam", value=0.5)
    D = difference_operator(n)
    return cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x - b) + lam * cp.norm1(D @ x)), [x <= 1, x >= -1])


def map_size(qp: Any) -> dict[str, int]:
    """Nonzeros and bytes of the ParametricQP's T matrices (the compiled program's memory)."""
    nnz = sum(int(m.T.nnz) for m in qp.maps.values())
    nbytes = sum(int(m.T.data.nbytes + m.T.indices.nbytes + m.T.indptr.nbytes) for m in qp.maps.values())
    return {"T_nnz": nnz, "T_bytes": nbytes}


def _cvxpy_available() -> bool:
    try:
        import cvxpy  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- measurements


def bench_compile(n: int, repeats: int, with_layers: bool) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"problem": "lasso", "n": n, "n_theta": (n // 2) * n + n // 2 + 1}
    prob = lasso_qpdsl(n)
    qp = prob.compile()
    out.update(qp_n=qp.n, qp_n_eq=qp.n_eq, qp_n_in=qp.n_in, **map_size(qp))
    fns: dict[str, Any] = {"qpdsl": lambda: lasso_qpdsl(n)}
    if _cvxpy_available():
        import cvxpy as cp

        def cvxpy_first() -> Any:
            prob_cp, _ = lasso_cvxpy(n, rng)
            return prob_cp.get_problem_data(cp.CLARABEL)

        fns["cvxpy"] = cvxpy_first
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        times = interleaved_median_times(fns, repeats)
    out["qpdsl_compile_s"] = times["qpdsl"]
    if "cvxpy" in times:
        out["cvxpy_get_problem_data_s"] = times["cvxpy"]
        out["compile_speedup"] = times["cvxpy"] / times["qpdsl"]
        if with_layers:
            out["cvxpylayers_build_s"] = _time_cvxpylayers(n, rng)
    return out


def _time_cvxpylayers(n: int, rng: np.random.Generator) -> float | None:
    try:
        from cvxpylayers.torch import CvxpyLayer
    except ImportError:
        return None
    prob_cp, h = lasso_cvxpy(n, rng)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        CvxpyLayer(prob_cp, parameters=[h["A"], h["b"], h["lam"]], variables=[h["x"]])
    return time.perf_counter() - t0


def bench_apply(n: int, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    prob = lasso_qpdsl(n)
    qp = prob.compile()
    theta = rng.standard_normal((BATCH, qp.n_theta))
    theta[:, -1] = np.abs(theta[:, -1])  # lam >= 0
    t_qd, previous = median_time(lambda: qp.apply(theta), repeats)
    t_reuse, _ = median_time(lambda: qp.apply(theta, out=previous), repeats)
    out: dict[str, Any] = {
        "problem": "lasso",
        "n": n,
        "batch": BATCH,
        "qpdsl_apply_batch_s": t_qd,
        "qpdsl_apply_per_set_s": t_qd / BATCH,
        "qpdsl_apply_batch_reuse_s": t_reuse,
        "floor_write_fresh_s": _time_write(theta, fresh=True, repeats=repeats),
        "floor_write_reuse_s": _time_write(theta, fresh=False, repeats=repeats),
    }
    if _cvxpy_available():
        import cvxpy as cp

        prob_cp, h = lasso_cvxpy(n, rng)
        m = n // 2
        # the values are drawn beforehand: only setting them and re-applying is timed
        sets = [(rng.standard_normal((m, n)), rng.standard_normal(m)) for _ in range(2)]
        calls = iter(range(10**9))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prob_cp.get_problem_data(cp.CLARABEL)  # first call: builds and caches the parameter program

            def reapply() -> Any:
                h["A"].value, h["b"].value = sets[next(calls) % 2]
                return prob_cp.get_problem_data(cp.CLARABEL)

            t_cp, _ = median_time(reapply, repeats)
        out["cvxpy_reapply_one_s"] = t_cp
        out["apply_ratio_cvxpy_one_over_qpdsl_batch"] = t_cp / t_qd
        out["apply_ratio_cvxpy_one_over_qpdsl_batch_reuse"] = t_cp / t_reuse
    return out


def _time_write(theta: np.ndarray, fresh: bool, repeats: int) -> float:
    """The memory floor of applying the lasso's parameters: copying theta into a (fresh or reused) array."""
    buffer = np.empty_like(theta)

    def copy() -> np.ndarray:
        target = np.empty_like(theta) if fresh else buffer
        np.copyto(target, theta)
        return target

    return median_time(copy, repeats)[0]


def bench_scaling(sizes: list[int], repeats: int, with_cvxpy: bool) -> list[dict[str, Any]]:
    rng = np.random.default_rng(2)
    rows = []
    for n in sizes:
        reps = repeats if n <= 10_000 else max(1, min(repeats, 3))
        t_qd, prob = median_time(lambda n=n: tv_qpdsl(n), reps)
        qp = prob.compile()
        row: dict[str, Any] = {
            "problem": "tv",
            "n": n,
            "qpdsl_compile_s": t_qd,
            "qp_n": qp.n,
            "qp_n_in": qp.n_in,
            **map_size(qp),
        }
        row["T_nnz_per_n"] = row["T_nnz"] / n
        theta = rng.standard_normal((BATCH, qp.n_theta))
        theta[:, -1] = np.abs(theta[:, -1])
        row["qpdsl_apply_batch_s"], _ = median_time(lambda qp=qp, theta=theta: qp.apply(theta), reps)
        if with_cvxpy and _cvxpy_available() and n > CVXPY_MAX_N:
            # cvxpy 1.9's quadratic coefficient extractor densifies an (n, n_theta) array here
            # (74.5 GiB at n = 1e5), so it is not run
            row["cvxpy_note"] = f"not run above n={CVXPY_MAX_N}: cvxpy densifies an n x n_theta array"
        elif with_cvxpy and _cvxpy_available():
            import cvxpy as cp

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t_cp, _ = median_time(
                        lambda n=n: tv_cvxpy(n, rng).get_problem_data(cp.CLARABEL), reps, warmup=0
                    )
                row["cvxpy_get_problem_data_s"] = t_cp
                row["compile_speedup"] = t_cp / t_qd
            except MemoryError as exc:
                row["cvxpy_note"] = f"cvxpy ran out of memory: {exc}"
        rows.append(row)
        gc.collect()
    return rows


def run(quick: bool = False, repeats: int | None = None, cvxpylayers: bool = False) -> dict[str, Any]:
    """Run every measurement; ``quick`` uses small sizes only (for CI)."""
    repeats = repeats or (3 if quick else 7)
    n = 200 if quick else 1000
    sizes = [1000, 3000] if quick else [1000, 10_000, 100_000]
    return {
        "benchmark": "compile",
        "quick": quick,
        "compile": bench_compile(n, repeats, cvxpylayers),
        "apply": bench_apply(n, repeats),
        "scaling": bench_scaling(sizes, repeats, with_cvxpy=True),
    }


# ---------------------------------------------------------------- report


def _ms(v: Any) -> str:
    return "-" if v is None else f"{1e3 * v:9.2f}"


def _x(v: Any) -> str:
    return "-" if v is None else f"{v:7.1f}x"


def print_table(res: dict[str, Any]) -> None:
    c = res["compile"]
    print(
        f"\ncompile: lasso, A Parameter {c['n'] // 2}x{c['n']} ({c['n_theta']} parameter entries); "
        f"QP n={c['qp_n']} n_eq={c['qp_n_eq']} n_in={c['qp_n_in']}, T nnz={c['T_nnz']}"
    )
    print(f"  qpdsl Problem build + compile          {_ms(c['qpdsl_compile_s'])} ms")
    print(
        f"  cvxpy get_problem_data (first call)    {_ms(c.get('cvxpy_get_problem_data_s'))} ms   "
        f"qpdsl speedup {_x(c.get('compile_speedup'))}"
    )
    if "cvxpylayers_build_s" in c:
        print(f"  cvxpylayers CvxpyLayer(...) build      {_ms(c['cvxpylayers_build_s'])} ms")
    a = res["apply"]
    print(f"\napply parameters: lasso n={a['n']}")
    print(
        f"  qpdsl qp.apply, batch of {a['batch']}          {_ms(a['qpdsl_apply_batch_s'])} ms "
        f"({_ms(a['qpdsl_apply_per_set_s']).strip()} ms per set)"
    )
    print(f"  qpdsl qp.apply(out=previous), 64       {_ms(a.get('qpdsl_apply_batch_reuse_s'))} ms")
    print(
        f"  floor: copy theta, new / reused array  {_ms(a.get('floor_write_fresh_s'))} ms / "
        f"{_ms(a.get('floor_write_reuse_s')).strip()} ms"
    )
    print(
        f"  cvxpy get_problem_data, one set        {_ms(a.get('cvxpy_reapply_one_s'))} ms   "
        f"ratio (cvxpy one / qpdsl {a['batch']}) {_x(a.get('apply_ratio_cvxpy_one_over_qpdsl_batch'))}, "
        f"reusing arrays {_x(a.get('apply_ratio_cvxpy_one_over_qpdsl_batch_reuse')).strip()}"
    )
    print("\nscaling: TV denoising with a sparse difference operator")
    print(
        f"  {'n':>8} {'qpdsl ms':>10} {'cvxpy ms':>10} {'speedup':>8} {'T nnz':>10} {'nnz/n':>6} "
        f"{'T MB':>7} {'apply64 ms':>10}"
    )
    for r in res["scaling"]:
        print(
            f"  {r['n']:>8} {_ms(r['qpdsl_compile_s']):>10} {_ms(r.get('cvxpy_get_problem_data_s')):>10} "
            f"{_x(r.get('compile_speedup')):>8} {r['T_nnz']:>10} {r['T_nnz_per_n']:>6.1f} "
            f"{r['T_bytes'] / 2**20:>7.2f} {_ms(r['qpdsl_apply_batch_s']):>10}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes only (CI)")
    ap.add_argument("--cvxpylayers", action="store_true", help="also time building a CvxpyLayer (slow)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the results to this file")
    args = ap.parse_args()
    res = run(args.quick, args.repeats, args.cvxpylayers)
    print_table(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
        print(f"\nwritten {args.json}")


if __name__ == "__main__":
    main()
