"""How often verification downgrades a solver's ``solved`` claim to ``inaccurate``.

For each solver (``proxsuite``, ``cpu`` and every installed ``qpsolvers:<name>``) and each
tolerance (1e-9 and 1e-6), the raw claims of :meth:`Backend.solve_raw` on

* the dense benchmark batch, ``qpdsl.testing.random_feasible_qps(64, 50, 10, 50, seed=0)``, and
* the Maros-Meszaros problems with n, m <= 1000 (62 of them, densified; see
  ``benchmarks/maros_meszaros.py``),

are counted (how many ``solved``), then checked by :func:`qpdsl.solve.verify` at the same
tolerance (how many of those become ``inaccurate``). Every solve runs in a child process with a
time limit; a solve past it counts as ``timeout``. Usage::

    OMP_NUM_THREADS=1 python benchmarks/verification.py [--timeout 20] [--solvers cpu,proxsuite]
        [--quick] [--json benchmarks/results/verification.json]

The JSON is rewritten after every solver.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import common  # noqa: E402, F401  (XLA flags before any jax import)
from maros_meszaros import data_folder, list_problems, load  # noqa: E402

KEYS = ("P", "q", "A", "b", "C", "l", "u")
EPS = (1e-9, 1e-6)
DEFAULT_JSON = os.path.join(HERE, "results", "verification.json")


def solvers() -> list[str]:
    """``proxsuite``, ``cpu`` and every installed ``qpsolvers:<name>``, in that order."""
    import qpdsl

    names = list(qpdsl.available_backends())
    return [s for s in ("proxsuite", "cpu") if s in names] + sorted(
        s for s in names if s.startswith("qpsolvers:")
    )


def dense_batch() -> dict[str, np.ndarray]:
    """The dense benchmark batch: 64 random feasible QPs, n = 50, 10 equalities, 50 inequalities."""
    from qpdsl.testing import random_feasible_qps

    return dict(zip(KEYS, random_feasible_qps(64, 50, 10, 50, seed=0), strict=True))


def claims(solver: str, arrays: dict[str, np.ndarray], eps: float) -> dict[str, int]:
    """The number of ``solved`` claims of ``solver`` on a batch and how many verification downgrades."""
    from qpdsl.backends import get_backend
    from qpdsl.qp import QPData, Settings, Status
    from qpdsl.solve import verify

    data = QPData(*(np.ascontiguousarray(arrays[k], dtype=np.float64) for k in KEYS))
    settings = Settings(eps_abs=eps)
    raw = get_backend(solver).solve_raw(data, settings)
    solved = np.asarray(raw.status) == int(Status.SOLVED)
    checked = np.asarray(verify(data, raw, settings).status)
    return {
        "elements": int(solved.size),
        "solved": int(solved.sum()),
        "inaccurate": int((solved & (checked == int(Status.INACCURATE))).sum()),
    }


def _worker(tasks: Any, results: Any) -> None:
    """Child process: solve the tasks one by one and send back the counts (or the error)."""
    while True:
        task = tasks.get()
        if task is None:
            return
        solver, arrays, eps = task
        try:
            results.put(claims(solver, arrays, eps))
        except Exception as err:  # a solver that fails counts as failed, the run goes on
            results.put({"error": f"{type(err).__name__}: {err}"[:300]})


class Child:
    """A worker process restarted after each timeout."""

    def __init__(self) -> None:
        self.ctx = mp.get_context("spawn")
        self.proc: Any = None

    def start(self) -> None:
        self.tasks, self.results = self.ctx.Queue(), self.ctx.Queue()
        self.proc = self.ctx.Process(target=_worker, args=(self.tasks, self.results), daemon=True)
        self.proc.start()

    def run(self, task: tuple[str, dict[str, np.ndarray], float], timeout: float) -> dict[str, Any]:
        if self.proc is None or not self.proc.is_alive():
            self.start()
        self.tasks.put(task)
        try:
            return self.results.get(timeout=timeout)
        except Exception:
            self.proc.kill()
            self.proc.join()
            self.proc = None
            return {"timeout": True}

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.tasks.put(None)
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()


def run(names: list[str], timeout: float, quick: bool, path: str) -> dict[str, Any]:
    """Count the claims of every solver in ``names`` on both sets at both tolerances."""
    problems = list_problems(data_folder())
    if quick:
        problems = problems[:8]
    mm = [
        (p["name"], {k: np.asarray(v)[None] for k, v in load(p["path"]).items() if k in KEYS})
        for p in problems
    ]
    out: dict[str, Any] = {"timeout_s": timeout, "maros_meszaros_problems": len(mm), "solvers": {}}
    child = Child()
    try:
        for solver in names:
            entry: dict[str, Any] = {}
            for eps in EPS:
                start = time.perf_counter()
                dense = child.run((solver, dense_batch(), eps), timeout * 4)
                tally = {"solved": 0, "inaccurate": 0, "timeout": 0, "error": 0, "inaccurate_names": []}
                for name, arrays in mm:
                    res = child.run((solver, arrays, eps), timeout)
                    if res.get("timeout"):
                        tally["timeout"] += 1
                    elif "error" in res:
                        tally["error"] += 1
                    else:
                        tally["solved"] += res["solved"]
                        tally["inaccurate"] += res["inaccurate"]
                        if res["inaccurate"]:
                            tally["inaccurate_names"].append(name)
                entry[f"{eps:g}"] = {
                    "dense": dense,
                    "maros_meszaros": tally,
                    "seconds": time.perf_counter() - start,
                }
                print(solver, f"{eps:g}", json.dumps({"dense": dense, "mm": tally}), flush=True)
            out["solvers"][solver] = entry
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as fh:
                json.dump(out, fh, indent=1)
    finally:
        child.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per Maros-Meszaros solve")
    parser.add_argument("--solvers", default="", help="comma-separated backend names (default: all)")
    parser.add_argument("--quick", action="store_true", help="only the 8 smallest Maros-Meszaros problems")
    parser.add_argument("--json", default=DEFAULT_JSON)
    args = parser.parse_args()
    names = [s for s in args.solvers.split(",") if s] or solvers()
    run(names, args.timeout, args.quick, args.json)


if __name__ == "__main__":
    main()
