"""The ``cpu`` backend: qpdsl's proximal ALM compiled by numba, one batch element per thread.

The method is the ``torch`` backend's (Ruiz equilibration, proximal BCL outer loop,
semi-smooth Newton with an exact line search, duality-gap test), written per element: each
element stops on its own, and a change of a few rows in the active set updates the Cholesky
factor instead of refactorising it. float32 data are solved in float64 arithmetic to the
float32 tolerance (``settings.tolerance``) and returned in float32. Dense data only
(:class:`~qpdsl.qp.SparseBatch` data are densified).

``settings.options`` may hold ``num_threads`` (threads for the batch; default: torch's
thread count when torch is imported, else numba's) and the solver parameters of
:class:`~qpdsl.backends.cpu_alm.params.Options` (``rho``, ``mu_eq``, ``mu_in``, ``mu_min_eq``,
``mu_min_in``, ``mu_factor``, ``eps_in_min``, ``eps_primal_inf``, ``eps_dual_inf``, ``stall``,
``alpha_bcl``, ``beta_bcl``, ``max_inner``, ``ruiz_iterations``, ``ruiz_tol``, ``max_rank``);
any other raises :class:`~qpdsl.errors.ParameterError`. ``settings.max_iter`` bounds the
outer iterations (and 20 times as many Newton steps).

The first solve in a process compiles the kernels (or loads them from numba's cache);
see ``docs/backends.md`` for the times.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from ..errors import ParameterError
from ..qp import QPData, QPResult, Settings, WarmStart
from . import Backend, Capabilities, register

# numba is imported on the first solve only: listing the backends stays cheap.
_NUMBA = importlib.util.find_spec("numba") is not None


class CpuBackend(Backend):
    """Batched dense proximal ALM in numba kernels, one element per thread."""

    capabilities: Capabilities

    def __init__(self, name: str = "cpu") -> None:
        self.name = name
        self.capabilities = CAPABILITIES

    def solve_raw(self, data: QPData, settings: Settings, warm_start: WarmStart | None = None) -> QPResult:
        """One solve of a batch of dense numpy QPs; see :class:`~qpdsl.backends.Backend`.

        Raises
        ------
        ParameterError
            If the shapes are inconsistent, a warm start has the wrong shape, or an option is unknown.
        """
        return solve_raw(data, settings, warm_start)


def solve_raw(data: QPData, settings: Settings, warm_start: WarmStart | None = None) -> QPResult:
    """One solve of the batch: the claims, unverified (an infeasible element: PRIMAL_INFEASIBLE)."""
    from . import cpu_alm

    options, threads = cpu_alm.parse(settings)
    arrays, out_dtype = _arrays(data)
    P, q, A, b, C, l, u = arrays
    batch, n, p, m = q.shape[0], q.shape[1], b.shape[1], l.shape[1]
    warm = warm_start or WarmStart()
    x0, y0, z0 = (
        _warm(a, batch, size, name)
        for a, size, name in ((warm.x, n, "x"), (warm.y, p, "y"), (warm.z, m, "z"))
    )
    fp, ip = cpu_alm.pack(options, settings, out_dtype, n)
    x, y, z = np.empty((batch, n)), np.empty((batch, p)), np.empty((batch, m))
    status, info = np.empty(batch, dtype=np.int64), np.empty((batch, len(cpu_alm.INFO_FIELDS)))
    args = (cpu_alm.compiled_solve_one(), P, q, A, b, C, l, u, x0, y0, z0, fp, ip, x, y, z, status, info)
    cpu_alm.run(cpu_alm.solve_batch, cpu_alm.solve_batch_serial, args, cpu_alm.thread_count(threads))
    iters, prim, dual, obj = info[:, 0].astype(np.int64), info[:, 1], info[:, 2], info[:, 3]
    if data.r is not None:
        obj = obj + np.asarray(data.r, dtype=np.float64).reshape(batch)
    return QPResult(
        x=x.astype(out_dtype, copy=False),
        y=y.astype(out_dtype, copy=False),
        z=z.astype(out_dtype, copy=False),
        shift_eq=np.zeros((batch, p), dtype=out_dtype),
        shift_in=np.zeros((batch, m), dtype=out_dtype),
        status=status,
        iterations=iters,
        prim_res=prim.astype(out_dtype, copy=False),
        dual_res=dual.astype(out_dtype, copy=False),
        objective=obj.astype(out_dtype, copy=False),
        extras={name: info[:, i].astype(np.int64) for i, name in enumerate(cpu_alm.INFO_FIELDS) if i >= 4},
    )


def _arrays(data: QPData) -> tuple[list[np.ndarray], Any]:
    """The seven arrays as C-contiguous float64, and the dtype of the results (float32 or float64)."""
    from .alm.scaling import Problem, check_shapes

    raw = [np.asarray(a) for a in data.dense().arrays()]
    dtype = np.result_type(*raw)
    out_dtype = np.dtype(np.float32) if dtype == np.float32 else np.dtype(np.float64)
    if dtype.kind not in "biuf":
        raise ParameterError(f"the cpu backend solves real data, got dtype {dtype}")
    arrays = [_kernel_array(a) for a in raw]
    check_shapes(Problem(*arrays))
    return arrays, out_dtype


def _warm(a: Any, batch: int, size: int, name: str) -> np.ndarray:
    """A warm-start array as (batch, size) float64 (zeros when None: the cold start)."""
    if a is None:
        return np.zeros((batch, size))
    a = np.asarray(a, dtype=np.float64)
    if a.shape not in ((batch, size), (size,), (1, size)):
        raise ParameterError(
            f"warm_start.{name} has shape {a.shape}; expected ({batch}, {size}) or ({size},): the "
            f"standard-form {name} of this batch (auxiliary variables and rows included)"
        )
    # an explicit row count: reshape(-1, 0) is ambiguous for empty blocks
    return _kernel_array(np.broadcast_to(a.reshape(a.shape[0] if a.ndim == 2 else 1, size), (batch, size)))


def _kernel_array(a: Any) -> np.ndarray:
    """``a`` as a C-contiguous, writable float64 array (the kernels' one signature), copied if need be."""
    out = np.ascontiguousarray(a, dtype=np.float64)
    return out if out.flags.writeable else out.copy()


CAPABILITIES = Capabilities(
    framework="numpy",
    devices=("cpu",),
    dense=True,
    sparse=False,
    warm_start=True,
    dtypes=("float32", "float64"),
    extra="",
    installed=_NUMBA,
    description="qpdsl's dense proximal ALM compiled by numba, one batch element per thread",
)

register("cpu", CpuBackend, CAPABILITIES)
