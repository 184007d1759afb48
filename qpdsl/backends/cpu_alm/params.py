"""Solver parameters of the ``cpu`` backend: defaults, ``settings.options`` and their packing.

The kernels take the parameters as two flat arrays (floats and integers) indexed by the
constants below, so that one compiled kernel serves every parameter value.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ...errors import ParameterError
from ...qp import Settings

# Indices into the float parameter array.
EPS_ABS, EPS_REL, RHO, MU_EQ, MU_IN, MU_MIN_EQ, MU_MIN_IN, MU_FACTOR = range(8)
EPS_IN_MIN, EPS_PRIMAL_INF, EPS_DUAL_INF, STALL, ALPHA_BCL, BETA_BCL, RUIZ_TOL = range(8, 15)
N_FLOAT = 15
# Indices into the integer parameter array.
MAX_OUTER, MAX_ITER, MAX_INNER, RUIZ_ITERATIONS, MAX_RANK = range(5)
N_INT = 5


@dataclass(frozen=True)
class Options:
    """The solver parameters a user may set through ``settings.options``.

    Penalties act on the Ruiz-equilibrated problem. The defaults are those of the ``torch``
    backend in float64 (the kernels compute in float64 for float32 data too).

    Parameters
    ----------
    rho
        Proximal weight on ``||x - x_prox||²``.
    mu_eq, mu_in
        Initial penalties of the equality and inequality rows.
    mu_min_eq, mu_min_in
        Smallest penalties the BCL update may reach.
    mu_factor
        Factor applied to the penalties when the multipliers are rejected.
    eps_in_min
        Floor of the inner (subproblem) tolerance.
    eps_primal_inf, eps_dual_inf
        Relative thresholds of the primal and dual infeasibility certificates.
    stall
        A Newton step below this (relative to the iterate) ends the subproblem.
    alpha_bcl, beta_bcl
        Exponents of the BCL update of the acceptance threshold.
    max_inner
        Newton steps per subproblem at most.
    ruiz_iterations, ruiz_tol
        Ruiz sweeps at most, and the change of the scaling below which they stop.
    max_rank
        Largest active-set change (rows) handled by rank-one updates of the factor; larger
        changes refactorise. ``None``: ``max(4, n // 8)``.
    """

    rho: float = 1e-7
    mu_eq: float = 1e-3
    mu_in: float = 1e-1
    mu_min_eq: float = 1e-9
    mu_min_in: float = 1e-8
    mu_factor: float = 0.1
    eps_in_min: float = 1e-12
    eps_primal_inf: float = 1e-4
    eps_dual_inf: float = 1e-7
    stall: float = 1e-14
    alpha_bcl: float = 0.1
    beta_bcl: float = 0.9
    max_inner: int = 100
    ruiz_iterations: int = 10
    ruiz_tol: float = 1e-3
    max_rank: int | None = None


THREAD_OPTION = "num_threads"
VALID_OPTIONS = (THREAD_OPTION, *(f.name for f in fields(Options)))


def parse(settings: Settings) -> tuple[Options, int | None]:
    """The solver parameters and the requested thread count (None: the default) of ``settings``.

    Raises
    ------
    ParameterError
        If an option is unknown or its value is not a positive number.
    """
    opts = dict(settings.options)
    unknown = sorted(set(opts) - set(VALID_OPTIONS))
    if unknown:
        raise ParameterError(
            f"unknown option(s) {unknown} for the cpu backend; valid options: {', '.join(VALID_OPTIONS)}"
        )
    threads = opts.pop(THREAD_OPTION, None)
    if threads is not None and (not _is_int(threads) or threads < 1):
        raise ParameterError(f"option num_threads={threads!r} is invalid; pass an integer >= 1")
    for key, value in opts.items():
        integer = key in ("max_inner", "ruiz_iterations", "max_rank")
        ok = _is_int(value) and value >= 0 if integer else _is_real(value) and value > 0
        if not ok and not (key == "max_rank" and value is None):
            want = "an integer >= 0" if integer else "a finite number > 0"
            raise ParameterError(f"option {key}={value!r} is invalid for the cpu backend; pass {want}")
    return Options(**opts), threads


def pack(options: Options, settings: Settings, dtype: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The float and integer parameter arrays of the kernels for data of ``dtype`` with ``n`` variables."""
    eps = settings.tolerance(dtype)
    f = np.empty(N_FLOAT)
    f[EPS_ABS], f[EPS_REL] = eps, settings.eps_rel
    f[RHO], f[MU_EQ], f[MU_IN] = options.rho, options.mu_eq, options.mu_in
    f[MU_MIN_EQ], f[MU_MIN_IN], f[MU_FACTOR] = options.mu_min_eq, options.mu_min_in, options.mu_factor
    f[EPS_IN_MIN] = min(eps, options.eps_in_min)
    f[EPS_PRIMAL_INF], f[EPS_DUAL_INF], f[STALL] = options.eps_primal_inf, options.eps_dual_inf, options.stall
    f[ALPHA_BCL], f[BETA_BCL], f[RUIZ_TOL] = options.alpha_bcl, options.beta_bcl, options.ruiz_tol
    i = np.empty(N_INT, dtype=np.int64)
    i[MAX_OUTER], i[MAX_ITER] = settings.max_iter, 20 * settings.max_iter
    i[MAX_INNER], i[RUIZ_ITERATIONS] = options.max_inner, options.ruiz_iterations
    i[MAX_RANK] = max(4, n // 8) if options.max_rank is None else options.max_rank
    return f, i


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and 0 < float(value) < float("inf")
