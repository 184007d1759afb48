"""The compiled program: standard-form QP data as sparse affine maps of the parameters (DESIGN §2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from .._array import framework
from ..expressions.constraints import Constraint
from ..expressions.expression import Parameter, Variable
from ..qp import QPData, SparseBatch


@dataclass
class AffineMap:
    """``values = T @ [theta; 1] + offset`` for one data item.

    For a matrix item, value i is entry ``(rows[i], cols[i])`` of a ``shape`` matrix (a fixed
    pattern, no repeats); for a vector item, value i is entry i. ``offset`` holds constants
    that are not finite numbers (the ±inf of absent bounds) and is None when zero.
    """

    T: sp.csr_matrix
    shape: tuple[int, ...]
    rows: np.ndarray | None = None
    cols: np.ndarray | None = None
    offset: np.ndarray | None = None
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def nnz(self) -> int:
        return int(self.T.shape[0])

    def _gather(self) -> tuple[np.ndarray, np.ndarray | None] | None:
        """(column, coefficient) when every value is one entry of theta times a number: a gather, no matmul."""
        if "gather" not in self._cache:
            T = self.T.tocsr()
            T.sum_duplicates()
            single = T.nnz == T.shape[0] and bool(np.all(np.diff(T.indptr) == 1))
            coef = None if not single or np.all(T.data == 1.0) else T.data.copy()
            self._cache["gather"] = (T.indices.astype(np.int64), coef) if single else None
        return self._cache["gather"]

    def _compact(self) -> tuple[np.ndarray, sp.csr_matrix]:
        """The columns of theta that T uses, and T restricted to them (most maps touch few parameters)."""
        if "compact" not in self._cache:
            T = self.T.tocsr()
            used = np.unique(T.indices).astype(np.int64)
            self._cache["compact"] = (used, T[:, used].tocsr())
        return self._cache["compact"]

    def _runs(self) -> list[tuple[int, int, int]] | None:
        """For a gather whose columns form few contiguous runs: (start, stop, first column) per run."""
        if "runs" not in self._cache:
            runs = None
            gather = self._gather()
            if gather is not None and gather[0].size:
                cols = gather[0]
                starts = np.concatenate([[0], np.flatnonzero(np.diff(cols) != 1) + 1])
                if starts.size * 16 <= cols.size:
                    stops = np.concatenate([starts[1:], [cols.size]])
                    runs = [(int(a), int(b), int(cols[a])) for a, b in zip(starts, stops)]
            self._cache["runs"] = runs
        return self._cache["runs"]

    def apply(self, theta_aug: Any) -> Any:
        """Values for a batch ``theta_aug`` (B, n_theta + 1) of numpy, torch or jax arrays."""
        fw = framework(theta_aug)
        gather = self._gather()
        runs = self._runs() if fw == "numpy" else None  # autograd frameworks gather in one op
        if runs is not None:
            out = _copy_runs(theta_aug, runs)
        elif gather is not None:
            out = theta_aug[:, _like(gather[0], theta_aug, index=True)]
        else:
            used, T = self._compact()
            sub = theta_aug[:, _like(used, theta_aug, index=True)]
            if fw == "torch":
                out = (self._torch(sub, T) @ sub.T).T
            elif fw == "jax":
                out = _jax_sparse_apply(T, sub)
            else:
                out = np.asarray(T @ np.ascontiguousarray(sub.T)).T
        if gather is not None and gather[1] is not None:
            coef = gather[1]
            if fw == "numpy" and runs is not None and np.all(coef == -1.0):
                np.negative(out, out=out)
            else:
                out = out * _like(coef, theta_aug)
        if self.offset is not None:
            out = out + _like(self.offset, theta_aug)
        return out

    def _torch(self, like: Any, T: sp.csr_matrix) -> Any:
        import torch

        key = ("torch", like.device, like.dtype)
        if key not in self._cache:
            coo = T.tocoo()
            idx = torch.as_tensor(np.vstack([coo.row, coo.col]), dtype=torch.int64)
            t = torch.sparse_coo_tensor(idx, torch.as_tensor(coo.data), T.shape, check_invariants=False)
            self._cache[key] = t.to(device=like.device, dtype=like.dtype).coalesce()
        return self._cache[key]



def _jax_sparse_apply(T: sp.csr_matrix, sub: Any) -> Any:
    """``(T @ sub.T).T`` in JAX as a scatter-add of numpy constants (safe to trace and to cache)."""
    import jax.numpy as jnp

    coo = T.tocoo()
    out = jnp.zeros((sub.shape[0], T.shape[0]), dtype=sub.dtype)
    return out.at[:, coo.row].add(sub[:, coo.col] * jnp.asarray(coo.data, dtype=sub.dtype))


def _copy_runs(theta_aug: np.ndarray, runs: list[tuple[int, int, int]]) -> np.ndarray:
    """Columns of theta_aug copied run by run (contiguous slices copy far faster than a gather)."""
    out = np.empty((theta_aug.shape[0], runs[-1][1]), dtype=theta_aug.dtype)
    for start, stop, col in runs:
        out[:, start:stop] = theta_aug[:, col: col + stop - start]
    return out


def _like(values: np.ndarray, ref: Any, index: bool = False) -> Any:
    fw = framework(ref)
    if fw == "torch":
        import torch

        return torch.as_tensor(values, dtype=torch.int64 if index else ref.dtype, device=ref.device)
    if index:
        return values
    if fw == "jax":
        import jax.numpy as jnp

        return jnp.asarray(values, dtype=ref.dtype)
    return values


@dataclass
class VariableSlice:
    offset: int
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class ConstraintRows:
    """Rows of A (``kind="eq"``, dual y) or C (``"in"``, dual z) owned by a user constraint.

    ``sign`` is -1 for ``lo <= expr`` constraints stored as lower bounds of ``+expr``: their
    user-facing dual (nonnegative, as cvxpy's) and shift are ``-z`` and ``-s_in``.
    """

    kind: str
    start: int
    stop: int
    shape: tuple[int, ...]
    sign: float = 1.0


@dataclass
class ParametricQP:
    """A compiled problem: data maps, patterns, and how to read results back.

    Attributes
    ----------
    parameters
        The parameters in the order they are stacked in ``theta``.
    maps
        ``{"P", "q", "r", "A", "b", "C", "l", "u"}`` -> :class:`AffineMap`.
    variables
        Where each user variable sits in ``x``.
    constraints
        Which rows of A (``"eq"``) or C (``"in"``) each user constraint owns.
    """

    parameters: list[Parameter]
    param_offsets: dict[Parameter, int]
    n_theta: int
    n: int
    n_eq: int
    n_in: int
    maps: dict[str, AffineMap]
    variables: dict[Variable, VariableSlice]
    constraints: dict[Constraint, ConstraintRows]

    @property
    def nnz(self) -> dict[str, int]:
        return {k: m.nnz for k, m in self.maps.items()}

    def density(self) -> float:
        """Fraction of nonzeros in [P; A; C]."""
        total = self.n * self.n + (self.n_eq + self.n_in) * self.n
        return (self.maps["P"].nnz + self.maps["A"].nnz + self.maps["C"].nnz) / max(total, 1)

    def stack_theta(self, values: dict[Parameter, Any], batch: int) -> Any:
        """Stack per-parameter arrays (each (B, *shape) after broadcasting) into theta (B, n_theta + 1).

        The last column is the constant 1 of ``[theta; 1]``. Arrays may be numpy, torch or jax (one
        framework); with no parameters the result is a numpy column of ones.
        """
        parts = [values[p].reshape(batch, p.size) for p in self.parameters]
        fw = framework(parts[0]) if parts else "numpy"
        if fw == "torch":
            import torch

            ref = parts[0]
            return torch.cat(parts + [torch.ones((batch, 1), dtype=ref.dtype, device=ref.device)], dim=1)
        if fw == "jax":
            import jax.numpy as jnp

            return jnp.concatenate(parts + [jnp.ones((batch, 1), dtype=parts[0].dtype)], axis=1)
        out = np.empty((batch, self.n_theta + 1), dtype=parts[0].dtype if parts else float)
        for p, part in zip(self.parameters, parts):
            start = self.param_offsets[p]
            out[:, start: start + p.size] = part
        out[:, -1] = 1.0
        return out

    def apply(self, theta: Any) -> QPData:
        """QP data (P, A, C as :class:`SparseBatch`) for a batch of stacked parameters.

        ``theta`` is (B, n_theta) or, as :meth:`stack_theta` returns it, (B, n_theta + 1) with a
        last column of ones. Differentiable in theta under torch and jax.
        """
        fw = framework(theta)
        batch = theta.shape[0]
        theta_aug = theta
        if theta.shape[1] == self.n_theta:
            if fw == "torch":
                import torch

                ones = torch.ones((batch, 1), dtype=theta.dtype, device=theta.device)
                theta_aug = torch.cat([theta, ones], dim=1)
            elif fw == "jax":
                import jax.numpy as jnp

                theta_aug = jnp.concatenate([theta, jnp.ones((batch, 1), dtype=theta.dtype)], axis=1)
            else:
                theta_aug = np.concatenate([theta, np.ones((batch, 1), dtype=theta.dtype)], axis=1)
        out: dict[str, Any] = {}
        for key, m in self.maps.items():
            values = m.apply(theta_aug)
            if m.rows is not None:
                out[key] = SparseBatch(m.rows, m.cols, values, m.shape)  # type: ignore[arg-type]
            elif key == "r":
                out[key] = values[:, 0]
            else:
                out[key] = values
        return QPData(**out)
