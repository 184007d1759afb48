"""Large batches on a GPU: the ``torch`` backend on CUDA beside the ``cpu`` backend on the CPU.

Random feasible dense QPs
(:func:`qpdsl.testing.random_feasible_qps`, n = 100 with 20 equalities and 100 double-sided
inequalities by default), float64, tolerance 1e-9, batches of 1024 and 4096. Timed, as medians:

- ``torch`` backend forward (``qpdsl.torch.solve_qp(..., backend="torch")`` on device tensors)
  and forward + backward of ``sum(x * v)``, with ``torch.cuda.synchronize()`` around each call;
- the ``--cpu-backend`` (``cpu`` by default: the compiled ALM, in parallel threads on every CPU
  core) forward and forward + backward through the same torch front end on CPU tensors;
- with ``--qplayer``, proxsuite's own QPLayer on the CPU (slow at these batch sizes);
- with ``--jax``, the ``jax`` backend (``qpdsl.jax.solve_qp`` under ``jax.jit`` on JAX's default
  device) forward and forward + backward, its compile time, and its largest ``|x_jax - x_cpu|``.

Accuracy: the largest ``|x_torch - x_cpu|``, and the relative distance between the two
backends' gradients per batch element (largest, median, and how many elements exceed 1e-3: in
float32 a row within the solve's accuracy of its bound may be active for one backend and not
for the other, and the gradient jumps there); the device's peak memory
(``torch.cuda.max_memory_allocated``).
Without CUDA the script runs on the CPU (``--device cpu``) so that it can be tried anywhere;
the figures that matter are the CUDA ones.

Usage::

    python benchmarks/cuda_batch.py [--device cuda] [--batches 1024 4096] [--n 100]
        [--repeats 3] [--dtype float64] [--cpu-backend cpu] [--qplayer] [--jax] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

import numpy as np  # noqa: E402

from qpdsl.testing import random_feasible_qps  # noqa: E402


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _median(fn: Callable[[], Any], repeats: int, device: str, warm_up: bool = True) -> tuple[float, Any]:
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up call; and its last value."""
    if warm_up:
        fn()
        _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _step(solve: Callable[..., Any], arrays: list[Any], v: Any) -> tuple[Any, tuple[Any, ...]]:
    """Forward and backward of ``sum(x * v)``; returns x and the gradients w.r.t. the seven inputs."""
    import torch

    inputs = [a.detach().clone().requires_grad_(True) for a in arrays]
    x = solve(*inputs)
    grads = torch.autograd.grad((x * v).sum(), inputs, allow_unused=True)
    return x.detach(), grads


def _grad_distances(a: tuple[Any, ...], b: tuple[Any, ...]) -> np.ndarray:
    """Per batch element, the largest relative distance ``|ga - gb| / (1 + |gb|)`` over all inputs."""
    worst: np.ndarray | None = None
    for ga, gb in zip(a, b, strict=True):
        if ga is None or gb is None:
            continue
        ga, gb = ga.double().cpu().flatten(1), gb.double().cpu().flatten(1)
        d = ((ga - gb).abs().amax(1) / (1.0 + gb.abs().amax(1))).numpy()
        worst = d if worst is None else np.maximum(worst, d)
    return np.zeros(0) if worst is None else worst


def bench(
    batch: int,
    n: int,
    device: str,
    dtype: str,
    repeats: int,
    qplayer: bool,
    cpu_backend: str = "cpu",
    jax: bool = False,
) -> dict[str, Any]:
    """One batch size: every method's median forward and forward+backward time, and accuracy."""
    import torch

    import qpdsl.torch as qt

    p, m = n // 5, n
    tdtype = getattr(torch, dtype)
    host = [torch.as_tensor(a) for a in random_feasible_qps(batch, n, p, m, seed=batch)]
    v_host = torch.as_tensor(np.random.default_rng(batch + 1).standard_normal((batch, n)))
    dev = [a.to(device=device, dtype=tdtype) for a in host]
    v_dev = v_host.to(device=device, dtype=tdtype)

    def gpu_solve(*a: Any) -> Any:
        return qt.solve_qp(*a, backend="torch")[0]

    def cpu_solve(*a: Any) -> Any:
        return qt.solve_qp(*a, backend=cpu_backend)[0]

    row: dict[str, Any] = {"batch": batch, "n": n, "n_eq": p, "n_in": m, "device": device, "dtype": dtype}
    print(f"# batch {batch}, n {n}: torch on {device} ...", file=sys.stderr, flush=True)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    row["torch_fwd_s"], x_dev = _median(lambda: gpu_solve(*dev), repeats, device)
    row["torch_fwd_bwd_s"], (_, g_dev) = _median(lambda: _step(gpu_solve, dev, v_dev), repeats, device)
    if device.startswith("cuda"):
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(f"# batch {batch}, n {n}: {cpu_backend} on the CPU ...", file=sys.stderr, flush=True)
    row["cpu_fwd_s"], x_cpu = _median(lambda: cpu_solve(*host), repeats, "cpu")
    row["cpu_fwd_bwd_s"], (_, g_cpu) = _median(lambda: _step(cpu_solve, host, v_host), repeats, "cpu")
    if qplayer:
        from proxsuite.torch.qplayer import QPFunction

        fn = QPFunction(omp_parallel=True)
        print(f"# batch {batch}, n {n}: proxsuite's QPLayer ...", file=sys.stderr, flush=True)
        row["qplayer_fwd_bwd_s"], _ = _median(
            lambda: _step(lambda *a: fn(*a)[0], host, v_host), 1, "cpu", warm_up=False
        )
    if jax:
        print(f"# batch {batch}, n {n}: jax backend ...", file=sys.stderr, flush=True)
        arrays = [a.to(tdtype).numpy() for a in host]
        row.update(bench_jax(arrays, v_host.numpy(), x_cpu.double().numpy(), dtype, repeats))
    row["max_abs_dx"] = float((x_dev.double().cpu() - x_cpu.double()).abs().max())
    dist = _grad_distances(g_dev, g_cpu)
    row["grad_distance"] = float(dist.max())
    row["grad_distance_median"] = float(np.median(dist))
    row["elements_grad_distance_over_1e-3"] = int((dist > 1e-3).sum())
    row["fwd_ratio"] = row["torch_fwd_s"] / row["cpu_fwd_s"]
    row["fwd_bwd_ratio"] = row["torch_fwd_bwd_s"] / row["cpu_fwd_bwd_s"]
    return row


def bench_jax(arrays: list[np.ndarray], v: np.ndarray, x_ref: np.ndarray, dtype: str, repeats: int) -> dict:
    """The ``jax`` backend on JAX's default device: compile, forward and forward + backward times."""
    import jax
    import jax.numpy as jnp

    import qpdsl.jax as qj

    jax.config.update("jax_enable_x64", dtype == "float64")
    data = [jnp.asarray(a, dtype=dtype) for a in arrays]
    v_j = jnp.asarray(v, dtype=dtype)
    fwd = jax.jit(lambda *a: qj.solve_qp(*a, backend="jax")[0])
    fwd_bwd = jax.jit(
        jax.grad(lambda *a: jnp.sum(qj.solve_qp(*a, backend="jax")[0] * v_j), argnums=(0, 1, 2))
    )

    def timed(fn: Callable[..., Any]) -> tuple[float, float, Any]:
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*data))
        first = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = jax.block_until_ready(fn(*data))
            times.append(time.perf_counter() - t0)
        return first, statistics.median(times), out

    first_f, t_f, x = timed(fwd)
    first_fb, t_fb, _ = timed(fwd_bwd)
    return {
        "jax_device": str(jax.devices()[0]),
        "jax_compile_fwd_s": first_f - t_f,
        "jax_compile_fwd_bwd_s": first_fb - t_fb,
        "jax_fwd_s": t_f,
        "jax_fwd_bwd_s": t_fb,
        "jax_max_abs_dx": float(np.abs(np.asarray(x, dtype=np.float64) - x_ref).max()),
    }


def environment(device: str) -> dict[str, Any]:
    import torch

    env = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--cpu-backend", default="cpu", help="the backend timed on the CPU")
    parser.add_argument("--qplayer", action="store_true", help="also time proxsuite's QPLayer (slow)")
    parser.add_argument("--jax", action="store_true", help="also time the jax backend on JAX's device")
    parser.add_argument("--json", default="", help="write the results here")
    args = parser.parse_args(argv)

    rows = [
        bench(b, args.n, args.device, args.dtype, args.repeats, args.qplayer, args.cpu_backend, args.jax)
        for b in args.batches
    ]
    head = (
        f"{'batch':>6} {'torch fwd s':>11} {'cpu fwd s':>10} {'ratio':>6} | "
        f"{'torch fwd+bwd s':>15} {'cpu fwd+bwd s':>13} {'ratio':>6} | {'max|dx|':>8} {'grad dist':>9}"
        f" {'>1e-3':>5} {'peak GiB':>8} {'QPLayer fwd+bwd s':>17}"
    )
    print(head)
    print("-" * len(head))
    jax_rows = [r for r in rows if "jax_fwd_s" in r]
    for r in rows:
        print(
            f"{r['batch']:>6} {r['torch_fwd_s']:>11.3f} {r['cpu_fwd_s']:>10.3f} "
            f"{r['fwd_ratio']:>6.2f} | "
            f"{r['torch_fwd_bwd_s']:>15.3f} {r['cpu_fwd_bwd_s']:>13.3f} {r['fwd_bwd_ratio']:>6.2f} | "
            f"{r['max_abs_dx']:>8.1e} {r['grad_distance']:>9.1e} "
            f"{r['elements_grad_distance_over_1e-3']:>5} "
            f"{r.get('peak_memory_gib', float('nan')):>8.2f} "
            f"{r.get('qplayer_fwd_bwd_s', float('nan')):>17.3f}"
        )
    for r in jax_rows:
        print(
            f"jax backend, batch {r['batch']} on {r['jax_device']}: fwd {r['jax_fwd_s']:.3f} s, "
            f"fwd+bwd {r['jax_fwd_bwd_s']:.3f} s, compile {r['jax_compile_fwd_s']:.1f} s / "
            f"{r['jax_compile_fwd_bwd_s']:.1f} s, max|dx| {r['jax_max_abs_dx']:.1e}"
        )
    result = {"benchmark": "cuda_batch", "environment": environment(args.device), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
