"""Constraints: elementwise ``==`` and ``<=`` between expressions."""

from __future__ import annotations

import itertools
from typing import Any

from ..errors import ModelError
from .expression import Expression, broadcast_shapes


class Constraint:
    """Base class: ``lhs (op) rhs`` elementwise, with NumPy broadcasting."""

    _ids = itertools.count()
    symbol = "?"

    def __init__(self, lhs: Expression, rhs: Expression):
        self.lhs, self.rhs = lhs, rhs
        self.shape = broadcast_shapes(lhs.shape, rhs.shape, what=f"constraint {self.describe()}")
        self.id = next(Constraint._ids)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A fresh id, as for expressions: a saved id may be taken in the loading process.
        self.__dict__.update(state)
        self.id = next(Constraint._ids)

    @property
    def expr(self) -> Expression:
        """The expression constrained to be ``== 0`` or ``<= 0``."""
        return self.lhs - self.rhs

    def describe(self) -> str:
        return f"{self.lhs.describe()} {self.symbol} {self.rhs.describe()}"

    __str__ = describe

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"

    def __bool__(self) -> bool:
        raise ModelError(f"the truth value of a constraint ({self.describe()}) is undefined")

    def check(self) -> None:
        """Raise :class:`ModelError` unless the constraint is convex and QP-representable."""
        for side in (self.lhs, self.rhs):
            if side.is_quadratic:
                raise ModelError(
                    f"constraint {self.describe()}: quadratic atoms are only allowed in the objective "
                    "(a quadratic constraint is not a QP)"
                )


class Equality(Constraint):
    symbol = "=="

    def check(self) -> None:
        super().check()
        for side in (self.lhs, self.rhs):
            if not side.is_affine():
                raise ModelError(
                    f"constraint {self.describe()}: both sides of == must be affine, but "
                    f"{side.describe()} is {side.curvature.value}"
                )


class Inequality(Constraint):
    """``lhs <= rhs`` (``a >= b`` is stored as ``b <= a``)."""

    symbol = "<="

    def check(self) -> None:
        super().check()
        if not self.lhs.is_convex():
            raise ModelError(
                f"constraint {self.describe()}: the smaller side must be convex, but "
                f"{self.lhs.describe()} is {self.lhs.curvature.value}"
            )
        if not self.rhs.is_concave():
            raise ModelError(
                f"constraint {self.describe()}: the larger side must be concave, but "
                f"{self.rhs.describe()} is {self.rhs.curvature.value}"
            )
