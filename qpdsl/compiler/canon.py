"""Canonicalisation: every expression node becomes an :class:`Affine` (one table, keyed by node type).

Affine operators map to linear maps of their arguments' coefficients. Piecewise-linear atoms
introduce an auxiliary variable and the epigraph (or hypograph) constraints that bound it;
this is exact because the model passed the curvature rules. Quadratic atoms become *slots*:
auxiliary scalars that stand for a quadratic form in the variables; the objective's
coefficient on each slot later turns into entries of P, q and r.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ..errors import ModelError
from ..expressions import atoms as at
from ..expressions import expression as ex
from ..expressions.constraints import Constraint, Equality, Inequality
from .affine import NONE, Affine, broadcast_index


@dataclass
class Slots:
    """Quadratic slots: ``slot_s = sum val * theta_t * x_va * x_vb`` (va/vb = -1 stand for 1)."""

    slot: list[np.ndarray] = field(default_factory=list)
    va: list[np.ndarray] = field(default_factory=list)
    vb: list[np.ndarray] = field(default_factory=list)
    theta: list[np.ndarray] = field(default_factory=list)
    val: list[np.ndarray] = field(default_factory=list)
    with_params: set[int] = field(default_factory=set)  # slots whose terms hold a parameter

    def add(
        self, slot: np.ndarray, va: np.ndarray, vb: np.ndarray, theta: np.ndarray, val: np.ndarray
    ) -> None:
        for name, arr in zip(("slot", "va", "vb", "theta", "val"), (slot, va, vb, theta, val), strict=True):
            getattr(self, name).append(np.asarray(arr))
        theta = np.asarray(theta)
        self.with_params.update(np.unique(np.asarray(slot)[theta != NONE]).tolist())

    def hold_params(self, slots: np.ndarray) -> bool:
        """Whether any of the given slots is a quadratic form with parameter coefficients."""
        return bool(self.with_params) and bool(np.isin(slots, list(self.with_params)).any())

    def arrays(self) -> tuple[np.ndarray, ...]:
        def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

        return (
            cat(self.slot, np.int64),
            cat(self.va, np.int64),
            cat(self.vb, np.int64),
            cat(self.theta, np.int64),
            cat(self.val, float),
        )


@dataclass
class CanonConstraint:
    """``sum(parts) (kind) 0`` row by row, where kind is "eq" (==), "le" (<=) or "ge" (>=).

    The parts (affines of ``size`` rows) are summed by concatenation only once, when the
    compiler stacks every constraint into A or C.
    """

    kind: str
    parts: tuple[Affine, ...]
    size: int
    origin: Constraint | None
    user: bool = False  # written by the user (a constraint or a sign attribute): may be shifted


SLOT_BASE = 1 << 40  # slots are numbered from here, apart from the QP's variables 0, 1, ...


class Context:
    """State of one canonicalisation: variable and parameter indices, constraints, slots.

    QP variables (user and auxiliary) are numbered 0, 1, ... in order of creation; quadratic
    slots get indices from :data:`SLOT_BASE` on, so the QP's variable numbering needs no
    compaction once the slots are gone.
    """

    def __init__(self, variables: list[ex.Variable], parameters: list[ex.Parameter]):
        self.param_offset: dict[ex.Parameter, int] = {}
        offset = 0
        for p in parameters:
            self.param_offset[p] = offset
            offset += p.size
        self.n_theta = offset
        self.var_offset: dict[ex.Variable, int] = {}
        self.n_var = 0
        self.n_slots = 0
        self.slots = Slots()
        self.constraints: list[CanonConstraint] = []
        self.cache: dict[int, Affine] = {}
        self.user_variables = {v.id for v in variables}
        for v in variables:
            self.variable_offset(v)

    # ------------------------------------------------------------ indices
    def variable_offset(self, v: ex.Variable) -> int:
        if v not in self.var_offset:
            self.var_offset[v] = self.n_var
            self.n_var += v.size
            if v.nonneg:
                self.add_constraint(v >= 0, None, user=v.id in self.user_variables)
        return self.var_offset[v]

    def new_slots(self, count: int) -> np.ndarray:
        first = SLOT_BASE + self.n_slots
        self.n_slots += count
        return np.arange(first, first + count, dtype=np.int64)

    @staticmethod
    def is_slot_mask(var: np.ndarray) -> np.ndarray:
        """Which entries of ``var`` (variable indices, -1 for none) are quadratic slots."""
        return var >= SLOT_BASE

    # ------------------------------------------------------------ canonicalisation
    def canon(self, expr: ex.Expression) -> Affine:
        hit = self.cache.get(expr.id)
        if hit is not None:
            return hit
        rule = RULES.get(type(expr))
        if rule is None:  # a subclass (such as the Parameters that from_cvxpy makes) uses its base's rule
            rule = next((RULES[c] for c in type(expr).__mro__ if c in RULES), None)
        if rule is None:
            raise ModelError(f"qpdsl cannot compile {type(expr).__name__} ({expr.describe()})")
        out = rule(expr, self)
        self.cache[expr.id] = out
        return out

    def add_constraint(
        self, constraint: Constraint, origin: Constraint | None, user: bool | None = None
    ) -> None:
        """Add ``constraint``; ``origin`` is the user's constraint it stands for (None for the
        compiler's own rows). ``user`` (default: whether there is an origin) marks rows that the
        closest feasible QP may shift."""
        expr = constraint.expr
        # the terms of a sum stay separate parts, summed when the compiler stacks A and C (so a
        # large ``A @ x`` term is written down once, there)
        terms = expr.args if isinstance(expr, ex.Add) else (expr,)
        parts = [_broadcast(self.canon(t), t.shape, expr.shape) for t in terms]
        if any(part.var_bounds()[1] >= SLOT_BASE for part in parts):
            raise ModelError(
                f"constraint {constraint.describe()}: quadratic terms are only allowed in the objective"
            )
        assert isinstance(constraint, (Equality, Inequality))
        kind = "eq" if isinstance(constraint, Equality) else "le"
        if kind == "le" and constraint.rhs.has_variables and not constraint.lhs.has_variables:
            # ``lo <= expr`` (e.g. x >= 0) becomes the lower bound of the row +expr, not -expr <= -lo
            parts, kind = [part.scale(-1.0) for part in parts], "ge"
        user = origin is not None if user is None else user
        self.constraints.append(CanonConstraint(kind, tuple(parts), expr.size, origin, user))

    def aux(self, shape: tuple[int, ...], name: str) -> ex.Variable:
        v = ex.Variable(shape, name=f"_{name}")
        self.variable_offset(v)
        return v


Rule = Callable[[ex.Expression, Context], Affine]
RULES: dict[type, Rule] = {}


def rule(*types: type) -> Callable[[Rule], Rule]:
    def deco(fn: Rule) -> Rule:
        for t in types:
            RULES[t] = fn
        return fn

    return deco


def _broadcast(aff: Affine, shape_from: tuple[int, ...], shape_to: tuple[int, ...]) -> Affine:
    idx = broadcast_index(shape_from, shape_to)
    return aff if idx is None else aff.select(idx)


# ---------------------------------------------------------------- leaves


@rule(ex.Variable)
def _variable(e: ex.Variable, ctx: Context) -> Affine:
    return Affine.variable(ctx.variable_offset(e), e.size)


@rule(ex.Parameter)
def _parameter(e: ex.Parameter, ctx: Context) -> Affine:
    if e not in ctx.param_offset:
        raise ModelError(f"parameter {e.name} is not part of this problem")
    return Affine.parameter(ctx.param_offset[e], e.size)


@rule(ex.Constant)
def _constant(e: ex.Constant, ctx: Context) -> Affine:
    return Affine.constant(e.dense())


# ---------------------------------------------------------------- affine operators


@rule(ex.Add)
def _add(e: ex.Add, ctx: Context) -> Affine:
    parts = [_broadcast(ctx.canon(a), a.shape, e.shape) for a in e.args]
    return Affine.concat(parts, e.size)


@rule(ex.Neg)
def _neg(e: ex.Neg, ctx: Context) -> Affine:
    return ctx.canon(e.args[0]).scale(-1.0)


@rule(ex.Multiply)
def _multiply(e: ex.Multiply, ctx: Context) -> Affine:
    lhs, rhs = e.args
    for const, other in ((lhs, rhs), (rhs, lhs)):
        if isinstance(const, ex.Constant) and not const.is_sparse:
            factor = np.broadcast_to(const.value, e.shape).reshape(-1)
            return _broadcast(ctx.canon(other), other.shape, e.shape).scale(factor)
    factor = e.factor
    if isinstance(factor, ex.Multiply) and not factor.has_variables and factor.args[0].has_parameters:
        # (p * q) * x as p * (q * x): the inner product then keeps x's side, not p * q, parametric
        a, b = factor.args
        return ctx.canon(ex.Multiply(a, ex.Multiply(b, e.operand)))
    left, right = _product_sides(e, ctx, ctx.canon(lhs), ctx.canon(rhs))
    left = _broadcast(left, lhs.shape, e.shape)
    right = _broadcast(right, rhs.shape, e.shape)
    idx = np.arange(e.size, dtype=np.int64)
    return Affine.bilinear(left, right, idx, idx, idx, e.size, e.describe())


def _product_sides(
    e: ex.Multiply | ex.MatMul, ctx: Context, left: Affine, right: Affine
) -> tuple[Affine, Affine]:
    """The coefficients of a product's two sides, made fit to multiply (see :func:`_scaled_operand`)."""
    if e.operand is e.args[0]:
        return _scaled_operand(e, ctx, right, left), right
    return left, _scaled_operand(e, ctx, left, right)


def _scaled_operand(
    e: ex.Multiply | ex.MatMul, ctx: Context, factor: Affine | None, operand: Affine
) -> Affine:
    """The operand's coefficients, free of parameters when the factor holds some.

    A product of two parameter-dependent coefficients would not be affine in the parameters,
    so the operand's linear part becomes an auxiliary variable t with the (compiler) rows
    ``t == operand``: the product is then ``factor * t``. Its quadratic slots cannot be
    rewritten like that (their P entries would become products of parameters). ``factor``
    None stands for a Parameter leaf (not written down: it may be a large matrix).
    """
    if factor is not None and not factor.has_params:
        return operand
    if factor is not None and factor.has_vars:
        raise ModelError(
            f"{e.describe()}: the factor {e.factor.describe()} is itself a product of parameters; "
            "write the product the other way round (p * (q * x) rather than (p @ q) @ x) or pass the "
            "product as one Parameter"
        )
    slot = ctx.is_slot_mask(operand.var)
    if slot.any():
        quad = operand.subset(slot)
        if quad.has_params or ctx.slots.hold_params(quad.var):
            raise ModelError(_parametric_quadratic_message(e))
    if not operand.has_params:
        return operand
    linear = operand.subset(~slot) if slot.any() else operand
    t = ctx.canon(ctx.aux((operand.size,), "product_arg"))
    ctx.constraints.append(CanonConstraint("eq", (linear, t.scale(-1.0)), operand.size, None))
    return Affine.concat([operand.subset(slot), t], operand.size) if slot.any() else t


def _parametric_quadratic_message(e: ex.Expression | None) -> str:
    where = f"{e.describe()}: " if e is not None else ""
    return (
        f"{where}a parameter scales a quadratic term whose coefficients already hold parameters "
        "(such as quad_form(w, Sigma) with a Parameter Sigma), so the entries of P would be products "
        "of parameters, which no auxiliary variable makes affine. Instead pass the product as one "
        "Parameter(psd=True) (gamma * Sigma computed outside), write the quadratic with a factor, "
        "gamma * qd.sum_squares(F @ w) with Sigma = F'F (a parameter may scale it), or make one of "
        "the two a numeric constant"
    )


def _as_matrix(shape: tuple[int, ...], left: bool) -> tuple[int, int]:
    if len(shape) == 2:
        return shape  # type: ignore[return-value]
    return (1, shape[0]) if left else (shape[0], 1)


@rule(ex.MatMul)
def _matmul(e: ex.MatMul, ctx: Context) -> Affine:
    lhs, rhs = e.args
    m, k = _as_matrix(lhs.shape, left=True)
    _, n = _as_matrix(rhs.shape, left=False)
    if isinstance(lhs, ex.Constant) and lhs.curvature == ex.Curvature.CONSTANT:
        D = sp.csr_matrix(lhs.value.reshape(m, k)) if not lhs.is_sparse else lhs.value
        return ctx.canon(rhs).linear(sp.kron(D, sp.identity(n), format="coo"))
    if isinstance(rhs, ex.Constant):
        Y = sp.csr_matrix(rhs.value.reshape(k, n)) if not rhs.is_sparse else rhs.value
        return ctx.canon(lhs).linear(sp.kron(sp.identity(m), Y.T, format="coo"))
    for side, other, left in ((lhs, rhs, True), (rhs, lhs, False)):
        base, transposed = (side.args[0], True) if isinstance(side, ex.Transpose) else (side, False)
        if isinstance(base, ex.Parameter) and base in ctx.param_offset:
            aff = _scaled_operand(e, ctx, None, ctx.canon(other))
            return Affine.param_times(aff, ctx.param_offset[base], base.shape, left, transposed, m, k, n)
    i, l, j = np.meshgrid(np.arange(m), np.arange(k), np.arange(n), indexing="ij")
    out = (i * n + j).reshape(-1)
    left_aff, right_aff = _product_sides(e, ctx, ctx.canon(lhs), ctx.canon(rhs))
    return Affine.bilinear(
        left_aff,
        right_aff,
        out,
        (i * k + l).reshape(-1),
        (l * n + j).reshape(-1),
        m * n,
        e.describe(),
    )


@rule(ex.Index)
def _index(e: ex.Index, ctx: Context) -> Affine:
    return ctx.canon(e.args[0]).select(e.flat_index.reshape(-1))


@rule(ex.Transpose)
def _transpose(e: ex.Transpose, ctx: Context) -> Affine:
    arg = e.args[0]
    return ctx.canon(arg).select(np.arange(arg.size).reshape(arg.shape).T.reshape(-1))


@rule(ex.Reshape)
def _reshape(e: ex.Reshape, ctx: Context) -> Affine:
    return ctx.canon(e.args[0])


def _reduce_map(shape: tuple[int, ...], axis: int | None) -> sp.coo_matrix:
    """The 0/1 matrix that sums ``shape`` over ``axis`` (all axes when None)."""
    size = int(np.prod(shape, dtype=np.int64))
    src = np.arange(size)
    if axis is None:
        dst = np.zeros(size, dtype=np.int64)
        n_out = 1
    else:
        grid = np.indices(shape).reshape(len(shape), -1)
        kept = [grid[d] for d in range(len(shape)) if d != axis]
        kept_shape = [shape[d] for d in range(len(shape)) if d != axis]
        dst = np.ravel_multi_index(kept, kept_shape) if kept else np.zeros(size, dtype=np.int64)
        n_out = int(np.prod(kept_shape, dtype=np.int64))
    return sp.coo_matrix((np.ones(size), (dst, src)), shape=(n_out, size))


@rule(ex.Sum)
def _sum(e: ex.Sum, ctx: Context) -> Affine:
    arg = e.args[0]
    return ctx.canon(arg).linear(_reduce_map(arg.shape, e.axis))


@rule(ex.Cumsum)
def _cumsum(e: ex.Cumsum, ctx: Context) -> Affine:
    arg = e.args[0]
    shape = arg.shape
    idx = np.arange(arg.size).reshape(shape)
    length = shape[e.axis]
    lanes = np.moveaxis(idx, e.axis, -1).reshape(-1, length)  # out[k] = sum_{j <= k} in[j] along the axis
    k, j = np.tril_indices(length)
    r, c = lanes[:, k].reshape(-1), lanes[:, j].reshape(-1)
    return ctx.canon(arg).linear(sp.coo_matrix((np.ones(r.size), (r, c)), shape=(arg.size, arg.size)))


@rule(ex.Concatenate)
def _concatenate(e: ex.Concatenate, ctx: Context) -> Affine:
    positions = np.arange(e.size).reshape(e.shape)
    splits = np.cumsum([s[e.axis] for s in e.arg_shapes])[:-1]
    blocks = np.split(positions, splits, axis=e.axis)
    parts = [ctx.canon(a).remap(block.reshape(-1), e.size) for a, block in zip(e.args, blocks, strict=True)]
    return Affine.concat(parts, e.size)


@rule(ex.Diag)
def _diag(e: ex.Diag, ctx: Context) -> Affine:
    arg = e.args[0]
    n = arg.shape[0]
    if arg.ndim == 1:
        return ctx.canon(arg).remap(np.arange(n) * (n + 1), n * n)
    return ctx.canon(arg).select(np.arange(n) * (n + 1))


# ---------------------------------------------------------------- piecewise-linear atoms (epigraphs)


def _epigraph(ctx: Context, shape: tuple[int, ...], below: list[ex.Expression], name: str) -> Affine:
    """A new variable t with ``e <= t`` for every e in ``below``; returns t's coefficients."""
    t = ctx.aux(shape, name)
    for e in below:
        ctx.add_constraint(e <= t, None)
    return ctx.canon(t)


def _hypograph(ctx: Context, shape: tuple[int, ...], above: list[ex.Expression], name: str) -> Affine:
    t = ctx.aux(shape, name)
    for e in above:
        ctx.add_constraint(t <= e, None)
    return ctx.canon(t)


@rule(at.Abs)
def _abs(e: at.Abs, ctx: Context) -> Affine:
    x = e.args[0]
    return _epigraph(ctx, e.shape, [x, -x], "abs")


@rule(at.Pos)
def _pos(e: at.Pos, ctx: Context) -> Affine:
    return _epigraph(ctx, e.shape, [e.args[0], ex.Constant(0.0)], "pos")


@rule(at.Neg_)
def _negpart(e: at.Neg_, ctx: Context) -> Affine:
    return _epigraph(ctx, e.shape, [-e.args[0], ex.Constant(0.0)], "neg")


@rule(at.Maximum)
def _maximum(e: at.Maximum, ctx: Context) -> Affine:
    return _epigraph(ctx, e.shape, list(e.args), "maximum")


@rule(at.Minimum)
def _minimum(e: at.Minimum, ctx: Context) -> Affine:
    return _hypograph(ctx, e.shape, list(e.args), "minimum")


def _reduced_bound(e: at.Max | at.Min, ctx: Context, epi: bool) -> Affine:
    x = e.args[0]
    t = ctx.aux(e.shape, type(e).__name__.lower())
    tb: ex.Expression = t
    if e.axis is not None and x.ndim == 2 and e.axis == 1:
        tb = ex.Reshape(t, (x.shape[0], 1))
    ctx.add_constraint(x <= tb if epi else tb <= x, None)
    return ctx.canon(t)


@rule(at.Max)
def _max(e: at.Max, ctx: Context) -> Affine:
    return _reduced_bound(e, ctx, epi=True)


@rule(at.Min)
def _min(e: at.Min, ctx: Context) -> Affine:
    return _reduced_bound(e, ctx, epi=False)


@rule(at.Norm1)
def _norm1(e: at.Norm1, ctx: Context) -> Affine:
    return ctx.canon(ex.Sum(at.Abs(e.args[0])))


@rule(at.NormInf)
def _norm_inf(e: at.NormInf, ctx: Context) -> Affine:
    return ctx.canon(at.Max(at.Abs(e.args[0])))


# ---------------------------------------------------------------- quadratic atoms (slots)


def _param_free(ctx: Context, x: ex.Expression, name: str) -> Affine:
    """Coefficients of x, through an auxiliary variable w == x when x depends on parameters."""
    if not x.has_parameters:
        return ctx.canon(x)
    w = ctx.aux(x.shape, name)
    # the rows of x - w == 0 as separate parts (x's own sum is never materialised); written
    # as x - w rather than w - x so that x's parameter entries keep their sign in A, which
    # lets applying the parameters copy them instead of negating them
    terms = x.args if isinstance(x, ex.Add) and x.id not in ctx.cache else (x,)
    parts = [_broadcast(ctx.canon(t), t.shape, x.shape) for t in terms] + [ctx.canon(w).scale(-1.0)]
    ctx.constraints.append(CanonConstraint("eq", tuple(parts), x.size, None))
    return ctx.canon(w)


@rule(at.Square)
def _square(e: at.Square, ctx: Context) -> Affine:
    x = e.args[0]
    aff = _broadcast(_param_free(ctx, x, "square_arg"), x.shape, e.shape)
    slots = ctx.new_slots(e.size)
    ctx.slots.add(*Affine.row_products(aff, aff, slots, e.size))
    return Affine.variable(int(slots[0]), e.size)


@rule(at.SumSquares)
def _sum_squares(e: at.SumSquares, ctx: Context) -> Affine:
    return ctx.canon(ex.Sum(at.Square(e.args[0])))


@rule(at.QuadForm)
def _quad_form(e: at.QuadForm, ctx: Context) -> Affine:
    x, Q = e.args
    k = x.size
    slot = ctx.new_slots(1)
    if isinstance(Q, ex.Constant):
        aff = _param_free(ctx, x, "quad_form_arg")
        weighted = aff.linear(sp.coo_matrix(Q.dense().reshape(k, k)))
        ctx.slots.add(*Affine.row_products(aff, weighted, np.full(k, slot[0], dtype=np.int64), 1))
    else:
        aff = ctx.canon(x)
        if not aff.is_selection():
            w = ctx.aux((k,), "quad_form_arg")
            ctx.add_constraint(w == ex.Reshape(x, (k,)), None)
            aff = ctx.canon(w)
        ctx.slots.add(*_symmetric_form(slot[0], aff.selected_vars(), ctx.param_offset[Q], k))
    return Affine.variable(int(slot[0]), 1)


def _symmetric_form(slot: int, v: np.ndarray, offset: int, k: int) -> tuple[np.ndarray, ...]:
    """Slot terms of ``x' Q x`` for a parameter Q (k x k at ``offset`` of theta), x the variables ``v``.

    The form only sees the symmetric part of Q: entry (i, j) is ``(Q_ij + Q_ji) / 2``, so P is
    symmetric even for an unsymmetric value of Q (a psd parameter may be any square matrix
    with a PSD symmetric part).
    """
    i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    i, j = i.reshape(-1), j.reshape(-1)
    off = i != j
    va = np.concatenate([v[i], v[i[off]]])
    vb = np.concatenate([v[j], v[j[off]]])
    theta = np.concatenate([offset + i * k + j, offset + (j * k + i)[off]])
    val = np.concatenate([np.where(off, 0.5, 1.0), np.full(int(off.sum()), 0.5)])
    return np.full(va.size, slot), va, vb, theta, val


@rule(at.Huber)
def _huber(e: at.Huber, ctx: Context) -> Affine:
    # huber(x) = min over s + r = x of s^2 + 2 M |r|
    x, M = e.args
    s = ctx.aux(e.shape, "huber_s")
    r = ctx.aux(e.shape, "huber_r")
    ctx.add_constraint(ex.Add([s, r]) == x, None)
    return ctx.canon(ex.Add([at.Square(s), ex.Multiply(ex.Multiply(ex.Constant(2.0), M), at.Abs(r))]))


def quadratic_terms(ctx: Context, objective: Affine) -> tuple[np.ndarray, ...]:
    """Turn the objective's slot coefficients into (va, vb, theta, val) terms of ``c * slot``.

    Returns the objective's remaining linear/constant entries and the quadratic terms, where a
    term with ``va == vb == -1`` is constant, one -1 is linear, and none is quadratic (to be
    doubled into P for the 1/2 x'Px convention by the caller).
    """
    slot_mask = ctx.is_slot_mask(objective.var)
    coef_var = objective.var[slot_mask]
    coef_theta = objective.theta[slot_mask]
    coef_val = objective.val[slot_mask]
    s_slot, s_va, s_vb, s_theta, s_val = ctx.slots.arrays()
    # join coefficient entries with slot terms on the slot index
    order = np.argsort(s_slot, kind="stable")
    s_slot, s_va, s_vb, s_theta, s_val = s_slot[order], s_va[order], s_vb[order], s_theta[order], s_val[order]
    lo = np.searchsorted(s_slot, coef_var, side="left")
    hi = np.searchsorted(s_slot, coef_var, side="right")
    counts = hi - lo
    owner = np.repeat(np.arange(coef_var.size), counts)
    first = np.cumsum(counts) - counts
    item = lo[owner] + (np.arange(int(counts.sum())) - first[owner])
    ct, st = coef_theta[owner], s_theta[item]
    if np.any((ct != NONE) & (st != NONE)):
        raise ModelError(_parametric_quadratic_message(None))
    rest = Affine(
        objective.size,
        objective.row[~slot_mask],
        objective.var[~slot_mask],
        objective.theta[~slot_mask],
        objective.val[~slot_mask],
    )
    return rest, s_va[item], s_vb[item], np.maximum(ct, st), coef_val[owner] * s_val[item]
