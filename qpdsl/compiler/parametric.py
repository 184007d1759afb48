"""The compiled program: standard-form QP data as sparse affine maps of the parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from .._array import framework, jax_add_columns, jax_take_columns
from ..expressions.constraints import Constraint
from ..expressions.expression import Parameter, Variable
from ..qp import QPData, SparseBatch
from .numpy_apply import fill, make_plan


@dataclass
class AffineMap:
    """``values = T @ [theta; 1] + offset`` for one data item.

    For a matrix item, value i is entry ``(rows[i], cols[i])`` of a ``shape`` matrix (a fixed
    pattern, no repeats, in no particular order); for a vector item, value i is entry i.
    ``offset`` holds constants that are not finite numbers (the ±inf of absent bounds) and is
    None when zero.
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

    @property
    def n_theta(self) -> int:
        return int(self.T.shape[1]) - 1

    def _gather(self) -> tuple[np.ndarray, np.ndarray | None] | None:
        """(column, coefficient) when every value is one entry of theta times a number: a gather."""
        if "gather" not in self._cache:
            T = self.T.tocsr()
            if not T.has_canonical_format:
                T = T.copy()
                T.sum_duplicates()
            single = T.nnz == T.shape[0] and bool(np.all(np.diff(T.indptr) == 1))
            coef = None if not single or np.all(T.data == 1.0) else T.data
            self._cache["gather"] = (T.indices.astype(np.int64), coef) if single else None
        return self._cache["gather"]

    def _compact(self) -> tuple[np.ndarray, sp.csr_matrix]:
        """The columns of theta that T uses, and T restricted to them (most maps touch few parameters)."""
        if "compact" not in self._cache:
            T = self.T.tocsr()
            used = np.unique(T.indices).astype(np.int64)
            self._cache["compact"] = (used, T[:, used].tocsr())
        return self._cache["compact"]

    def apply(self, theta_aug: Any, out: np.ndarray | None = None) -> Any:
        """Values for a batch ``theta_aug`` (B, n_theta + 1) of numpy, torch or jax arrays.

        numpy arrays may also be (B, n_theta) (the constant column is never read); their values
        are written into ``out`` (B, nnz) where possible (see :func:`~.numpy_apply.fill`).
        """
        fw = framework(theta_aug)
        if fw == "numpy":
            return self._apply_numpy(theta_aug, out)
        gather = self._gather()
        if gather is not None:
            out = self._columns(theta_aug, "columns", gather[0])
        else:
            used, T = self._compact()
            sub = self._columns(theta_aug, "used", used)
            out = (self._torch(sub, T) @ sub.T).T if fw == "torch" else _jax_sparse_apply(T, sub)
        if gather is not None and gather[1] is not None:
            out = out * self._constant("coefficients", gather[1], theta_aug)
        if self.offset is not None:
            out = out + self._constant("offset", self.offset, theta_aug)
        return out

    def _columns(self, theta_aug: Any, name: str, index: np.ndarray) -> Any:
        """``theta_aug[:, index]`` (torch or JAX)."""
        if framework(theta_aug) == "jax":
            return jax_take_columns(theta_aug, index)
        return theta_aug[:, self._constant(name, index, theta_aug, index=True)]

    def _constant(self, name: str, values: np.ndarray, ref: Any, index: bool = False) -> Any:
        """:func:`_like` of one of this map's constant arrays; torch tensors are kept per device and
        dtype, so that each call does not copy them to the device again."""
        if framework(ref) != "torch":
            return _like(values, ref, index)
        key = (name, ref.device, ref.dtype)
        if key not in self._cache:
            self._cache[key] = _like(values, ref, index)
        return self._cache[key]

    def _apply_numpy(self, theta: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        if "plan" not in self._cache:
            self._cache["plan"] = make_plan(self.T, self.offset)
        return fill(self._cache["plan"], theta, out)

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
    if coo.nnz == 0:
        return out
    terms = jax_take_columns(sub, coo.col) * jnp.asarray(coo.data, dtype=sub.dtype)
    return jax_add_columns(out, coo.row, terms)


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
    shiftable: Any = None  # Shiftable: the rows the user wrote (the closest feasible QP may shift them)

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
        for p, part in zip(self.parameters, parts, strict=True):
            start = self.param_offsets[p]
            out[:, start : start + p.size] = part
        out[:, -1] = 1.0
        return out

    def apply(self, theta: Any, out: QPData | None = None) -> QPData:
        """QP data (P, A, C as :class:`SparseBatch`) for a batch of stacked parameters.

        ``theta`` is (B, n_theta) or, as :meth:`stack_theta` returns it, (B, n_theta + 1) with a
        last column of ones. Differentiable in theta under torch and jax.

        With numpy arrays, ``out`` (a QPData returned by an earlier call, of the same batch size
        and dtype) has its arrays overwritten instead of new ones allocated: for loops that apply
        many batches, this skips the operating system's zeroing of fresh memory.
        """
        fw = framework(theta)
        if fw == "numpy":
            return self._apply_numpy(np.asarray(theta), out)
        batch = theta.shape[0]
        theta_aug = theta
        if theta.shape[1] == self.n_theta:
            if fw == "torch":
                import torch

                ones = torch.ones((batch, 1), dtype=theta.dtype, device=theta.device)
                theta_aug = torch.cat([theta, ones], dim=1)
            else:
                import jax.numpy as jnp

                theta_aug = jnp.concatenate([theta, jnp.ones((batch, 1), dtype=theta.dtype)], axis=1)
        return self._wrap({key: m.apply(theta_aug) for key, m in self.maps.items()})

    def _apply_numpy(self, theta: np.ndarray, out: QPData | None) -> QPData:
        if theta.shape[1] not in (self.n_theta, self.n_theta + 1):
            raise ValueError(f"theta has {theta.shape[1]} columns; expected {self.n_theta} (or one more)")
        values = {}
        for key, m in self.maps.items():
            previous = None
            if out is not None:
                item = getattr(out, key)
                previous = item.values if isinstance(item, SparseBatch) else item
                if key == "r" and previous is not None:
                    previous = previous[:, None]
            values[key] = m.apply(theta, out=previous if isinstance(previous, np.ndarray) else None)
        return self._wrap(values)

    def _wrap(self, values: dict[str, Any]) -> QPData:
        out: dict[str, Any] = {}
        for key, m in self.maps.items():
            if m.rows is not None:
                out[key] = SparseBatch(m.rows, m.cols, values[key], m.shape)  # type: ignore[arg-type]
            elif key == "r":
                out[key] = values[key][:, 0]
            else:
                out[key] = values[key]
        return QPData(**out)
