"""The ``proxsuite`` backend: ProxQP (dense and sparse), batches solved in parallel threads.

Settings map onto ProxQP's as follows: ``eps_abs`` (``settings.tolerance``) and ``eps_rel``
bound the primal and dual residuals, and with ``check_duality_gap`` the duality gap too, so
"solved" means all three are within tolerance. ``settings.options`` are set on
``proxsuite.proxqp.Settings`` by name, except ``num_threads`` (threads for the batch,
default: OpenMP's maximum).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ParameterError
from ..qp import QPData, QPResult, Settings, SparseBatch, Status, WarmStart
from ..solve.closest import select
from ..solve.verify import _matvec
from . import Backend, Capabilities, register

try:
    from proxsuite import proxqp as _proxqp
except Exception:  # registration must never raise, whatever breaks inside the package
    _proxqp = None

# ProxQP treats bounds beyond this magnitude as infinite; give it finite numbers.
_INFINITE_BOUND = 1e20
# A MAX_ITER iterate is read as a direction of unboundedness when it is this much larger than the
# bounds and P d, A d, the recession-cone violation of C d are this small relative to the data.
_DIVERGED, _RECESSION_TOL = 10.0, 1e-6
_ADVANCE = 10  # iterations taken to read the direction of a diverging iterate


class ProxsuiteBackend(Backend):
    """Solve batches of QPs with ProxQP."""

    capabilities: Capabilities

    def __init__(self, name: str = "proxsuite") -> None:
        self.name = name
        self.capabilities = CAPABILITIES

    def solve_raw(self, data: QPData, settings: Settings, warm_start: WarmStart | None = None) -> QPResult:
        """Solve ``data`` (numpy arrays, dense or :class:`~qpdsl.qp.SparseBatch`); see :class:`Backend`."""
        return _solve_raw(data, settings, warm_start)


def _solve_raw(data: QPData, settings: Settings, warm_start: WarmStart | None) -> QPResult:
    assert _proxqp is not None
    batch, n, p, m = data.batch_size, data.n, data.n_eq, data.n_in
    out_dtype = np.asarray(data.q).dtype
    options = dict(settings.options)
    threads = int(options.pop("num_threads", _proxqp.omp_get_max_threads()))
    module = _proxqp.sparse if data.is_sparse else _proxqp.dense
    mats = [_matrices(M, batch) for M in (data.P, data.A, data.C)]
    vecs = [np.ascontiguousarray(np.asarray(v, dtype=np.float64)) for v in (data.q, data.b)]
    low, up = (
        np.clip(np.asarray(v, dtype=np.float64), -_INFINITE_BOUND, _INFINITE_BOUND) for v in (data.l, data.u)
    )
    warm = None if warm_start is None else _warm_arrays(warm_start, batch, n, p, m)

    if warm is None:
        qps = module.BatchQP(batch)
        for i in range(batch):
            qp = qps.init_qp_in_place(n, p, m)
            _configure(qp.settings, settings, options, out_dtype)
            qp.init(mats[0](i), vecs[0][i], mats[1](i), vecs[1][i], mats[2](i), low[i], up[i])
        module.solve_in_parallel(qps, threads)
        results = [qps.get(i).results for i in range(batch)]
    else:
        # Warm starts go through qp.solve(x, y, z) one element at a time: writing a guess into a
        # BatchQP's results before solve_in_parallel corrupts ProxQP's memory.
        results = []
        for i in range(batch):
            qp = module.QP(n, p, m)
            _configure(qp.settings, settings, options, out_dtype)
            qp.init(mats[0](i), vecs[0][i], mats[1](i), vecs[1][i], mats[2](i), low[i], up[i])
            qp.solve(warm[0][i], warm[1][i], warm[2][i])
            results.append(qp.results)
    infos = [r.info for r in results]

    def advance(i: int) -> np.ndarray:
        """A few more iterations of element ``i`` from where it stopped: the step they take."""
        qp = module.QP(n, p, m)
        _configure(qp.settings, settings, options, out_dtype)
        qp.settings.max_iter = _ADVANCE
        qp.init(mats[0](i), vecs[0][i], mats[1](i), vecs[1][i], mats[2](i), low[i], up[i])
        r = results[i]
        qp.solve(r.x, r.y, r.z)
        return np.asarray(qp.results.x, dtype=np.float64) - np.asarray(r.x, dtype=np.float64)

    r0 = np.zeros(batch) if data.r is None else np.asarray(data.r, dtype=np.float64).reshape(batch)

    def stack(attr: str, size: int) -> np.ndarray:
        return np.stack([getattr(r, attr) for r in results]).reshape(batch, size).astype(out_dtype)

    return QPResult(
        x=stack("x", n),
        y=stack("y", p),
        z=stack("z", m),
        shift_eq=np.zeros((batch, p), dtype=out_dtype),
        shift_in=np.zeros((batch, m), dtype=out_dtype),
        status=_diverged(data, stack("x", n).astype(np.float64), [_status(i.status) for i in infos], advance),
        iterations=np.array([i.iter for i in infos], dtype=np.int64),
        prim_res=np.array([i.pri_res for i in infos], dtype=out_dtype),
        dual_res=np.array([i.dua_res for i in infos], dtype=out_dtype),
        objective=(np.array([i.objValue for i in infos]) + r0).astype(out_dtype),
    )


def _diverged(data: QPData, x: np.ndarray, codes: list[int], advance: Any = None) -> np.ndarray:
    """Status codes with MAX_ITER replaced by DUAL_INFEASIBLE where the iterate diverged along a
    recession direction ``d`` (``P d = 0``, ``A d = 0``, ``C d`` in the recession cone of
    ``[l, u]``, ``q'd < 0``, each relative to the rows' norms): a certificate that the QP (or its
    closest feasible QP, which has the same recession cone) is unbounded below.

    ``d`` is ``x / |x|`` for an iterate far beyond the data's bounds, or else the step that
    ``advance(i)`` (a few more iterations) takes from it: along an unbounded direction the
    augmented-Lagrangian steps follow ``d`` far more exactly than ``x`` does, whose bounded part
    is still of the size of the data. ProxQP's own test (``eps_dual_inf``) is off, see
    :func:`_configure`.
    """
    status = np.asarray(codes, dtype=np.int64)
    todo = np.flatnonzero(status == Status.MAX_ITER)
    if todo.size == 0:
        return status
    sub = select(data, todo)
    q, b = np.asarray(sub.q, dtype=float), np.asarray(sub.b, dtype=float)
    l, u = np.asarray(sub.l, dtype=float), np.asarray(sub.u, dtype=float)
    finite_l, finite_u = np.isfinite(l), np.isfinite(u)
    bounds = np.concatenate(
        [np.abs(b), np.where(finite_l, np.abs(l), 0), np.where(finite_u, np.abs(u), 0)], 1
    )
    size = np.abs(x[todo]).max(axis=1, initial=0.0)
    far = size > _DIVERGED * (1.0 + bounds.max(axis=1, initial=0.0))

    def certified(d: np.ndarray) -> np.ndarray:
        tiny = np.finfo(float).tiny
        d = d / np.maximum(np.abs(d).max(axis=1, initial=0.0), tiny)[:, None]

        def small(M: Any, side: np.ndarray | None = None) -> np.ndarray:
            Md = _matvec(M, d)
            norms = _matvec(_abs(M), np.ones_like(d))  # row 1-norms: |M d| <= norms for |d| <= 1
            excess = np.abs(Md) if side is None else np.maximum(side * Md, 0.0)
            return np.all(excess <= _RECESSION_TOL * np.maximum(norms, tiny), axis=1)

        descent = np.einsum("bi,bi->b", q, d) < -_RECESSION_TOL * np.abs(q).sum(axis=1)
        cone = small(sub.C, finite_u.astype(float)) & small(sub.C, -finite_l.astype(float))
        return descent & small(sub.P) & small(sub.A) & cone

    ok = far & certified(x[todo])
    if advance is not None:
        rest = np.flatnonzero(far & ~ok)
        if rest.size:
            steps = np.zeros_like(x[todo])
            steps[rest] = np.stack([advance(int(todo[k])) for k in rest])
            ok[rest] = certified(steps)[rest]
    status[todo[ok]] = Status.DUAL_INFEASIBLE
    return status


def _abs(M: Any) -> Any:
    if isinstance(M, SparseBatch):
        return SparseBatch(M.rows, M.cols, np.abs(np.asarray(M.values)), M.shape)
    return np.abs(np.asarray(M, dtype=float))


def _configure(target: Any, settings: Settings, options: dict[str, Any], dtype: Any) -> None:
    eps = settings.tolerance(dtype)
    target.eps_abs = eps
    target.eps_rel = settings.eps_rel
    target.max_iter = settings.max_iter
    target.verbose = settings.verbose
    target.check_duality_gap = True
    target.eps_duality_gap_abs = eps
    target.eps_duality_gap_rel = settings.eps_rel
    # ProxQP's infeasibility certificates raise false alarms at any threshold: primal on feasible
    # QPs (seen from 1e-4 down to 1e-14, e.g. LPs with duplicated rows), where the closest-feasible
    # stage then reports a spurious shift; dual on infeasible LPs (at iteration 3, even at 0, where
    # a zero step passes the test), so that stage never runs. Both are off (a negative threshold
    # never passes): an infeasible QP runs to max_iter and the closest-feasible stage takes over;
    # an unbounded one runs to max_iter and _diverged certifies it.
    target.eps_primal_inf = -1.0
    target.eps_dual_inf = -1.0
    for key, value in options.items():
        if key.startswith("_") or not hasattr(target, key):
            valid = sorted(k for k in dir(target) if not k.startswith("_"))
            raise ParameterError(
                f"unknown proxsuite option {key!r}; use num_threads or one of: {', '.join(valid)}"
            )
        setattr(target, key, value)


def _matrices(M: Any, batch: int) -> Any:
    """A function ``i -> matrix i`` in the format ProxQP wants (dense array or CSC)."""
    if not isinstance(M, SparseBatch):
        dense = np.asarray(M, dtype=np.float64)
        return lambda i: np.ascontiguousarray(dense[i])
    import scipy.sparse as sp

    rows, cols = np.asarray(M.rows, dtype=np.int64), np.asarray(M.cols, dtype=np.int64)
    order = np.lexsort((rows, cols))  # CSC stores column by column, rows sorted within
    indptr = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=M.shape[1]))])
    values = np.asarray(M.values, dtype=np.float64)[:, order]
    return lambda i: sp.csc_matrix((values[i], rows[order], indptr), shape=M.shape)


def _warm_arrays(warm: WarmStart, batch: int, n: int, p: int, m: int) -> list[np.ndarray]:
    def arr(a: Any, size: int, name: str) -> np.ndarray:
        if a is None:
            return np.zeros((batch, size))
        a = np.asarray(a, dtype=np.float64)
        if a.shape not in ((batch, size), (size,)) and not (a.ndim == 2 and a.shape == (1, size)):
            raise ParameterError(
                f"warm_start.{name} has shape {a.shape}; expected ({batch}, {size}) or ({size},): the "
                f"standard-form {name} of this batch (auxiliary variables and rows included)"
            )
        # an explicit row count: reshape(-1, 0) is ambiguous for empty blocks
        return np.broadcast_to(a.reshape(a.shape[0] if a.ndim == 2 else 1, size), (batch, size))

    return [arr(warm.x, n, "x"), arr(warm.y, p, "y"), arr(warm.z, m, "z")]


def _status(code: Any) -> int:
    out = _proxqp.QPSolverOutput
    table = {
        out.PROXQP_SOLVED: Status.SOLVED,
        out.PROXQP_MAX_ITER_REACHED: Status.MAX_ITER,
        out.PROXQP_PRIMAL_INFEASIBLE: Status.PRIMAL_INFEASIBLE,
        out.PROXQP_DUAL_INFEASIBLE: Status.DUAL_INFEASIBLE,
    }
    return int(table.get(code, Status.NUMERICAL_ERROR))


CAPABILITIES = Capabilities(
    framework="numpy",
    devices=("cpu",),
    dense=True,
    sparse=True,
    warm_start=True,
    dtypes=("float64",),
    extra="proxsuite",
    installed=_proxqp is not None,
    polish=True,
    description="ProxQP (proxsuite), dense and sparse, batches in parallel threads",
)

register("proxsuite", ProxsuiteBackend, CAPABILITIES)
