"""Application layers: the Sudoku (OptNet) and cart-pole MPC layers of ``examples/``, side by side.

Each application builds its problem with the example's own function
(:func:`examples.sudoku.sudoku_problem`, :func:`examples.cartpole.mpc_problem`), makes one batch
of inputs like those met in training, and times every model of the example (qpdsl's backends
through ``prob.to_torch``, OptNet's qpth and proxsuite's QPLayer on the same compiled QP; a
model that cannot run here is reported, never faked):

- **forward**: the layer's call, inputs requiring gradients (as in training);
- **forward + backward**: the call and the gradients of ``sum(out * v)`` with respect to the
  learned tensors (Sudoku: ``A`` and the logits ``w`` of ``b = A sigmoid(w)``; cart-pole: the
  dynamics ``A``, ``B`` and the cost weights ``Q``, ``r``).

Medians over repeats, the models alternating within each repeat so that they share the load.
Accuracy: ``max |out - out_ref|`` against ``qpdsl[proxsuite]`` on the same problem (for the LP
variant of Sudoku the solution need not be unique, so a difference there is a fact, not a fault).

Usage::

    python benchmarks/applications.py [--quick] [--repeats 5] [--batch 64] [--json PATH]

``run(quick)`` returns the results as a dict (for ``benchmarks/run.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "examples"), str(ROOT)]

import numpy as np  # noqa: E402
import torch  # noqa: E402

Inputs = dict[str, torch.Tensor]


class Application:
    """One example's layer: its models, its problem per model variant, and a batch of inputs."""

    def __init__(self, name: str, models: list[Any], batch: int, seed: int, **size: int) -> None:
        self.name, self.models, self.batch, self.seed, self.size = name, models, batch, seed, size
        self.problems: dict[str, tuple[Any, list[Any], Any]] = {}

    def problem(self, variant: str) -> tuple[Any, list[Any], Any]:
        raise NotImplementedError

    def inputs(self) -> Inputs:
        raise NotImplementedError

    def call(self, layer: torch.nn.Module, inputs: Inputs) -> torch.Tensor:
        raise NotImplementedError

    def layer(self, spec: Any) -> torch.nn.Module:
        if spec.variant not in self.problems:
            self.problems[spec.variant] = self.problem(spec.variant)
        problem, params, out = self.problems[spec.variant]
        return spec.build(problem, params, [out])

    def reference_name(self, spec: Any) -> str:
        """The qpdsl[proxsuite] model that solves the same problem as ``spec``."""
        return next(
            s.name
            for s in self.models
            if s.kind == "qpdsl" and s.backend == "proxsuite" and s.variant == spec.variant
        )


class Sudoku(Application):
    def problem(self, variant: str) -> tuple[Any, list[Any], Any]:
        import sudoku

        return sudoku.sudoku_problem(self.size["m"], quadratic=variant == "qp")

    def inputs(self) -> Inputs:
        import sudoku

        gen = torch.Generator().manual_seed(self.seed)
        puzzles, _ = sudoku.make_dataset(self.batch, 6, np.random.default_rng(self.seed))
        return {
            "A": torch.rand(self.size["m"], sudoku.NX, generator=gen, dtype=torch.float64),
            "w": torch.full((sudoku.NX,), float(np.log(0.25 / 0.75)), dtype=torch.float64),
            "p": puzzles,
        }

    def call(self, layer: torch.nn.Module, inputs: Inputs) -> torch.Tensor:
        b = inputs["A"] @ torch.sigmoid(inputs["w"])
        (x,) = layer(inputs["A"], b, inputs["p"])
        return x


class CartPole(Application):
    def problem(self, variant: str) -> tuple[Any, list[Any], Any]:
        import cartpole

        return cartpole.mpc_problem(self.size["horizon"])

    def inputs(self) -> Inputs:
        import cartpole

        rng = np.random.default_rng(self.seed)
        A, B = cartpole.linear_model(**cartpole.TRUE)
        low, high = np.array([-1.0, -1.0, -0.15, -0.5]), np.array([1.0, 1.0, 0.15, 0.5])
        return {
            "A": torch.tensor(A),
            "B": torch.tensor(B).reshape(1, 4),
            "Q": torch.diag(torch.tensor(cartpole.Q_TRUE, dtype=torch.float64)),
            "r": torch.tensor(cartpole.R_TRUE, dtype=torch.float64),
            "states": torch.tensor(rng.uniform(low, high, (self.batch, 4))),
        }

    def call(self, layer: torch.nn.Module, inputs: Inputs) -> torch.Tensor:
        c0 = inputs["states"] @ inputs["A"].T
        (u,) = layer(c0, inputs["A"], inputs["B"], inputs["Q"], inputs["r"])
        return u


LEARNED = {"sudoku": ("A", "w"), "cartpole": ("A", "B", "Q", "r")}


def applications(quick: bool, batch: int | None) -> list[Application]:
    import cartpole
    import sudoku

    b = batch or (8 if quick else 64)
    return [
        Sudoku("sudoku", sudoku.MODELS, b, seed=0, m=40),
        CartPole("cartpole", cartpole.MODELS, b, seed=0, horizon=10 if quick else 15),
    ]


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench(app: Application, repeats: int, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Rows (one per model of ``app``) of median forward and forward + backward times, and accuracy."""
    from _peers import usable_models

    specs = usable_models(app.models, None, lambda msg: log(f"  {app.name}: {msg}"))
    base = app.inputs()
    learned = LEARNED[app.name]
    v_gen = torch.Generator().manual_seed(app.seed + 1)
    layers: dict[str, torch.nn.Module] = {}
    errors: dict[str, str] = {}
    outputs: dict[str, torch.Tensor] = {}
    v: torch.Tensor | None = None

    def fresh_inputs() -> Inputs:
        return {k: t.clone().requires_grad_(k in learned) for k, t in base.items()}

    def forward(name: str) -> torch.Tensor:
        return app.call(layers[name], fresh_inputs())

    def forward_backward(name: str) -> tuple[torch.Tensor, ...]:
        inputs = fresh_inputs()
        out = app.call(layers[name], inputs)
        return torch.autograd.grad((out * v).sum(), [inputs[k] for k in learned])

    for spec in specs:  # build, warm up, and keep the first output
        try:
            layers[spec.name] = app.layer(spec)
            outputs[spec.name] = forward(spec.name).detach()
            if v is None:
                v = torch.randn(outputs[spec.name].shape, generator=v_gen, dtype=torch.float64)
            forward_backward(spec.name)
        except Exception as exc:  # noqa: BLE001  (a model failing is a result, not a crash)
            errors[spec.name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            layers.pop(spec.name, None)
            log(f"  {app.name}: {spec.name} failed: {errors[spec.name]}")
    times: dict[str, dict[str, list[float]]] = {name: {"fwd": [], "fwd_bwd": []} for name in layers}
    for _ in range(repeats):
        for name in layers:
            times[name]["fwd"].append(_timed(lambda name=name: forward(name))[0])
            times[name]["fwd_bwd"].append(_timed(lambda name=name: forward_backward(name))[0])

    rows = []
    for spec in specs:
        row: dict[str, Any] = {"application": app.name, "model": spec.name, "batch": app.batch, **app.size}
        if spec.name in errors:
            row["error"] = errors[spec.name]
        else:
            row["forward_s"] = statistics.median(times[spec.name]["fwd"])
            row["forward_backward_s"] = statistics.median(times[spec.name]["fwd_bwd"])
            ref = outputs.get(app.reference_name(spec))
            if ref is not None:
                row["x_err_vs_qpdsl_proxsuite"] = float((outputs[spec.name] - ref).abs().max())
        rows.append(row)
    # ratios to QPLayer on the same problem (the same variant of the example)
    baseline = {spec.variant: row for spec, row in zip(specs, rows, strict=True) if spec.kind == "qplayer"}
    for spec, row in zip(specs, rows, strict=True):
        ref_row = baseline.get(spec.variant)
        if "error" not in row and ref_row is not None and "error" not in ref_row:
            row["baseline"] = ref_row["model"]
            row["forward_ratio"] = row["forward_s"] / ref_row["forward_s"]
            row["forward_backward_ratio"] = row["forward_backward_s"] / ref_row["forward_backward_s"]
    return rows


def run(quick: bool = False, repeats: int | None = None, batch: int | None = None) -> dict[str, Any]:
    """Every application; ``quick`` uses batch 8, a shorter MPC horizon and one repeat (for CI)."""
    from _peers import float64

    repeats = repeats or (1 if quick else 5)
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    with float64():
        for app in applications(quick, batch):
            print(f"# {app.name}: batch {app.batch}, {app.size}", flush=True)
            rows.extend(bench(app, repeats))
    return {"benchmark": "applications", "quick": quick, "repeats": repeats, "rows": rows}


def format_table(rows: list[dict[str, Any]]) -> str:
    from _peers import format_table as markdown

    cells = []
    for r in rows:
        if "error" in r:
            cells.append([r["application"], r["model"], "-", "-", "-", "-", "-", r["error"][:60]])
            continue
        err = r.get("x_err_vs_qpdsl_proxsuite")
        cells.append(
            [
                r["application"],
                r["model"],
                f"{r['forward_s'] * 1e3:.1f}",
                f"{r['forward_backward_s'] * 1e3:.1f}",
                f"{r['forward_ratio']:.2f}" if "forward_ratio" in r else "-",
                f"{r['forward_backward_ratio']:.2f}" if "forward_backward_ratio" in r else "-",
                "-" if err is None else f"{err:.1e}",
                "ok",
            ]
        )
    headers = ["application", "model", "fwd ms", "fwd+bwd ms", "fwd / QPLayer", "fwd+bwd / QPLayer"]
    return markdown([*headers, "max |out - qpdsl[proxsuite]|", "status"], cells)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    result = run(args.quick, args.repeats, args.batch)
    print("\n" + format_table(result["rows"]) + "\n(ratios: time / QPLayer's time on the same problem)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written {args.json}")


if __name__ == "__main__":
    main()
