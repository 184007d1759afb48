"""Correctness and host synchronisations of the ``torch`` backend on a GPU, against the CPU.

Checks, each printed as one line and written to ``--json``:

- a mixed-status batch (feasible QPs, an infeasible one solved as its closest feasible QP, one
  with NaN data, an unbounded LP), float64 and float32, ``on_failure="ignore"``: statuses on the
  device equal to the ``cpu`` backend's on the host, x and the shifts within tolerance;
- the gradients of ``sum(x * v)`` on the device against the host's (ok elements);
- a layer with a ``psd=True`` parameter and ``warm_start=True``: forward and backward twice;
- host synchronisations per forward and per backward, counted with
  ``torch.cuda.set_sync_debug_mode("warn")`` (one warning per synchronising call);
- inputs a user mixes: a problem layer on the default backend given a device tensor beside a
  Python number and a numpy array, and integer device tensors given to ``solve_qp``: the result
  stays on the device, equal to the host's;
- with ``--jax``, a ``to_jax`` function under ``jit(vmap(grad))`` on JAX's default device against
  the reference backend on the host, and its compile time.

The host reference is the ``cpu`` backend (``--reference`` picks another).

Without CUDA it runs on the CPU (``--device cpu``), which checks the script, not the GPU path.

Usage::

    python benchmarks/cuda_check.py [--device cuda] [--reference cpu] [--jax] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

import numpy as np  # noqa: E402

from qpdsl.testing import random_feasible_qps  # noqa: E402

N, P_EQ, M_IN, BATCH = 12, 3, 12, 8
TOL = {"float64": 1e-6, "float32": 2e-3}


def mixed_batch() -> list[np.ndarray]:
    """Random feasible QPs; element 1 infeasible (``x_0 = 5`` against ``x_0 <= 3``), element 2
    with a NaN in q, element 3 an unbounded LP (P = 0, q pointing along an unconstrained ray)."""
    P, q, A, b, C, l, u = random_feasible_qps(BATCH, N, P_EQ, M_IN, seed=11)
    A[1] = 0.0
    A[1, 0, 0], b[1, 0] = 1.0, 5.0
    C[1] = 0.0
    C[1, 0, 0], l[1, 0], u[1, 0] = 1.0, -3.0, 3.0
    q[2, 0] = np.nan
    P[3], A[3], C[3] = 0.0, 0.0, 0.0
    q[3] = -1.0
    b[3], l[3], u[3] = 0.0, -1.0, 1.0
    return [P, q, A, b, C, l, u]


def count_syncs(fn: Callable[[], Any], device: str) -> tuple[int, Any]:
    """Run ``fn`` and count the synchronising CUDA calls it makes (0 on the CPU: not measured)."""
    import torch

    if not device.startswith("cuda"):
        return 0, fn()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            out = fn()
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught), out


def check_mixed(device: str, dtype: str, reference: str = "cpu") -> dict[str, Any]:
    import torch

    import qpdsl.torch as qt

    host = [torch.as_tensor(a, dtype=getattr(torch, dtype)) for a in mixed_batch()]
    v = torch.as_tensor(np.random.default_rng(3).standard_normal((BATCH, N)), dtype=host[0].dtype)

    def step(arrays: list[Any], backend: str, vec: Any) -> tuple[Any, ...]:
        inputs = [a.clone().requires_grad_(True) for a in arrays]
        x, _, _, s_eq, s_in, status = qt.solve_qp(*inputs, backend=backend, on_failure="ignore")
        ok = torch.isin(status, torch.tensor([0, 1], device=status.device))
        loss = (torch.where(ok[:, None], x, torch.zeros_like(x)) * vec).sum()
        syncs, grads = count_syncs(lambda: torch.autograd.grad(loss, inputs, allow_unused=True), device)
        return x.detach(), s_eq.detach(), s_in.detach(), status, grads, syncs

    dev = [a.to(device) for a in host]
    fwd_syncs, out = count_syncs(lambda: step(dev, "torch", v.to(device)), device)
    x_d, se_d, si_d, st_d, g_d, bwd_syncs = out
    x_h, se_h, si_h, st_h, g_h, _ = step(host, reference, v)
    ok = torch.isin(st_h, torch.tensor([0, 1])).numpy()
    tol = TOL[dtype]
    dx = float((x_d.cpu() - x_h).abs()[ok].max())
    ds = float(max((se_d.cpu() - se_h).abs()[ok].max(), (si_d.cpu() - si_h).abs()[ok].max()))
    dg = max(
        float((gd.cpu() - gh).abs()[ok].max() / (1.0 + gh.abs()[ok].max()))
        for gd, gh in zip(g_d, g_h, strict=True)
        if gd is not None and gh is not None
    )
    row = {
        "check": f"mixed batch {dtype}",
        "statuses_device": st_d.cpu().tolist(),
        "statuses_host": st_h.tolist(),
        "max_abs_dx": dx,
        "max_abs_dshift": ds,
        "grad_distance": dg,
        "syncs_forward_and_backward": fwd_syncs,
        "syncs_backward": bwd_syncs,
    }
    row["passed"] = row["statuses_device"] == row["statuses_host"] and max(dx, ds, dg) < tol
    return row


def check_layer(device: str, reference: str = "cpu") -> dict[str, Any]:
    import torch

    import qpdsl as qd

    x = qd.Variable(N, name="x")
    Q = qd.Parameter((N, N), name="Q", psd=True)
    c = qd.Parameter(N, name="c")
    prob = qd.Problem(qd.Minimize(0.5 * qd.quad_form(x, Q) + c @ x), [x >= -1, x <= 1, qd.sum(x) == 0])
    layer = prob.to_torch(parameters=[Q, c], variables=[x], warm_start=True)
    rng = np.random.default_rng(5)
    M = torch.as_tensor(rng.standard_normal((BATCH, N, N)), device=device)
    Q_t = (M @ M.mT / N).requires_grad_(True)
    c_t = torch.as_tensor(rng.standard_normal((BATCH, N)), device=device).requires_grad_(True)
    syncs, grads = [], []
    for _ in range(2):
        n_sync, (sol,) = count_syncs(lambda: layer(Q_t, c_t), device)
        syncs.append(n_sync)
        grads.append(torch.autograd.grad(sol.sum(), [Q_t, c_t]))
    host = prob.to_torch(parameters=[Q, c], variables=[x], backend=reference)
    (sol_h,) = host(Q_t.detach().cpu(), c_t.detach().cpu())
    dx = float((sol.detach().cpu() - sol_h).abs().max())
    finite = all(bool(torch.isfinite(g).all()) for pair in grads for g in pair)
    return {
        "check": "psd warm-started layer",
        "max_abs_dx": dx,
        "syncs_forward": syncs,
        "passed": dx < 1e-6 and finite,
    }


def check_inputs(device: str, reference: str = "cpu") -> dict[str, Any]:
    import torch

    import qpdsl as qd
    import qpdsl.torch as qt

    x = qd.Variable(N, name="x")
    c = qd.Parameter(N, name="c")
    r = qd.Parameter(name="r", nonneg=True)
    w = qd.Parameter(N, name="w")
    prob = qd.Problem(qd.Minimize(qd.sum_squares(x - c) + w @ x), [qd.norm1(x) <= 1 + r, x >= -r])
    rng = np.random.default_rng(7)
    c_t = torch.as_tensor(rng.standard_normal((BATCH, N)), device=device)
    w_np = rng.standard_normal(N)
    layer = prob.to_torch(parameters=[c, r, w], variables=[x])
    (sol,) = layer(c_t, 0.5, w_np)
    (sol_h,) = prob.to_torch(parameters=[c, r, w], variables=[x], backend=reference)(c_t.cpu(), 0.5, w_np)
    P, q, A, b, C, l, u = (torch.as_tensor(a) for a in random_feasible_qps(2, 4, 1, 3, seed=2))
    ints = [torch.round(10 * t).to(torch.int64) for t in (P @ P.mT / 4 + torch.eye(4), q, A, b, C)]
    ints += [torch.full_like(l, -100, dtype=torch.int64), torch.full_like(u, 100, dtype=torch.int64)]
    x_int = qt.solve_qp(*(t.to(device) for t in ints))[0]
    x_int_h = qt.solve_qp(*ints, backend=reference)[0]
    dx = max(float((sol.detach().cpu() - sol_h).abs().max()), float((x_int.cpu() - x_int_h).abs().max()))
    on_device = sol.device.type == torch.device(device).type == x_int.device.type
    return {
        "check": "mixed inputs (number, numpy, integer tensors)",
        "result_devices": [str(sol.device), str(x_int.device)],
        "max_abs_dx": dx,
        "passed": on_device and dx < 1e-6,
    }


def check_jax(reference: str = "cpu") -> dict[str, Any]:
    import time

    import jax
    import jax.numpy as jnp

    import qpdsl as qd

    jax.config.update("jax_enable_x64", True)
    x = qd.Variable(N, name="x")
    c = qd.Parameter(N, name="c")
    prob = qd.Problem(qd.Minimize(qd.sum_squares(x - c)), [qd.sum(x) == 1, x >= 0, x <= 0.5])
    rng = np.random.default_rng(9)
    c_np = rng.standard_normal((BATCH, N))
    v = jnp.asarray(rng.standard_normal(N))
    f = prob.to_jax(parameters=[c], variables=[x])
    g = jax.jit(jax.vmap(jax.grad(lambda ci: jnp.dot(f(ci)[0], v))))
    t0 = time.perf_counter()
    grads = np.asarray(jax.block_until_ready(g(jnp.asarray(c_np))))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(g(jnp.asarray(c_np)))
    second = time.perf_counter() - t0
    f_h = prob.to_jax(parameters=[c], variables=[x], backend=reference)
    g_h = jax.vmap(jax.grad(lambda ci: jnp.dot(f_h(ci)[0], v)))
    with jax.default_device(jax.devices("cpu")[0]):
        grads_h = np.asarray(g_h(jnp.asarray(c_np)))
    dg = float(np.abs(grads - grads_h).max())
    return {
        "check": "jax jit(vmap(grad))",
        "jax_device": str(jax.devices()[0]),
        "compile_and_first_call_s": first,
        "second_call_s": second,
        "max_abs_dgrad": dg,
        "passed": dg < 1e-6,
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reference", default="cpu", help="the backend the device is compared with")
    parser.add_argument("--jax", action="store_true", help="also check a JAX function on JAX's device")
    parser.add_argument("--json", default="", help="write the results here")
    args = parser.parse_args(argv)
    checks: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("mixed batch float64", lambda: check_mixed(args.device, "float64", args.reference)),
        ("mixed batch float32", lambda: check_mixed(args.device, "float32", args.reference)),
        ("psd warm-started layer", lambda: check_layer(args.device, args.reference)),
        ("mixed inputs", lambda: check_inputs(args.device, args.reference)),
    ]
    if args.jax:
        checks.append(("jax", lambda: check_jax(args.reference)))
    rows = []
    for name, check in checks:
        try:
            row = check()
        except Exception as exc:  # one broken check must not hide the others' results
            row = {"check": name, "error": repr(exc), "passed": False}
            traceback.print_exc()
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": args.device, "rows": rows}, indent=2))
    if not all(r["passed"] for r in rows):
        raise SystemExit("some checks failed")
    return rows


if __name__ == "__main__":
    main()
