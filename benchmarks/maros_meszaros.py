"""Maros–Meszaros accuracy: how many problems each backend solves to eps, scored independently.

Data: the ``.mat`` files of the Maros–Meszaros set in ``--data``, else ``$QPDSL_MAROS_MESZAROS``,
else ``../shared/data/maros_meszaros`` next to the repository root. Without them the benchmark
prints a message and returns ``{}`` (nothing is made up). Each file holds ``P`` (full symmetric,
sparse), ``q``, ``r``, ``A`` (sparse, m x n) and ``l, u`` with ``l <= A x <= u``; variable bounds
are rows of ``A``. Kept: the problems with ``n <= 1000`` and ``m <= 1000`` (62 of 137 in the
usual set), densified. Rows with ``l == u`` become ``A x = b``, the others ``l <= C x <= u``
with bounds of magnitude ``>= 1e20`` read as infinite; rows with both bounds infinite say
nothing and are dropped.

Every problem is solved alone (batch of 1, float64, one thread) by ``proxsuite`` (dense ProxQP,
``max_iter`` 10000 total iterations, duality-gap check on), by ``torch`` and ``cpu`` (our proximal
ALM in torch and in numba, ``max_iter`` 1000 outer iterations, i.e. up to 20000 inner ones) and
by ``qpsolvers:piqp`` (PIQP's dense interior point, ``max_iter`` 1000), at ``eps_abs`` 1e-6 and
1e-9 with ``eps_rel = 0``, ``closest_feasible=False`` (the set is feasible; a failure is a
failure). A solve by another solver than proxsuite is skipped when proxsuite took more than
``--skip-after`` seconds on the same problem and eps, and abandoned after ``--time-limit``
seconds (checked when control returns to Python: a numba or C solve runs to its end); both are
recorded. The ``cpu`` kernels are compiled (or loaded from the cache) before the first timing.

Scoring, as the public QP benchmark (qpbenchmark) does, in absolute form (``eps_rel = 0``):
a solve is a success when, computed here from the returned ``x, y, z`` on the original data,

- primal residual ``max(||A x - b||_inf, ||dist(C x, [l, u])||_inf) <= eps``,
- dual residual ``||P x + q + A'y + C'z||_inf <= eps``,
- duality gap ``|x'Px + q'x + b'y + u'[z]_+ + l'[z]_-| <= eps``,

whatever status the solver reported (the status is listed beside each failure, and the number
of solves whose status was ``solved`` is shown too). A multiplier pushing against an infinite
bound has no term in the gap; it is set to zero before scoring, so it shows in the dual residual
(qpbenchmark's conversion has no multiplier for an infinite side at all).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/maros_meszaros.py [--quick] [--only NAME,...]
        [--data DIR] [--eps 1e-6 1e-9] [--solvers proxsuite torch cpu qpsolvers:piqp] [--json PATH]
        [--skip-after 10] [--time-limit 120]

``--quick``: the 10 smallest problems (by n + m). Results go to ``--json`` (default
``benchmarks/results/maros_meszaros.json``), rewritten after every problem.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import signal
import sys
import time
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "maros_meszaros")
DEFAULT_JSON = os.path.join(ROOT, "benchmarks", "results", "maros_meszaros.json")
MAX_N = MAX_M = 1000
QUICK_COUNT = 10
EPS_LIST = (1e-6, 1e-9)
SOLVERS = ("proxsuite", "torch", "cpu", "qpsolvers:piqp")
MAX_ITER = {"proxsuite": 10_000, "torch": 1_000, "cpu": 1_000, "qpsolvers:piqp": 1_000}
INFINITE = 1e20
SKIP_AFTER_S = 10.0
TIME_LIMIT_S = 120.0


def data_folder(path: str | None = None) -> str:
    return os.path.abspath(path or os.environ.get("QPDSL_MAROS_MESZAROS") or DEFAULT_DATA)


def list_problems(folder: str) -> list[dict[str, Any]]:
    """Name, path, n, m of every problem in ``folder`` with n, m <= 1000, smallest (n + m) first."""
    import scipy.io

    out = []
    for path in sorted(glob.glob(os.path.join(folder, "*.mat"))):
        head = scipy.io.loadmat(path, variable_names=("n", "m"))
        n, m = int(np.asarray(head["n"]).item()), int(np.asarray(head["m"]).item())
        if n <= MAX_N and m <= MAX_M:
            out.append({"name": os.path.splitext(os.path.basename(path))[0], "path": path, "n": n, "m": m})
    out.sort(key=lambda p: (p["n"] + p["m"], p["name"]))
    return out


def load(path: str) -> dict[str, np.ndarray]:
    """The problem in standard form, dense float64 (no batch dimension)."""
    import scipy.io
    import scipy.sparse as sp

    raw = scipy.io.loadmat(path)

    def dense(key: str) -> np.ndarray:
        v = raw[key]
        return (v.toarray() if sp.issparse(v) else np.asarray(v)).astype(np.float64)

    P, M = dense("P"), dense("A")
    n = P.shape[0]
    q = dense("q").reshape(n)
    lo, up = dense("l").reshape(-1), dense("u").reshape(-1)
    r = float(dense("r").reshape(-1)[0]) if "r" in raw else 0.0
    lo = np.where(lo <= -INFINITE, -np.inf, lo)
    up = np.where(up >= INFINITE, np.inf, up)
    eq = lo == up
    ineq = ~eq & ~(np.isinf(lo) & np.isinf(up))
    return {
        "P": 0.5 * (P + P.T),
        "q": q,
        "r": r,
        "A": M[eq],
        "b": lo[eq],
        "C": M[ineq],
        "l": lo[ineq],
        "u": up[ineq],
    }


def score(prob: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, z: np.ndarray) -> dict[str, float]:
    """Primal residual, dual residual and duality gap (absolute, infinity norm) of (x, y, z)."""
    P, q, A, b, C, l, u = (prob[k] for k in ("P", "q", "A", "b", "C", "l", "u"))
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y)) and np.all(np.isfinite(z))):
        return {"prim": math.inf, "dual": math.inf, "gap": math.inf}
    # a multiplier on an infinite side has no meaning: drop it (it then shows in the dual residual)
    z = np.where((z > 0) & np.isinf(u), 0.0, z)
    z = np.where((z < 0) & np.isinf(l), 0.0, z)
    Cx = C @ x
    prim = max(
        float(np.max(np.abs(A @ x - b), initial=0.0)),
        float(np.max(np.maximum(Cx - u, 0.0), initial=0.0)),
        float(np.max(np.maximum(l - Cx, 0.0), initial=0.0)),
    )
    Px = P @ x
    dual = float(np.max(np.abs(Px + q + A.T @ y + C.T @ z), initial=0.0))
    support = np.where(z > 0, z * np.where(np.isinf(u), 0.0, u), 0.0) + np.where(
        z < 0, z * np.where(np.isinf(l), 0.0, l), 0.0
    )
    gap = abs(float(x @ Px + q @ x + b @ y + support.sum()))
    return {"prim": prim, "dual": dual, "gap": gap}


class _Timeout(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout


def solve(solver: str, prob: dict[str, np.ndarray], eps: float, time_limit: float | None) -> dict[str, Any]:
    """One solve; returns x, y, z (numpy), status label, iterations and wall time."""
    from qpdsl.backends import get_backend
    from qpdsl.qp import QPData, Settings, Status

    arrays = {k: np.asarray(prob[k])[None] for k in ("P", "q", "A", "b", "C", "l", "u")}
    arrays["r"] = np.array([prob["r"]])
    options = {"num_threads": 1} if solver == "proxsuite" else {}
    settings = Settings(
        eps_abs=eps, eps_rel=0.0, max_iter=MAX_ITER[solver], closest_feasible=False, options=options
    )
    if solver == "torch":
        import torch

        data = QPData(**{k: torch.as_tensor(v, dtype=torch.float64) for k, v in arrays.items()})
    else:
        data = QPData(**arrays)
    backend = get_backend(solver)
    use_alarm = time_limit is not None and hasattr(signal, "setitimer")
    if use_alarm:
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, time_limit)
    t0 = time.perf_counter()
    try:
        res = backend.solve(data, settings)
    except _Timeout:
        return {"status": "time_limit", "time_s": time.perf_counter() - t0, "iterations": None}
    except Exception as exc:  # a crash is a failure of that solve, recorded, not of the benchmark
        return {
            "status": f"error: {type(exc).__name__}: {exc}"[:200],
            "time_s": time.perf_counter() - t0,
            "iterations": None,
        }
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    elapsed = time.perf_counter() - t0

    def host(a: Any) -> np.ndarray:
        a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
        return a.astype(np.float64)[0]

    return {
        "x": host(res.x),
        "y": host(res.y),
        "z": host(res.z),
        "status": Status(int(host(res.status))).label,
        "iterations": int(host(res.iterations)),
        "time_s": elapsed,
    }


def _fmt(v: float | None) -> str:
    return "      -" if v is None else f"{v:7.1e}"


def summarize(result: dict[str, Any]) -> None:
    """Print, per solver and eps, solved / total and the failures with their status."""
    for solver in result["solvers"]:
        for eps in result["eps"]:
            key = f"{eps:g}"
            rows = [r for r in result["rows"] if r["solver"] == solver and r["eps"] == eps]
            if not rows:
                continue
            ok = [r for r in rows if r["success"]]
            said = [r for r in rows if r["status"] == "solved"]
            total = sum(r["time_s"] or 0 for r in rows)
            # against proxsuite on the problems both ran (a skipped solve has no time)
            prox = {
                r["problem"]: r["time_s"]
                for r in result["rows"]
                if r["solver"] == "proxsuite" and r["eps"] == eps
            }
            both = [(r["time_s"], prox[r["problem"]]) for r in rows if r["time_s"] and prox.get(r["problem"])]
            mine, theirs = sum(t for t, _ in both), sum(t for _, t in both)
            ratio = f", {mine / theirs:.2f} x proxsuite's on the {len(both)} both ran" if theirs > 0 else ""
            print(
                f"\n{solver} eps={key}: {len(ok)}/{len(rows)} solved "
                f"(status 'solved' reported on {len(said)}; time total {total:.1f} s{ratio})"
            )
            bad = [r for r in rows if not r["success"]]
            if bad:
                head = ("problem", "status", "prim", "dual", "gap", "iters", "time_s")
                print("  {:<10} {:<16} {:>7} {:>7} {:>7} {:>6} {:>7}".format(*head))
                for r in bad:
                    it = "-" if r["iterations"] is None else str(r["iterations"])
                    t = r["time_s"] if r["time_s"] is None else round(r["time_s"], 2)
                    print(
                        f"  {r['problem']:<10} {r['status'][:16]:<16} {_fmt(r['prim'])} {_fmt(r['dual'])} "
                        f"{_fmt(r['gap'])} {it:>6} {t!s:>7}"
                    )


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def run(
    quick: bool = False,
    only: list[str] | None = None,
    data: str | None = None,
    eps_list: tuple[float, ...] = EPS_LIST,
    solvers: tuple[str, ...] = SOLVERS,
    json_path: str | None = None,
    skip_after: float = SKIP_AFTER_S,
    time_limit: float | None = TIME_LIMIT_S,
) -> dict:
    """Solve and score the set; print the tables; return (and with ``json_path`` write) the results."""
    folder = data_folder(data)
    if not os.path.isdir(folder) or not glob.glob(os.path.join(folder, "*.mat")):
        print(f"maros_meszaros: no .mat files in {folder} (set --data or QPDSL_MAROS_MESZAROS); skipped")
        return {}
    import torch

    torch.set_num_threads(1)
    if "cpu" in solvers:  # compile (or load) the kernels outside the timings
        tiny = {"P": np.eye(2), "q": np.ones(2), "r": 0.0, "A": np.ones((1, 2)), "b": np.ones(1)}
        tiny.update(C=np.eye(2), l=-np.ones(2), u=np.ones(2))
        solve("cpu", tiny, 1e-6, None)
    problems = list_problems(folder)
    kept = len(problems)
    if only:
        wanted = {s.upper() for s in only}
        problems = [p for p in problems if p["name"].upper() in wanted]
    if quick:
        problems = problems[:QUICK_COUNT]
    eps_text = ", ".join(f"{e:g}" for e in eps_list)
    print(
        f"maros_meszaros: {kept} problems with n, m <= {MAX_N} in {folder}; running {len(problems)}"
        f"{' (quick: the smallest)' if quick else ''}; eps_abs {eps_text}, eps_rel 0"
    )
    result: dict[str, Any] = {
        "data": folder,
        "kept": kept,
        "quick": quick,
        "eps": list(eps_list),
        "solvers": list(solvers),
        "max_iter": {s: MAX_ITER[s] for s in solvers},
        "skip_after_s": skip_after,
        "time_limit_s": time_limit,
        "scoring": "absolute (eps_rel = 0): prim, dual, gap <= eps, from x, y, z on the original data",
        "problems": [],
        "rows": [],
    }
    print(
        f"{'problem':<10} {'n':>5} {'neq':>5} {'nin':>5} {'solver':<10} {'eps':>6} {'status':<12} "
        f"{'prim':>7} {'dual':>7} {'gap':>7} {'iters':>6} {'time_s':>7} ok",
        flush=True,
    )
    for info in problems:
        prob = load(info["path"])
        n, neq, nin = prob["q"].size, prob["b"].size, prob["l"].size
        result["problems"].append({"name": info["name"], "n": n, "m": info["m"], "n_eq": neq, "n_in": nin})
        for eps in eps_list:
            prox_time = None
            for solver in solvers:
                if solver != "proxsuite" and prox_time is not None and prox_time > skip_after:
                    out = {
                        "status": f"skipped (proxsuite {prox_time:.0f} s)",
                        "time_s": None,
                        "iterations": None,
                    }
                else:
                    out = solve(solver, prob, eps, None if solver == "proxsuite" else time_limit)
                if solver == "proxsuite":
                    prox_time = out["time_s"]
                s = (
                    score(prob, out["x"], out["y"], out["z"])
                    if "x" in out
                    else {"prim": math.inf, "dual": math.inf, "gap": math.inf}
                )
                success = s["prim"] <= eps and s["dual"] <= eps and s["gap"] <= eps
                row = {
                    "problem": info["name"],
                    "solver": solver,
                    "eps": eps,
                    "status": out["status"],
                    "iterations": out["iterations"],
                    "time_s": out["time_s"],
                    "prim": _finite(s["prim"]),
                    "dual": _finite(s["dual"]),
                    "gap": _finite(s["gap"]),
                    "success": bool(success),
                }
                result["rows"].append(row)
                t = "-" if out["time_s"] is None else f"{out['time_s']:.2f}"
                it = "-" if out["iterations"] is None else str(out["iterations"])
                print(
                    f"{info['name']:<10} {n:>5} {neq:>5} {nin:>5} {solver:<10} {eps:>6.0e} "
                    f"{out['status'][:12]:<12} "
                    f"{_fmt(row['prim'])} {_fmt(row['dual'])} {_fmt(row['gap'])} {it:>6} {t:>7} "
                    f"{'yes' if success else 'NO'}",
                    flush=True,
                )
        if json_path:
            _write(json_path, result)
    result["summary"] = {
        f"{solver} {eps:g}": {
            "solved": sum(r["success"] for r in result["rows"] if r["solver"] == solver and r["eps"] == eps),
            "time_total_s": sum(
                r["time_s"] or 0 for r in result["rows"] if r["solver"] == solver and r["eps"] == eps
            ),
            "total": sum(1 for r in result["rows"] if r["solver"] == solver and r["eps"] == eps),
            "failures": {
                r["problem"]: r["status"]
                for r in result["rows"]
                if r["solver"] == solver and r["eps"] == eps and not r["success"]
            },
        }
        for solver in solvers
        for eps in eps_list
    }
    if json_path:
        _write(json_path, result)
    summarize(result)
    return result


def _write(path: str, result: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only the {QUICK_COUNT} smallest problems")
    parser.add_argument("--only", default=None, help="comma-separated problem names")
    parser.add_argument("--data", default=None, help="folder of .mat files")
    parser.add_argument("--eps", type=float, nargs="+", default=list(EPS_LIST))
    parser.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS)
    parser.add_argument("--json", default=DEFAULT_JSON, help="output JSON ('' for none)")
    parser.add_argument(
        "--skip-after",
        type=float,
        default=SKIP_AFTER_S,
        help="skip torch on a problem/eps where proxsuite took longer (s)",
    )
    parser.add_argument(
        "--time-limit", type=float, default=TIME_LIMIT_S, help="abandon a torch solve after (s)"
    )
    args = parser.parse_args()
    run(
        args.quick,
        args.only.split(",") if args.only else None,
        args.data,
        tuple(args.eps),
        tuple(args.solvers),
        args.json or None,
        args.skip_after,
        args.time_limit,
    )
