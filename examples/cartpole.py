"""Imitation learning of a cart-pole MPC controller through a differentiable QP layer.

The controller's action is the first input u_0 of a linear MPC problem written in qpdsl:

    minimize    sum_t  s_t' Q s_t + r u_t^2                     (t = 1..T for s, 0..T-1 for u)
    subject to  s_{t+1} = A s_t + B u_t                          (linearised, discretised cart-pole)
                |u_t| <= F_max                                   (motor limit)
                |u_t| <= mu_w (M + m) g                          (wheel traction: friction cone of the drive)
                |theta_t| <= mu_p                                (the pole stands in a frictional cup: its
                                                                  contact force, ~ m g along the pole, must
                                                                  stay in the cone |H| <= mu_p V)

State s = (cart position, velocity, pole angle from upright, angular velocity); u = force (N).
An *expert* runs this MPC with the true model (masses, pole length) and cost, in closed loop on
the nonlinear cart-pole, from random initial states; its (state, action) pairs are the data set.
The *learner* starts from a wrong model (heavier, longer pole) and a wrong cost (Q = I, r = 1)
and learns A, B (all 20 entries), the diagonal of Q and r as layer parameters by minimising the
squared error between its first action and the expert's.

Models (each skipped with a message when it cannot run here): qpdsl with the default backend
(``auto``, here ``cpu``), proxsuite and torch (``prob.to_torch``), OptNet (qpth) and proxsuite's
QPLayer on the same compiled QP.
The table gives the forward and backward time per batch and per epoch and the final imitation
loss (the QPLayer paper's Table: forward 616 ms OptNet vs 55 ms QPLayer, backward 61 vs 39 ms,
on its own machine and sizes — ours are measured here).

    python examples/cartpole.py              # default: 512 samples, 5 epochs
    python examples/cartpole.py --quick      # smoke test (CI)

Results go to ``--out`` (default ``results/``, ignored by git); ``--img docs/img`` also writes
them where the documentation reads them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _peers import RESULTS, ModelSpec, Timer, float64, format_table, progress, usable_models  # noqa: E402

import qpdsl as qd  # noqa: E402

MODELS = [
    ModelSpec("qpdsl[auto]", "qpdsl", "auto"),
    ModelSpec("qpdsl[proxsuite]", "qpdsl", "proxsuite"),
    ModelSpec("qpdsl[torch]", "qpdsl", "torch"),
    ModelSpec("optnet[qpth]", "qpth"),
    ModelSpec("qplayer", "qplayer"),
]

G = 9.81
DT = 0.05
TRUE = {"M": 1.0, "m": 0.1, "l": 0.5}  # cart mass, pole mass, pole length (point mass at the tip)
WRONG = {"M": 1.5, "m": 0.3, "l": 0.8}  # the learner's initial guess
F_MAX = 10.0  # motor limit (N)
MU_WHEEL = 0.3  # wheel-ground friction coefficient: |u| <= 0.3 * 1.1 * 9.81 = 3.2 N with the true masses
MU_POLE = 0.25  # pole-cup friction: |theta| <= 0.25 rad
Q_TRUE = (1.0, 0.1, 10.0, 0.1)
R_TRUE = 0.05


# ---------------------------------------------------------------- dynamics


def linear_model(M: float, m: float, l: float, dt: float = DT) -> tuple[np.ndarray, np.ndarray]:
    """Zero-order-hold discretisation of the cart-pole linearised about the upright position."""
    Ac = np.array(
        [[0, 1, 0, 0], [0, 0, -m * G / M, 0], [0, 0, 0, 1], [0, 0, (M + m) * G / (M * l), 0]], float
    )
    Bc = np.array([0, 1 / M, 0, -1 / (M * l)])
    aug = np.zeros((5, 5))
    aug[:4, :4], aug[:4, 4] = Ac * dt, Bc * dt
    E = torch.linalg.matrix_exp(torch.tensor(aug)).numpy()
    return E[:4, :4], E[:4, 4]


def step_nonlinear(s: np.ndarray, u: np.ndarray, substeps: int = 10) -> np.ndarray:
    """The true (nonlinear) cart-pole over one control period; s (B, 4), u (B,)."""
    M, m, l = TRUE["M"], TRUE["m"], TRUE["l"]
    h = DT / substeps
    s = s.copy()
    for _ in range(substeps):
        x, v, th, w = s.T
        sin, cos = np.sin(th), np.cos(th)
        acc = (u - m * G * sin * cos + m * l * w**2 * sin) / (M + m * sin**2)
        alpha = (G * sin - acc * cos) / l
        s = s + h * np.stack([v, acc, w, alpha], axis=1)
    return s


# ---------------------------------------------------------------- the MPC problem


def mpc_problem(horizon: int) -> tuple[qd.Problem, list[qd.Parameter], qd.Variable]:
    """The MPC in qpdsl's modelling language; returns (problem, layer parameters, u).

    The initial state enters through c0 = A s0 (a parameter computed outside the layer, since
    A s0 would be a product of two parameters), so the first predicted state is s_1 = c0 + B u_0.
    """
    s = qd.Variable((horizon, 4), name="s")  # s_1 .. s_T
    u = qd.Variable((horizon, 1), name="u")  # u_0 .. u_{T-1}
    c0 = qd.Parameter(4, name="c0")
    A = qd.Parameter((4, 4), name="A")
    B = qd.Parameter((1, 4), name="B")
    Q = qd.Parameter((4, 4), name="Q", psd=True)
    r = qd.Parameter(name="r", nonneg=True)
    traction = MU_WHEEL * (TRUE["M"] + TRUE["m"]) * G
    cost = qd.sum(qd.hstack([qd.quad_form(s[t], Q) for t in range(horizon)])) + r * qd.sum_squares(u)
    constraints = [
        s[0] == c0 + u[0] @ B,
        s[1:] == s[:-1] @ A.T + u[1:] @ B,
        u <= F_MAX,
        u >= -F_MAX,
        u <= traction,
        u >= -traction,
        s[:, 2] <= MU_POLE,
        s[:, 2] >= -MU_POLE,
    ]
    return qd.Problem(qd.Minimize(cost), constraints), [c0, A, B, Q, r], u


class MPCPolicy(torch.nn.Module):
    """state (batch, 4) -> first MPC action (batch,); model and cost weights are trainable."""

    def __init__(
        self,
        layer: torch.nn.Module,
        model: dict[str, float],
        q: Sequence[float],
        r: float,
        learn: bool = True,
    ) -> None:
        super().__init__()
        A, B = linear_model(**model)
        inv_softplus = lambda y: math.log(math.expm1(y))  # noqa: E731
        self.A = torch.nn.Parameter(torch.tensor(A), requires_grad=learn)
        self.B = torch.nn.Parameter(torch.tensor(B).reshape(1, 4), requires_grad=learn)
        self.wq = torch.nn.Parameter(torch.tensor([inv_softplus(v) for v in q]), requires_grad=learn)
        self.wr = torch.nn.Parameter(torch.tensor(inv_softplus(r)), requires_grad=learn)
        self.layer = layer

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        c0 = state @ self.A.T
        Q = torch.diag(torch.nn.functional.softplus(self.wq))
        (u,) = self.layer(c0, self.A, self.B, Q, torch.nn.functional.softplus(self.wr))
        return u[:, 0, 0]


# ---------------------------------------------------------------- data


def expert_data(
    expert: MPCPolicy, n_traj: int, steps: int, rng: np.random.Generator
) -> tuple[torch.Tensor, ...]:
    """Closed-loop rollouts of the expert MPC on the nonlinear cart-pole: (states, actions)."""
    s = np.column_stack(
        [
            rng.uniform(-1.0, 1.0, n_traj),
            rng.uniform(-1.0, 1.0, n_traj),
            rng.uniform(-0.15, 0.15, n_traj),
            rng.uniform(-0.5, 0.5, n_traj),
        ]
    )
    states, actions = [], []
    with torch.no_grad():
        for _ in range(steps):
            u = expert(torch.tensor(s)).numpy()
            states.append(s)
            actions.append(u)
            s = step_nonlinear(s, u)
    return torch.tensor(np.concatenate(states)), torch.tensor(np.concatenate(actions))


# ---------------------------------------------------------------- training


def train_model(spec: ModelSpec, data: dict[str, torch.Tensor], args: argparse.Namespace) -> dict[str, Any]:
    problem, params, u = mpc_problem(args.horizon)
    policy = MPCPolicy(spec.build(problem, params, [u]), WRONG, (1.0, 1.0, 1.0, 1.0), 1.0)
    opt = torch.optim.Adam(policy.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    X, Y = data["states"], data["actions"]

    def imitation_loss() -> float:
        with torch.no_grad():
            return float(
                sum(
                    torch.sum((policy(x) - y) ** 2)
                    for x, y in zip(X.split(args.batch_size), Y.split(args.batch_size), strict=True)
                )
                / len(X)
            )

    hist: dict[str, Any] = {
        "loss": [imitation_loss()],
        "forward_s": [],
        "backward_s": [],
        "forward_ms_batch": [],
        "backward_ms_batch": [],
    }
    n_batches = math.ceil(len(X) / args.batch_size)
    bar = progress(args.epochs * n_batches, f"{spec.name:>16}", disable=args.no_progress, dynamic_ncols=True)
    try:
        for _ in range(args.epochs):
            timer = Timer()
            for idx in torch.randperm(len(X), generator=gen).split(args.batch_size):
                t0 = time.perf_counter()
                with timer("forward"):
                    loss = torch.mean((policy(X[idx]) - Y[idx]) ** 2)
                t1 = time.perf_counter()
                opt.zero_grad()
                with timer("backward"):
                    loss.backward()
                t2 = time.perf_counter()
                opt.step()
                hist["forward_ms_batch"].append(1e3 * (t1 - t0))
                hist["backward_ms_batch"].append(1e3 * (t2 - t1))
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            hist["forward_s"].append(timer.total["forward"])
            hist["backward_s"].append(timer.total["backward"])
            hist["loss"].append(imitation_loss())
    except Exception as exc:  # noqa: BLE001 - a failing model is reported, the others go on
        hist["failed"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        print(f"\n{spec.name} failed: {hist['failed']}", flush=True)
    finally:
        bar.close()
    with torch.no_grad():
        hist["learned"] = {
            "q": torch.nn.functional.softplus(policy.wq).tolist(),
            "r": float(torch.nn.functional.softplus(policy.wr)),
            "A_error": float(torch.linalg.norm(policy.A - torch.tensor(linear_model(**TRUE)[0]))),
            "B_error": float(torch.linalg.norm(policy.B[0] - torch.tensor(linear_model(**TRUE)[1]))),
        }
    return hist


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="tiny run: 1 epoch, 64 samples, horizon 10")
    ap.add_argument(
        "--models", default="", help="comma-separated (default: all): " + ", ".join(s.name for s in MODELS)
    )
    ap.add_argument("--horizon", type=int, default=15)
    ap.add_argument("--trajectories", type=int, default=16)
    ap.add_argument("--steps", type=int, default=32, help="control steps per expert trajectory")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default=str(RESULTS), help="folder of cartpole.json (default: %(default)s)")
    ap.add_argument("--img", default=None, help="also write cartpole.json here (e.g. docs/img)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.horizon, args.trajectories, args.steps = 1, 10, 4, 16
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the example; returns {"models": {name: history}, "config": ..., "skipped": [...], "table": str}."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skipped: list[str] = []

    def log_skip(msg: str) -> None:
        skipped.append(msg)
        print(msg, flush=True)

    with float64():
        wanted = [w.strip() for w in args.models.split(",") if w.strip()] or None
        specs = usable_models(MODELS, wanted, log_skip)
        if not specs:
            print("no model can run here", flush=True)
            return {"config": vars(args), "skipped": skipped, "models": {}, "table": ""}
        # the expert: the same MPC with the true model and cost, solved by the first usable model
        expert_spec = next((s for s in usable_models(MODELS, None, lambda _: None)), specs[0])
        problem, params, u = mpc_problem(args.horizon)
        expert = MPCPolicy(expert_spec.build(problem, params, [u]), TRUE, Q_TRUE, R_TRUE, learn=False)
        t0 = time.perf_counter()
        states, actions = expert_data(expert, args.trajectories, args.steps, np.random.default_rng(args.seed))
        at_limit = float((actions.abs() > 0.99 * MU_WHEEL * (TRUE["M"] + TRUE["m"]) * G).double().mean())
        print(
            f"cart-pole MPC, horizon {args.horizon}: {len(states)} expert samples from {args.trajectories} "
            f"closed-loop rollouts (expert: {expert_spec.name}, {time.perf_counter() - t0:.1f} s); "
            f"|u| at the traction limit in {at_limit:.0%} of them; "
            f"{args.epochs} epochs, batch {args.batch_size}, {torch.get_num_threads()} torch threads",
            flush=True,
        )
        data = {"states": states, "actions": actions}
        results = {spec.name: train_model(spec, data, args) for spec in specs}

    rows = []
    for name, h in results.items():
        done = len(h["forward_s"]) > 0
        rows.append(
            [
                name,
                f"{np.median(h['forward_ms_batch']):.1f}" if done else "-",
                f"{np.median(h['backward_ms_batch']):.1f}" if done else "-",
                f"{np.mean(h['forward_s']):.2f}" if done else "-",
                f"{np.mean(h['backward_s']):.2f}" if done else "-",
                f"{h['loss'][0]:.4f}",
                f"{h['loss'][-1]:.4f}",
                h.get("failed", "ok")[:70],
            ]
        )
    table = format_table(
        [
            "model",
            "forward ms / batch",
            "backward ms / batch",
            "forward s / epoch",
            "backward s / epoch",
            "initial loss",
            "final loss",
            "status",
        ],
        rows,
    )
    print("\n" + table, flush=True)
    config = {k: v for k, v in vars(args).items() if k not in ("out", "img", "no_progress")}
    config.update(
        torch_threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(),
        samples=len(states),
        command="python examples/cartpole.py " + " ".join(sys.argv[1:] if argv is None else argv),
    )
    report = {"config": config, "skipped": skipped, "models": results, "table": table}
    for folder in [out] + ([Path(args.img)] if args.img else []):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cartpole.json").write_text(json.dumps(report, indent=1))
        print(f"wrote {folder / 'cartpole.json'}", flush=True)
    return report


if __name__ == "__main__":
    main()
