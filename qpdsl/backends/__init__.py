"""The backend registry.

A backend is one module in this package that calls :func:`register` at import time with a
factory and its :class:`Capabilities`. Backends whose packages are missing still register
(so that ``available_backends`` can say what to install) but report ``installed=False``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .._array import namespace, to_numpy
from ..errors import BackendNotFound
from ..qp import QPData, QPResult, Settings, Status, WarmStart


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do.

    Parameters
    ----------
    framework
        The array type its ``solve`` takes and returns: ``"numpy"``, ``"torch"`` or ``"jax"``.
    devices
        Where it computes: subset of ``("cpu", "cuda", "gpu", "tpu")``.
    dense, sparse
        Which matrix formats it accepts (QPData with dense arrays or SparseBatch).
    warm_start
        Whether it uses a :class:`~qpdsl.qp.WarmStart`.
    dtypes
        Floating dtypes it solves in.
    extra
        The pip extra that installs it.
    soft_rows
        Whether ``solve_raw`` (and ``solve_raw_masked``) take ``soft``: rows penalised by their
        squared residual instead of constrained, which solve the closest-feasible stage's
        least-squares problem on the QP's own shapes (others get it in residual form).
    polish
        Whether a ``solved`` claim that fails verification is solved once more, from its own
        point and to a tolerance 100 times tighter, before it is reported: for solvers whose
        stopping test (norms of residuals, the gap of the whole element) is looser than the
        row-by-row check. Numpy backends, eager solves only.
    """

    framework: str
    devices: tuple[str, ...] = ("cpu",)
    dense: bool = True
    sparse: bool = False
    warm_start: bool = True
    dtypes: tuple[str, ...] = ("float64",)
    extra: str = ""
    installed: bool = True
    description: str = ""
    soft_rows: bool = False
    polish: bool = False


class Backend:
    """The base of every backend: a backend only solves a standard-form batch and reports a claim.

    Subclasses implement :meth:`solve_raw` (and, for backends that run under ``jax.jit``,
    :meth:`solve_raw_masked`). :meth:`solve` adds what every backend shares: verification of the
    claims on the unscaled data and the closest feasible QP of infeasible elements.
    """

    name: str
    capabilities: Capabilities

    def solve_raw(self, data: QPData, settings: Settings, warm_start: WarmStart | None = None) -> QPResult:
        """One solve of the batch: the backend's claim per element (never raises for a failed element).

        An infeasible element is reported ``primal_infeasible`` (or any non-ok status); shifts are zero.
        """
        raise NotImplementedError

    def solve_raw_masked(
        self, data: QPData, settings: Settings, warm_start: WarmStart | None, mask: Any, soft: Any = None
    ) -> QPResult:
        """:meth:`solve_raw` on traced arrays, iterating only the elements in ``mask`` (B,) bool,
        with the soft rows ``soft`` (see :class:`Capabilities`)."""
        raise NotImplementedError(f"backend {self.name!r} cannot run on traced arrays")

    def solve(
        self,
        data: QPData,
        settings: Settings,
        warm_start: WarmStart | None = None,
        shiftable: Any = None,
    ) -> QPResult:
        """Solve a batch: the claims of :meth:`solve_raw`, verified, with the closest feasible QP of
        infeasible elements (only the rows ``shiftable`` marks are shifted; default: all).

        Returns
        -------
        QPResult
            In the framework of ``data``. ``extras["messages"]`` holds the backend's messages
            about failed elements, when it gives any.
        """
        from ..solve.closest import Flow, TracedFlow, fold_vmap, solve_with_closest_feasible, traced

        messages: list[dict[int, str]] = []
        extras: dict[str, Any] = {}

        def raw(d: QPData, w: WarmStart | None, soft: Any = None) -> QPResult:
            more = {} if soft is None else {"soft": soft}
            res = self.solve_raw(d, settings, w, **more)
            if soft is None and self.capabilities.polish:
                res = _polish(self, d, settings, res)
            if not messages:  # the first solve's diagnostics (iteration counts, ...) are kept
                extras.update({k: v for k, v in res.extras.items() if k != "messages"})
            messages.append(res.extras.get("messages", {}))
            return res

        if traced(data, warm_start):
            flow: Flow = TracedFlow(lambda d, w, m, s: self.solve_raw_masked(d, settings, w, m, s))
            if not data.is_sparse:

                def closest(d: QPData, w: WarmStart | None) -> QPResult:
                    return solve_with_closest_feasible(flow, d, settings, w, shiftable)

                return fold_vmap(closest, data, warm_start)
        else:
            caps = self.capabilities
            flow = Flow(raw, bucket=caps.framework == "jax", soft_rows=caps.soft_rows)
        result = solve_with_closest_feasible(flow, data, settings, warm_start, shiftable)
        if any(messages):
            later = [msg for c in messages[1:] for msg in c.values()]
            extras.update(messages=messages[0], closest_feasible_messages=later)
        return replace(result, extras=extras) if extras else result


def _polish(backend: Backend, data: QPData, settings: Settings, res: QPResult) -> QPResult:
    """``res`` with each ``solved`` element that fails verification on ``data`` solved again from its
    own point at a tolerance 100 times tighter; the new point replaces it when that solve claims
    ``solved`` too (verification judges it later, as every claim)."""
    from ..solve.closest import select
    from ..solve.verify import check_point

    xp = namespace(res.x)
    solved = res.status == int(Status.SOLVED)
    if not bool(xp.any(solved)):
        return res
    tol = settings.tolerance(res.x.dtype)
    shifts = (xp.zeros_like(res.y), xp.zeros_like(res.z))
    check = check_point(data, res.x, res.y, res.z, *shifts, tol, settings.eps_rel)
    redo = np.flatnonzero(to_numpy(solved & ~check.passed))
    if redo.size == 0:
        return res
    warm = WarmStart(*(xp.take(a, xp.asarray(redo), axis=0) for a in (res.x, res.y, res.z)))
    again = backend.solve_raw(select(data, redo), replace(settings, eps_abs=tol / 100), warm)
    better = redo[to_numpy(again.status) == int(Status.SOLVED)]
    if better.size == 0:
        return res
    rows = np.searchsorted(redo, better)
    out = {}
    for name in ("x", "y", "z", "prim_res", "dual_res", "iterations", "objective"):
        mine, theirs = getattr(res, name), getattr(again, name)
        if mine is None or theirs is None:
            continue
        mine = np.array(to_numpy(mine))
        if name == "iterations":  # both solves count
            mine[better] += to_numpy(theirs)[rows].astype(mine.dtype)
        else:
            mine[better] = to_numpy(theirs)[rows]
        out[name] = mine
    return replace(res, **out)


@dataclass
class _Entry:
    factory: Callable[[str], Backend]
    capabilities: Capabilities
    instances: dict[str, Backend] = field(default_factory=dict)


_REGISTRY: dict[str, _Entry] = {}
_PREFIXES: dict[str, _Entry] = {}
_ALIASES = {"gpu": "torch"}
_MODULES = {  # backend name (or prefix) -> the module that registers it, imported on first use
    "proxsuite": "proxsuite_backend",
    "cpu": "cpu_backend",
    "qpsolvers": "qpsolvers_backend",
    "torch": "torch_backend",
    "jax": "jax_backend",
}
_loaded: set[str] = set()


def register(
    name: str, factory: Callable[[str], Backend], capabilities: Capabilities, prefix: bool = False
) -> None:
    """Register a backend. With ``prefix=True``, ``name`` matches ``"name:<anything>"``."""
    (_PREFIXES if prefix else _REGISTRY)[name] = _Entry(factory, capabilities)


def _load(key: str) -> None:
    """Import the module of backend ``key`` (only that one: a torch user never imports jax)."""
    module = _MODULES.get(key)
    if module is None or key in _loaded:
        return
    _loaded.add(key)
    try:
        importlib.import_module(f"{__name__}.{module}")
    except ModuleNotFoundError as exc:  # a backend module not shipped in this build
        if exc.name != f"{__name__}.{module}":
            raise


def _load_all() -> None:
    for key in _MODULES:
        _load(key)


def get_backend(name: str) -> Backend:
    """Return the backend registered as ``name`` (alias ``gpu`` and ``qpsolvers:<solver>`` included;
    ``auto`` is resolved per call by :func:`qpdsl.solve.core.resolve_backend`).

    Raises
    ------
    BackendNotFound
        If the name is unknown or the backend's package is not installed.
    """
    name = _ALIASES.get(name, name)
    key, _, sub = name.partition(":")
    _load(key)
    entry = _REGISTRY.get(name) if not sub else _PREFIXES.get(key)
    if entry is None:
        _load_all()
        known = sorted(set(_REGISTRY) | set(_ALIASES) | {"auto"}) + [f"{p}:<solver>" for p in _PREFIXES]
        raise BackendNotFound(f"unknown backend {name!r}; known backends: {', '.join(known)}")
    if not entry.capabilities.installed:
        raise BackendNotFound(
            f"backend {name!r} is not installed on this machine; install it with "
            f"pip install 'qpdsl[{entry.capabilities.extra}]'"
        )
    if name not in entry.instances:
        entry.instances[name] = entry.factory(name)
    return entry.instances[name]


def available_backends() -> dict[str, Capabilities]:
    """The backends usable on this machine, by name, with their capabilities."""
    _load_all()
    out = {name: e.capabilities for name, e in sorted(_REGISTRY.items()) if e.capabilities.installed}
    for prefix, e in _PREFIXES.items():
        lister: Any = getattr(e.factory, "available", None)
        for sub in lister() if lister else []:
            out[f"{prefix}:{sub}"] = e.capabilities
    return out
