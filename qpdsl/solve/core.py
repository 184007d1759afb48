"""What every call shares, whichever front end and backend: the one solve path.

:func:`solve_batch` takes a batch of standard-form QPs in any framework (numpy, torch on CPU
or CUDA, JAX concrete or traced), sets invalid elements aside, runs the backend with
verification and the closest-feasible stage, and applies ``on_failure``. The torch and JAX
front ends, ``Problem.solve`` and the layers all call it; they differ only in how they
convert arrays and attach derivatives.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .._array import device, framework, host_values, int_dtype, namespace, to_numpy
from ..errors import ParameterError, SolverError, listing
from ..qp import QPData, QPResult, Settings, SparseBatch, Status, WarmStart
from ..validation import not_psd
from .closest import Shiftable
from .closest import traced as any_traced

ON_FAILURE = ("raise", "nan", "ignore")
FAILED = int(Status.NUMERICAL_ERROR)
# ``auto`` picks proxsuite's sparse solver for compiled QPs at least this large and this sparse.
SPARSE_MIN_N, SPARSE_MAX_DENSITY = 300, 0.05


def check_on_failure(on_failure: str) -> str:
    if on_failure not in ON_FAILURE:
        raise ParameterError(f"on_failure={on_failure!r} is not one of {', '.join(map(repr, ON_FAILURE))}")
    return on_failure


def resolve_backend(name: str | None, array: Any = None, sparse_hint: tuple[int, float] | None = None) -> Any:
    """The backend object for ``name``; ``None`` or ``"auto"`` decide by the arrays of this call.

    ``auto``: JAX arrays -> ``jax``; CUDA tensors -> ``torch``; otherwise ``proxsuite``
    (sparse) when ``sparse_hint`` = (n, density) says the QP is large and sparse, else ``cpu``.
    A backend that is not installed is skipped in favour of the next that is.
    """
    from ..backends import available_backends, get_backend

    if name not in (None, "auto"):
        return get_backend(name)
    fw = framework(array) if array is not None else "numpy"
    if fw == "jax":
        order = ["jax", "cpu", "proxsuite"]
    elif fw == "torch" and array.device.type != "cpu":
        order = ["torch"]
    else:
        order = ["cpu", "proxsuite", "torch", "jax"]
        if sparse_hint is not None and sparse_hint[0] > SPARSE_MIN_N and sparse_hint[1] < SPARSE_MAX_DENSITY:
            order.insert(0, "proxsuite")
    installed = available_backends()
    for candidate in order:
        if candidate in installed:
            return get_backend(candidate)
    from ..errors import BackendNotFound

    raise BackendNotFound(
        f"no backend for {fw} arrays is installed (tried {', '.join(order)}); pip install qpdsl"
    )


# --------------------------------------------------------------------------- invalid elements


def valid_elements(data: QPData, check_convexity: bool = False) -> Any:
    """(B,) True where an element's data are valid: P, q, A, b, C finite; l, u not NaN;
    no ``l = +inf`` or ``u = -inf``; ``l <= u``; with ``check_convexity`` (dense data), the
    symmetric part of P positive semidefinite (:func:`~qpdsl.validation.not_psd`). Traceable."""
    xp = namespace(data.q)

    def every(a: Any) -> Any:
        a = xp.reshape(a, (a.shape[0], -1))
        return xp.all(a, axis=1) if a.shape[1] else xp.ones(a.shape[0], dtype=xp.bool, device=device(a))

    ok = every(xp.isfinite(data.q))
    for a in (data.P, data.A, data.C, data.b):
        values = a.values if isinstance(a, SparseBatch) else a
        ok = ok & every(xp.isfinite(xp.asarray(values)))
    l, u = data.l, data.u
    bounds = ~xp.isnan(l) & ~xp.isnan(u) & (l != float("inf")) & (u != float("-inf")) & (l <= u)
    ok = ok & every(bounds)
    if check_convexity and not data.is_sparse:
        ok = ok & ~_not_convex(data.P, ok)
    return ok


def _not_convex(P: Any, finite: Any) -> Any:
    """(B,) True where P is clearly not positive semidefinite (False where not ``finite``)."""
    return finite & not_psd(P)


def invalid_reasons(data: QPData, check_convexity: bool = False) -> dict[str, list[int]]:
    """Batch indices of invalid elements by reason (host-side, for messages)."""

    def rows(mask: Any) -> list[int]:
        flat = to_numpy(mask).reshape(mask.shape[0], -1)
        return [int(i) for i in flat.any(axis=1).nonzero()[0]]

    reasons = {}
    for name in ("P", "q", "A", "b", "C"):
        a = getattr(data, name)
        values = np.asarray(a.values) if isinstance(a, SparseBatch) else to_numpy(a)
        reasons[f"{name} has NaN or Inf entries"] = rows(~np.isfinite(values))
    l, u = to_numpy(data.l), to_numpy(data.u)
    reasons["l or u has NaN entries"] = rows(np.isnan(l) | np.isnan(u))
    reasons["l has +inf or u has -inf entries"] = rows((l == np.inf) | (u == -np.inf))
    with np.errstate(invalid="ignore"):
        reasons["l > u somewhere"] = rows(l > u)
    if check_convexity and not data.is_sparse:
        finite = valid_elements(data)
        reasons["P is not positive semidefinite (a QP with it is not convex)"] = rows(
            _not_convex(data.P, finite)
        )
    return {reason: idx for reason, idx in reasons.items() if idx}


def invalid_message(invalid: dict[str, list[int]], batched: bool = True) -> str:
    """The message for invalid data, ``invalid`` mapping each reason to its batch indices;
    without ``batched`` (an unbatched input) the indices are left out."""
    if batched:
        details = "; ".join(f"{reason} in batch elements [{listing(idx)}]" for reason, idx in invalid.items())
        remedy = "fix those elements, or pass on_failure='nan' to get NaN rows for them and solve the others"
    else:
        details = "; ".join(invalid)
        remedy = "fix the data, or pass on_failure='nan' to get NaN outputs instead of this error"
    return (
        f"invalid QP data: {details}. P, q, A, b, C must be finite, the symmetric part of P positive "
        f"semidefinite, l and u may hold -inf / +inf but never NaN, and l <= u; {remedy}"
    )


def sanitise(data: QPData, keep: Any) -> QPData:
    """``data`` with the elements not in ``keep`` replaced by ``min |x|²/2 s.t. -1 <= 0 x <= 1``.

    Keeps NaN or garbage in those elements away from batched solves and linear algebra, where
    it could spread to the other elements or to gradients. Dense data only.
    """
    xp = namespace(data.q)

    def rows(a: Any) -> Any:
        return xp.reshape(keep, (keep.shape[0],) + (1,) * (a.ndim - 1))

    eye = xp.eye(data.n, dtype=data.q.dtype, device=device(data.q))
    trivial = {"P": eye, "q": 0.0, "A": 0.0, "b": 0.0, "C": 0.0, "l": -1.0, "u": 1.0}
    out = {}
    for name, fill in trivial.items():
        a = getattr(data, name)
        fill_array = xp.zeros_like(a) + fill
        out[name] = xp.where(rows(a), a, fill_array)
    return replace(data, **out)


# --------------------------------------------------------------------------- the solve


@dataclass(frozen=True)
class Outcome:
    """What :func:`solve_batch` returns: outputs with ``on_failure`` applied, and what the backward needs."""

    result: QPResult  # x, y, z, shifts (NaN rows where hidden), status, residuals
    data: QPData  # the sanitised data the backend solved (dense)
    valid: Any  # (B,) bool
    ok: Any  # (B,) bool, status ok
    flags: BatchFlags | None = None  # the batch-wide flags when the forward read them already


@dataclass(frozen=True)
class BatchFlags:
    """Batch-wide facts read on the host once, for the backward to reuse."""

    all_ok: bool  # every element's status is ok
    any_closest: bool  # some element is solved_closest_feasible


def batch_flags(status: Any) -> BatchFlags:
    """:class:`BatchFlags` of a (B,) array of status codes, in one host read."""
    xp = namespace(status)
    ok = (status == int(Status.SOLVED)) | (status == int(Status.SOLVED_CLOSEST_FEASIBLE))
    all_ok, any_closest = host_values(xp.all(ok), xp.any(status == int(Status.SOLVED_CLOSEST_FEASIBLE)))
    return BatchFlags(bool(all_ok), bool(any_closest))


def solve_batch(
    solver: Any,
    data: QPData,
    settings: Settings,
    warm_start: WarmStart | None = None,
    on_failure: str = "raise",
    shiftable: Shiftable | None = None,
    check_convexity: bool = False,
    batched: bool = True,
) -> Outcome:
    """Solve a batch with ``solver`` in the framework of ``data`` (concrete or traced).

    Invalid elements (see :func:`valid_elements`) are never solved: they get status
    ``numerical_error`` and NaN rows. ``check_convexity`` tests P for positive semidefiniteness,
    for data that are not convex by construction: at a saddle point of a nonconvex QP the
    optimality conditions hold, so neither the solvers nor verification would notice.

    ``on_failure="raise"`` raises :class:`ParameterError` for invalid data before solving and
    :class:`SolverError` for elements whose status is not ok (on traced arrays the caller
    raises, see :func:`failure_error`); ``"nan"`` gives NaN rows for them; ``"ignore"`` returns
    the backend's point with its status. ``batched=False``: the caller's input had no batch
    dimension (a batch of one), and error messages name no batch index.
    """
    check_on_failure(on_failure)
    xp = namespace(data.q)
    traced = any_traced(data, warm_start)
    dense = data if data.is_sparse else data.dense()
    valid = valid_elements(dense, check_convexity)
    all_valid = not traced and bool(xp.all(valid))
    if not traced and on_failure == "raise" and not all_valid:
        reasons = invalid_reasons(dense, check_convexity)
        indices = sorted({i for idx in reasons.values() for i in idx})
        raise ParameterError(invalid_message(reasons, batched), indices=indices)
    # sanitising copies every array: only when some element is invalid (or may be, traced)
    clean = dense if dense.is_sparse or all_valid else sanitise(dense, valid)
    warm = _clean_warm(warm_start, valid) if solver.capabilities.warm_start else None
    result = _call(solver, clean, settings, warm, shiftable)

    codes = int_dtype(xp)
    status = xp.astype(result.status, codes)
    status = xp.where(valid, status, xp.full_like(status, FAILED))
    ok = (status == int(Status.SOLVED)) | (status == int(Status.SOLVED_CLOSEST_FEASIBLE))
    hide = ~valid if on_failure == "ignore" else ~ok

    def masked(a: Any) -> Any:
        return xp.where(hide[:, None], xp.full_like(a, float("nan")), a)

    result = replace(
        result,
        x=masked(result.x),
        y=masked(result.y),
        z=masked(result.z),
        shift_eq=masked(result.shift_eq),
        shift_in=masked(result.shift_in),
        status=status,
    )
    flags = None
    if not traced and on_failure == "raise":
        flags = batch_flags(status)
        error = None if flags.all_ok else failure_error(to_numpy(status), to_numpy(valid), batched)
        if error is not None:
            raise error
    return Outcome(result, clean, valid, ok, flags)


def failure_error(status: np.ndarray, valid: np.ndarray, batched: bool = True) -> Exception | None:
    """The error ``on_failure="raise"`` raises for host arrays of statuses, or None when all are ok.

    Without ``batched`` (the caller's input had no batch dimension) the message names no index.
    """
    valid = np.asarray(valid).reshape(-1)
    invalid = np.flatnonzero(~valid).tolist()
    if invalid:
        reason = "non-finite data, NaN bounds, l > u or a P that is not positive semidefinite"
        return ParameterError(invalid_message({reason: invalid}, batched), indices=invalid)
    flat = np.asarray(status).reshape(-1)
    failed = [(i, Status(int(s))) for i, s in enumerate(flat) if not Status(int(s)).ok]
    if not failed:
        return None
    if batched:
        what = "the QP solve failed for batch elements " + listing([f"{i} ({s.label})" for i, s in failed])
        advice = "check those elements' data"
        others = "; or pass on_failure='nan' / 'ignore' to get the other elements anyway"
    else:
        what = f"the QP solve failed ({failed[0][1].label})"
        advice = "check the data"
        others = "; or pass on_failure='nan' / 'ignore' to get the outputs with their status instead"
    return SolverError(
        f"{what}; {advice} (bounded below? well scaled?), raise settings.max_iter{others}",
        indices=[i for i, _ in failed],
        statuses=[s.label for _, s in failed],
    )


def zero_rows(a: Any, keep: Any) -> Any:
    """``a`` (B, k) with the rows of the elements not in ``keep`` (B,), and every non-finite entry,
    set to zero: what a warm start or the backward may read of a failed or invalid element."""
    if hasattr(a, "detach"):
        a = a.detach()
    xp = namespace(a)
    return xp.where(keep[:, None] & xp.isfinite(a), a, xp.zeros_like(a))


def _clean_warm(warm: WarmStart | None, valid: Any) -> WarmStart | None:
    """The warm start with non-finite rows and the rows of invalid elements set to zero (a cold start)."""
    if warm is None:
        return None
    return WarmStart(*(None if a is None else zero_rows(a, valid) for a in (warm.x, warm.y, warm.z)))


def _call(
    solver: Any, data: QPData, settings: Settings, warm: WarmStart | None, shiftable: Shiftable | None
) -> QPResult:
    """Run the backend in its own framework; the result comes back in the framework of ``data``."""
    fw = framework(data.q)
    caps = solver.capabilities
    if fw == caps.framework and (fw != "numpy" or data.is_sparse or str(data.q.dtype) in caps.dtypes):
        return solver.solve(data, settings, warm, shiftable)
    if caps.framework != "numpy":
        from ..errors import BackendNotFound

        raise BackendNotFound(
            f"backend {solver.name!r} works on {caps.framework} arrays and cannot solve {fw} data; "
            + ("use qpdsl.jax (to_jax)" if caps.framework == "jax" else "use qpdsl.torch (to_torch)")
            + " for it"
        )
    dtype = data.q.dtype
    solve_dtype = np.float32 if "float32" in str(dtype) and "float32" in caps.dtypes else np.float64
    host = data.map_arrays(lambda a: np.ascontiguousarray(to_numpy(a), dtype=solve_dtype))
    host_warm = None
    if warm is not None:
        host_warm = WarmStart(
            *(
                None if a is None else np.ascontiguousarray(to_numpy(a), dtype=solve_dtype)
                for a in (warm.x, warm.y, warm.z)
            )
        )
    res = solver.solve(host, settings, host_warm, shiftable)
    return _from_host(res, data.q)


def _from_host(res: QPResult, like: Any) -> QPResult:
    """A numpy result as arrays of the framework, dtype and device of ``like``."""
    xp = namespace(like)
    dev = device(like)

    def conv(a: Any, integer: bool = False) -> Any:
        if a is None:
            return None
        out = xp.asarray(np.asarray(a), device=dev)
        return xp.astype(out, int_dtype(xp) if integer else like.dtype)

    return QPResult(
        x=conv(res.x),
        y=conv(res.y),
        z=conv(res.z),
        shift_eq=conv(res.shift_eq),
        shift_in=conv(res.shift_in),
        status=conv(res.status, True),
        iterations=conv(res.iterations, True),
        prim_res=conv(res.prim_res),
        dual_res=conv(res.dual_res),
        objective=conv(res.objective),
        compl_res=conv(res.compl_res),
        gap=conv(res.gap),
        extras=res.extras,
    )


class WarmMemory:
    """The warm start a layer keeps between calls: the last outputs, failed elements started cold.

    Stored only for calls with the same key (shapes, dtype, device); a non-ok element's row is
    zero, never its NaN or unverified point. Not part of a saved model's state.
    """

    def __init__(self) -> None:
        self._key: Any = None
        self._warm: WarmStart | None = None

    def get(self, key: Any) -> WarmStart | None:
        return self._warm if self._warm is not None and key == self._key else None

    def store(self, key: Any, result: QPResult, ok: Any) -> None:
        self._key = key
        self._warm = WarmStart(*(zero_rows(a, ok) for a in (result.x, result.y, result.z)))

    def reset(self) -> None:
        self._key, self._warm = None, None
