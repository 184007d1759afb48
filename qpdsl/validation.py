"""Checks on parameter values before any solver sees them (numpy, torch or jax arrays)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ._array import cholesky_ex, device, framework, host_float, host_kernels, namespace, to_numpy
from .errors import ParameterError, listing

if TYPE_CHECKING:
    from .expressions.expression import Parameter

# Relative to a matrix's largest entry, the most negative eigenvalue that still counts as
# rounding: positive semidefinite to single precision. A rank-deficient L @ L.T formed in float32
# and then cast to float64 has eigenvalues near -1e-7 times its largest entry.
PSD_TOL = 1e-6


def _bad_elements(mask: Any) -> list[int]:
    """Batch indices where a boolean (B, ...) mask holds anywhere."""
    flat = to_numpy(mask).reshape(mask.shape[0], -1)
    return [int(i) for i in flat.any(axis=1).nonzero()[0]]


def invalid_parameter_elements(p: Parameter, value: Any, psd_tol: float = PSD_TOL) -> dict[str, list[int]]:
    """Batch indices of a (B, *p.shape) batch of values that are invalid for ``p``, by reason.

    Reasons (dictionary keys, each with a fix): non-finite entries; for ``nonneg`` parameters,
    a negative entry; for ``psd`` parameters, a clearly negative eigenvalue of the symmetric
    part ``(M + M') / 2`` (relative tolerance ``psd_tol``), the only part that ``x'Mx`` sees.
    Empty when every element is valid.

    The checks run where the values live and the host reads one flag for all of them; the
    masks (and, for a psd parameter, eigenvalues) are computed only when that flag is set.
    """
    if hasattr(value, "detach"):
        value = value.detach()  # checks need no gradient
    xp = namespace(value)
    masks = invalid_masks(xp, p, value, psd_tol)
    if not masks or not bool(xp.any(xp.stack(list(masks.values())))):
        return {}
    nonfinite = masks.pop("NaN or Inf")
    if bool(xp.any(nonfinite)):
        return {"NaN or Inf": _bad_elements(nonfinite)}  # the other checks mean nothing then
    out = {}
    for reason, mask in masks.items():
        if reason == "negative eigenvalue (declared psd)":
            mask = _eigenvalue_check(xp, value, psd_tol)
        bad = _bad_elements(mask)
        if bad:
            out[reason] = bad
    return out


def invalid_masks(xp: Any, p: Parameter, value: Any, psd_tol: float) -> dict[str, Any]:
    """(B,) boolean masks by reason, computed without reading any value on the host.

    The psd mask is :func:`not_psd`: a superset of the elements with an eigenvalue below the
    tolerance, which :func:`_eigenvalue_check` names exactly.
    """
    batch = value.shape[0]
    if batch == 0 or math.prod(value.shape) == 0:
        return {}
    flat = xp.reshape(value, (batch, -1))
    finite = xp.all(xp.isfinite(flat), axis=1)
    masks = {"NaN or Inf": ~finite}
    if p.nonneg:
        masks["negative (declared nonneg)"] = finite & xp.any(flat < 0, axis=1)
    if p.psd:
        masks["negative eigenvalue (declared psd)"] = finite & not_psd(value, psd_tol)
    return masks


def psd_tolerance(xp: Any, dtype: Any, n: int, psd_tol: float = PSD_TOL) -> float:
    """How negative an eigenvalue may be, relative to the matrix's largest entry, and still count
    as rounding: ``psd_tol``, or, when larger, what rounding in ``dtype`` leaves of a product such
    as ``L @ L.T``: ``10 n u`` for its ``n`` rows, and ``sqrt(u)`` for a long inner dimension (a
    float32 covariance ``X.T @ X`` of 1e5 samples was off by 1.3e-5)."""
    u = float(xp.finfo(dtype).eps) / 2.0
    return max(psd_tol, 10.0 * n * u, math.sqrt(u))


def matrix_scale(xp: Any, sym: Any) -> Any:
    """(B, 1, 1): each matrix's largest absolute entry."""
    return xp.max(xp.abs(sym), axis=(-2, -1), keepdims=True)


def not_psd(matrices: Any, psd_tol: float = PSD_TOL) -> Any:
    """(B,) True where the symmetric part of a (B, n, n) matrix is clearly not positive semidefinite.

    The symmetric part, shifted by :func:`psd_tolerance` times its own scale (:func:`matrix_scale`:
    the test is the same at every scale, and one element's large entries never excuse another's),
    has no Cholesky factor: one factorisation per element instead of an eigendecomposition. A
    zero matrix is positive semidefinite; a matrix with a NaN or infinite entry is reported
    False here (its invalidity is the finiteness check's). Traceable. Float numpy arrays take
    a compiled kernel, parallel over the batch.
    """
    xp = namespace(matrices)
    n = matrices.shape[-1]
    if n == 0 or matrices.shape[0] == 0:
        return xp.zeros(matrices.shape[0], dtype=xp.bool, device=device(matrices))
    rel = psd_tolerance(xp, matrices.dtype, n, psd_tol)
    if host_float(matrices) and (kernels := host_kernels()) is not None:
        return kernels.not_psd_batch(matrices, rel)
    finite = xp.all(xp.isfinite(xp.reshape(matrices, (matrices.shape[0], -1))), axis=1)
    matrices = xp.where(xp.reshape(finite, (-1, 1, 1)), matrices, xp.zeros_like(matrices))
    sym = (matrices + xp.matrix_transpose(matrices)) / 2
    scale = matrix_scale(xp, sym)
    _, factored = cholesky_ex(sym + rel * scale * xp.eye(n, dtype=sym.dtype, device=device(sym)))
    return ~factored & (scale[:, 0, 0] > 0)


def _eigenvalue_check(xp: Any, value: Any, psd_tol: float) -> Any:
    """(B,) mask of the matrices whose symmetric part has an eigenvalue below the tolerance of
    :func:`not_psd` (host-side, for messages)."""
    sym = (value + xp.matrix_transpose(value)) / 2
    tol = psd_tolerance(xp, sym.dtype, sym.shape[-1], psd_tol) * matrix_scale(xp, sym)[:, 0, 0]
    return _smallest_eigenvalues(xp, sym) < -tol


def _smallest_eigenvalues(xp: Any, sym: Any) -> Any:
    return xp.min(xp.linalg.eigvalsh(sym), axis=-1)


def any_invalid(items: list[tuple[Parameter, Any]], psd_tol: float = PSD_TOL) -> bool:
    """Whether some value in ``items`` (pairs of a parameter and a (B, *shape) batch of values, one
    framework) fails a check of :func:`invalid_parameter_elements`, in one host read for all."""
    flags = []
    for p, value in items:
        if hasattr(value, "detach"):
            value = value.detach()
        xp = namespace(value)
        flags += [xp.any(mask) for mask in invalid_masks(xp, p, value, psd_tol).values()]
    return bool(flags) and bool(xp.any(xp.stack(flags)))


def as_real_array(p: Parameter, value: Any) -> np.ndarray:
    """``value`` (number, nested list, numpy / torch / jax array) as a float numpy array.

    Raises
    ------
    ParameterError
        For complex values (their imaginary part would be lost) and anything that is not a
        real number or an array of them (strings, objects, ragged lists).
    """
    if framework(value) != "numpy":
        value = to_numpy(value)
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise ParameterError(
            f"parameter {p.name}: the value is not an array of real numbers ({exc})"
        ) from exc
    if np.iscomplexobj(array) or (array.dtype == object and any(isinstance(v, complex) for v in array.flat)):
        raise ParameterError(
            f"parameter {p.name}: complex values are not supported; pass real numbers (split real and "
            "imaginary parts into two parameters if the model needs both)"
        )
    if array.dtype.kind not in "biuf":
        try:
            return array.astype(float)
        except (TypeError, ValueError):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise ParameterError(
                f"parameter {p.name}: {shown} is not numeric; pass a real number or an array of real numbers"
            ) from None
    return array.astype(float)


def batched_shape(shape: tuple[int, ...]) -> str:
    """``(batch, 4, 3)`` for ``(4, 3)``: how a parameter's shape reads with a batch dimension."""
    return "(" + ", ".join(["batch", *map(str, shape)]) + ("," if not shape else "") + ")"


def checked_value(p: Parameter, value: Any) -> np.ndarray:
    """A value for ``Parameter.value``: a float array of ``p.shape`` that passes every check of ``p``."""
    array = as_real_array(p, value)
    if array.shape != p.shape:
        raise ParameterError(f"parameter {p.name}: expected shape {p.shape}, got {array.shape}")
    check_parameter_values(p, array[None], batched=False)
    return array


def check_parameter_values(p: Parameter, value: Any, psd_tol: float = PSD_TOL, batched: bool = True) -> None:
    """Raise :class:`ParameterError` if a batch of values (B, *p.shape) is invalid for ``p``.

    Checks: finite entries; for ``nonneg`` parameters, no negative entry; for ``psd``
    parameters, no clearly negative eigenvalue of the symmetric part (relative tolerance
    ``psd_tol``).
    The message names the parameter and, when ``batched``, the failing batch elements.
    """
    check_all_parameter_values([(p, value, batched)], psd_tol)


def check_all_parameter_values(values: list[tuple[Parameter, Any, bool]], psd_tol: float = PSD_TOL) -> None:
    """:func:`check_parameter_values` for several ``(parameter, values, batched)``: one
    :class:`ParameterError` naming every invalid parameter; its ``indices`` are the union of the
    invalid elements along the values' leading axis (all of them for an unbatched value, which
    every element shares)."""
    messages, indices = [], set()
    for p, value, batched in values:
        invalid = invalid_parameter_elements(p, value, psd_tol)
        if invalid:
            messages.append(parameter_message(p, invalid, batched))
            bad = {i for idx in invalid.values() for i in idx}
            indices.update(bad if batched else range(np.shape(value)[0]))
    if messages:
        raise ParameterError("; ".join(messages), indices=sorted(indices))


def parameter_message(p: Parameter, invalid: dict[str, list[int]], batched: bool = True) -> str:
    """The message of :func:`check_parameter_values` for the reasons ``invalid`` returned."""

    def _where(bad: list[int]) -> str:
        if not batched:
            return "its value"
        return f"batch element(s) {listing(bad)}"

    reason, bad = next(iter(invalid.items()))
    if reason == "NaN or Inf":
        return f"parameter {p.name}: NaN or Inf in {_where(bad)}; pass finite values"
    if reason.startswith("negative ("):
        return (
            f"parameter {p.name} is declared nonneg but is negative in {_where(bad)}; "
            "pass values >= 0 (or drop nonneg=True if the model allows it)"
        )
    return (
        f"parameter {p.name} (psd=True) has a negative eigenvalue in {_where(bad)}: "
        "its symmetric part (M + M.T) / 2 must be positive semidefinite for the problem to stay convex "
        f"(eigenvalues down to -{PSD_TOL:g} times its largest entry, or the rounding of its dtype when "
        "larger, count as zero); a learned matrix can be made so by construction, e.g. L @ L.T + eps * I"
    )
