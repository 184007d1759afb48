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


def invalid_parameter_elements(p: Parameter, value: Any, psd_tol: float = 1e-8) -> dict[str, list[int]]:
    """Batch indices of a (B, *p.shape) batch of values that are invalid for ``p``, by reason.

    Reasons (dictionary keys, each with a fix): non-finite entries; for ``nonneg`` parameters,
    a negative entry; for ``psd`` parameters, asymmetry or a clearly negative eigenvalue
    (relative tolerance ``psd_tol``). Empty when every element is valid.
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
    if p.psd and value.shape[0]:
        scale = max(float(xp.max(xp.abs(value))) if value.size else 0.0, 1.0)
        asym = xp.abs(value - xp.matrix_transpose(value)) > 1e-9 * scale
        bad = _bad_elements(asym)
        if bad:
            out["not symmetric (declared psd)"] = bad
            return out
        lam_min = xp.min(xp.linalg.eigvalsh(value), axis=-1)
        bad = _bad_elements(lam_min < -psd_tol * scale)
        if bad:
            out["negative eigenvalue (declared psd)"] = bad
    return out


def check_parameter_values(p: Parameter, value: Any, psd_tol: float = 1e-8, batched: bool = True) -> None:
    """Raise :class:`ParameterError` if a batch of values (B, *p.shape) is invalid for ``p``.

    Checks: finite entries; for ``nonneg`` parameters, no negative entry; for ``psd``
    parameters, symmetry and no clearly negative eigenvalue (relative tolerance ``psd_tol``).
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
    if reason.startswith("not symmetric"):
        return f"parameter {p.name} (psd=True) is not symmetric in {_where(bad)}; pass (M + M.T) / 2"
    return (
        f"parameter {p.name} (psd=True) has a negative eigenvalue in {_where(bad)}: "
        "it must be positive semidefinite for the problem to stay convex"
    )
