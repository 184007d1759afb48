"""QP-representable atoms and the affine helper functions of the public API.

Each atom states local facts only: its shape, sign, curvature (convex or concave), its
monotonicity in each argument, and whether it is quadratic. The DCP rule combines them:
a convex atom stays convex when each argument is affine, or convex where the atom is
increasing, or concave where it is decreasing. Quadratic atoms need affine arguments (a
quadratic of a non-affine expression is not QP-representable).
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ModelError
from ..validation import psd_tolerance
from .expression import (
    Add,
    Concatenate,
    Constant,
    Cumsum,
    Curvature,
    Diag,
    Expression,
    Multiply,
    Parameter,
    Reshape,
    Shape,
    Sign,
    Sum,
    as_expr,
    broadcast_shapes,
    check_axis,
)

INCREASING, DECREASING, NONMONOTONE = 1, -1, 0


class Atom(Expression):
    """A convex (or concave) function of affine/convex arguments."""

    convex = True
    quadratic = False
    op_name = ""  # the public function's name, used in messages (default: the class name, lower case)

    @property
    def fname(self) -> str:
        return self.op_name or type(self).__name__.lower()

    def __init__(self, *args: Any):
        super().__init__([as_expr(a) for a in args])
        if not any(a.has_variables for a in self.args):
            raise _data_only_error(self)
        for a in self.args:
            if a.is_quadratic:
                raise ModelError(
                    f"{self.describe()}: the quadratic expression {a.describe()} inside {self.fname} "
                    "is not QP-representable; quadratic atoms may only be summed (with nonnegative weights) "
                    "in the objective"
                )
        if self.quadratic:
            for a in self.args:
                if not a.is_affine():
                    raise ModelError(
                        f"{self.describe()}: the argument {a.describe()} is {a.curvature.value}; "
                        f"{self.fname} needs an affine argument (a quadratic of a {a.curvature.value} "
                        "expression is not QP-representable)"
                    )

    def monotonicity(self, index: int) -> int:
        return NONMONOTONE

    @property
    def is_quadratic(self) -> bool:
        return self.quadratic

    @property
    def curvature(self) -> Curvature:
        if all(a.curvature == Curvature.CONSTANT for a in self.args):
            return Curvature.CONSTANT
        own = Curvature.CONVEX if self.convex else Curvature.CONCAVE
        for i, a in enumerate(self.args):
            c = a.curvature
            if c.is_affine:
                continue
            mono = self.monotonicity(i) * (1 if self.convex else -1)
            if not (
                (c == Curvature.CONVEX and mono == INCREASING)
                or (c == Curvature.CONCAVE and mono == DECREASING)
            ):
                return Curvature.UNKNOWN
        return own

    def describe(self) -> str:
        return f"{self.fname}({', '.join(a.describe() for a in self.args)})"


def _data_only_error(atom: Atom) -> ModelError:
    """An atom of data alone would be canonicalised as a free epigraph variable: refuse it."""
    if any(a.has_parameters for a in atom.args):
        return ModelError(
            f"{atom.describe()}: {atom.fname} of parameters alone is not affine in the parameters; "
            "compute it outside the model and pass the result as its own Parameter"
        )
    return ModelError(
        f"{atom.describe()}: {atom.fname} of a numeric constant; compute it with numpy and use the number"
    )


class _Elementwise(Atom):
    @property
    def shape(self) -> Shape:
        return broadcast_shapes(*[a.shape for a in self.args])


class _Scalar(Atom):
    @property
    def shape(self) -> Shape:
        return ()


class Square(_Elementwise):
    quadratic = True

    @property
    def sign(self) -> Sign:
        return Sign.NONNEG


class SumSquares(_Scalar):
    quadratic = True
    op_name = "sum_squares"

    @property
    def sign(self) -> Sign:
        return Sign.NONNEG


class QuadForm(_Scalar):
    """``x' Q x`` with Q a constant PSD matrix or a ``Parameter(psd=True)``."""

    quadratic = True
    op_name = "quad_form"

    def __init__(self, x: Any, Q: Any):
        super().__init__(x, Q)
        x, Q = self.args
        if x.ndim > 1 and 1 not in x.shape:
            raise ModelError(f"quad_form({x.describe()}, ...): x must be a vector, got shape {x.shape}")
        n = x.size
        if Q.shape != (n, n) and not (n == 1 and Q.size == 1):
            raise ModelError(f"quad_form: Q has shape {Q.shape}, expected ({n}, {n}) to match {x.describe()}")
        if Q.has_variables:
            raise ModelError(f"quad_form({x.describe()}, {Q.describe()}): Q must not hold variables")
        if isinstance(Q, Parameter):
            if not Q.psd:
                raise ModelError(
                    f"quad_form({x.describe()}, {Q.name}): declare the parameter with psd=True so that "
                    "qpdsl can check its values and keep the problem convex"
                )
        elif isinstance(Q, Constant):
            dense = Q.dense().reshape(n, n)
            if not np.allclose(dense, dense.T, atol=1e-10 * builtins.max(1.0, np.abs(dense).max())):
                raise ModelError(
                    f"quad_form({x.describe()}, {Q.describe()}): Q is not symmetric; "
                    "pass (Q + Q.T) / 2, which gives the same quadratic form"
                )
            lam_min = np.linalg.eigvalsh(dense).min() if n <= 4000 else 0.0
            tol = psd_tolerance(np, dense.dtype, n) * np.abs(dense).max()
            if lam_min < -tol:
                raise ModelError(
                    f"quad_form({x.describe()}, {Q.describe()}): Q is not positive semidefinite "
                    f"(smallest eigenvalue {lam_min:.3g}); the objective would not be convex. Pass a PSD "
                    "matrix (in a Maximize, write -quad_form(x, Q) with Q PSD)"
                )
        else:
            raise ModelError(
                f"quad_form({x.describe()}, {Q.describe()}): Q must be a constant matrix or a single "
                "Parameter(psd=True), not an expression"
            )

    @property
    def sign(self) -> Sign:
        return Sign.NONNEG

    @property
    def curvature(self) -> Curvature:
        x, _ = self.args
        return Curvature.CONSTANT if x.curvature == Curvature.CONSTANT else Curvature.CONVEX


class Huber(_Elementwise):
    """``huber(x, M)``: x² for |x| <= M, 2M|x| - M² beyond (as cvxpy)."""

    quadratic = True

    def __init__(self, x: Any, M: Any = 1.0):
        M = as_expr(M)
        what = f"huber({as_expr(x).describe()}, {M.describe()})"
        if M.has_variables or M.size != 1:
            raise ModelError(f"{what}: the threshold M must be a scalar constant or parameter")
        if not M.sign.nonneg:
            raise ModelError(
                f"{what}: the threshold M must be nonnegative (a nonnegative number, "
                "or a Parameter declared nonneg=True)"
            )
        super().__init__(x, M)

    @property
    def M(self) -> Expression:
        return self.args[1]

    @property
    def shape(self) -> Shape:
        return self.args[0].shape

    @property
    def sign(self) -> Sign:
        return Sign.NONNEG


class Abs(_Elementwise):
    @property
    def sign(self) -> Sign:
        return Sign.NONNEG


class Pos(_Elementwise):
    def monotonicity(self, index: int) -> int:
        return INCREASING

    @property
    def sign(self) -> Sign:
        return Sign.NONNEG


class Neg_(_Elementwise):
    """``neg(x) = max(-x, 0)``."""

    op_name = "neg"

    def monotonicity(self, index: int) -> int:
        return DECREASING

    @property
    def sign(self) -> Sign:
        return Sign.NONNEG

    def describe(self) -> str:
        return f"neg({self.args[0].describe()})"


class Maximum(_Elementwise):
    def monotonicity(self, index: int) -> int:
        return INCREASING


class Minimum(_Elementwise):
    convex = False

    def monotonicity(self, index: int) -> int:
        return INCREASING


class Norm1(_Scalar):
    @property
    def sign(self) -> Sign:
        return Sign.NONNEG


class NormInf(_Scalar):
    op_name = "norm_inf"

    @property
    def sign(self) -> Sign:
        return Sign.NONNEG

    def describe(self) -> str:
        return f"norm_inf({self.args[0].describe()})"


class _Reduce(Atom):
    def __init__(self, x: Any, axis: int | None = None):
        super().__init__(x)
        self.axis = check_axis(axis, self.args[0], self.fname)

    @property
    def shape(self) -> Shape:
        if self.axis is None:
            return ()
        return tuple(s for i, s in enumerate(self.args[0].shape) if i != self.axis)

    def monotonicity(self, index: int) -> int:
        return INCREASING

    @property
    def sign(self) -> Sign:
        return self.args[0].sign


class Max(_Reduce):
    pass


class Min(_Reduce):
    convex = False


# ---------------------------------------------------------------- public functions


def square(x: Any) -> Expression:
    """Elementwise square (convex, quadratic; objective only)."""
    return Square(x)


def sum_squares(x: Any) -> Expression:
    """Sum of squared entries (convex, quadratic; objective only)."""
    return SumSquares(x)


def quad_form(x: Any, Q: Any) -> Expression:
    """``x' Q x`` with ``Q`` constant PSD or a ``Parameter(psd=True)``."""
    return QuadForm(x, Q)


def huber(x: Any, M: Any = 1.0) -> Expression:
    """Elementwise Huber function with threshold ``M``."""
    return Huber(x, M)


def abs(x: Any) -> Expression:  # noqa: A001 - mirrors numpy / cvxpy naming
    """Elementwise absolute value."""
    return Abs(x)


def pos(x: Any) -> Expression:
    """Elementwise ``max(x, 0)``."""
    return Pos(x)


def neg(x: Any) -> Expression:
    """Elementwise ``max(-x, 0)``."""
    return Neg_(x)


def maximum(*args: Any) -> Expression:
    """Elementwise maximum of several expressions (broadcast)."""
    if len(args) < 2:
        raise ModelError("maximum needs at least two arguments; use qd.max to reduce one expression")
    return Maximum(*args)


def minimum(*args: Any) -> Expression:
    """Elementwise minimum of several expressions (broadcast); concave."""
    if len(args) < 2:
        raise ModelError("minimum needs at least two arguments; use qd.min to reduce one expression")
    return Minimum(*args)


def max(x: Any, axis: int | None = None) -> Expression:  # noqa: A001
    """Largest entry (over ``axis`` or all); convex."""
    return Max(x, axis)


def min(x: Any, axis: int | None = None) -> Expression:  # noqa: A001
    """Smallest entry (over ``axis`` or all); concave."""
    return Min(x, axis)


def norm1(x: Any) -> Expression:
    """Sum of absolute values."""
    return Norm1(x)


def norm_inf(x: Any) -> Expression:
    """Largest absolute value."""
    return NormInf(x)


def sum(x: Any, axis: int | None = None) -> Expression:  # noqa: A001
    """Sum of entries (over ``axis`` or all)."""
    return Sum(as_expr(x), axis)


def mean(x: Any, axis: int | None = None) -> Expression:
    """Mean of entries (over ``axis`` or all)."""
    return as_expr(x).mean(axis)


def multiply(a: Any, b: Any) -> Expression:
    """Elementwise product (one side must be free of variables)."""
    return Multiply(as_expr(a), as_expr(b))


def hstack(args: Sequence[Any]) -> Expression:
    """Concatenate horizontally (vectors end to end; matrices along columns)."""
    return Concatenate(args, axis=1)


def vstack(args: Sequence[Any]) -> Expression:
    """Stack vertically (vectors become rows)."""
    return Concatenate(args, axis=0)


def reshape(x: Any, shape: int | Sequence[int]) -> Expression:
    """Row-major reshape."""
    return Reshape(as_expr(x), shape)


def diag(x: Any) -> Expression:
    """Vector to diagonal matrix, or square matrix to its diagonal."""
    return Diag(as_expr(x))


def cumsum(x: Any, axis: int = 0) -> Expression:
    """Cumulative sum along ``axis``."""
    return Cumsum(as_expr(x), axis)


def add(*args: Any) -> Expression:
    return Add([as_expr(a) for a in args])
