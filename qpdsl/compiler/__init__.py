"""Compile a checked model into a :class:`ParametricQP`: canonicalise, extract coefficients, assemble."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..errors import ModelError
from ..expressions.constraints import Constraint
from ..expressions.expression import Expression, Parameter, Variable
from .affine import NONE, Affine
from .canon import Context, quadratic_terms
from .parametric import AffineMap, ConstraintRows, ParametricQP, VariableSlice

__all__ = ["AffineMap", "ParametricQP", "compile_problem"]


def _theta_col(theta: np.ndarray, n_theta: int) -> np.ndarray:
    return np.where(theta == NONE, n_theta, theta)


def _vector_map(index: np.ndarray, theta: np.ndarray, val: np.ndarray, size: int, n_theta: int,
                offset: np.ndarray | None = None) -> AffineMap:
    T = sp.csr_matrix((val, (index, _theta_col(theta, n_theta))), shape=(size, n_theta + 1))
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


def _matrix_map(row: np.ndarray, col: np.ndarray, theta: np.ndarray, val: np.ndarray, shape: tuple[int, int],
                n_theta: int) -> AffineMap:
    key = row * shape[1] + col
    if shape[0] * shape[1] <= 4 * key.size + 100_000:  # dense marking beats sorting
        present = np.zeros(shape[0] * shape[1], dtype=bool)
        present[key] = True
        pattern = np.flatnonzero(present)
        position = np.cumsum(present) - 1
        inverse = position[key]
    else:
        pattern, inverse = _unique_inverse(key)
    T = sp.csr_matrix((val, (inverse, _theta_col(theta, n_theta))), shape=(pattern.size, n_theta + 1))
    return AffineMap(T, shape, rows=pattern // shape[1], cols=pattern % shape[1])


def compile_problem(objective: Expression, constraints: list[Constraint], variables: list[Variable],
                    parameters: list[Parameter]) -> ParametricQP:
    """Compile ``minimize objective s.t. constraints`` (already checked for convexity)."""
    ctx = Context(variables, parameters)
    obj = ctx.canon(objective)
    for c in constraints:
        ctx.add_constraint(c, c)
    n_theta = ctx.n_theta

    rest, qa, qb, qtheta, qval = quadratic_terms(ctx, obj)

    # compact the variable space: slots are not variables of the QP
    is_var = ~ctx.is_slot_mask(np.arange(ctx.n_var))
    new_index = np.cumsum(is_var) - 1
    n = int(is_var.sum())

    # one gather: index -1 (no variable) reads the appended NONE
    lookup = np.append(new_index, NONE).astype(np.int64)

    def renumber(v: np.ndarray) -> np.ndarray:
        return lookup[v]

    qa, qb = renumber(qa), renumber(qb)
    both = (qa != NONE) & (qb != NONE)
    one = (qa != NONE) ^ (qb != NONE)
    none = (qa == NONE) & (qb == NONE)
    maps: dict[str, AffineMap] = {}
    maps["P"] = _matrix_map(qa[both], qb[both], qtheta[both], 2.0 * qval[both], (n, n), n_theta)
    rvar = renumber(rest.var)
    lin = rvar != NONE
    maps["q"] = _vector_map(np.concatenate([rvar[lin], np.maximum(qa, qb)[one]]),
                            np.concatenate([rest.theta[lin], qtheta[one]]),
                            np.concatenate([rest.val[lin], qval[one]]), n, n_theta)
    maps["r"] = _vector_map(np.zeros(int((~lin).sum() + none.sum()), dtype=np.int64),
                            np.concatenate([rest.theta[~lin], qtheta[none]]),
                            np.concatenate([rest.val[~lin], qval[none]]), 1, n_theta)

    rows_of: dict[Constraint, ConstraintRows] = {}
    blocks: dict[str, list[Affine]] = {"eq": [], "in": []}
    counts = {"eq": 0, "in": 0}
    lower_rows: list[np.ndarray] = []  # rows of C bounded below (from "ge" constraints)
    for cc in ctx.constraints:
        group = "eq" if cc.kind == "eq" else "in"
        start = counts[group]
        r = cc.rows
        blocks[group].append(Affine(r.size, r.row + start if start else r.row, r.var, r.theta, r.val))
        counts[group] += r.size
        if cc.kind == "ge":
            lower_rows.append(np.arange(start, counts[group]))
        if cc.origin is not None:
            rows_of[cc.origin] = ConstraintRows(group, start, counts[group], cc.origin.shape,
                                                -1.0 if cc.kind == "ge" else 1.0)
    n_eq, n_in = counts["eq"], counts["in"]
    is_lower = np.zeros(n_in, dtype=bool)
    if lower_rows:
        is_lower[np.concatenate(lower_rows)] = True
    for group, mat, vec in (("eq", "A", "b"), ("in", "C", "u")):
        rows = Affine.concat(blocks[group], counts[group])
        var = renumber(rows.var)
        has_var = var != NONE
        m = counts[group]
        with_var = np.flatnonzero(has_var)
        if with_var.size == has_var.size:  # no constant terms: no copies
            maps[mat] = _matrix_map(rows.row, var, rows.theta, rows.val, (m, n), n_theta)
            without = with_var[:0]
        else:
            maps[mat] = _matrix_map(rows.row[with_var], var[with_var], rows.theta[with_var], rows.val[with_var],
                                    (m, n), n_theta)
            without = np.flatnonzero(~has_var)
        if group == "eq":
            maps[vec] = _vector_map(rows.row[without], rows.theta[without], -rows.val[without], m, n_theta)
            continue
        # each inequality row has one finite side: u for "<=" rows, l for ">=" rows
        lower = is_lower[rows.row[without]]
        up, lo = without[~lower], without[lower]
        maps["u"] = _vector_map(rows.row[up], rows.theta[up], -rows.val[up], m, n_theta,
                                offset=np.where(is_lower, np.inf, 0.0) if is_lower.any() else None)
        maps["l"] = _vector_map(rows.row[lo], rows.theta[lo], -rows.val[lo], m, n_theta,
                                offset=np.where(is_lower, 0.0, -np.inf))

    if n == 0:
        raise ModelError("the problem has no variables")
    var_slices = {v: VariableSlice(int(new_index[ctx.var_offset[v]]), v.shape) for v in variables}
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
    )
