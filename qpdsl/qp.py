"""Standard-form QP data, solver settings, statuses and results.

The standard form::

    minimize    1/2 x'Px + q'x + r
    subject to  A x  = b
                l <= C x <= u

Every array carries a leading batch dimension ``B``. Arrays may be numpy, torch or jax
arrays; a backend receives the framework it declares in its capabilities.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from ._array import scatter_2d


class Status(enum.IntEnum):
    """Per-element outcome of a solve."""

    SOLVED = 0
    SOLVED_CLOSEST_FEASIBLE = 1
    DUAL_INFEASIBLE = 2
    MAX_ITER = 3
    NUMERICAL_ERROR = 4
    PRIMAL_INFEASIBLE = 5  # reported only with Settings(closest_feasible=False)
    INACCURATE = 6  # the backend claimed a solution, but its point fails verification

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def ok(self) -> bool:
        """Whether the point returned is a valid answer (solved, or closest feasible)."""
        return self in (Status.SOLVED, Status.SOLVED_CLOSEST_FEASIBLE)


@dataclass(frozen=True)
class Settings:
    """Solver settings shared by every backend.

    Parameters
    ----------
    eps_abs, eps_rel
        Absolute and relative tolerances on the primal and dual residuals (infinity norm).
        ``eps_abs=None`` means 1e-9 in float64 and 1e-5 in float32.
    max_iter
        Iteration limit (outer iterations for ALM backends).
    closest_feasible
        Solve the closest feasible QP when the QP is primal infeasible.
        When False an infeasible element gets status ``primal_infeasible`` (not ``ok``).
    verbose
        Print solver progress.
    options
        Backend-specific options, passed through unchanged.
    """

    eps_abs: float | None = None
    eps_rel: float = 0.0
    max_iter: int = 1_000
    closest_feasible: bool = True
    verbose: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from .errors import ParameterError

        def ok(value: Any) -> bool:
            real = isinstance(value, (int, float, np.floating, np.integer))
            return real and 0 <= float(value) < float("inf")

        def bad(name: str, value: Any, want: str) -> ParameterError:
            return ParameterError(f"Settings.{name}={value!r} is invalid; pass {want}")

        if self.eps_abs is not None and not ok(self.eps_abs):
            raise bad("eps_abs", self.eps_abs, "a finite number >= 0 (or None for the dtype's default)")
        if not ok(self.eps_rel):
            raise bad("eps_rel", self.eps_rel, "a finite number >= 0")
        integer = isinstance(self.max_iter, (int, np.integer)) and not isinstance(self.max_iter, bool)
        if not integer or self.max_iter < 1:
            raise bad("max_iter", self.max_iter, "an integer >= 1")

    def tolerance(self, dtype: Any) -> float:
        """The absolute tolerance to use for arrays of ``dtype``."""
        if self.eps_abs is not None:
            return float(self.eps_abs)
        return 1e-5 if "float32" in str(dtype) else 1e-9

    def with_options(self, **kwargs: Any) -> Settings:
        known = {f.name for f in fields(self)}
        direct = {k: v for k, v in kwargs.items() if k in known}
        extra = {k: v for k, v in kwargs.items() if k not in known}
        return replace(self, **direct, options={**self.options, **extra})


@dataclass(frozen=True)
class SparseBatch:
    """A batch of matrices sharing one sparsity pattern (no repeated entries).

    ``values[k, i]`` is entry ``(rows[i], cols[i])`` of matrix ``k``.
    """

    rows: np.ndarray
    cols: np.ndarray
    values: Any  # (B, nnz)
    shape: tuple[int, int]

    def dense(self) -> Any:
        return scatter_2d(self.values, self.rows, self.cols, self.shape)


@dataclass(frozen=True)
class QPData:
    """A batch of standard-form QPs. ``P``, ``A``, ``C`` are dense (B, ·, ·) arrays or SparseBatch."""

    P: Any
    q: Any
    A: Any
    b: Any
    C: Any
    l: Any
    u: Any
    r: Any = None

    def arrays(self) -> tuple[Any, ...]:
        """``(P, q, A, b, C, l, u)``, in the order of the solvers' arguments."""
        return (self.P, self.q, self.A, self.b, self.C, self.l, self.u)

    @property
    def batch_size(self) -> int:
        return int(self.q.shape[0])

    @property
    def n(self) -> int:
        return int(self.q.shape[1])

    @property
    def n_eq(self) -> int:
        return int(self.b.shape[1])

    @property
    def n_in(self) -> int:
        return int(self.l.shape[1])

    @property
    def is_sparse(self) -> bool:
        return isinstance(self.P, SparseBatch)

    def dense(self) -> QPData:
        """The same data with P, A, C as dense arrays."""

        def d(m: Any) -> Any:
            return m.dense() if isinstance(m, SparseBatch) else m

        return replace(self, P=d(self.P), A=d(self.A), C=d(self.C))

    def map_arrays(self, fn: Any) -> QPData:
        """Apply ``fn`` to every array (dense data only); None stays None."""
        data = self.dense()
        return QPData(
            **{
                f.name: (None if getattr(data, f.name) is None else fn(getattr(data, f.name)))
                for f in fields(data)
            }
        )

    def select(self, index: Any) -> QPData:
        """The sub-batch ``index`` (an index array or slice) of dense data."""
        return self.map_arrays(lambda a: a[index])


@dataclass(frozen=True)
class WarmStart:
    """Initial primal and dual guesses, (B, n), (B, n_eq), (B, n_in); any may be None."""

    x: Any = None
    y: Any = None
    z: Any = None


@dataclass(frozen=True)
class QPResult:
    """What every backend returns, batched, in the framework of its input.

    ``status`` is an integer array of :class:`Status` codes. ``shift_eq`` and ``shift_in`` are
    the constraint shifts s* (zero when feasible). Residuals are infinity norms.
    """

    x: Any
    y: Any
    z: Any
    shift_eq: Any
    shift_in: Any
    status: Any
    iterations: Any
    prim_res: Any
    dual_res: Any
    objective: Any = None
    compl_res: Any = None
    gap: Any = None
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. a factorisation the backward may reuse

    def statuses(self) -> list[Status]:
        return [Status(int(s)) for s in np.asarray(_host(self.status)).reshape(-1)]


def _host(a: Any) -> Any:
    from ._array import to_numpy

    return to_numpy(a)


_PYTREES_REGISTERED = False


def register_jax_pytrees() -> None:
    """Register :class:`QPData`, :class:`WarmStart` and :class:`QPResult` as JAX pytrees.

    Called by the modules that import JAX anyway (``qpdsl.jax``, the ``jax`` backend), so that
    this module itself never imports a framework. Idempotent.
    """
    global _PYTREES_REGISTERED
    if _PYTREES_REGISTERED:
        return
    import jax

    for cls in (QPData, WarmStart, QPResult):
        jax.tree_util.register_dataclass(cls, data_fields=[f.name for f in fields(cls)], meta_fields=[])
    _PYTREES_REGISTERED = True
