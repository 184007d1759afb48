"""The ``proxsuite`` backend: ProxQP (dense and sparse), batches solved in parallel threads.

Settings map onto ProxQP's as follows: ``eps_abs`` (``settings.tolerance``) and ``eps_rel``
bound the primal and dual residuals, and with ``check_duality_gap`` the duality gap too, so
"solved" means all three are within tolerance (DESIGN §7). ``settings.options`` are set on
``proxsuite.proxqp.Settings`` by name, except ``num_threads`` (threads for the batch,
default: OpenMP's maximum).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ParameterError
from ..qp import QPData, QPResult, Settings, SparseBatch, Status, WarmStart
from . import Capabilities, register
from .closest import solve_closest_feasible

try:
    from proxsuite import proxqp as _proxqp
except Exception:  # registration must never raise, whatever breaks inside the package
    _proxqp = None

# ProxQP treats bounds beyond this magnitude as infinite; give it finite numbers.
_INFINITE_BOUND = 1e20


class ProxsuiteBackend:
    """Solve batches of QPs with ProxQP; closest-feasible stage for infeasible elements."""

    capabilities: Capabilities

    def __init__(self, name: str = "proxsuite") -> None:
        self.name = name
        self.capabilities = CAPABILITIES

    def solve(self, data: QPData, settings: Settings, warm_start: WarmStart | None = None) -> QPResult:
        """Solve ``data`` (numpy arrays, dense or :class:`~qpdsl.qp.SparseBatch`); see :class:`Backend`."""
        return solve_closest_feasible(lambda d, w: _solve_raw(d, settings, w), data, settings, warm_start)


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
    r0 = np.zeros(batch) if data.r is None else np.asarray(data.r, dtype=np.float64).reshape(batch)

    def stack(attr: str, size: int) -> np.ndarray:
        return np.stack([getattr(r, attr) for r in results]).reshape(batch, size).astype(out_dtype)

    return QPResult(
        x=stack("x", n),
        y=stack("y", p),
        z=stack("z", m),
        shift_eq=np.zeros((batch, p), dtype=out_dtype),
        shift_in=np.zeros((batch, m), dtype=out_dtype),
        status=np.array([_status(i.status) for i in infos], dtype=np.int64),
        iterations=np.array([i.iter for i in infos], dtype=np.int64),
        prim_res=np.array([i.pri_res for i in infos], dtype=out_dtype),
        dual_res=np.array([i.dua_res for i in infos], dtype=out_dtype),
        objective=(np.array([i.objValue for i in infos]) + r0).astype(out_dtype),
    )


def _configure(target: Any, settings: Settings, options: dict[str, Any], dtype: Any) -> None:
    eps = settings.tolerance(dtype)
    target.eps_abs = eps
    target.eps_rel = settings.eps_rel
    target.max_iter = settings.max_iter
    target.verbose = settings.verbose
    target.check_duality_gap = True
    target.eps_duality_gap_abs = eps
    target.eps_duality_gap_rel = settings.eps_rel
    # ProxQP's certificate test raises false alarms on feasible LPs at any threshold above eps
    # (seen at 1e-4 and 1e-6). At eps an infeasible QP runs to max_iter instead, and the
    # closest-feasible stage, which takes over any failed element, finds the shift.
    target.eps_primal_inf = eps
    target.eps_dual_inf = eps
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
    def arr(a: Any, size: int) -> np.ndarray:
        if a is None:
            return np.zeros((batch, size))
        return np.asarray(a, dtype=np.float64).reshape(batch, size)

    return [arr(warm.x, n), arr(warm.y, p), arr(warm.z, m)]


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
    description="ProxQP (proxsuite), dense and sparse, batches in parallel threads",
)

register("proxsuite", ProxsuiteBackend, CAPABILITIES)
