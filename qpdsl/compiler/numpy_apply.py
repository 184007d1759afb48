"""Applying an affine map ``values = T @ [theta; 1] + offset`` to a numpy batch at memory speed.

A compiled map is mostly a gather: most values are one entry of theta times a number, or a
constant. A sparse matmul (or a fancy-index gather) of a (B, n_theta) batch is limited by
index traffic; copying slices is limited by memory bandwidth only. So :func:`make_plan`
splits the values once into

- *runs*: slices ``out[:, a:b] = coef * theta[:, c:c + (b - a)]`` (consecutive columns, as the
  entries of a Parameter matrix in ``A @ x``) or ``out[:, a:b] = coef * theta[:, c]`` (one
  column broadcast, as ``lam`` in ``lam * norm1(x)``);
- *constant runs*: slices of a constant row (the ones of auxiliary variables, the ±inf of
  absent bounds);
- the remaining single entries (gathered with fancy indexing), and the values that sum
  several entries of theta (a small sparse matmul on those rows only);

and :func:`fill` runs it. (A map with no parameter at all could be answered by a read-only
broadcast view of its constant row, but solvers wrapped through Cython memoryviews reject
read-only arrays, so every value is written.)
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

MIN_RUN = 32  # shorter slices cost more in Python overhead than a fancy-index gather
CONST, SINGLE, MULTI = 0, 1, 2  # kinds of value
PARALLEL_VALUES = 1 << 20  # at least this many values per thread, or the threads cost more than they save


@dataclass(frozen=True)
class Plan:
    """How :func:`fill` writes the values of one map; see the module docstring."""

    nnz: int
    const: np.ndarray  # (nnz,) the constant part of every value (zero where there is none)
    runs: tuple[tuple[int, int, int, int, float], ...]  # (start, stop, first column, step 0 or 1, coef)
    const_runs: tuple[tuple[int, int], ...]
    pos: np.ndarray  # remaining single-entry values ...
    col: np.ndarray  # ... their theta columns ...
    coef: np.ndarray | None  # ... and coefficients (None when all 1)
    const_pos: np.ndarray  # remaining constant values
    multi_pos: np.ndarray  # values that sum several entries of theta ...
    multi_used: np.ndarray  # ... the theta columns they read ...
    multi_T: sp.csr_matrix  # ... and their coefficients (len(multi_pos) x len(multi_used))


def make_plan(T: sp.csr_matrix, offset: np.ndarray | None) -> Plan:
    """The plan for ``values = T @ [theta; 1] + offset`` (T is (nnz, n_theta + 1), column n_theta the 1)."""
    T = T.tocsr()
    if not T.has_canonical_format:
        T = T.copy()
        T.sum_duplicates()
    nnz, n_theta = T.shape[0], T.shape[1] - 1
    counts = np.diff(T.indptr)
    row_of = np.repeat(np.arange(nnz), counts)
    is_param = T.indices < n_theta
    n_param = np.bincount(row_of[is_param], minlength=nnz)
    const = np.bincount(row_of[~is_param], weights=T.data[~is_param], minlength=nnz).astype(float)
    if offset is not None:
        const = const + offset
    kind = np.where(n_param == 0, CONST, np.where((n_param == 1) & (counts == 1), SINGLE, MULTI))
    cols = np.full(nnz, -1, dtype=np.int64)
    coef = np.zeros(nnz)
    single = kind == SINGLE
    first = T.indptr[:-1][single]
    cols[single], coef[single] = T.indices[first], T.data[first]
    if offset is not None and np.any(offset[single] != 0):  # fold the offset into a multi-entry value
        kind[single & (offset != 0)] = MULTI
        single = kind == SINGLE

    starts, stops = _segments(kind, cols, coef)
    lengths = stops - starts
    long = lengths >= MIN_RUN
    seg_kind = kind[starts]
    runs = tuple(
        (int(a), int(b), int(cols[a]), int(cols[a + 1] - cols[a]) if b - a > 1 else 1, float(coef[a]))
        for a, b in zip(starts[long & (seg_kind == SINGLE)], stops[long & (seg_kind == SINGLE)], strict=True)
    )
    const_runs = tuple(
        (int(a), int(b))
        for a, b in zip(starts[long & (seg_kind == CONST)], stops[long & (seg_kind == CONST)], strict=True)
    )
    rest = ~np.repeat(long, lengths)
    pos = np.flatnonzero(rest & single)
    pcoef = coef[pos]
    multi_pos = np.flatnonzero(kind == MULTI)
    sub = T[multi_pos][:, :n_theta].tocsr()
    multi_used = np.unique(sub.indices).astype(np.int64)
    return Plan(
        nnz=nnz,
        const=const,
        runs=runs,
        const_runs=const_runs,
        pos=pos,
        col=cols[pos],
        coef=None if np.all(pcoef == 1.0) else pcoef,
        const_pos=np.flatnonzero(rest & (kind == CONST)),
        multi_pos=multi_pos,
        multi_used=multi_used,
        multi_T=sub[:, multi_used].tocsr(),
    )


def _segments(kind: np.ndarray, cols: np.ndarray, coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maximal-enough stretches of one kind; single-entry stretches share a coefficient and a column step.

    A single-entry value continues the stretch of its predecessor when their column step is 0
    or 1 and equals the previous step (so a run may lose its first value to the rest: harmless).
    """
    nnz = kind.size
    brk = np.ones(nnz, dtype=bool)
    if nnz > 1:
        step = np.diff(cols)
        step_change = np.zeros(nnz - 1, dtype=bool)
        step_change[1:] = step[1:] != step[:-1]
        brk[1:] = (kind[1:] != kind[:-1]) | (
            (kind[1:] == SINGLE) & ((coef[1:] != coef[:-1]) | ((step != 0) & (step != 1)) | step_change)
        )
    starts = np.flatnonzero(brk)
    return starts, np.append(starts[1:], nnz)


def fill(plan: Plan, theta: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """Values (B, nnz) for ``theta`` (B, n_theta or more columns; extra columns are not read).

    Written into ``out`` when it is a writeable array of the right shape and dtype. Large
    batches are split by rows over up to :func:`fill_threads` threads (numpy's copies release
    the GIL; one core alone does not saturate the memory bandwidth).
    """
    batch = theta.shape[0]
    dtype = np.result_type(theta.dtype, np.float32)
    if out is None or out.shape != (batch, plan.nnz) or out.dtype != dtype or not out.flags.writeable:
        out = np.empty((batch, plan.nnz), dtype=dtype)
    threads = min(fill_threads(), batch, max(1, batch * plan.nnz // PARALLEL_VALUES))
    if threads <= 1:
        return _fill_rows(plan, theta, out)
    edges = np.linspace(0, batch, threads + 1).astype(int)
    pool = _pool(threads)
    jobs = [
        pool.submit(_fill_rows, plan, theta[a:b], out[a:b])
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]
    for job in jobs:
        job.result()
    return out


def fill_threads() -> int:
    """Threads :func:`fill` may use: ``QPDSL_APPLY_THREADS`` if set, else the usable CPU count (at most 8)."""
    env = os.environ.get("QPDSL_APPLY_THREADS")
    if env:
        return max(1, int(env))
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    return min(count, 8)


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="qpdsl-apply")
    return _POOLS[threads]


def _fill_rows(plan: Plan, theta: np.ndarray, out: np.ndarray) -> np.ndarray:
    """:func:`fill` for some rows, in this thread."""
    for start, stop, col, step, coef in plan.runs:
        src = theta[:, col : col + stop - start] if step else theta[:, col : col + 1]
        dst = out[:, start:stop]
        if coef == 1.0:
            dst[...] = src
        elif coef == -1.0:
            np.negative(src, out=dst)
        else:
            np.multiply(src, coef, out=dst)
    for start, stop in plan.const_runs:
        out[:, start:stop] = plan.const[start:stop]
    if plan.pos.size:
        gathered = theta[:, plan.col]
        out[:, plan.pos] = gathered if plan.coef is None else gathered * plan.coef
    if plan.const_pos.size:
        out[:, plan.const_pos] = plan.const[plan.const_pos]
    if plan.multi_pos.size:
        sub = np.ascontiguousarray(theta[:, plan.multi_used].T)
        out[:, plan.multi_pos] = (plan.multi_T @ sub).T + plan.const[plan.multi_pos]
    return out
