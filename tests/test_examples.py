"""Smoke tests of the examples: the smallest settings, in-process, outputs written and finite."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):  # noqa: ANN202
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


def _qpdsl_models(module) -> list[str]:  # noqa: ANN001
    """The example's qpdsl models that run here; skip the test when none does (backends missing)."""
    from _peers import unavailable_reason

    names, reasons = [], []
    for spec in module.MODELS:
        if spec.kind != "qpdsl":
            continue
        reason = unavailable_reason(spec)
        if reason is None:
            names.append(spec.name)
        else:
            reasons.append(f"{spec.name}: {reason}")
    if not names:
        pytest.skip("no qpdsl backend works through to_torch yet: " + "; ".join(reasons))
    return names


def _finite(values) -> bool:  # noqa: ANN001
    return all(v is not None and math.isfinite(v) for v in values)


def test_sudoku_smallest(tmp_path: Path) -> None:
    sudoku = _load("sudoku")
    models = _qpdsl_models(sudoku)
    report = sudoku.main(
        [
            "--epochs",
            "1",
            "--train-size",
            "20",
            "--test-size",
            "10",
            "--batch-size",
            "10",
            "--models",
            ",".join(models),
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert (tmp_path / "sudoku.json").is_file() and (tmp_path / "sudoku.png").is_file()
    saved = json.loads((tmp_path / "sudoku.json").read_text())
    assert set(saved["models"]) == set(models)
    for name, h in report["models"].items():
        assert "failed" not in h, f"{name}: {h.get('failed')}"
        assert h["epoch"] == [0, 1]
        assert _finite(h["train_loss"][1:]), name
        assert all(0.0 <= e <= 1.0 for e in h["test_error"]), name
    assert "final test error" in report["table"]


def test_sudoku_puzzles_have_unique_solutions() -> None:
    import numpy as np

    sudoku = _load("sudoku")
    grids = sudoku.all_grids()
    assert grids.shape == (288, 4, 4)
    rng = np.random.default_rng(1)
    for _ in range(20):
        grid = sudoku.random_grid(rng)
        assert any((grid == g).all() for g in grids)
        given = sudoku.make_puzzle(grid, 8, rng, grids)
        assert (~given).sum() <= 8
        assert np.all((grids == grid) | ~given, axis=(1, 2)).sum() == 1


def test_cartpole_quick(tmp_path: Path) -> None:
    cartpole = _load("cartpole")
    models = _qpdsl_models(cartpole)
    report = cartpole.main(["--quick", "--models", ",".join(models), "--out", str(tmp_path), "--no-progress"])
    assert (tmp_path / "cartpole.json").is_file()
    for name, h in report["models"].items():
        assert "failed" not in h, f"{name}: {h.get('failed')}"
        assert _finite(h["loss"]) and len(h["loss"]) == 2, name
        assert h["forward_s"] and h["backward_s"], name
    assert "forward ms / batch" in report["table"]


def test_peer_layers_match_qpdsl_on_sudoku() -> None:
    """The peers (when installed) solve the same compiled QP as qpdsl: same x on one batch."""
    sudoku = _load("sudoku")
    from _peers import ModelSpec, float64, unavailable_reason

    with float64():
        problem, params, x = sudoku.sudoku_problem(12, quadratic=True)
        gen = torch.Generator().manual_seed(0)
        A = torch.rand(12, 64, generator=gen)
        b = A @ torch.full((64,), 0.25)
        p = torch.rand(3, 64, generator=gen)
        specs = [
            ModelSpec("qpdsl", "qpdsl", "proxsuite"),
            ModelSpec("qpth", "qpth"),
            ModelSpec("qplayer", "qplayer"),
        ]
        runnable = [s for s in specs if unavailable_reason(s) is None]
        if len(runnable) < 2:
            pytest.skip("fewer than two layers run here: " + ", ".join(s.name for s in runnable))
        xs = {s.name: s.build(problem, params, [x])(A, b, p)[0].detach() for s in runnable}
    ref = next(iter(xs.values()))
    for name, value in xs.items():
        assert torch.allclose(value, ref, atol=1e-4), name


# The examples default to backend="auto"; the tests pin the backend they were written for.


def test_simplex_projection_small() -> None:
    pytest.importorskip("proxsuite")
    simplex = _load("simplex_projection")
    report = simplex.main(["--backend", "proxsuite", "--quick"])
    assert report["check_value_error"] < 1e-8 and report["check_grad_error"] < 1e-8
    assert report["max_projection_error"] < 1e-8
    assert _finite(report["train_loss"]) and len(report["train_loss"]) == 1
    assert 0.0 <= report["test_accuracy"][-1] <= 1.0


def test_simplex_projection_sort_formula() -> None:
    import numpy as np

    simplex = _load("simplex_projection")
    y = np.random.default_rng(0).normal(scale=2.0, size=(50, 6))
    p = simplex.project_simplex_sort(y)
    assert np.allclose(p.sum(1), 1.0) and (p >= 0).all()
    for yi, pi in zip(y, p, strict=True):  # p = max(y - tau, 0) with one threshold tau per row
        tau = (yi - pi)[pi > 0]
        assert np.ptp(tau) < 1e-12 and (yi[pi == 0] <= tau[0] + 1e-12).all()


def test_constrained_regression_small() -> None:
    pytest.importorskip("proxsuite")
    regression = _load("constrained_regression")
    report = regression.main(["--backend", "proxsuite", "--quick"])
    assert report["fd_rel_error_lam"] < 1e-5 and report["fd_rel_error_y"] < 1e-5
    monotone = report["results"]["monotone"]
    assert monotone["monotone_fits"] == 3
    assert _finite([monotone["lam"], monotone["validation_mse"], monotone["true_rmse"]])


def test_denoising_small() -> None:
    pytest.importorskip("proxsuite")
    denoising = _load("denoising")
    report = denoising.main(["--backend", "proxsuite", "--quick"])
    table = report["table"]
    assert _finite([r[k] for r in table.values() for k in ("lam", "train_mse", "test_mse")])
    assert table["learned lam"]["train_mse"] < table["initial lam"]["train_mse"]
    assert table["learned lam"]["train_mse"] <= 1.01 * table["grid-search lam"]["train_mse"]


def test_portfolio_jax_small() -> None:
    pytest.importorskip("jax")
    pytest.importorskip("proxsuite")
    import numpy as np

    portfolio = _load("portfolio_jax")
    report = portfolio.main(["--backend", "jax", "--quick"])
    assert report["weight_error"] < 1e-7
    assert report["grad_rel_error"] < 1e-5
    assert np.allclose(report["weights"].sum(1), 1.0) and np.isfinite(report["grad"]).all()
