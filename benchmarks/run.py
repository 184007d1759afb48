"""Run the benchmarks, write their results as JSON and draw PNG plots.

Each benchmark module in this folder has ``run(quick) -> dict`` (``torch_solver`` returns a
list of rows). They run one after the other, each in its own child process with a time limit
(``--timeout``): a benchmark that fails to import, raises, crashes or runs past the limit is
reported (``"status": "failed"`` with the error in its JSON file) and the run goes on; nothing
is ever filled in for it. Within one benchmark every method runs in the same process, so its
timings are comparable.

Outputs, for each benchmark ``NAME`` that ran:

- ``OUT/NAME[_LABEL].json``: ``{"name", "status", "quick", "environment", "elapsed_s",
  "result" | "error"}``; ``environment`` holds the date, CPU count, load average before and
  after, thread settings, package versions and the git commit;
- ``IMG/benchmarks_NAME[_LABEL].png``: median times per method (against batch size or problem
  size where the data have more than one), forward and forward+backward, and the accuracy
  ``max |x - x_ref|`` per method.

``--replot`` redraws the PNGs from the JSON files in ``OUT`` without running anything.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/run.py [--quick] [--only NAME[,NAME]] [--out DIR]
        [--img DIR] [--label LABEL] [--replot] [--timeout S]
        [--dense-batch B] [--dense-n N [N ...]] [--dense-peers P [P ...]] [--dense-dtype float32]
        [--repeats R] [--in-process]

``--quick`` is the CI-sized run (each benchmark's own quick mode; ``dense_batch`` without the
slow peers cvxpylayers and jaxopt's OSQP). Timings are only comparable within one run (one
process, one machine state): read the ratios.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Single-threaded BLAS/OpenMP unless the caller chose otherwise: set before numpy/torch load.
os.environ.setdefault("OMP_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

import common  # noqa: E402, F401  (sets XLA_FLAGS against an XLA CPU hang before jax loads)

# Order of the run: the cheap ones first.
NAMES = ("compile", "torch_solver", "applications", "dense_batch", "jax_batch")
# dense_batch peers in the quick run: cvxpylayers and jaxopt's OSQP take minutes per batch.
QUICK_DENSE_PEERS = ("qpdsl", "qplayer", "qpth", "qpax")
VERSIONED = ("numpy", "scipy", "torch", "jax", "proxsuite", "cvxpy", "qpth", "cvxpylayers", "qpax", "jaxopt")


# ---------------------------------------------------------------- running


def _environment() -> dict[str, Any]:
    from importlib import metadata

    versions = {}
    for pkg in VERSIONED:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "versions": versions,
        "git_commit": commit,
        "git_dirty": dirty,
    }


def _runner(name: str, args: argparse.Namespace) -> Callable[[], Any]:
    """The call that runs benchmark ``name`` with the options of the command line."""
    module = importlib.import_module(name)
    if name == "dense_batch":
        peers = args.dense_peers or (list(QUICK_DENSE_PEERS) if args.quick else None)
        return lambda: module.run(
            args.quick,
            batch=args.dense_batch,
            sizes=args.dense_n,
            repeats=args.repeats,
            include=set(peers) if peers else None,
            dtype=args.dense_dtype,
        )
    if name == "compile":
        return lambda: module.run(args.quick, repeats=args.repeats)
    if name == "torch_solver":
        return lambda: module.run(args.quick, repeat=args.repeats)
    if name == "applications":
        return lambda: module.run(args.quick, repeats=args.repeats)
    if name == "jax_batch" and args.jax_time_limit is not None:
        return lambda: module.run(args.quick, limit=args.jax_time_limit)
    return lambda: module.run(args.quick)


def _timeout(args: argparse.Namespace) -> float:
    """Seconds allowed per benchmark: ``--timeout``, else 300 with ``--quick``, else no limit (0)."""
    if args.timeout is not None:
        return args.timeout
    return 300.0 if args.quick else 0.0


def _without_only(argv: list[str]) -> list[str]:
    """The command-line arguments less ``--only`` and its value."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--only":
            skip = True
        elif not arg.startswith("--only="):
            out.append(arg)
    return out


def run_in_child(name: str, argv: list[str], args: argparse.Namespace, env: dict[str, Any]) -> dict[str, Any]:
    """Run benchmark ``name`` in a child process (``--in-process``) and return its record.

    The child writes the JSON file and the plot and prints its own table. After
    ``--timeout`` seconds it is killed with everything it started (a hang in native code,
    which no signal handler in the benchmark's own process could interrupt), and the record
    says so.
    """
    suffix = f"_{args.label}" if args.label else ""
    path = args.out / f"{name}{suffix}.json"
    path.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        *_without_only(argv),
        "--only",
        name,
        "--in-process",
    ]
    timeout = _timeout(args) or None
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        returncode = proc.wait(timeout=timeout)
        error = f"the benchmark's process exited with code {returncode} and wrote no results"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        error = f"BenchmarkTimeout: ran past --timeout {timeout:g} s (killed)"
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    if path.exists():
        return json.loads(path.read_text())
    record = {
        "name": name,
        "quick": args.quick,
        "label": args.label,
        "environment": env,
        "status": "failed",
        "error": error,
        "elapsed_s": time.perf_counter() - t0,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"!!! {name} failed: {error}\nwrote {path}", flush=True)
    return record


def run_one(name: str, args: argparse.Namespace, env: dict[str, Any]) -> dict[str, Any]:
    """Run one benchmark in this process; a failure is recorded, not raised."""
    record: dict[str, Any] = {
        "name": name,
        "quick": args.quick,
        "label": args.label,
        "environment": {**env, "load_average_before": list(os.getloadavg())},
    }
    if name == "dense_batch":
        record["dense_peers"] = args.dense_peers or (list(QUICK_DENSE_PEERS) if args.quick else "all")
    print(f"\n=== {name} ({'quick' if args.quick else 'full'}) ===", flush=True)
    t0 = time.perf_counter()
    try:
        result = _runner(name, args)()
    except BaseException as exc:  # noqa: BLE001  (report and go on; Ctrl-C still stops the run)
        if isinstance(exc, KeyboardInterrupt):
            raise
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        print(f"!!! {name} failed: {record['error']}", flush=True)
    else:
        record.update(status="ok", result=result)
        _print_table(name, result)
    record["elapsed_s"] = time.perf_counter() - t0
    record["environment"]["load_average_after"] = list(os.getloadavg())
    print(f"=== {name}: {record['status']} in {record['elapsed_s']:.1f} s", flush=True)
    return record


def _print_table(name: str, result: Any) -> None:
    """The benchmark's own table, where it has one (torch_solver prints its rows as it goes)."""
    module = sys.modules.get(name)
    try:
        if name == "compile":
            module.print_table(result)
        elif name == "dense_batch":
            print("\n" + module.format_table(result["results"]) + "\n(ratios: time / QPLayer's time)")
        elif name == "jax_batch":
            print("\n" + module.format_table(result["rows"]) + "\n(ratios: time / qpdsl[jax]'s time)")
        elif name == "applications":
            print("\n" + module.format_table(result["rows"]) + "\n(ratios: time / QPLayer's time)")
    except Exception as exc:  # noqa: BLE001  (a table is a convenience; the JSON has the data)
        print(f"(no table for {name}: {type(exc).__name__}: {exc})")


def _jsonable(obj: Any) -> Any:
    """numpy scalars and arrays, tuples, sets and non-finite floats in a JSON-safe form."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy array or scalar, torch tensor
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


# ---------------------------------------------------------------- plots


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(record: dict[str, Any], what: str) -> str:
    env = record.get("environment", {})
    load = env.get("load_average_before") or [float("nan")]
    return (
        f"{what}  ({'quick' if record.get('quick') else 'full'}; {env.get('date', '?')[:10]}, "
        f"{env.get('cpus', '?')} CPUs, load {load[0]:.1f}, OMP_NUM_THREADS={env.get('omp_num_threads')})"
    )


def _bars(ax: Any, groups: list[str], series: dict[str, list[float | None]], ylabel: str, log: bool) -> None:
    """Grouped bars: one group per entry of ``groups``, one bar per series."""
    k = max(1, len(series))
    width = 0.8 / k
    for j, (label, values) in enumerate(series.items()):
        xs = [i + (j - (k - 1) / 2) * width for i in range(len(groups))]
        ys = [float("nan") if v is None else v for v in values]
        ax.bar(xs, ys, width, label=label)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
        finite = [v for vs in series.values() for v in vs if v is not None and math.isfinite(v) and v > 0]
        if finite:  # room below the shortest bar and above the tallest for the legend
            ax.set_ylim(min(finite) / 3, max(finite) * 30)
    ax.grid(axis="y", alpha=0.3)


def plot_dense_batch(record: dict[str, Any], path: Path) -> None:
    plt = _plt()
    rows = [r for r in record["result"]["results"] if "error" not in r]
    if not rows:
        return
    sizes = sorted({r["n"] for r in rows})
    peers = list(dict.fromkeys(r["peer"] for r in rows))
    by = {(r["peer"], r["n"]): r for r in rows}
    batch = rows[0]["batch"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    if len(sizes) > 1:  # time against problem size
        for key, ax, what in (("forward_s", axes[0], "forward"), ("forward_backward_s", axes[1], "fwd+bwd")):
            for p in peers:
                pts = [(n, by[(p, n)][key] * 1e3) for n in sizes if (p, n) in by]
                ax.plot(*zip(*pts, strict=True), marker="o", label=p)
            ax.set(
                xscale="log", yscale="log", xlabel="n (variables)", ylabel=f"{what} ms per batch of {batch}"
            )
            ax.grid(alpha=0.3)
    else:
        n = sizes[0]
        for key, ax, what in (("forward_s", axes[0], "forward"), ("forward_backward_s", axes[1], "fwd+bwd")):
            _bars(ax, peers, {f"n={n}": [by[(p, n)][key] * 1e3 for p in peers]}, f"{what} ms per batch", True)
    axes[0].set_title("forward (median)")
    axes[1].set_title("forward + backward (median)")
    _bars(
        axes[2],
        peers,
        {
            **{f"max|x-x*| n={n}": [by.get((p, n), {}).get("x_err") for p in peers] for n in sizes},
            **{f"grad rel err n={n}": [by.get((p, n), {}).get("grad_err") for p in peers] for n in sizes},
        },
        "error vs cvxpy+Clarabel / exact KKT gradients",
        True,
    )
    axes[2].set_title("accuracy")
    axes[2].legend(fontsize=7, loc="upper left")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(_title(record, f"dense_batch: random dense QPs, batch {batch}"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_jax_batch(record: dict[str, Any], path: Path) -> None:
    plt = _plt()
    rows = record["result"]["rows"]
    sizes = sorted({r["n"] for r in rows})
    solvers = list(dict.fromkeys(r["solver"] for r in rows))
    by = {(r["solver"], r["n"]): r for r in rows}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    _bars(
        axes[0],
        solvers,
        {
            **{f"fwd n={n}": [by.get((s, n), {}).get("fwd_ms") for s in solvers] for n in sizes},
            **{f"fwd+bwd n={n}": [by.get((s, n), {}).get("fwd_bwd_ms") for s in solvers] for n in sizes},
        },
        "ms per batch (median, compiled)",
        True,
    )
    axes[0].set_title("run time")
    axes[0].legend(fontsize=7)
    _bars(
        axes[1],
        solvers,
        {
            **{f"fwd n={n}": [by.get((s, n), {}).get("compile_fwd_s") for s in solvers] for n in sizes},
            **{
                f"fwd+bwd n={n}": [by.get((s, n), {}).get("compile_fwd_bwd_s") for s in solvers]
                for n in sizes
            },
        },
        "s (lower + XLA compile)",
        True,
    )
    axes[1].set_title("jit compile time")
    _bars(
        axes[2],
        solvers,
        {
            **{f"max|x-x_ref| n={n}": [by.get((s, n), {}).get("x_err") for s in solvers] for n in sizes},
            **{f"grad dist n={n}": [by.get((s, n), {}).get("grad_dist") for s in solvers] for n in sizes},
        },
        "error (x vs proxsuite 1e-10; grads vs qpdsl)",
        True,
    )
    axes[2].set_title("accuracy")
    axes[2].legend(fontsize=7)
    batch = rows[0]["batch"] if rows else "?"
    fig.suptitle(_title(record, f"jax_batch: JAX solvers, batch {batch}"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_torch_solver(record: dict[str, Any], path: Path) -> None:
    plt = _plt()
    rows = record["result"]
    sizes = sorted({(r["n"], r["p"], r["m"]) for r in rows})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for n, p, m in sizes:
        rs = sorted((r for r in rows if (r["n"], r["p"], r["m"]) == (n, p, m)), key=lambda r: r["batch"])
        b = [r["batch"] for r in rs]
        (line,) = axes[0].plot(b, [r["ours_ms"] for r in rs], marker="o", label=f"qpdsl torch, n={n}")
        axes[0].plot(
            b,
            [r["proxsuite_ms"] for r in rs],
            marker="s",
            ls="--",
            color=line.get_color(),
            label=f"proxsuite loop, n={n}",
        )
        if all(r.get("qplayer_fwd_bwd_ms") for r in rs):
            (fb,) = axes[0].plot(
                b,
                [r["ours_fwd_bwd_ms"] for r in rs],
                marker="^",
                ls="-.",
                label=f"qpdsl torch fwd+bwd, n={n}",
            )
            axes[0].plot(
                b,
                [r["qplayer_fwd_bwd_ms"] for r in rs],
                marker="v",
                ls=":",
                color=fb.get_color(),
                label=f"QPLayer fwd+bwd, n={n}",
            )
            axes[1].plot(
                b, [r["fwd_bwd_ratio"] for r in rs], marker="^", ls="-.", label=f"fwd+bwd / QPLayer, n={n}"
            )
        axes[1].plot(b, [r["ratio"] for r in rs], marker="o", label=f"forward / proxsuite, n={n}")
        axes[2].plot(b, [r["max_dx"] for r in rs], marker="o", label=f"|x - x_proxsuite|, n={n}")
        axes[2].plot(b, [r["max_res"] for r in rs], marker="x", ls=":", label=f"max residual, n={n}")
    axes[0].set(xscale="log", yscale="log", xlabel="batch size", ylabel="ms per batch (median)")
    axes[0].set_title("forward, and forward+backward through the layers")
    axes[1].axhline(1.0, color="grey", lw=0.8)
    axes[1].set(xscale="log", xlabel="batch size", ylabel="qpdsl torch / peer")
    axes[1].set_title("time ratio (< 1: torch backend faster)")
    axes[2].set(xscale="log", yscale="log", xlabel="batch size", ylabel="max over batch")
    axes[2].set_title("accuracy (eps_abs 1e-9)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        _title(record, "torch_solver: torch backend vs proxsuite (forward) and QPLayer (forward+backward)"),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_compile(record: dict[str, Any], path: Path) -> None:
    plt = _plt()
    res = record["result"]
    c, a, scaling = res["compile"], res["apply"], res["scaling"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    _bars(
        axes[0],
        [f"lasso n={c['n']}\ncompile", f"lasso n={a['n']}\napply params"],
        {
            "qpdsl (compile; apply x64)": [c["qpdsl_compile_s"] * 1e3, a["qpdsl_apply_batch_s"] * 1e3],
            "cvxpy (1st get_problem_data; re-apply x1)": [
                (c.get("cvxpy_get_problem_data_s") or float("nan")) * 1e3,
                (a.get("cvxpy_reapply_one_s") or float("nan")) * 1e3,
            ],
        },
        "ms (median)",
        True,
    )
    axes[0].set_title("lasso: compile and parameter application")
    axes[0].legend(fontsize=7, loc="upper left")
    ns = [r["n"] for r in scaling]
    axes[1].plot(ns, [r["qpdsl_compile_s"] * 1e3 for r in scaling], marker="o", label="qpdsl compile")
    cv = [(r["n"], r["cvxpy_get_problem_data_s"] * 1e3) for r in scaling if "cvxpy_get_problem_data_s" in r]
    if cv:
        axes[1].plot(*zip(*cv, strict=True), marker="s", label="cvxpy get_problem_data")
    axes[1].plot(ns, [r["qpdsl_apply_batch_s"] * 1e3 for r in scaling], marker="^", label="qpdsl apply x64")
    axes[1].set(xscale="log", yscale="log", xlabel="n (TV denoising)", ylabel="ms (median)")
    axes[1].set_title("scaling with problem size")
    axes[2].plot(ns, [r["T_nnz"] for r in scaling], marker="o", label="T nnz")
    axes[2].plot(ns, [r["T_nnz_per_n"] for r in scaling], marker="x", ls=":", label="T nnz / n")
    axes[2].set(xscale="log", yscale="log", xlabel="n (TV denoising)", ylabel="count")
    axes[2].set_title("size of the parametric maps")
    for ax in axes[1:]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(_title(record, "compile: qpdsl vs cvxpy"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_applications(record: dict[str, Any], path: Path) -> None:
    plt = _plt()
    rows = [r for r in record["result"]["rows"] if "error" not in r]
    if not rows:
        return
    apps = list(dict.fromkeys(r["application"] for r in rows))
    fig, axes = plt.subplots(1, len(apps), figsize=(7.5 * len(apps), 4.8), squeeze=False)
    for ax, app in zip(axes[0], apps, strict=True):
        mine = [r for r in rows if r["application"] == app]
        _bars(
            ax,
            [r["model"] for r in mine],
            {
                "forward": [r["forward_s"] * 1e3 for r in mine],
                "forward + backward": [r["forward_backward_s"] * 1e3 for r in mine],
            },
            f"ms per batch of {mine[0]['batch']} (median)",
            True,
        )
        ax.set_title(app)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(_title(record, "applications: the examples' layers"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PLOTS: dict[str, Callable[[dict[str, Any], Path], None]] = {
    "applications": plot_applications,
    "compile": plot_compile,
    "dense_batch": plot_dense_batch,
    "jax_batch": plot_jax_batch,
    "torch_solver": plot_torch_solver,
}


def plot(record: dict[str, Any], img_dir: Path) -> Path | None:
    """Draw the benchmark's PNG; a plotting error is reported and does not stop the run."""
    if record.get("status") != "ok" or record["name"] not in PLOTS:
        return None
    suffix = f"_{record['label']}" if record.get("label") else ""
    path = img_dir / f"benchmarks_{record['name']}{suffix}.png"
    try:
        img_dir.mkdir(parents=True, exist_ok=True)
        PLOTS[record["name"]](record, path)
    except Exception as exc:  # noqa: BLE001
        print(f"!!! plot of {record['name']} failed: {type(exc).__name__}: {exc}", flush=True)
        return None
    print(f"wrote {path}", flush=True)
    return path


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="CI-sized runs (under ~3 minutes on 2 idle cores)"
    )
    parser.add_argument("--only", help=f"comma-separated subset of: {','.join(NAMES)}")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder of the JSON files")
    parser.add_argument("--img", type=Path, help="folder of the PNG plots (default: --out)")
    parser.add_argument("--label", default="", help="suffix of the file names: NAME_LABEL.json")
    parser.add_argument(
        "--timeout",
        type=float,
        help="seconds allowed per benchmark before it is recorded as failed (300 with --quick; 0: none)",
    )
    parser.add_argument("--replot", action="store_true", help="only redraw the plots from the JSON in --out")
    parser.add_argument("--repeats", type=int, help="timed repeats (each benchmark's default otherwise)")
    parser.add_argument("--dense-batch", type=int, help="dense_batch: batch size")
    parser.add_argument("--dense-n", type=int, nargs="+", help="dense_batch: numbers of variables")
    parser.add_argument(
        "--dense-peers", nargs="+", help="dense_batch: peer name prefixes (qpdsl, qplayer, ...)"
    )
    parser.add_argument(
        "--dense-dtype", choices=("float64", "float32"), default="float64", help="dense_batch: data dtype"
    )
    parser.add_argument(
        "--jax-time-limit", type=float, help="jax_batch: seconds per solver and size (default 600)"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the benchmarks in this process, without a time limit (default: a child process each)",
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)

    names = list(NAMES)
    if args.only:
        names = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in names if s not in NAMES]
        if unknown:
            parser.error(f"unknown benchmark(s) {unknown}; choose from {list(NAMES)}")
    img_dir = args.img or args.out
    suffix = f"_{args.label}" if args.label else ""

    if args.replot:
        for name in names:
            path = args.out / f"{name}{suffix}.json"
            if path.exists():
                plot(json.loads(path.read_text()), img_dir)
            else:
                print(f"no {path}")
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    env = _environment()
    summary = []
    for name in names:
        if args.in_process:
            record = _jsonable(run_one(name, args, env))
            path = args.out / f"{name}{suffix}.json"
            path.write_text(json.dumps(record, indent=2) + "\n")
            print(f"wrote {path}", flush=True)
            plot(record, img_dir)
        else:
            record = run_in_child(name, argv, args, env)
        summary.append((name, record["status"], record["elapsed_s"], record.get("error", "")))
    if len(summary) > 1:
        print("\nsummary:")
        for name, status, elapsed, error in summary:
            print(f"  {name:<14} {status:<7} {elapsed:7.1f} s  {error[:100]}")
    return 0 if all(s == "ok" for _, s, _, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
