"""Helpers shared by the examples: build one differentiable layer per "model" from a qpdsl problem.

Every model solves the *same* standard-form QP: the one qpdsl compiles from the problem
(``prob.compile()``: data affine in the parameters, see docs/design.md). The qpdsl models are
``prob.to_torch(...)`` with a backend; the peer models take that compiled data (as
differentiable torch tensors) and hand it to

- ``qpth``: OptNet's batched interior-point layer (``qpth.qp.QPFunction``), which needs a
  positive definite P and one-sided inequalities ``G x <= h``;
- ``qplayer``: proxsuite's QPLayer (``proxsuite.torch.qplayer.QPFunction``).

A model whose package (or qpdsl backend) does not work on this machine is skipped with a
printed reason by :func:`usable_models`, never faked.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import qpdsl as qd

#: Where the examples write their outputs by default: ``results/`` at the top of the checkout, which
#: git ignores. Figures for the documentation are written only when asked (``--img docs/img``).
RESULTS = Path(__file__).resolve().parent.parent / "results"


@contextlib.contextmanager
def float64() -> Iterator[None]:
    """Run with torch's default dtype set to float64 (QPLayer allocates its gradients in it)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def standard_form(qp: Any, parameters: Sequence[qd.Parameter], args: Sequence[torch.Tensor]) -> Any:
    """Dense standard-form data (differentiable in ``args``) of a compiled problem for a batch.

    Each argument may carry a leading batch dimension; unbatched ones are broadcast.
    Parameters that are not arguments take their ``value=``.
    """
    given = {p.id: a for p, a in zip(parameters, args, strict=True)}
    batch = max(
        (int(a.shape[0]) for p, a in zip(parameters, args, strict=True) if a.ndim == len(p.shape) + 1),
        default=1,
    )
    ref = args[0]
    values = {}
    for p in qp.parameters:
        v = given.get(p.id)
        if v is None:
            v = torch.as_tensor(np.asarray(p.value, dtype=float), dtype=ref.dtype)
        if v.ndim == len(p.shape):
            v = v.reshape(1, *p.shape).expand(batch, *p.shape)
        values[p] = v
    return qp.apply(qp.stack_theta(values, batch)).dense()


class PeerLayer(torch.nn.Module):
    """``layer(*parameter_values) -> (variable values, ...)`` solved by a peer on qpdsl's standard form."""

    def __init__(
        self,
        peer: str,
        problem: qd.Problem,
        parameters: Sequence[qd.Parameter],
        variables: Sequence[qd.Variable],
        **options: Any,
    ) -> None:
        super().__init__()
        self.peer = peer
        self.options = dict(options)
        self.qp = problem.compile()
        self.parameters_in = list(parameters)
        self.slices = [self.qp.variables[v] for v in variables]
        if peer == "qpth":
            from qpth.qp import QPFunction

            self._fn = QPFunction(verbose=-1, **options)
        elif peer == "qplayer":
            from proxsuite.torch.qplayer import QPFunction as QPLayerFunction

            self._fn = QPLayerFunction(**options)
        else:
            raise ValueError(f"unknown peer {peer!r}")

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batched = any(a.ndim == len(p.shape) + 1 for p, a in zip(self.parameters_in, args, strict=True))
        d = standard_form(self.qp, self.parameters_in, args)
        if self.peer == "qpth":
            # l <= C x <= u  ->  G x <= h, keeping only the finite sides (the pattern is fixed).
            up = torch.isfinite(d.u[0])
            lo = torch.isfinite(d.l[0])
            G = torch.cat([d.C[:, up], -d.C[:, lo]], dim=1)
            h = torch.cat([d.u[:, up], -d.l[:, lo]], dim=1)
            A, b = (d.A, d.b) if d.b.shape[1] else (torch.Tensor(), torch.Tensor())
            x = self._fn(d.P, d.q, G, h, A, b)
        elif self.options.get("structural_feasibility", True):
            x = self._fn(d.P, d.q, d.A, d.b, d.C, d.l, d.u)[0]
        else:
            # QPLayer's closest-feasible mode takes one C (and, for its backward, one l, u) for the batch
            if not all(torch.equal(M[0], M[-1]) for M in (d.C, d.l, d.u)):
                raise ValueError(
                    "qplayer(structural_feasibility=False) needs the same C, l, u for every element"
                )
            x = self._fn(d.P, d.q, d.A, d.b, d.C[0], d.l[0], d.u[0])[0]
        outs = []
        for sl in self.slices:
            v = x[:, sl.offset : sl.offset + sl.size].reshape(x.shape[0], *sl.shape)
            outs.append(v if batched else v[0])
        return tuple(outs)


@dataclass
class ModelSpec:
    """One model of an example: a name, what it runs on, and how to build its layer."""

    name: str
    kind: str  # "qpdsl", "qpth" or "qplayer"
    backend: str | None = None  # qpdsl backend
    variant: str = ""  # free label used by the example (e.g. "lp" / "qp")
    options: dict[str, Any] = field(default_factory=dict)

    def build(
        self, problem: qd.Problem, parameters: Sequence[qd.Parameter], variables: Sequence[qd.Variable]
    ) -> torch.nn.Module:
        if self.kind == "qpdsl":
            return problem.to_torch(
                parameters=list(parameters), variables=list(variables), backend=self.backend, **self.options
            )
        return PeerLayer(self.kind, problem, parameters, variables, **self.options)


def _probe_qpdsl(backend: str) -> None:
    """Solve and differentiate a 2-variable QP through ``to_torch`` with ``backend``; raise if it fails."""
    x = qd.Variable(2)
    p = qd.Parameter(2)
    prob = qd.Problem(qd.Minimize(0.5 * qd.sum_squares(x) + p @ x), [qd.sum(x) == 1, x >= 0])
    layer = prob.to_torch(parameters=[p], variables=[x], backend=backend)
    pt = torch.tensor([[0.1, -0.2]], dtype=torch.float64, requires_grad=True)
    (xs,) = layer(pt)
    xs[:, 0].sum().backward()
    expected = np.array([0.35, 0.65])
    if not np.allclose(xs.detach().numpy()[0], expected, atol=1e-5):
        raise RuntimeError(f"wrong solution {xs.detach().numpy()[0]} (expected {expected})")
    if pt.grad is None or not torch.isfinite(pt.grad).all():
        raise RuntimeError("no finite gradient")


def unavailable_reason(spec: ModelSpec) -> str | None:
    """Why ``spec`` cannot run here (None when it can)."""
    try:
        if spec.kind == "qpdsl":
            _probe_qpdsl(spec.backend or "proxsuite")
        elif spec.kind == "qpth":
            import qpth.qp  # noqa: F401
        elif spec.kind == "qplayer":
            import proxsuite.torch.qplayer  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure means "skip this model", reported below
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def usable_models(
    specs: Sequence[ModelSpec], wanted: Sequence[str] | None, log: Callable[[str], None] = print
) -> list[ModelSpec]:
    """The specs named in ``wanted`` (all when None) that run here; the others are reported by ``log``."""
    known = {s.name: s for s in specs}
    if wanted:
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise SystemExit(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(known)}")
        specs = [known[w] for w in wanted]
    out = []
    cache: dict[tuple[str, str | None], str | None] = {}
    for s in specs:
        key = (s.kind, s.backend)
        if key not in cache:
            cache[key] = unavailable_reason(s)
        if cache[key] is None:
            out.append(s)
        else:
            log(f"skipping {s.name}: {cache[key]}")
    return out


class _NoBar:
    """Stands in for a tqdm bar when tqdm is not installed (or the bar is disabled): does nothing."""

    def update(self, n: int = 1) -> None:
        """Ignore progress."""

    def set_postfix(self, **kwargs: Any) -> None:
        """Ignore the bar's trailing text."""

    def close(self) -> None:
        """Nothing to close."""


def progress(total: int, desc: str, disable: bool = False, **kwargs: Any) -> Any:
    """A tqdm progress bar, or a silent stand-in when ``disable`` is set or tqdm is not installed.

    Parameters
    ----------
    total
        Number of steps the bar counts to.
    desc
        Label shown in front of the bar.
    disable
        No bar at all (``--no-progress``).
    **kwargs
        Further options of ``tqdm.tqdm``.

    Returns
    -------
    object
        Something with tqdm's ``update``, ``set_postfix`` and ``close``.
    """
    if disable:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional: pip install tqdm (or the `examples` extra) for a bar
        return _NoBar()
    return tqdm(total=total, desc=desc, **kwargs)


class Timer:
    """Accumulates wall-clock seconds by label."""

    def __init__(self) -> None:
        self.total: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, label: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.total[label] = self.total.get(label, 0.0) + time.perf_counter() - t0


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-markdown table (readable in a terminal too)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
