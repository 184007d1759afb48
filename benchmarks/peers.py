"""Uniform wrappers around the differentiable QP layers a user would otherwise pick.

Every peer takes a dense float64 batch (see :mod:`benchmarks.common`) in the standard form
``min 1/2 x'Px + q'x  s.t.  A x = b,  l <= C x <= u`` and exposes

- ``prepare(data)``: one-off work per problem shape (building a layer, jit tracing), untimed;
- ``forward(data) -> state``: the solve alone, inputs marked for differentiation;
- ``forward_backward(data) -> grads``: the solve and the gradients of ``sum(x * v)`` w.r.t.
  P, q, A, b, C, l, u (numpy), as a training step would run them;
- ``solution(state) -> x`` (numpy).

Each peer runs with its own default settings except where noted (tolerances tightened to
the float64 regime where a default is loose). :func:`peers` returns only the peers whose
packages import; the others are reported by a printed message, never faked.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA_KEYS, Batch


class TorchPeer:
    """A peer written as a torch function ``layer(P, q, A, b, C, l, u) -> x``."""

    framework = "torch"

    def __init__(self, name: str, make_layer: Callable[[Batch], Callable[..., Any]]):
        self.name = name
        self._make_layer = make_layer
        self._layer: Callable[..., Any] | None = None

    def prepare(self, data: Batch) -> None:
        self._layer = self._make_layer(data)

    def forward(self, data: Batch) -> tuple[Any, list[Any], Any]:
        import torch

        # Views of the batch's arrays, not copies: a copy of this size is a parallel torch
        # operation, whose OpenMP threads then spin on the cores the solvers' threads need.
        inputs = [torch.from_numpy(data[k]).requires_grad_() for k in DATA_KEYS]
        assert self._layer is not None, "prepare() first"
        x = self._layer(*inputs)
        return x, inputs, torch.from_numpy(data["v"])

    def forward_backward(self, data: Batch) -> dict[str, np.ndarray]:
        import torch

        x, inputs, v = self.forward(data)
        grads = torch.autograd.grad((x * v).sum(), inputs, allow_unused=True)
        return {
            k: (np.zeros(t.shape) if g is None else g.detach().numpy())
            for k, t, g in zip(DATA_KEYS, inputs, grads, strict=True)
        }

    @staticmethod
    def solution(state: tuple[Any, list[Any], Any]) -> np.ndarray:
        return state[0].detach().numpy()


class JaxPeer:
    """A peer written as a JAX function ``f(P, q, A, b, C, l, u) -> x``, jitted.

    ``f`` solves one problem and is vmapped, or with ``batched=True`` takes the batch itself.
    """

    framework = "jax"

    def __init__(self, name: str, solve: Callable[..., Any], batched: bool = False):
        import jax

        self.name = name
        if not batched:
            solve = jax.vmap(solve)
        self._forward = jax.jit(solve)
        loss = lambda args, v: (solve(*args) * v).sum()
        self._grad = jax.jit(jax.grad(loss))

    def _args(self, data: Batch) -> tuple[Any, ...]:
        import jax.numpy as jnp

        return tuple(jnp.asarray(data[k]) for k in DATA_KEYS)

    def prepare(self, data: Batch) -> None:
        import jax.numpy as jnp

        self._forward(*self._args(data)).block_until_ready()
        self._grad(self._args(data), jnp.asarray(data["v"]))[0].block_until_ready()

    def forward(self, data: Batch) -> Any:
        return self._forward(*self._args(data)).block_until_ready()

    def forward_backward(self, data: Batch) -> dict[str, np.ndarray]:
        import jax.numpy as jnp

        grads = self._grad(self._args(data), jnp.asarray(data["v"]))
        return {k: np.asarray(g) for k, g in zip(DATA_KEYS, grads, strict=True)}

    @staticmethod
    def solution(state: Any) -> np.ndarray:
        return np.asarray(state)


def _stack_ineq(C: Any, l: Any, u: Any, cat: Callable[..., Any]) -> tuple[Any, Any]:
    """``l <= C x <= u`` as ``G x <= h`` (for the peers that take only one-sided rows)."""
    return cat([C, -C]), cat([u, -l])


def qpdsl_peer(backend: str) -> TorchPeer:
    """qpdsl's torch front end with the named backend, default settings."""
    import qpdsl.torch

    def make(_: Batch) -> Callable[..., Any]:
        return lambda P, q, A, b, C, l, u: qpdsl.torch.solve_qp(P, q, A, b, C, l, u, backend=backend)[0]

    return TorchPeer(f"qpdsl[{backend}]", make)


def qpdsl_jax_peer(backend: str) -> JaxPeer:
    """qpdsl's JAX front end with the named backend, default settings."""
    import qpdsl.jax

    def solve(P: Any, q: Any, A: Any, b: Any, C: Any, l: Any, u: Any) -> Any:
        return qpdsl.jax.solve_qp(P, q, A, b, C, l, u, backend=backend)[0]

    return JaxPeer(f"qpdsl-jax[{backend}]", solve, batched=True)


def qplayer_peer() -> TorchPeer:
    """proxsuite's QPLayer (``proxsuite.torch.qplayer.QPFunction``), default settings.

    Its backward allocates gradients in torch's default dtype: the benchmark sets float64.
    Its ``omp_parallel=True`` mode uses half the cores, so on a 2-core machine it is this one.
    """
    from proxsuite.torch.qplayer import QPFunction

    def make(_: Batch) -> Callable[..., Any]:
        fn = QPFunction()
        return lambda P, q, A, b, C, l, u: fn(P, q, A, b, C, l, u)[0]

    return TorchPeer("qplayer", make)


def qpth_peer() -> TorchPeer:
    """qpth (OptNet), batched primal-dual interior point; needs P > 0 and one-sided rows."""
    import torch
    from qpth.qp import QPFunction

    def make(_: Batch) -> Callable[..., Any]:
        fn = QPFunction(verbose=-1)

        def layer(P: Any, q: Any, A: Any, b: Any, C: Any, l: Any, u: Any) -> Any:
            G, h = _stack_ineq(C, l, u, lambda xs: torch.cat(xs, dim=1))
            return fn(P, q, G, h, A, b)

        return layer

    return TorchPeer("qpth", make)


def cvxpylayers_peer(solver: str | None = None) -> TorchPeer:
    """cvxpylayers (torch); P enters through its Cholesky factor (DPP needs ``sum_squares(L' x)``).

    The layer is built once per problem shape in ``prepare``; the factorisation of P is part
    of the timed graph, as it would be in a user's model. ``solver``: cvxpylayers' solver
    (``None``: its default, diffcp; ``"MOREAU"``: the Moreau solver, ``pip install moreau``).
    """
    import cvxpy as cp
    import torch
    from cvxpylayers.torch import CvxpyLayer

    if solver == "MOREAU":
        import moreau  # noqa: F401  (not installed: this peer is reported missing)

    def make(data: Batch) -> Callable[..., Any]:
        n, n_eq, n_in = data["q"].shape[1], data["b"].shape[1], data["l"].shape[1]
        L = cp.Parameter((n, n))
        q, b, l, u = cp.Parameter(n), cp.Parameter(n_eq), cp.Parameter(n_in), cp.Parameter(n_in)
        A, C = cp.Parameter((n_eq, n)), cp.Parameter((n_in, n))
        x = cp.Variable(n)
        prob = cp.Problem(
            cp.Minimize(0.5 * cp.sum_squares(L.T @ x) + q @ x), [A @ x == b, C @ x <= u, C @ x >= l]
        )
        kwargs = {} if solver is None else {"solver": solver}
        fn = CvxpyLayer(prob, parameters=[L, q, A, b, C, l, u], variables=[x], **kwargs)

        def layer(P: Any, q: Any, A: Any, b: Any, C: Any, l: Any, u: Any) -> Any:
            P_sym = 0.5 * (P + P.transpose(-1, -2))
            return fn(torch.linalg.cholesky(P_sym), q, A, b, C, l, u)[0]

        return layer

    return TorchPeer("cvxpylayers" if solver is None else f"cvxpylayers[{solver.lower()}]", make)


def qpax_peer() -> JaxPeer:
    """qpax (JAX, relaxed primal-dual interior point), default settings."""
    import jax.numpy as jnp
    import qpax

    def solve_one(P: Any, q: Any, A: Any, b: Any, C: Any, l: Any, u: Any) -> Any:
        G, h = _stack_ineq(C, l, u, jnp.concatenate)
        return qpax.solve_qp_primal(P, q, A, b, G, h)

    return JaxPeer("qpax", solve_one)


def jaxopt_osqp_peer(tol: float = 1e-6, maxiter: int = 4000) -> JaxPeer:
    """jaxopt's OSQP (implicit differentiation); its default tol=1e-3 is tightened to ``tol``."""
    import jax.numpy as jnp
    from jaxopt import OSQP

    solver = OSQP(tol=tol, maxiter=maxiter)

    def solve_one(P: Any, q: Any, A: Any, b: Any, C: Any, l: Any, u: Any) -> Any:
        G, h = _stack_ineq(C, l, u, jnp.concatenate)
        return solver.run(params_obj=(P, q), params_eq=(A, b), params_ineq=(G, h)).params.primal

    return JaxPeer("jaxopt-osqp", solve_one)


# (front end, backend) pairs of qpdsl that are benchmarked when available.
_QPDSL_RUNS = (
    ("torch", "proxsuite"),
    ("torch", "cpu"),
    ("torch", "auto"),
    ("torch", "torch"),
    ("jax", "jax"),
    ("jax", "proxsuite"),
)
# qpsolvers backends: only when a peer prefix names them (``--dense-peers qpdsl[qpsolvers``), since
# they solve one element at a time and some need many iterations to reach 1e-9
QPSOLVERS_PREFIX = "qpdsl[qpsolvers"


def _qpdsl_peers(log: Callable[[str], None], include: set[str] | None = None) -> list[TorchPeer | JaxPeer]:
    from qpdsl.backends import available_backends

    names = available_backends()
    out: list[TorchPeer | JaxPeer] = []
    for front, backend in _QPDSL_RUNS:
        if backend not in names and backend != "auto":
            log(f"skipping qpdsl[{backend}] ({front} front end): backend not available")
        elif front == "torch":
            out.append(qpdsl_peer(backend))
        else:
            out.append(qpdsl_jax_peer(backend))
    if include is not None and any(i.startswith(QPSOLVERS_PREFIX) for i in include):
        out.extend(qpdsl_peer(name) for name in sorted(names) if name.startswith("qpsolvers:"))
    return out


def peers(include: set[str] | None = None, log: Callable[[str], None] = print) -> list[TorchPeer | JaxPeer]:
    """The peers that import on this machine: all, or those whose name starts with an entry of ``include``.

    JAX runs in float64 from here on.
    """
    try:
        import jax

        jax.config.update("jax_enable_x64", True)
    except ImportError:
        pass  # the JAX peers report themselves missing below
    factories: list[tuple[str, Callable[[], Any]]] = [
        ("qpdsl", lambda: _qpdsl_peers(log, include)),
        ("qplayer", lambda: [qplayer_peer()]),
        ("qpth", lambda: [qpth_peer()]),
        ("cvxpylayers", lambda: [cvxpylayers_peer()]),
        ("cvxpylayers[moreau]", lambda: [cvxpylayers_peer("MOREAU")]),
        ("qpax", lambda: [qpax_peer()]),
        ("jaxopt-osqp", lambda: [jaxopt_osqp_peer()]),
    ]
    out: list[TorchPeer | JaxPeer] = []
    for family, factory in factories:
        if include is not None and not any(i.startswith(family) for i in include):
            continue
        try:
            found = factory()
        except Exception as exc:  # noqa: BLE001  (any import or setup failure means "not available")
            log(f"skipping {family}: {type(exc).__name__}: {exc}")
            continue
        out.extend(p for p in found if include is None or any(p.name.startswith(i) for i in include))
    return out
