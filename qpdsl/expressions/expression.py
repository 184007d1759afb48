"""The expression tree: leaves, affine operators, and the facts each node knows locally.

Every node knows its shape, sign, curvature, whether it holds variables / parameters, and
whether it is quadratic (holds a quadratic atom). How a node becomes QP data is not its
business: that lives in the compiler's canonicalisation table.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from ..errors import ModelError

if TYPE_CHECKING:
    from .constraints import Constraint

Shape = tuple[int, ...]


class Curvature(enum.Enum):
    CONSTANT = "constant"
    AFFINE = "affine"
    CONVEX = "convex"
    CONCAVE = "concave"
    UNKNOWN = "unknown"

    def flip(self) -> Curvature:
        return {Curvature.CONVEX: Curvature.CONCAVE, Curvature.CONCAVE: Curvature.CONVEX}.get(self, self)

    @property
    def is_convex(self) -> bool:
        return self in (Curvature.CONSTANT, Curvature.AFFINE, Curvature.CONVEX)

    @property
    def is_concave(self) -> bool:
        return self in (Curvature.CONSTANT, Curvature.AFFINE, Curvature.CONCAVE)

    @property
    def is_affine(self) -> bool:
        return self in (Curvature.CONSTANT, Curvature.AFFINE)


class Sign(enum.Enum):
    NONNEG = "nonneg"
    NONPOS = "nonpos"
    ZERO = "zero"
    UNKNOWN = "unknown"

    def flip(self) -> Sign:
        return {Sign.NONNEG: Sign.NONPOS, Sign.NONPOS: Sign.NONNEG}.get(self, self)

    @property
    def nonneg(self) -> bool:
        return self in (Sign.NONNEG, Sign.ZERO)

    @property
    def nonpos(self) -> bool:
        return self in (Sign.NONPOS, Sign.ZERO)


def sum_curvature(curvs: Sequence[Curvature]) -> Curvature:
    """Curvature of a sum (or any positive combination) of terms."""
    kinds = set(curvs)
    if Curvature.UNKNOWN in kinds or {Curvature.CONVEX, Curvature.CONCAVE} <= kinds:
        return Curvature.UNKNOWN
    for c in (Curvature.CONVEX, Curvature.CONCAVE, Curvature.AFFINE):
        if c in kinds:
            return c
    return Curvature.CONSTANT


def sum_sign(signs: Sequence[Sign]) -> Sign:
    s = [x for x in signs if x != Sign.ZERO]
    if not s:
        return Sign.ZERO
    if all(x == Sign.NONNEG for x in s):
        return Sign.NONNEG
    if all(x == Sign.NONPOS for x in s):
        return Sign.NONPOS
    return Sign.UNKNOWN


def mul_sign(a: Sign, b: Sign) -> Sign:
    if Sign.ZERO in (a, b):
        return Sign.ZERO
    if Sign.UNKNOWN in (a, b):
        return Sign.UNKNOWN
    return Sign.NONNEG if a == b else Sign.NONPOS


def scale_curvature(factor_sign: Sign, curv: Curvature) -> Curvature:
    """Curvature of ``factor * expr`` where ``factor`` is constant with the given sign."""
    if curv.is_affine or factor_sign == Sign.ZERO:
        return curv if factor_sign != Sign.ZERO else Curvature.CONSTANT
    if factor_sign == Sign.NONNEG:
        return curv
    if factor_sign == Sign.NONPOS:
        return curv.flip()
    return Curvature.UNKNOWN


def broadcast_shapes(*shapes: Shape, what: str | None = None) -> Shape:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError as exc:
        where = f"{what}: " if what else ""
        raise ModelError(
            f"{where}shapes {', '.join(map(str, shapes))} do not broadcast together; "
            "make them equal (or broadcastable, as in NumPy) by indexing, reshaping or transposing"
        ) from exc


class Expression:
    """Base class of every node of a qpdsl model."""

    __array_ufunc__ = None  # make numpy defer to our reflected operators
    __array_priority__ = 100.0
    _ids = itertools.count()

    def __init__(self, args: Sequence[Expression] = ()):
        self.args: tuple[Expression, ...] = tuple(args)
        self.id = next(Expression._ids)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A fresh id: the saved one may belong to another node of this process (ids count from
        # zero in every process). Nothing keeps ids across compilations, so only ``id`` changes.
        self.__dict__.update(state)
        self.id = next(Expression._ids)

    # ---- local facts (overridden by subclasses) ----
    @property
    def shape(self) -> Shape:
        raise NotImplementedError

    @property
    def sign(self) -> Sign:
        return Sign.UNKNOWN

    @property
    def curvature(self) -> Curvature:
        raise NotImplementedError

    @property
    def is_quadratic(self) -> bool:
        """Whether a quadratic atom sits in this subtree (only allowed in the objective)."""
        return any(a.is_quadratic for a in self.args)

    # ---- derived facts ----
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def has_variables(self) -> bool:
        return any(a.has_variables for a in self.args)

    @property
    def has_parameters(self) -> bool:
        return any(a.has_parameters for a in self.args)

    def is_convex(self) -> bool:
        return self.curvature.is_convex

    def is_concave(self) -> bool:
        return self.curvature.is_concave

    def is_affine(self) -> bool:
        return self.curvature.is_affine

    def leaves(self) -> Iterator[Expression]:
        """Leaves in order of first appearance (each once)."""
        seen: set[int] = set()
        stack: list[Expression] = [self]
        order: list[Expression] = []
        while stack:
            node = stack.pop()
            if node.id in seen:
                continue
            seen.add(node.id)
            if not node.args:
                order.append(node)
            stack.extend(reversed(node.args))
        return iter(order)

    def variables(self) -> list[Variable]:
        return [leaf for leaf in self.leaves() if isinstance(leaf, Variable)]

    def parameters(self) -> list[Parameter]:
        return [leaf for leaf in self.leaves() if isinstance(leaf, Parameter)]

    def __str__(self) -> str:
        return self.describe()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()}, shape={self.shape})"

    def describe(self) -> str:
        return f"{type(self).__name__.lower()}({', '.join(a.describe() for a in self.args)})"

    __hash__ = object.__hash__

    # ---- operators ----
    def __add__(self, other: Any) -> Expression:
        return Add([self, as_expr(other)])

    def __radd__(self, other: Any) -> Expression:
        return Add([as_expr(other), self])

    def __sub__(self, other: Any) -> Expression:
        return Add([self, Neg(as_expr(other))])

    def __rsub__(self, other: Any) -> Expression:
        return Add([as_expr(other), Neg(self)])

    def __neg__(self) -> Expression:
        return Neg(self)

    def __pos__(self) -> Expression:
        return self

    def __mul__(self, other: Any) -> Expression:
        return Multiply(self, as_expr(other))

    def __rmul__(self, other: Any) -> Expression:
        return Multiply(as_expr(other), self)

    def __truediv__(self, other: Any) -> Expression:
        other = as_expr(other)
        if not isinstance(other, Constant):
            raise _division_error(other)
        if np.any(other.value == 0):
            raise ModelError(f"division of {self.describe()} by zero")
        return Multiply(self, Constant(1.0 / other.value))

    def __rtruediv__(self, other: Any) -> Expression:
        raise _division_error(self)

    def __pow__(self, exponent: Any) -> Expression:
        if isinstance(exponent, (int, float, np.integer, np.floating)) and exponent == 1:
            return self
        base = _paren(self)
        if isinstance(exponent, (int, float, np.integer, np.floating)) and exponent == 2:
            raise ModelError(
                f"{base} ** 2: write qd.square({self.describe()}) for the elementwise square or "
                f"qd.sum_squares({self.describe()}) for the sum of squares (quadratic atoms, allowed in "
                "the objective)"
            )
        raise ModelError(
            f"{base} ** {_describe_any(exponent)}: qpdsl accepts only ** 1; write squares with qd.square or "
            "qd.sum_squares (other powers are not QP-representable)"
        )

    def __rpow__(self, base: Any) -> Expression:
        raise ModelError(
            f"{_describe_any(base)} ** {_paren(self)}: an expression in an exponent is not QP-representable"
        )

    def __matmul__(self, other: Any) -> Expression:
        return MatMul(self, as_expr(other))

    def __rmatmul__(self, other: Any) -> Expression:
        return MatMul(as_expr(other), self)

    def __getitem__(self, key: Any) -> Expression:
        return Index(self, key)

    def __eq__(self, other: Any) -> Constraint:  # type: ignore[override]
        from .constraints import Equality

        return Equality(self, as_expr(other))

    def __le__(self, other: Any) -> Constraint:
        from .constraints import Inequality

        return Inequality(self, as_expr(other))

    def __ge__(self, other: Any) -> Constraint:
        from .constraints import Inequality

        return Inequality(as_expr(other), self)

    def __lt__(self, other: Any) -> Any:
        raise ModelError(
            f"{self.describe()} < {_describe_any(other)}: strict inequalities are not supported; "
            "use <= instead"
        )

    def __gt__(self, other: Any) -> Any:
        raise ModelError(
            f"{self.describe()} > {_describe_any(other)}: strict inequalities are not supported; "
            "use >= instead"
        )

    def __ne__(self, other: Any) -> Any:  # type: ignore[override]
        raise ModelError(
            f"{self.describe()} != {_describe_any(other)}: qpdsl (like cvxpy) has no != constraint. The "
            "points where two expressions differ are not a convex set, so this is not a QP: use <= or >= "
            "for the side you mean (choosing between both sides is a boolean model, not a QP)"
        )

    def __bool__(self) -> bool:
        raise ModelError(f"the truth value of an expression ({self.describe()}) is undefined")

    @property
    def T(self) -> Expression:
        return Transpose(self) if self.ndim == 2 else self

    def sum(self, axis: int | None = None) -> Expression:
        return Sum(self, axis)

    def mean(self, axis: int | None = None) -> Expression:
        axis = check_axis(axis, self, "mean")
        count = self.size if axis is None else self.shape[axis]
        return Sum(self, axis) * (1.0 / count)

    def reshape(self, shape: int | Shape) -> Expression:
        return Reshape(self, shape)

    def flatten(self) -> Expression:
        return Reshape(self, (self.size,))


# ---------------------------------------------------------------- leaves


def _normalise_shape(shape: int | Sequence[int] | None) -> Shape:
    if shape is None:
        return ()
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    shape = tuple(int(s) for s in shape)
    if len(shape) > 2:
        raise ModelError(
            f"shape {shape}: qpdsl supports scalars, vectors and matrices (at most 2 dimensions)"
        )
    if any(s <= 0 for s in shape):
        raise ModelError(f"shape {shape} has a non-positive dimension")
    return shape


class Leaf(Expression):
    _counter = itertools.count()

    def __init__(self, shape: int | Sequence[int] | None, name: str | None, prefix: str):
        super().__init__(())
        self._shape = _normalise_shape(shape)
        self.name = name or f"{prefix}{next(Leaf._counter)}"

    @property
    def shape(self) -> Shape:
        return self._shape

    def describe(self) -> str:
        return self.name


class Variable(Leaf):
    """An optimisation variable. ``nonneg=True`` adds the constraint ``x >= 0``."""

    def __init__(self, shape: int | Sequence[int] | None = (), name: str | None = None, nonneg: bool = False):
        super().__init__(shape, name, "var")
        self.nonneg = nonneg

    @property
    def curvature(self) -> Curvature:
        return Curvature.AFFINE

    @property
    def sign(self) -> Sign:
        return Sign.NONNEG if self.nonneg else Sign.UNKNOWN

    @property
    def has_variables(self) -> bool:
        return True


class Parameter(Leaf):
    """A symbolic constant whose value is given at solve time (one value or a batch).

    Parameters
    ----------
    shape
        ``()``, ``n`` or ``(m, n)``.
    name
        Used in messages and by ``Problem.solve`` when values are passed by name.
    psd
        The value is a square matrix whose symmetric part is positive semidefinite: allows
        ``quad_form(x, P)`` (which only sees the symmetric part).
    nonneg
        The value is elementwise nonnegative: allows e.g. ``lam * norm1(x)`` in a minimisation.
    value
        An optional default value, checked as values passed to ``solve`` are (assigning
        ``p.value = ...`` later is checked the same way).
    """

    def __init__(
        self,
        shape: int | Sequence[int] | None = (),
        name: str | None = None,
        psd: bool = False,
        nonneg: bool = False,
        value: Any = None,
    ):
        super().__init__(shape, name, "param")
        if psd and (len(self._shape) != 2 or self._shape[0] != self._shape[1]):
            raise ModelError(
                f"parameter {self.name}: psd=True needs a square matrix shape, got {self._shape}"
            )
        self.psd = psd
        self.nonneg = nonneg
        self._value: np.ndarray | None = None
        if value is not None:
            self.value = value

    @property
    def value(self) -> np.ndarray | None:
        """The default value (a float array of the parameter's shape), or None."""
        return self._value

    @value.setter
    def value(self, value: Any) -> None:
        from ..validation import checked_value

        self._value = None if value is None else checked_value(self, value)

    @property
    def curvature(self) -> Curvature:
        return Curvature.CONSTANT

    @property
    def sign(self) -> Sign:
        return Sign.NONNEG if self.nonneg else Sign.UNKNOWN

    @property
    def has_parameters(self) -> bool:
        return True


class Constant(Leaf):
    """A numeric constant (numpy array, scalar or scipy sparse matrix)."""

    def __init__(self, value: Any, name: str | None = None):
        if sp.issparse(value):
            value = sp.csr_matrix(value, dtype=float)
            shape: Shape = value.shape
        else:
            value = np.asarray(value, dtype=float)
            shape = value.shape
            if not np.all(np.isfinite(value)):
                raise ModelError(
                    "constants must be finite (no NaN or Inf); use a Parameter for data that varies"
                )
        if len(shape) > 2:
            raise ModelError(f"constant of shape {shape}: at most 2 dimensions are supported")
        super().__init__(None, name, "const")
        self._shape = tuple(int(s) for s in shape)
        self.value = value

    @property
    def is_sparse(self) -> bool:
        return sp.issparse(self.value)

    def dense(self) -> np.ndarray:
        return self.value.toarray() if self.is_sparse else self.value

    @property
    def curvature(self) -> Curvature:
        return Curvature.CONSTANT

    @property
    def sign(self) -> Sign:
        data = self.value.data if self.is_sparse else self.value
        if data.size == 0 or np.all(data == 0):
            return Sign.ZERO
        if np.all(data >= 0):
            return Sign.NONNEG
        if np.all(data <= 0):
            return Sign.NONPOS
        return Sign.UNKNOWN

    def describe(self) -> str:
        if self.size == 1 and not self.is_sparse:
            return f"{float(self.value.reshape(-1)[0]):g}"
        return self.name


def check_axis(axis: Any, arg: Expression, what: str, allow_none: bool = True) -> int | None:
    """``axis`` as a nonnegative int (or None) for reducing ``arg``; a :class:`ModelError` otherwise."""
    if axis is None and allow_none:
        return None
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        accepted = (
            "axis=None or an int (None reduces over every entry, an int over one axis)"
            if allow_none
            else "an int axis"
        )
        raise ModelError(f"{what}({arg.describe()}, axis={axis!r}): pass {accepted}")
    if not -arg.ndim <= axis < arg.ndim:
        raise ModelError(f"{what} over axis {axis} of {arg.describe()} with shape {arg.shape}")
    return int(axis) % arg.ndim


def _division_error(divisor: Expression) -> ModelError:
    if divisor.has_variables:
        return ModelError(
            f"division by {divisor.describe()}, which holds variables, is not QP-representable; "
            "divide only by numeric constants"
        )
    return ModelError(
        f"division by {divisor.describe()}: 1/{_paren(divisor)} is not affine in the parameters; divide only "
        f"by numeric constants, or pass 1/{_paren(divisor)} as its own Parameter and multiply by it"
    )


def _describe_any(value: Any) -> str:
    if isinstance(value, Expression):
        return value.describe()
    return f"{value:g}" if isinstance(value, (int, float, np.number)) else "(array)"


def as_expr(value: Any) -> Expression:
    """Wrap numbers and arrays as :class:`Constant`; pass expressions through."""
    if isinstance(value, Expression):
        return value
    if isinstance(value, (list, tuple)) and any(isinstance(v, Expression) for v in value):
        raise ModelError("a list mixing expressions and numbers is ambiguous; use qd.hstack or qd.vstack")
    return Constant(value)


# ---------------------------------------------------------------- affine operators


class AffineOp(Expression):
    """An operator that is linear in its arguments: curvature and sign follow its arguments."""

    @property
    def curvature(self) -> Curvature:
        return sum_curvature([a.curvature for a in self.args])

    @property
    def sign(self) -> Sign:
        return sum_sign([a.sign for a in self.args])


class Add(AffineOp):
    def __init__(self, args: Sequence[Expression]):
        flat: list[Expression] = []
        for a in args:
            flat.extend(a.args if isinstance(a, Add) else [a])
        super().__init__(flat)
        self._shape = broadcast_shapes(*[a.shape for a in flat], what=self.describe())

    @property
    def shape(self) -> Shape:
        return self._shape

    def describe(self) -> str:
        out = self.args[0].describe()
        for a in self.args[1:]:
            out += f" - {a.args[0].describe()}" if isinstance(a, Neg) else f" + {a.describe()}"
        return out


class Neg(AffineOp):
    def __init__(self, arg: Expression):
        super().__init__([arg])

    @property
    def shape(self) -> Shape:
        return self.args[0].shape

    @property
    def curvature(self) -> Curvature:
        return self.args[0].curvature.flip()

    @property
    def sign(self) -> Sign:
        return self.args[0].sign.flip()

    def describe(self) -> str:
        return f"-{_paren(self.args[0])}"


def _paren(e: Expression) -> str:
    return f"({e.describe()})" if isinstance(e, Add) else e.describe()


class _Product(Expression):
    """Shared facts of elementwise and matrix products: one factor must be free of variables."""

    symbol = "*"

    def __init__(self, lhs: Expression, rhs: Expression):
        super().__init__([lhs, rhs])
        if lhs.has_variables and rhs.has_variables:
            raise ModelError(
                f"the product {self.describe()} multiplies two expressions that both hold variables; "
                "it is not affine. Write quadratic terms with qd.quad_form, qd.sum_squares or qd.square"
            )
        # a product of two parameter expressions is not refused here: the compiler makes one side
        # an auxiliary variable (t == side), which keeps the QP data affine in the parameters

    @property
    def factor(self) -> Expression:
        """The data side (no variables) that scales the other side."""
        lhs, rhs = self.args
        return rhs if lhs.has_variables or lhs.is_quadratic else lhs

    @property
    def operand(self) -> Expression:
        lhs, rhs = self.args
        return lhs if self.factor is rhs else rhs

    @property
    def curvature(self) -> Curvature:
        lhs, rhs = self.args
        if lhs.curvature == Curvature.CONSTANT and rhs.curvature == Curvature.CONSTANT:
            return Curvature.CONSTANT
        return scale_curvature(self.factor.sign, self.operand.curvature)

    @property
    def sign(self) -> Sign:
        return mul_sign(self.args[0].sign, self.args[1].sign)

    def describe(self) -> str:
        return f"{_paren(self.args[0])} {self.symbol} {_paren(self.args[1])}"


class Multiply(_Product):
    """Elementwise product with NumPy broadcasting."""

    def __init__(self, lhs: Expression, rhs: Expression):
        super().__init__(lhs, rhs)
        self._shape = broadcast_shapes(lhs.shape, rhs.shape, what=self.describe())

    @property
    def shape(self) -> Shape:
        return self._shape


class MatMul(_Product):
    symbol = "@"

    def __init__(self, lhs: Expression, rhs: Expression):
        super().__init__(lhs, rhs)
        a, b = lhs.shape, rhs.shape
        if len(a) == 0 or len(b) == 0:
            raise ModelError(f"matmul {self.describe()}: use * for scalars")
        if a[-1] != b[0]:
            raise ModelError(f"matmul {self.describe()}: shapes {a} and {b} are not aligned")
        self._shape = a[:-1] + b[1:]

    @property
    def shape(self) -> Shape:
        return self._shape


class Index(AffineOp):
    """``expr[key]`` with NumPy basic and integer-array indexing."""

    def __init__(self, arg: Expression, key: Any):
        super().__init__([arg])
        _check_key(arg, key)
        try:
            self.flat_index = np.arange(arg.size).reshape(arg.shape)[key]
        except IndexError as exc:
            raise ModelError(
                f"index {key!r} is out of range for {arg.describe()} of shape {arg.shape}"
            ) from exc
        self._shape = tuple(self.flat_index.shape)
        if len(self._shape) > 2:
            raise ModelError(f"indexing {arg.describe()} with {key!r} gives {len(self._shape)} dimensions")
        self.key = key

    @property
    def shape(self) -> Shape:
        return self._shape

    def describe(self) -> str:
        return f"{_paren(self.args[0])}[{_format_key(self.key)}]"


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer))


def _check_key(arg: Expression, key: Any) -> None:
    """Refuse index parts that NumPy would refuse by type (floats, expressions, strings)."""
    for part in key if isinstance(key, tuple) else (key,):
        if part is None or part is Ellipsis or _is_int(part):
            continue
        if isinstance(part, slice):
            ok = all(v is None or _is_int(v) for v in (part.start, part.stop, part.step))
        else:
            try:
                ok = not isinstance(part, Expression) and np.asarray(part).dtype.kind in "iub"
            except (TypeError, ValueError):
                ok = False
        if not ok:
            raise ModelError(
                f"{_paren(arg)}[{_format_key(key)}]: each index must be an int, a slice, or an integer "
                f"array (or a boolean mask), not {part!r}"
            )


def _format_key(key: Any) -> str:
    def one(k: Any) -> str:
        if isinstance(k, slice):
            return ":".join("" if v is None else str(v) for v in (k.start, k.stop, k.step)).rstrip(":") or ":"
        return str(k)

    return ", ".join(one(k) for k in key) if isinstance(key, tuple) else one(key)


class Transpose(AffineOp):
    def __init__(self, arg: Expression):
        super().__init__([arg])

    @property
    def shape(self) -> Shape:
        return self.args[0].shape[::-1]

    def describe(self) -> str:
        return f"{_paren(self.args[0])}.T"


class Sum(AffineOp):
    def __init__(self, arg: Expression, axis: int | None = None):
        super().__init__([arg])
        self.axis = check_axis(axis, arg, "sum")

    @property
    def shape(self) -> Shape:
        if self.axis is None:
            return ()
        return tuple(s for i, s in enumerate(self.args[0].shape) if i != self.axis)

    def describe(self) -> str:
        axis = "" if self.axis is None else f", axis={self.axis}"
        return f"sum({self.args[0].describe()}{axis})"


class Reshape(AffineOp):
    """Row-major (C order) reshape, as NumPy's default."""

    def __init__(self, arg: Expression, shape: int | Sequence[int]):
        super().__init__([arg])
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        if -1 in shape:
            known = int(np.prod([s for s in shape if s != -1]))
            shape = tuple(arg.size // known if s == -1 else s for s in shape)
        self._shape = _normalise_shape(shape) if shape else ()
        if int(np.prod(self._shape, dtype=np.int64)) != arg.size:
            raise ModelError(f"cannot reshape {arg.describe()} of shape {arg.shape} to {shape}")

    @property
    def shape(self) -> Shape:
        return self._shape


class Concatenate(AffineOp):
    """``hstack`` / ``vstack``: concatenation along an axis (vectors join end to end)."""

    def __init__(self, args: Sequence[Expression], axis: int):
        args = [as_expr(a) for a in args]
        if not args:
            raise ModelError("stacking needs at least one expression")
        super().__init__(args)
        shapes = [a.shape if a.ndim else (1,) for a in args]
        if axis == 0 and any(len(s) == 1 for s in shapes):  # vstack of vectors makes rows
            shapes = [(1, s[0]) if len(s) == 1 else s for s in shapes]
        self.kind = "hstack" if axis == 1 else "vstack"
        self.axis = axis if len(shapes[0]) > 1 else 0
        self.arg_shapes = shapes
        try:
            self._shape = np.concatenate([np.empty(s) for s in shapes], axis=self.axis).shape
        except ValueError as exc:
            raise ModelError(f"cannot stack shapes {[a.shape for a in args]} along axis {axis}") from exc

    @property
    def shape(self) -> Shape:
        return self._shape

    def describe(self) -> str:
        return f"{self.kind}([{', '.join(a.describe() for a in self.args)}])"


class Diag(AffineOp):
    """Vector -> diagonal matrix, or square matrix -> its diagonal."""

    def __init__(self, arg: Expression):
        super().__init__([arg])
        if arg.ndim == 2 and arg.shape[0] != arg.shape[1]:
            raise ModelError(f"diag of non-square {arg.describe()} with shape {arg.shape}")
        if arg.ndim == 0:
            raise ModelError("diag needs a vector or a square matrix")

    @property
    def shape(self) -> Shape:
        s = self.args[0].shape
        return (s[0], s[0]) if len(s) == 1 else (s[0],)

    @property
    def sign(self) -> Sign:
        arg_sign = self.args[0].sign
        return arg_sign if self.args[0].ndim == 2 else sum_sign([arg_sign, Sign.ZERO])


class Cumsum(AffineOp):
    def __init__(self, arg: Expression, axis: int = 0):
        super().__init__([arg])
        if arg.ndim == 0:
            raise ModelError(f"cumsum of the scalar {arg.describe()}: it needs a vector or a matrix")
        self.axis = check_axis(axis, arg, "cumsum", allow_none=False)

    @property
    def shape(self) -> Shape:
        return self.args[0].shape
