"""The error hierarchy of qpdsl: every user-visible failure is one of these."""

from __future__ import annotations

from collections.abc import Sequence


class QPDSLError(Exception):
    """Base class of every error that qpdsl raises on purpose."""


class ModelError(QPDSLError):
    """The symbolic model is not a convex QP that qpdsl can compile (curvature, DPP, shapes)."""


class ProblemKeyError(ModelError, KeyError):
    """A variable or constraint looked up in a :class:`~qpdsl.Solution` is not in the problem, or
    the name looked up is shared by several of its variables."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ParameterError(QPDSLError, ValueError):
    """A parameter value (or a layer argument) is missing, mis-shaped, non-finite or invalid;
    ``indices`` lists the invalid batch elements where the error is about some of them."""

    def __init__(self, message: str, indices: list[int] | None = None):
        super().__init__(message)
        self.indices = list(indices or [])


class BackendNotFound(QPDSLError):
    """The requested backend is unknown or its package is not installed."""


class SolverError(QPDSLError):
    """A solve failed for some batch elements; ``indices`` and ``statuses`` say which and how."""

    def __init__(self, message: str, indices: list[int] | None = None, statuses: list[str] | None = None):
        super().__init__(message)
        self.indices = list(indices or [])
        self.statuses = list(statuses or [])


class NotSupportedError(QPDSLError, NotImplementedError):
    """An operation qpdsl does not support, such as second derivatives through a layer."""


def listing(items: Sequence[object], limit: int = 10) -> str:
    """``items`` joined by commas for a message: the first ``limit``, then how many more there are
    (a failed batch of thousands would otherwise fill the screen)."""
    shown = ", ".join(map(str, items[:limit]))
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"
