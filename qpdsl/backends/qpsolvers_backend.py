"""The ``qpsolvers:<solver>`` backends: any solver installed through qpsolvers, one element at a time.

Two-sided rows ``l <= C x <= u`` become ``G x <= h`` rows for their finite sides; rows with
``l == u`` become equalities (interior-point solvers need a strict interior). Duals are
mapped back to our convention: ``z = z_upper - z_lower``. qpsolvers only says whether a
solution was found, so a failed element goes to the closest-feasible stage, which tells an
infeasible problem from a failed solve. ``settings.options`` are passed to the solver.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import BackendNotFound, ParameterError, listing
from ..qp import QPData, QPResult, Settings, Status, WarmStart
from . import Backend, Capabilities, register

try:
    import qpsolvers as _qpsolvers
except Exception:  # registration must never raise, whatever breaks inside the package
    _qpsolvers = None

# Each solver names its tolerances differently; ``eps`` is settings.tolerance(dtype).
# Clarabel's feasibility test is relative to the size of the data and verification's is absolute
# per row: its tolerance goes a decade below eps so that its "solved" points pass verification.
_TOLERANCES: dict[str, Any] = {
    "clarabel": lambda eps, rel, it: {
        "tol_feas": 0.1 * eps,
        "tol_gap_abs": 0.1 * eps,
        "tol_gap_rel": rel,
        "max_iter": it,
    },
    # PIQP tests the duality gap against tolerances of its own (1e-8 absolute by default)
    "piqp": lambda eps, rel, it: {
        "eps_abs": eps,
        "eps_rel": rel,
        "eps_duality_gap_abs": eps,
        "eps_duality_gap_rel": rel,
        "max_iter": it,
    },
    "osqp": lambda eps, rel, it: {"eps_abs": eps, "eps_rel": rel, "max_iter": it},
    "proxqp": lambda eps, rel, it: {
        "eps_abs": eps,
        "eps_rel": rel,
        "check_duality_gap": True,
        "eps_duality_gap_abs": eps,
        "eps_duality_gap_rel": rel,
        "max_iter": it,
    },
    "qpalm": lambda eps, rel, it: {"eps_abs": eps, "eps_rel": rel, "max_iter": it},
    "scs": lambda eps, rel, it: {"eps_abs": eps, "eps_rel": rel, "max_iters": it},
    # HiGHS's QP solver has no iteration limit by default, and on some dense QPs it never stops
    # (seen: the least-squares feasibility QP of the closest-feasible stage, n=110)
    "highs": lambda eps, rel, it: {
        "primal_feasibility_tolerance": eps,
        "dual_feasibility_tolerance": eps,
        "qp_iteration_limit": it,
    },
    "ecos": lambda eps, rel, it: {"abstol": eps, "feastol": eps, "reltol": max(rel, eps), "max_iters": it},
    "cvxopt": lambda eps, rel, it: {"abstol": eps, "feastol": eps, "reltol": max(rel, eps), "maxiters": it},
    "qtqp": lambda eps, rel, it: {
        "tol_feas": eps,
        "tol_gap_abs": eps,
        "tol_gap_rel": max(rel, eps),
        "max_iter": it,
    },
}


# Solvers that need P positive definite (quadprog factorises it); a merely semidefinite P, as the
# variables that sum_squares, norm1 or abs add give, makes every solve fail.
_NEEDS_DEFINITE_P = ("quadprog",)
# Solvers whose failure verdict qpsolvers does not pass on (daqp's exit flag, HiGHS's model status).
_NO_VERDICT = ("daqp", "highs")
_SEMIDEFINITE_SOLVERS = "'cpu', 'proxsuite', 'qpsolvers:clarabel' or 'qpsolvers:piqp'"


def _available() -> list[str]:
    return list(_qpsolvers.available_solvers) if _qpsolvers is not None else []


class QpsolversBackend(Backend):
    """Forward pass through ``qpsolvers.solve_problem``, one element at a time."""

    capabilities: Capabilities
    available = staticmethod(_available)

    def __init__(self, name: str) -> None:
        solver = name.partition(":")[2]
        if solver not in _available():
            raise BackendNotFound(
                f"qpsolvers solver {solver!r} is not installed; install it with "
                f"pip install 'qpsolvers[{solver}]' (installed: {', '.join(_available()) or 'none'})"
            )
        self.name = name
        self.solver = solver
        self.capabilities = CAPABILITIES

    def solve(
        self, data: QPData, settings: Settings, warm_start: WarmStart | None = None, shiftable: Any = None
    ) -> QPResult:
        """As :meth:`Backend.solve`; refuses data that the solver cannot solve at all.

        Raises
        ------
        BackendNotFound
            The solver needs P positive definite (quadprog) and P of some element is not.
        """
        if self.solver in _NEEDS_DEFINITE_P:
            _check_definite(self.solver, data)
        return super().solve(data, settings, warm_start, shiftable)

    def solve_raw(self, data: QPData, settings: Settings, warm_start: WarmStart | None = None) -> QPResult:
        """Solve ``data`` (dense numpy arrays); see :class:`Backend`.

        Solver errors go in ``extras["messages"]``, which maps batch indices to messages.
        """
        messages: dict[int, str] = {}
        result = self._solve_raw(data.dense(), settings, warm_start, messages)
        return replace(result, extras={"messages": messages}) if messages else result

    def _solve_raw(
        self, data: QPData, settings: Settings, warm: WarmStart | None, messages: dict[int, str]
    ) -> QPResult:
        batch, n, p, m = data.batch_size, data.n, data.n_eq, data.n_in
        dtype = np.asarray(data.q).dtype
        # Writable C-contiguous copies: some wrapped solvers (daqp) ignore strides and misread views,
        # and refuse read-only buffers (arrays that come from JAX are read-only)
        P, q, A, b, C, low, up = (
            np.array(a, dtype=np.float64, order="C", copy=True)
            for a in (data.P, data.q, data.A, data.b, data.C, data.l, data.u)
        )
        eps = settings.tolerance(dtype)
        kwargs = {
            **_TOLERANCES.get(self.solver, lambda *_: {})(eps, settings.eps_rel, settings.max_iter),
            **settings.options,
        }
        x, y, z = np.full((batch, n), np.nan), np.full((batch, p), np.nan), np.full((batch, m), np.nan)
        status = np.full(batch, int(Status.NUMERICAL_ERROR), dtype=np.int64)
        for i in range(batch):
            fixed = np.isfinite(up[i]) & (low[i] == up[i])
            upper, lower = np.isfinite(up[i]) & ~fixed, np.isfinite(low[i]) & ~fixed
            G, h = np.concatenate([C[i][upper], -C[i][lower]]), np.concatenate([up[i][upper], -low[i][lower]])
            Ae, be = np.concatenate([A[i], C[i][fixed]]), np.concatenate([b[i], up[i][fixed]])
            problem = _qpsolvers.Problem(
                P[i], q[i], *((G, h) if h.size else (None, None)), *((Ae, be) if be.size else (None, None))
            )
            init = None if warm is None or warm.x is None else np.asarray(warm.x[i], dtype=np.float64)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    sol = _qpsolvers.solve_problem(
                        problem, self.solver, initvals=init, verbose=settings.verbose, **kwargs
                    )
            except (AttributeError, TypeError) as err:
                # an option the solver does not know (clarabel: AttributeError, others: TypeError)
                if not settings.options:  # one of the tolerance options qpdsl passes by name
                    raise BackendNotFound(
                        f"the installed {self.solver} rejected the options qpdsl passes for its "
                        f"tolerance and iteration limit ({', '.join(sorted(kwargs))}): {err}; install "
                        f"the version that qpsolvers {_qpsolvers.__version__} documents, or choose "
                        "another backend"
                    ) from err
                raise ParameterError(
                    f"qpsolvers solver {self.solver!r} rejected the options {sorted(settings.options)}: "
                    f"{err}; check their names in the {self.solver} documentation"
                ) from err
            except (_qpsolvers.QPError, ValueError, ArithmeticError, RuntimeError) as err:
                messages[i] = f"{self.solver}: {err}"
                # qpsolvers itself rejects unconstrained problems that are unbounded below
                if isinstance(err, _qpsolvers.ProblemError) and "unbounded" in str(err).lower():
                    status[i] = Status.DUAL_INFEASIBLE
                continue
            if sol.found and sol.x is not None:
                status[i] = Status.SOLVED
                x[i] = sol.x
                y_all = np.zeros(p + int(fixed.sum())) if sol.y is None else sol.y
                y[i] = y_all[:p]
                zi = np.zeros(m)
                g = np.zeros(int(upper.sum()) + int(lower.sum())) if sol.z is None else sol.z
                zi[upper] += g[: upper.sum()]
                zi[lower] -= g[upper.sum() :]
                zi[fixed] = y_all[p:]
                z[i] = zi
            else:
                status[i] = _failure_status(sol.extras)
                if self.solver in _NO_VERDICT and status[i] == Status.NUMERICAL_ERROR:
                    messages[i] = (
                        f"{self.solver} found no solution, and qpsolvers does not pass on its reason: an "
                        "unbounded problem (dual_infeasible) cannot be told from a numerical failure; "
                        "solve with 'cpu' or 'qpsolvers:clarabel' to know which"
                    )
        prim_res = _primal_residual(x, A, b, C, low, up)
        dual_res = _dual_residual(x, y, z, P, q, A, C)
        return QPResult(
            x=x.astype(dtype),
            y=y.astype(dtype),
            z=z.astype(dtype),
            shift_eq=np.zeros((batch, p), dtype=dtype),
            shift_in=np.zeros((batch, m), dtype=dtype),
            status=status,
            iterations=np.zeros(batch, dtype=np.int64),
            prim_res=prim_res.astype(dtype),
            dual_res=dual_res.astype(dtype),
            objective=(
                0.5 * np.einsum("bi,bij,bj->b", x, P, x)
                + np.einsum("bi,bi->b", q, x)
                + (0.0 if data.r is None else np.asarray(data.r, dtype=np.float64).reshape(batch))
            ).astype(dtype),
        )


def _check_definite(solver: str, data: QPData) -> None:
    """Raise :class:`BackendNotFound` naming solvers that work when some element's P is not positive
    definite (the symmetric part: a Cholesky factorisation fails)."""
    P = np.asarray(data.dense().P, dtype=np.float64)
    P = 0.5 * (P + np.swapaxes(P, -1, -2))
    singular = []
    for i, Pi in enumerate(P):
        if not np.all(np.isfinite(Pi)):
            continue  # invalid data: reported as such by the solve path
        try:
            np.linalg.cholesky(Pi)
        except np.linalg.LinAlgError:
            singular.append(i)
    if singular:
        raise BackendNotFound(
            f"qpsolvers:{solver} needs a positive definite P, and P of batch elements "
            f"[{listing(singular)}] is only positive semidefinite (variables without a quadratic term: "
            "those of an LP, or the ones sum_squares, norm1, abs or huber introduce); use a solver "
            f"that accepts a semidefinite P: {_SEMIDEFINITE_SOLVERS}"
        )


def _failure_status(extras: dict[str, Any]) -> int:
    """Read a solver's own verdict out of qpsolvers' extras, where it has one."""
    info = extras.get("info")
    text = " ".join(
        str(t) for t in (extras.get("status"), getattr(info, "status", None), extras.get("infostring"))
    )
    text = text.lower().replace("_", "").replace(" ", "")
    if "dualinfeasible" in text or "unbounded" in text:
        return int(Status.DUAL_INFEASIBLE)
    if "primalinfeasible" in text:
        return int(Status.PRIMAL_INFEASIBLE)
    if "iter" in text and ("max" in text or "limit" in text):
        return int(Status.MAX_ITER)
    return int(Status.NUMERICAL_ERROR)


def _primal_residual(
    x: np.ndarray, A: np.ndarray, b: np.ndarray, C: np.ndarray, low: np.ndarray, up: np.ndarray
) -> np.ndarray:
    cx = np.einsum("bij,bj->bi", C, x)
    viol = np.concatenate([np.einsum("bij,bj->bi", A, x) - b, cx - np.clip(cx, low, up)], axis=1)
    return np.abs(viol).max(axis=1, initial=0.0)


def _dual_residual(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, P: np.ndarray, q: np.ndarray, A: np.ndarray, C: np.ndarray
) -> np.ndarray:
    grad = np.einsum("bij,bj->bi", P, x) + q + np.einsum("bji,bj->bi", A, y) + np.einsum("bji,bj->bi", C, z)
    return np.abs(grad).max(axis=1, initial=0.0)


CAPABILITIES = Capabilities(
    framework="numpy",
    devices=("cpu",),
    dense=True,
    sparse=False,
    warm_start=True,
    dtypes=("float64",),
    extra="solvers",
    installed=_qpsolvers is not None,
    polish=True,
    description="any solver installed through qpsolvers (forward pass one element at a time)",
)

register("qpsolvers", QpsolversBackend, CAPABILITIES, prefix=True)
