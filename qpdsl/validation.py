"""Checks on parameter values before any solver sees them (numpy, torch or jax arrays)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ._array import device, framework, namespace, to_numpy
from .errors import ParameterError

if TYPE_CHECKING:
    from .expressions.expression import Parameter


def _bad_elements(mask: Any) -> list[int]:
    """Batch indices where a boolean (B, ...) mask holds anywhere."""
    flat = to_numpy(mask).reshape(mask.shape[0], -1)
    return [int(i) for i in flat.any(axis=1).nonzero()[0]]


def invalid_parameter_elements(p: Parameter, value: Any, psd_tol: float = 1e-8) -> dict[str, list[int]]:
    """Batch indices of a (B, *p.shape) batch of values that are invalid for ``p``, by reason.

    Reasons (dictionary keys, each with a fix): non-finite entries; for ``nonneg`` parameters,
    a negative entry; for ``psd`` parameters, a clearly negative eigenvalue of the symmetric
    part ``(M + M') / 2`` (relative tolerance ``psd_tol``), the only part that ``x'Mx`` sees.
    Empty when every element is valid.
    """
    if hasattr(value, "detach"):
        value = value.detach()  # checks need no gradient
    xp = namespace(value)
    out: dict[str, list[int]] = {}
    finite = xp.isfinite(value)
    bad = _bad_elements(~finite)
    if bad:
        out["NaN or Inf"] = bad
        return out  # the other checks are meaningless on non-finite values
    if p.nonneg:
        bad = _bad_elements(value < 0)
        if bad:
            out["negative (declared nonneg)"] = bad
    if p.psd and value.shape[0] and math.prod(value.shape):
        sym = (value + xp.matrix_transpose(value)) / 2
        scale = max(float(xp.max(xp.abs(sym))), 1.0)
        bad = _not_psd(xp, sym, psd_tol * scale)
        if bad:
            out["negative eigenvalue (declared psd)"] = bad
    return out


def _not_psd(xp: Any, sym: Any, tol: float) -> list[int]:
    """Batch indices of symmetric matrices (B, n, n) with an eigenvalue below ``-tol``.

    One Cholesky factorisation of ``sym + tol I`` settles the usual case (every element PSD)
    without an eigendecomposition; only when it fails are the eigenvalues computed, to name
    the failing elements.
    """
    n = sym.shape[-1]
    shifted = sym + tol * xp.eye(n, dtype=sym.dtype, device=device(sym))
    if _cholesky_succeeds(xp, shifted):
        return []
    return _bad_elements(_smallest_eigenvalues(xp, sym) < -tol)


def _cholesky_succeeds(xp: Any, matrices: Any) -> bool:
    try:
        factor = xp.linalg.cholesky(matrices)
    except (np.linalg.LinAlgError, RuntimeError, ValueError):  # numpy; torch's LinAlgError is a RuntimeError
        return False
    return bool(xp.all(xp.isfinite(factor)))  # jax returns NaN instead of raising


def _smallest_eigenvalues(xp: Any, sym: Any) -> Any:
    return xp.min(xp.linalg.eigvalsh(sym), axis=-1)


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


def checked_value(p: Parameter, value: Any) -> np.ndarray:
    """A value for ``Parameter.value``: a float array of ``p.shape`` that passes every check of ``p``."""
    array = as_real_array(p, value)
    if array.shape != p.shape:
        raise ParameterError(f"parameter {p.name}: expected shape {p.shape}, got {array.shape}")
    check_parameter_values(p, array[None], batched=False)
    return array


def check_parameter_values(p: Parameter, value: Any, psd_tol: float = 1e-8, batched: bool = True) -> None:
    """Raise :class:`ParameterError` if a batch of values (B, *p.shape) is invalid for ``p``.

    Checks: finite entries; for ``nonneg`` parameters, no negative entry; for ``psd``
    parameters, no clearly negative eigenvalue of the symmetric part (relative tolerance
    ``psd_tol``).
    The message names the parameter and, when ``batched``, the failing batch elements.
    """
    invalid = invalid_parameter_elements(p, value, psd_tol)
    if invalid:
        raise ParameterError(parameter_message(p, invalid, batched))


def parameter_message(p: Parameter, invalid: dict[str, list[int]], batched: bool = True) -> str:
    """The message of :func:`check_parameter_values` for the reasons ``invalid`` returned."""

    def _where(bad: list[int]) -> str:
        if not batched:
            return "its value"
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        return f"batch element(s) {shown}"

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
        "its symmetric part (M + M.T) / 2 must be positive semidefinite for the problem to stay convex"
    )
