"""Compile a checked model into a :class:`ParametricQP`: canonicalise, extract coefficients, assemble."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..errors import ModelError
from ..expressions.constraints import Constraint
from ..expressions.expression import Expression, Parameter, Variable
from ..solve.closest import Shiftable
from .affine import NONE, Affine
from .canon import Context, quadratic_terms
from .parametric import AffineMap, ConstraintRows, ParametricQP, VariableSlice

__all__ = ["AffineMap", "ParametricQP", "compile_problem"]


@dataclass
class _Terms:
    """Terms ``val * theta[col]`` at entry ``row`` (and column ``var``) of a data item.

    ``col`` is a column of ``[theta; 1]``: ``n_theta`` stands for the constant 1.
    """

    row: np.ndarray
    var: np.ndarray
    col: np.ndarray
    val: np.ndarray

    @staticmethod
    def of(row: np.ndarray, var: np.ndarray, theta: np.ndarray, val: np.ndarray, n_theta: int) -> _Terms:
        return _Terms(row, var, np.where(theta == NONE, n_theta, theta), val)


def _index_dtype(bound: int) -> type:
    """int32 for indices below ``bound`` when they fit (half the memory to write), else int64."""
    return np.int32 if bound < 2**31 else np.int64


def _vector_map(t: _Terms, size: int, n_theta: int, offset: np.ndarray | None = None) -> AffineMap:
    T = sp.csr_matrix((t.val, (t.row, t.col)), shape=(size, n_theta + 1))
    return AffineMap(T, (size,), offset=offset)


def _unique_inverse(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(key, return_inverse=True)``, faster on keys made of sorted runs (the usual case).

    A stable sort (timsort) merges the runs that constraint blocks produce in linear time, where
    ``np.unique`` would quicksort from scratch.
    """
    if key.size < 2 or bool(np.all(key[1:] >= key[:-1])):
        order = None
        sk = key
    else:
        order = np.argsort(key, kind="stable")
        sk = key[order]
    first = np.empty(sk.size, dtype=bool)
    first[:1] = True
    np.not_equal(sk[1:], sk[:-1], out=first[1:])
    pattern = sk[first]
    position = np.cumsum(first) - 1
    if order is None:
        return pattern, position
    inverse = np.empty_like(position)
    inverse[order] = position
    return pattern, inverse


def _matrix_map(t: _Terms, shape: tuple[int, int], n_theta: int) -> AffineMap:
    """The map of a sparse matrix item from its terms (entry ``(t.row, t.var)``).

    When no entry repeats (the usual case), the pattern keeps the terms' order and T is written
    down as CSR directly. Terms come grouped by constraint and, inside a block such as
    ``A @ x``, in the order of the parameter's entries in theta, so the values of a parameter
    block stay contiguous runs of theta, which :meth:`AffineMap.apply` copies as slices.
    """
    key = np.multiply(t.row, shape[1], dtype=np.int64)
    key += t.var
    if shape[0] * shape[1] <= 4 * key.size + 100_000:  # dense marking beats sorting
        present = np.zeros(shape[0] * shape[1], dtype=bool)
        present[key] = True
        if np.count_nonzero(present) == key.size:
            del key, present  # before the result is written (see compile_problem on peak memory)
            return _unique_matrix_map(t, shape, n_theta)
        pattern = np.flatnonzero(present)
        inverse = (np.cumsum(present) - 1)[key]
    else:
        pattern, inverse = _unique_inverse(key)
        if pattern.size == key.size:
            del key, pattern, inverse
            return _unique_matrix_map(t, shape, n_theta)
    T = sp.csr_matrix((t.val, (inverse, t.col)), shape=(pattern.size, n_theta + 1))
    return AffineMap(T, shape, rows=pattern // shape[1], cols=pattern % shape[1])


def _unique_matrix_map(t: _Terms, shape: tuple[int, int], n_theta: int) -> AffineMap:
    """:func:`_matrix_map` when every term has its own entry: value i is term i, T one entry per row."""
    nnz = t.row.size
    index_dtype = _index_dtype(max(nnz, n_theta + 1))
    indptr = np.arange(nnz + 1, dtype=index_dtype)
    T = sp.csr_matrix((t.val, t.col.astype(index_dtype, copy=False), indptr), shape=(nnz, n_theta + 1))
    return AffineMap(T, shape, rows=t.row, cols=t.var)


def _stack(parts: list[tuple[Affine, int]], shape: tuple[int, int], n_theta: int) -> tuple[_Terms, _Terms]:
    """Sum of row blocks ``(affine, first row)`` of a ``shape`` matrix, as (variable terms, constant terms).

    Each index array is written once, in its final dtype, with the row offsets added and the
    theta indices turned into columns on the way; only parts that mix both kinds of term are
    split with masks.
    """
    with_var: list[tuple[Affine, int]] = []
    without: list[tuple[Affine, int]] = []
    for aff, start in parts:
        if aff.nnz == 0:
            continue
        lo, hi = aff.var_bounds()
        if lo != NONE:
            with_var.append((aff, start))
        elif hi == NONE:
            without.append((aff, start))
        else:
            has = aff.var != NONE
            with_var.append(
                (Affine(aff.size, aff.row[has], aff.var[has], aff.theta[has], aff.val[has]), start)
            )
            without.append(
                (Affine(aff.size, aff.row[~has], aff.var[~has], aff.theta[~has], aff.val[~has]), start)
            )
    index_dtype = _index_dtype(max(shape[0], shape[1], n_theta + 1))
    return _concat_terms(with_var, n_theta, index_dtype), _concat_terms(without, n_theta, index_dtype)


def _concat_terms(parts: list[tuple[Affine, int]], n_theta: int, index_dtype: type) -> _Terms:
    total = sum(aff.nnz for aff, _ in parts)
    row, var, col = (np.empty(total, dtype=index_dtype) for _ in range(3))
    val = np.empty(total)
    pos = 0
    for aff, start in parts:
        end = pos + aff.nnz
        aff.write_terms(row[pos:end], var[pos:end], col[pos:end], val[pos:end], start)
        pos = end
    np.putmask(col, col == NONE, n_theta)
    return _Terms(row, var, col, val)


def compile_problem(
    objective: Expression,
    constraints: list[Constraint],
    variables: list[Variable],
    parameters: list[Parameter],
) -> ParametricQP:
    """Compile ``minimize objective s.t. constraints`` (already checked for convexity)."""
    ctx = Context(variables, parameters)
    obj = ctx.canon(objective)
    for c in constraints:
        ctx.add_constraint(c, c)
    n_theta = ctx.n_theta
    n = ctx.n_var  # slots are numbered apart (canon.SLOT_BASE): the QP's variables are 0..n-1
    if n == 0:
        raise ModelError("the problem has no variables")

    rest, qa, qb, qtheta, qval = quadratic_terms(ctx, obj)
    # Past this point each constraint's coefficients are copied once more, into A or C: release
    # every other reference as soon as possible, so that the compiler's peak memory (fresh memory
    # is slow to touch) stays near the size of the result.
    ctx.cache.clear()
    both = (qa != NONE) & (qb != NONE)
    one = (qa != NONE) ^ (qb != NONE)
    none = (qa == NONE) & (qb == NONE)
    maps: dict[str, AffineMap] = {}
    maps["P"] = _matrix_map(
        _Terms.of(qa[both], qb[both], qtheta[both], 2.0 * qval[both], n_theta), (n, n), n_theta
    )
    lin = rest.var != NONE
    q_index = np.concatenate([rest.var[lin], np.maximum(qa, qb)[one]])
    maps["q"] = _vector_map(
        _Terms.of(
            q_index,
            q_index,
            np.concatenate([rest.theta[lin], qtheta[one]]),
            np.concatenate([rest.val[lin], qval[one]]),
            n_theta,
        ),
        n,
        n_theta,
    )
    r_index = np.zeros(int((~lin).sum() + none.sum()), dtype=np.int64)
    maps["r"] = _vector_map(
        _Terms.of(
            r_index,
            r_index,
            np.concatenate([rest.theta[~lin], qtheta[none]]),
            np.concatenate([rest.val[~lin], qval[none]]),
            n_theta,
        ),
        1,
        n_theta,
    )

    rows_of: dict[Constraint, ConstraintRows] = {}
    blocks: dict[str, list[tuple[Affine, int]]] = {"eq": [], "in": []}
    counts = {"eq": 0, "in": 0}
    lower_rows: list[tuple[int, int]] = []  # rows of C bounded below (from "ge" constraints)
    user_rows: dict[str, list[tuple[int, int]]] = {"eq": [], "in": []}
    for cc in ctx.constraints:
        group = "eq" if cc.kind == "eq" else "in"
        start = counts[group]
        blocks[group].extend((part, start) for part in cc.parts)
        counts[group] += cc.size
        if cc.user:
            user_rows[group].append((start, counts[group]))
        if cc.kind == "ge":
            lower_rows.append((start, counts[group]))
        if cc.origin is not None:
            rows_of[cc.origin] = ConstraintRows(
                group, start, counts[group], cc.origin.shape, -1.0 if cc.kind == "ge" else 1.0
            )
    ctx.constraints.clear()
    n_eq, n_in = counts["eq"], counts["in"]
    shiftable = {group: np.zeros(counts[group], dtype=bool) for group in counts}
    for group, spans in user_rows.items():
        for a, b in spans:
            shiftable[group][a:b] = True
    is_lower = np.zeros(n_in, dtype=bool)
    for a, b in lower_rows:
        is_lower[a:b] = True
    for group, mat, vec in (("eq", "A", "b"), ("in", "C", "u")):
        m = counts[group]
        terms, consts = _stack(blocks.pop(group), (m, n), n_theta)
        maps[mat] = _matrix_map(terms, (m, n), n_theta)
        consts.val = -consts.val  # the constants move to the right-hand side
        if group == "eq":
            maps[vec] = _vector_map(consts, m, n_theta)
            continue
        # each inequality row has one finite side: u for "<=" rows, l for ">=" rows
        lower = is_lower[consts.row]
        upper = ~lower
        maps["u"] = _vector_map(
            _Terms(consts.row[upper], consts.var, consts.col[upper], consts.val[upper]),
            m,
            n_theta,
            offset=np.where(is_lower, np.inf, 0.0) if is_lower.any() else None,
        )
        maps["l"] = _vector_map(
            _Terms(consts.row[lower], consts.var, consts.col[lower], consts.val[lower]),
            m,
            n_theta,
            offset=np.where(is_lower, 0.0, -np.inf),
        )

    var_slices = {v: VariableSlice(int(ctx.var_offset[v]), v.shape) for v in variables}
    return ParametricQP(
        parameters=list(parameters),
        param_offsets=dict(ctx.param_offset),
        n_theta=n_theta,
        n=n,
        n_eq=n_eq,
        n_in=n_in,
        maps=maps,
        variables=var_slices,
        constraints=rows_of,
        shiftable=Shiftable(shiftable["eq"], shiftable["in"]),
    )
