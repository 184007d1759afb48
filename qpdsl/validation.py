"""Checks on parameter values before any solver sees them (numpy, torch or jax arrays)."""

from __future__ import annotations

from typing import Any

from ._array import namespace, to_numpy
from .errors import ParameterError
from .expressions.expression import Parameter


def _bad_elements(mask: Any) -> list[int]:
    """Batch indices where a boolean (B, ...) mask holds anywhere."""
    flat = to_numpy(mask).reshape(mask.shape[0], -1)
    return [int(i) for i in flat.any(axis=1).nonzero()[0]]


def check_parameter_values(p: Parameter, value: Any, psd_tol: float = 1e-8, batched: bool = True) -> None:
    """Raise :class:`ParameterError` if a batch of values (B, *p.shape) is invalid for ``p``.

    Checks: finite entries; for ``nonneg`` parameters, no negative entry; for ``psd``
    parameters, symmetry and no clearly negative eigenvalue (relative tolerance ``psd_tol``).
    The message names the parameter and, when ``batched``, the failing batch elements.
    """

    def _where(bad: list[int]) -> str:
        if not batched:
            return "its value"
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        return f"batch element(s) {shown}"

    if hasattr(value, "detach"):
        value = value.detach()  # checks need no gradient
    xp = namespace(value)
    finite = xp.isfinite(value)
    bad = _bad_elements(~finite)
    if bad:
        raise ParameterError(f"parameter {p.name}: NaN or Inf in {_where(bad)}; pass finite values")
    if p.nonneg:
        bad = _bad_elements(value < 0)
        if bad:
            raise ParameterError(f"parameter {p.name} is declared nonneg but is negative in {_where(bad)}; "
                                 "pass values >= 0 (or drop nonneg=True if the model allows it)")
    if p.psd:
        scale = xp.max(xp.abs(value)) if value.size else 0.0
        scale = max(float(scale), 1.0)
        asym = xp.abs(value - xp.matrix_transpose(value)) > 1e-9 * scale
        bad = _bad_elements(asym)
        if bad:
            raise ParameterError(f"parameter {p.name} (psd=True) is not symmetric in {_where(bad)}; "
                                 "pass (M + M.T) / 2")
        lam_min = xp.min(xp.linalg.eigvalsh(value), axis=-1)
        bad = _bad_elements(lam_min < -psd_tol * scale)
        if bad:
            raise ParameterError(f"parameter {p.name} (psd=True) has a negative eigenvalue in {_where(bad)}: "
                                 "it must be positive semidefinite for the problem to stay convex")
