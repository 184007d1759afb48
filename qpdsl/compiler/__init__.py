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
        pattern, inverse = np.unique(key, return_inverse=True)
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

    def renumber(v: np.ndarray) -> np.ndarray:
        return np.where(v == NONE, NONE, new_index[np.maximum(v, 0)])

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
    blocks: dict[str, list[Affine]] = {"eq": [], "le": []}
    counts = {"eq": 0, "le": 0}
    for cc in ctx.constraints:
        start = counts[cc.kind]
        blocks[cc.kind].append(cc.rows.remap(np.arange(cc.rows.size) + start, 0))
        counts[cc.kind] += cc.rows.size
        if cc.origin is not None:
            rows_of[cc.origin] = ConstraintRows("eq" if cc.kind == "eq" else "in", start, counts[cc.kind],
                                                cc.origin.shape)
    n_eq, n_in = counts["eq"], counts["le"]
    for kind, mat, vec in (("eq", "A", "b"), ("le", "C", "u")):
        rows = Affine.concat(blocks[kind], counts[kind])
        var = renumber(rows.var)
        has_var = var != NONE
        m = counts[kind]
        maps[mat] = _matrix_map(rows.row[has_var], var[has_var], rows.theta[has_var], rows.val[has_var], (m, n),
                                n_theta)
        maps[vec] = _vector_map(rows.row[~has_var], rows.theta[~has_var], -rows.val[~has_var], m, n_theta)
    maps["l"] = _vector_map(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0), n_in, n_theta,
                            offset=np.full(n_in, -np.inf))

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
