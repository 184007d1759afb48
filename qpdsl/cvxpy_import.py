"""Import a cvxpy problem into qpdsl: :func:`from_cvxpy`.

The cvxpy expression tree is walked once and rebuilt from qpdsl nodes: cvxpy Variables and
Parameters become qpdsl ones (same names, same attributes; parameters read their cvxpy
Parameter's value when the problem is solved),
affine operators and the QP-representable atoms map one to one, constant subtrees are
evaluated. Anything else raises :class:`qpdsl.ModelError` naming the cvxpy expression.

The returned :class:`qpdsl.Problem` carries ``cvxpy_map``, a dict ``{cvxpy object -> qpdsl
object}`` over the variables, parameters and constraints, so that code written for cvxpy /
cvxpylayers can keep using its own objects as keys::

    prob = qd.from_cvxpy(cvxpy_problem)
    sol = prob.solve({A_cp: A0, b_cp: b0})     # cvxpy Parameters as keys
    sol[x_cp]                                    # cvxpy Variable as key

:func:`translate` (and :func:`translate_params`) do that lookup; ``Problem.solve``,
``Solution.__getitem__`` / ``dual`` and ``to_torch`` / ``to_jax`` call them on what the user
passes. Both are no-ops for problems that were not imported from cvxpy, and this module
imports cvxpy only inside :func:`from_cvxpy`, so calling them costs nothing otherwise.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

from . import expressions as qx
from .errors import ModelError
from .expressions import expression as ex

__all__ = ["from_cvxpy", "translate", "translate_params"]


# ---------------------------------------------------------------- key translation (the hook)


def _id_map(problem: Any) -> dict[int, Any] | None:
    mapping = getattr(problem, "cvxpy_map", None)
    if not mapping:
        return None
    cache = getattr(problem, "_cvxpy_ids", None)
    if cache is None or len(cache) != len(mapping):
        # look up by identity: cvxpy overloads == on its objects, so never let a dict compare them
        cache = {id(k): v for k, v in mapping.items()}
        problem._cvxpy_ids = cache
    return cache


def translate(problem: Any, obj: Any) -> Any:
    """Replace cvxpy objects by their qpdsl counterparts in ``obj``.

    ``obj`` may be a single object (Variable, Parameter, Constraint), a list or tuple of
    them, or a mapping whose keys are translated (values are left alone). Objects that are
    not cvxpy objects of ``problem`` (qpdsl objects, names, ``qd.Shift(...)``) pass through
    unchanged, as does everything when ``problem`` was not built by :func:`from_cvxpy`.
    """
    ids = _id_map(problem)
    if ids is None or obj is None:
        return obj
    if isinstance(obj, Mapping):
        return {ids.get(id(k), k): v for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(ids.get(id(o), o) for o in obj)
    return ids.get(id(obj), obj)


def translate_params(problem: Any, params: Mapping[Any, Any] | None) -> Mapping[Any, Any] | None:
    """``{cvxpy Parameter or qpdsl Parameter or name: value}`` -> the same with qpdsl keys."""
    return translate(problem, params)


# ---------------------------------------------------------------- the importer

_SUPPORTED = (
    "Variable, Parameter, Constant, +, -, *, /, @, multiply, indexing, transpose, reshape, sum, "
    "hstack, vstack, concatenate, diag, trace, upper_tri, cumsum, promote, broadcast_to, quad_form, "
    "quad_over_lin(x, c), power(x, 2), square, sum_squares, norm1, norm_inf, abs, pos, neg, maximum, "
    "minimum, max, min, huber"
)


def _name(e: Any) -> str:
    try:
        text = str(e)
    except Exception:  # pragma: no cover - cvxpy's printer should not fail
        text = repr(e)
    return text if len(text) <= 120 else text[:117] + "..."


class _Importer:
    def __init__(self, cp: Any):
        self.cp = cp
        self.memo: dict[int, tuple[Any, ex.Expression]] = {}
        self.leaves: dict[Any, Any] = {}  # cvxpy leaf -> qpdsl leaf
        self.extra: list[Any] = []  # constraints implied by variable attributes
        from cvxpy import atoms

        self.cone_atoms = {
            "a second-order cone": _types(atoms.SOC_ATOMS),
            "an exponential cone": _types(atoms.EXP_ATOMS),
            "a semidefinite cone": _types(atoms.PSD_ATOMS),
        }

    # -------------------------------------------------------- errors
    def unsupported(self, e: Any, why: str | None = None) -> ModelError:
        cls = type(e).__name__
        if why is None:
            why = "is not QP-representable or not supported by qpdsl.from_cvxpy"
            for cone, classes in self.cone_atoms.items():
                if isinstance(e, classes):
                    why = f"is not QP-representable (cvxpy models it with {cone})"
                    break
        return ModelError(
            f"from_cvxpy: the cvxpy expression {_name(e)} ({cls}) {why}. Supported: {_SUPPORTED}"
        )

    # -------------------------------------------------------- leaves
    def variable(self, v: Any) -> ex.Variable:
        attrs = v.attributes
        for bad in ("boolean", "integer", "complex", "imag", "hermitian", "PSD", "NSD", "diag"):
            if attrs.get(bad):
                raise ModelError(
                    f"from_cvxpy: variable {v.name()} has the attribute {bad}=True, "
                    "which a convex QP cannot express"
                )
        if attrs.get("sparsity") is not None and attrs.get("sparsity") is not False:
            raise ModelError(f"from_cvxpy: variable {v.name()} has a sparsity pattern; not supported")
        # sign attributes and bounds become user constraints (with duals and shifts), not compiler rows
        out = ex.Variable(v.shape, name=v.name())
        if attrs.get("nonneg") or attrs.get("pos"):
            self.extra.append(out >= 0)
        if attrs.get("nonpos") or attrs.get("neg"):
            self.extra.append(out <= 0)
        if attrs.get("symmetric") and out.ndim == 2:
            self.extra.append(out == out.T)
        bounds = attrs.get("bounds")
        if bounds is not None:
            for bound, lower in zip(bounds, (True, False), strict=True):
                if bound is not None:
                    self.bound(out, bound, lower)
        return out

    def bound(self, out: ex.Variable, bound: Any, lower: bool) -> None:
        """The constraint of one side of a cvxpy ``bounds=`` attribute.

        Infinite entries of a numeric bound bound nothing: they get no row (which is what an
        infinite bound is), rather than a large finite stand-in.
        """
        if isinstance(bound, self.cp.Expression):
            b: Any = self.expr(bound)
            target: ex.Expression = out
        else:
            values = np.broadcast_to(np.asarray(bound, dtype=float), out.shape)
            finite = np.isfinite(values)
            if not finite.any():
                return
            if finite.all():
                target, b = out, ex.Constant(values)
            else:
                index = np.flatnonzero(finite)
                target = ex.Index(ex.Reshape(out, (out.size,)) if out.ndim != 1 else out, index)
                b = ex.Constant(values.reshape(-1)[index])
        self.extra.append(target >= b if lower else target <= b)

    def parameter(self, p: Any) -> ex.Parameter:
        attrs = p.attributes
        psd = bool(attrs.get("PSD"))
        nonneg = bool(attrs.get("nonneg") or attrs.get("pos"))
        for bad in ("complex", "imag", "hermitian", "boolean", "integer"):
            if attrs.get(bad):
                raise ModelError(
                    f"from_cvxpy: parameter {p.name()} has the attribute {bad}=True; not supported"
                )
        return _CvxpyParameter(p, psd=psd, nonneg=nonneg)

    # -------------------------------------------------------- expressions
    def expr(self, e: Any) -> ex.Expression:
        hit = self.memo.get(id(e))
        if hit is not None:
            return hit[1]
        out = self._convert(e)
        if tuple(out.shape) != tuple(e.shape):
            raise ModelError(
                f"from_cvxpy: internal shape mismatch converting {_name(e)} ({type(e).__name__}): "
                f"cvxpy {tuple(e.shape)} vs qpdsl {tuple(out.shape)}"
            )
        self.memo[id(e)] = (e, out)
        return out

    def _convert(self, e: Any) -> ex.Expression:
        cp = self.cp
        if len(e.shape) > 2:
            raise ModelError(
                f"from_cvxpy: {_name(e)} has shape {e.shape}; qpdsl supports at most 2 dimensions"
            )
        if isinstance(e, cp.Variable):
            if e not in self.leaves:
                self.leaves[e] = self.variable(e)
            return self.leaves[e]
        if isinstance(e, cp.Parameter):
            if e not in self.leaves:
                self.leaves[e] = self.parameter(e)
            return self.leaves[e]
        if isinstance(e, cp.Constant):
            return ex.Constant(_constant_value(e.value))
        if not e.parameters() and not e.variables():
            # a constant subtree (e.g. promote(2.0), psd_wrap(Q), D.T): evaluate it once
            return ex.Constant(_constant_value(e.value))
        name = type(e).__name__
        handler = getattr(self, f"_{name}", None)
        if handler is None:
            raise self.unsupported(e)
        return handler(e)

    def args(self, e: Any) -> list[ex.Expression]:
        return [self.expr(a) for a in e.args]

    def numeric(self, e: Any, what: str) -> np.ndarray:
        """The value of a parameter-free constant argument (for scale factors and thresholds)."""
        if e.variables() or e.parameters():
            raise self.unsupported(e, f"is used as {what}, which must be a numeric constant")
        return _dense(e.value)

    # ---- affine operators
    def _AddExpression(self, e: Any) -> ex.Expression:
        return ex.Add(self.args(e))

    def _NegExpression(self, e: Any) -> ex.Expression:
        return -self.expr(e.args[0])

    def _MulExpression(self, e: Any) -> ex.Expression:
        lhs, rhs = self.args(e)
        if lhs.ndim == 0 or rhs.ndim == 0:
            return ex.Multiply(lhs, rhs)
        return ex.MatMul(lhs, rhs)

    _matmul = _MulExpression

    def _multiply(self, e: Any) -> ex.Expression:
        lhs, rhs = self.args(e)
        return ex.Multiply(lhs, rhs)

    def _DivExpression(self, e: Any) -> ex.Expression:
        num, den = e.args
        if den.variables() or den.parameters():
            raise self.unsupported(
                e,
                "divides by a non-constant expression; the QP data would not be affine "
                "in the parameters (multiply by a parameter holding 1/value instead)",
            )
        return self.expr(num) / ex.Constant(self.numeric(den, "a divisor"))

    def _index(self, e: Any) -> ex.Expression:
        return self._indexed(e, e.key)

    def _special_index(self, e: Any) -> ex.Expression:
        return self._indexed(e, e.key)

    def _indexed(self, e: Any, key: Any) -> ex.Expression:
        arg = self.expr(e.args[0])
        out = ex.Index(arg, key)
        if out.shape != tuple(e.shape):  # cvxpy keeps singleton axes that numpy drops, or vice versa
            out = ex.Reshape(out, e.shape) if e.shape else ex.Index(ex.Reshape(out, (out.size,)), 0)
        return out

    def _transpose(self, e: Any) -> ex.Expression:
        arg = self.expr(e.args[0])
        axes = getattr(e, "axes", None)
        if arg.ndim < 2 or (axes is not None and tuple(axes) == (0, 1)):
            return arg
        return arg.T

    def _reshape(self, e: Any) -> ex.Expression:
        arg = self.expr(e.args[0])
        order = getattr(e, "order", "F")
        shape = tuple(int(s) for s in e.shape)
        return _reshape(arg, shape, order)

    def _Promote(self, e: Any) -> ex.Expression:
        return self._broadcast(self.expr(e.args[0]), tuple(e.shape))

    def _broadcast_to(self, e: Any) -> ex.Expression:
        return self._broadcast(self.expr(e.args[0]), tuple(e.shape))

    @staticmethod
    def _broadcast(arg: ex.Expression, shape: tuple[int, ...]) -> ex.Expression:
        if arg.shape == shape:
            return arg
        flat = np.broadcast_to(np.arange(arg.size).reshape(arg.shape), shape)
        base = arg if arg.ndim == 1 else ex.Reshape(arg, (arg.size,))
        return ex.Index(base, np.ascontiguousarray(flat))

    def _Sum(self, e: Any) -> ex.Expression:
        arg = self.expr(e.args[0])
        return self._keepdims(e, ex.Sum(arg, _axis(e, arg)))

    def _keepdims(self, e: Any, out: ex.Expression) -> ex.Expression:
        if out.shape != tuple(e.shape):
            return ex.Reshape(out, e.shape) if e.shape else out
        return out

    def _Hstack(self, e: Any) -> ex.Expression:
        return qx.hstack(self.args(e))

    def _Vstack(self, e: Any) -> ex.Expression:
        return qx.vstack(self.args(e))

    def _Concatenate(self, e: Any) -> ex.Expression:
        args = self.args(e)
        axis = e.axis
        if axis is None:
            return ex.Concatenate([ex.Reshape(a, (a.size,)) for a in args], axis=0)
        ndim = len(e.shape)
        axis = axis % builtins.max(ndim, 1)
        if ndim == 1:
            return qx.hstack(args)
        return qx.vstack(args) if axis == 0 else qx.hstack(args)

    def _diag_vec(self, e: Any) -> ex.Expression:
        arg = self.expr(e.args[0])
        k = int(getattr(e, "k", 0))
        if k == 0:
            return qx.diag(ex.Reshape(arg, (arg.size,)) if arg.ndim != 1 else arg)
        n = arg.size + builtins.abs(k)
        idx = np.arange(arg.size)
        rows, cols = (idx, idx + k) if k > 0 else (idx - k, idx)
        S = sp.csr_matrix((np.ones(arg.size), (rows * n + cols, idx)), shape=(n * n, arg.size))
        return ex.Reshape(ex.MatMul(ex.Constant(S), ex.Reshape(arg, (arg.size,))), (n, n))

    def _diag_mat(self, e: Any) -> ex.Expression:
        arg = self.expr(e.args[0])
        k = int(getattr(e, "k", 0))
        if k == 0:
            return qx.diag(arg)
        grid = np.arange(arg.size).reshape(arg.shape)
        return ex.Index(ex.Reshape(arg, (arg.size,)), np.ascontiguousarray(np.diagonal(grid, offset=k)))

    def _Trace(self, e: Any) -> ex.Expression:
        return ex.Sum(qx.diag(self.expr(e.args[0])))

    def _upper_tri(self, e: Any) -> ex.Expression:
        arg = self.expr(e.args[0])
        n = arg.shape[0]
        rows, cols = np.triu_indices(n, k=1)  # strictly upper, row by row (as cvxpy)
        flat = (rows * arg.shape[1] + cols).reshape(e.shape)
        return ex.Index(ex.Reshape(arg, (arg.size,)), flat)

    def _cumsum(self, e: Any) -> ex.Expression:
        arg = self.expr(e.args[0])
        axis = getattr(e, "axis", 0)
        if axis is None:
            arg, axis = ex.Reshape(arg, (arg.size,)), 0
        return qx.cumsum(arg, axis)

    def _conj(self, e: Any) -> ex.Expression:
        return self.expr(e.args[0])

    _real = _conj
    _nonneg_wrap = _conj
    _nonpos_wrap = _conj
    _psd_wrap = _conj
    _symmetric_wrap = _conj

    # ---- atoms
    def _QuadForm(self, e: Any) -> ex.Expression:
        x, Q = e.args
        return qx.quad_form(self.expr(x), self.expr(Q))

    _SymbolicQuadForm = _QuadForm

    def _quad_over_lin(self, e: Any) -> ex.Expression:
        x, y = e.args
        if y.variables() or y.parameters():
            raise self.unsupported(
                e,
                "has a non-constant denominator; only quad_over_lin(x, c) with a "
                "positive constant c is a QP term (sum_squares(x) / c)",
            )
        c = float(self.numeric(y, "the denominator of quad_over_lin").reshape(-1)[0])
        if c <= 0:
            raise self.unsupported(e, "has a nonpositive denominator")
        arg = self.expr(x)
        axis = getattr(e, "axis", None)
        out = qx.sum_squares(arg) if axis is None else ex.Sum(qx.square(arg), _axis(e, arg))
        out = self._keepdims(e, out)
        return out if c == 1.0 else out * (1.0 / c)

    def _power(self, e: Any) -> ex.Expression:
        p = float(_dense(e.p.value if hasattr(e.p, "value") else e.p).reshape(-1)[0])
        arg = self.expr(e.args[0])
        if p == 2.0:
            return qx.square(arg)
        if p == 1.0:
            return arg
        if p == 0.0:
            return ex.Constant(np.ones(arg.shape))
        raise self.unsupported(e, f"raises to the power {p:g}; only powers 0, 1 and 2 are QP-representable")

    _Power = _power
    _PowerApprox = _power

    def _norm1(self, e: Any) -> ex.Expression:
        arg = self.expr(e.args[0])
        axis = getattr(e, "axis", None)
        if axis is None:
            return qx.norm1(arg)
        return self._keepdims(e, ex.Sum(qx.abs(arg), _axis(e, arg)))

    def _norm_inf(self, e: Any) -> ex.Expression:
        arg = self.expr(e.args[0])
        axis = getattr(e, "axis", None)
        if axis is None:
            return qx.norm_inf(arg)
        return self._keepdims(e, qx.max(qx.abs(arg), _axis(e, arg)))

    def _Pnorm(self, e: Any) -> ex.Expression:
        p = float(e.p)
        if p == 1.0:
            return self._norm1(e)
        if np.isinf(p):
            return self._norm_inf(e)
        cone = "a second-order cone" if p == 2.0 else "power cones"
        raise self.unsupported(
            e,
            f"is a {p:g}-norm, which is not QP-representable (cvxpy models it with {cone}; "
            "only the 1- and inf-norms are QP terms; use sum_squares for a squared 2-norm)",
        )

    _PnormApprox = _Pnorm

    def _abs(self, e: Any) -> ex.Expression:
        return qx.abs(self.expr(e.args[0]))

    def _pos(self, e: Any) -> ex.Expression:
        return qx.pos(self.expr(e.args[0]))

    def _neg(self, e: Any) -> ex.Expression:
        return qx.neg(self.expr(e.args[0]))

    def _maximum(self, e: Any) -> ex.Expression:
        args = self.args(e)
        if len(args) == 2 and _is_zero(args[1]):
            return qx.pos(args[0]) if args[0].shape == tuple(e.shape) else qx.maximum(*args)
        return qx.maximum(*args)

    def _minimum(self, e: Any) -> ex.Expression:
        return qx.minimum(*self.args(e))

    def _max(self, e: Any) -> ex.Expression:
        arg = self.expr(e.args[0])
        return self._keepdims(e, qx.max(arg, _axis(e, arg)))

    def _min(self, e: Any) -> ex.Expression:
        arg = self.expr(e.args[0])
        return self._keepdims(e, qx.min(arg, _axis(e, arg)))

    def _huber(self, e: Any) -> ex.Expression:
        M = e.M
        m = self.expr(M) if isinstance(M, self.cp.Expression) else ex.Constant(float(M))
        return qx.huber(self.expr(e.args[0]), m)

    # -------------------------------------------------------- constraints
    def constraint(self, c: Any) -> Any:
        cp = self.cp
        from cvxpy.constraints import Equality, Inequality, NonNeg, NonPos, Zero

        if isinstance(c, Equality):
            lhs, rhs = (self.expr(a) for a in c.args)
            return lhs == rhs
        if isinstance(c, Inequality):
            lhs, rhs = (self.expr(a) for a in c.args)
            return lhs <= rhs
        if isinstance(c, Zero):
            return self.expr(c.args[0]) == 0
        if isinstance(c, NonPos):
            return self.expr(c.args[0]) <= 0
        if isinstance(c, NonNeg):
            return self.expr(c.args[0]) >= 0
        del cp
        raise ModelError(
            f"from_cvxpy: the constraint {_name(c)} ({type(c).__name__}) is not a QP constraint; "
            "only ==, <=, >=, Zero, NonPos and NonNeg are supported"
        )


class _CvxpyParameter(ex.Parameter):
    """A qpdsl Parameter whose value is its cvxpy Parameter's value at the time it is read.

    ``solve()`` (and a layer, for the parameters that are not its inputs) thus sees a value
    assigned to the cvxpy Parameter after the import; assigning ``value`` here is checked by
    qpdsl and written through to the cvxpy Parameter.
    """

    def __init__(self, source: Any, psd: bool, nonneg: bool):
        self.source = source
        super().__init__(source.shape, name=source.name(), psd=psd, nonneg=nonneg)

    @property
    def value(self) -> np.ndarray | None:
        current = self.source.value
        return None if current is None else _dense(current)

    @value.setter
    def value(self, value: Any) -> None:
        from .validation import checked_value

        self.source.value = None if value is None else checked_value(self, value)


def _types(items: Any) -> tuple[type, ...]:
    return tuple(t for t in items if isinstance(t, type))


def _axis(e: Any, arg: ex.Expression) -> int | None:
    axis = getattr(e, "axis", None)
    if axis is None:
        return None
    if isinstance(axis, (tuple, list)):
        if len(axis) != 1:
            raise ModelError(f"from_cvxpy: {_name(e)} reduces over several axes {axis}; not supported")
        axis = axis[0]
    return int(axis) % builtins.max(arg.ndim, 1)


def _reshape(arg: ex.Expression, shape: tuple[int, ...], order: str) -> ex.Expression:
    if tuple(arg.shape) == shape:
        return arg
    if (
        order == "C"
        or arg.size == 1
        or builtins.max(arg.shape, default=1) == arg.size
        and (builtins.max(shape, default=1) == arg.size)
    ):
        # C order, or between vectors / row / column shapes where F and C orders agree
        return ex.Reshape(arg, shape) if shape else ex.Index(ex.Reshape(arg, (1,)), 0)
    # Fortran order: out[i] (row-major over `shape`) is the element with the same column-major position
    perm = np.arange(arg.size).reshape(arg.shape).reshape(shape, order="F")
    return ex.Index(ex.Reshape(arg, (arg.size,)), np.ascontiguousarray(perm))


def _is_zero(e: ex.Expression) -> bool:
    return isinstance(e, ex.Constant) and e.sign == ex.Sign.ZERO


def _dense(value: Any) -> np.ndarray:
    if sp.issparse(value):
        return np.asarray(value.toarray(), dtype=float)
    return np.asarray(value, dtype=float)


def _constant_value(value: Any) -> Any:
    if sp.issparse(value):
        return sp.csr_matrix(value) if value.ndim == 2 else np.asarray(value.toarray(), dtype=float)
    value = np.asarray(value)
    if np.iscomplexobj(value):
        raise ModelError("from_cvxpy: complex constants are not supported")
    return value.astype(float)


def from_cvxpy(problem: Any) -> Any:
    """Build the qpdsl :class:`~qpdsl.Problem` equivalent to a cvxpy problem.

    Parameters
    ----------
    problem
        A ``cvxpy.Problem`` whose objective is ``cp.Minimize`` of a convex quadratic (or
        piecewise-linear) expression or ``cp.Maximize`` of a concave one, and whose
        constraints are ``==``, ``<=``, ``>=`` (``Zero``, ``NonPos``, ``NonNeg``).

    Returns
    -------
    qpdsl.Problem
        With the attribute ``cvxpy_map`` ``{cvxpy Variable / Parameter / Constraint -> qpdsl
        object}``. Parameters keep their names and read the cvxpy Parameters' values when the
        problem is solved (so ``solve()`` with no arguments solves at cvxpy's current values);
        ``psd=True`` and ``nonneg=True`` carry over. Variable sign attributes and ``bounds=``
        become user constraints.

    Raises
    ------
    qpdsl.ModelError
        For an expression, attribute or constraint that is not QP-representable or not
        supported, naming it; or when the imported model breaks qpdsl's curvature or
        parameter rules.
    """
    import cvxpy as cp

    from .problem import Maximize, Minimize, Problem

    if not isinstance(problem, cp.Problem):
        raise TypeError(f"from_cvxpy expects a cvxpy.Problem, got {type(problem).__name__}")
    imp = _Importer(cp)
    obj = problem.objective
    expr = imp.expr(obj.args[0])
    objective = Maximize(expr) if isinstance(obj, cp.Maximize) else Minimize(expr)
    constraints = []
    cmap: dict[Any, Any] = {}
    for c in problem.constraints:
        qc = imp.constraint(c)
        cmap[c] = qc
        constraints.append(qc)
    # variables/parameters that only appear in the variable attributes' bounds are converted by now
    out = Problem(objective, constraints + imp.extra)
    mapping: dict[Any, Any] = dict(imp.leaves)
    mapping.update(cmap)
    out.cvxpy_map = mapping
    return out
