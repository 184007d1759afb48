"""Sparse affine tensors: the coefficients of an expression in the variables and parameters.

An :class:`Affine` of size m stores, for each entry ``(row, var, theta, val)``, the term
``val * theta_t * x_v`` of row ``row`` of the flattened (row-major) expression, where
``var == -1`` stands for no variable (a constant term) and ``theta == -1`` for the constant
1 instead of a parameter entry. Because at most one of the two factors is symbolic in each
product (checked on the expressions), every row is affine in the variables with
coefficients affine in the parameters: exactly what the QP data need. All operations are
vectorised numpy; nothing dense of size (vars x params) is ever built.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..errors import ModelError

NONE = -1  # "no variable" / "no parameter" index


def _expand(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each owner k holding ``counts[k]`` items from ``starts[k]`` on, list the (owner, item) pairs."""
    if counts.size and counts.min() == 1 and counts.max() == 1:  # the common one-to-one case
        return np.arange(counts.size), starts
    total = int(counts.sum())
    owner = np.repeat(np.arange(counts.size), counts)
    first = np.cumsum(counts) - counts
    item = starts[owner] + (np.arange(total) - first[owner])
    return owner, item


@dataclass
class Affine:
    size: int
    row: np.ndarray
    var: np.ndarray
    theta: np.ndarray
    val: np.ndarray

    # ------------------------------------------------------------ constructors
    @staticmethod
    def empty(size: int) -> Affine:
        z = np.zeros(0, dtype=np.int64)
        return Affine(size, z, z, z, np.zeros(0))

    @staticmethod
    def variable(offset: int, size: int) -> Affine:
        r = np.arange(size, dtype=np.int64)
        return Affine(size, r, r + offset, np.full(size, NONE, dtype=np.int64), np.ones(size))

    @staticmethod
    def parameter(offset: int, size: int) -> Affine:
        r = np.arange(size, dtype=np.int64)
        return Affine(size, r, np.full(size, NONE, dtype=np.int64), r + offset, np.ones(size))

    @staticmethod
    def constant(values: np.ndarray) -> Affine:
        flat = np.asarray(values, dtype=float).reshape(-1)
        r = np.flatnonzero(flat).astype(np.int64)
        none = np.full(r.size, NONE, dtype=np.int64)
        return Affine(flat.size, r, none, none.copy(), flat[r])

    # ------------------------------------------------------------ facts
    @property
    def nnz(self) -> int:
        return int(self.val.size)

    @property
    def has_vars(self) -> bool:
        return bool(np.any(self.var != NONE))

    @property
    def has_params(self) -> bool:
        return bool(np.any(self.theta != NONE))

    def var_bounds(self) -> tuple[int, int]:
        """Smallest and largest variable index (``NONE`` for constant terms); (NONE, NONE) if empty."""
        return (int(self.var.min()), int(self.var.max())) if self.nnz else (NONE, NONE)

    def write_terms(
        self, row: np.ndarray, var: np.ndarray, theta: np.ndarray, val: np.ndarray, row_offset: int
    ) -> None:
        """Write the entries into arrays of ``nnz`` elements, ``row_offset`` added to the rows."""
        np.add(self.row, row_offset, out=row)
        var[...], theta[...], val[...] = self.var, self.theta, self.val

    def subset(self, keep: np.ndarray) -> Affine:
        """The entries where the boolean mask ``keep`` holds (same rows)."""
        return Affine(self.size, self.row[keep], self.var[keep], self.theta[keep], self.val[keep])

    def constant_part(self) -> np.ndarray:
        """Dense vector of the terms with neither variable nor parameter."""
        mask = (self.var == NONE) & (self.theta == NONE)
        return np.bincount(self.row[mask], weights=self.val[mask], minlength=self.size)

    def is_selection(self) -> bool:
        """Each row is exactly ``1 * x_v`` (a plain variable entry), no constants or parameters."""
        if self.nnz != self.size or self.has_params or np.any(self.val != 1.0) or np.any(self.var == NONE):
            return False
        return bool(np.array_equal(np.sort(self.row), np.arange(self.size)))

    def selected_vars(self) -> np.ndarray:
        """For a selection, the variable of each row."""
        out = np.empty(self.size, dtype=np.int64)
        out[self.row] = self.var
        return out

    # ------------------------------------------------------------ elementary operations
    def _by_row(self) -> tuple[Affine, np.ndarray, np.ndarray]:
        if self.nnz < 2 or bool(np.all(self.row[1:] >= self.row[:-1])):
            s = self
        else:
            order = np.argsort(self.row, kind="stable")
            s = Affine(self.size, self.row[order], self.var[order], self.theta[order], self.val[order])
        counts = np.bincount(s.row, minlength=self.size)
        starts = np.cumsum(counts) - counts
        return s, counts, starts

    def linear(self, L: sp.spmatrix) -> Affine:
        """Rows of ``L @ self`` for a constant sparse matrix ``L`` (m_out x size)."""
        L = sp.coo_matrix(L)
        if L.shape[1] != self.size:
            raise ValueError(f"linear map of shape {L.shape} on affine of size {self.size}")
        s, counts, starts = self._by_row()
        lr, lc, lv = L.row.astype(np.int64), L.col.astype(np.int64), L.data
        owner, item = _expand(starts[lc], counts[lc])
        return Affine(L.shape[0], lr[owner], s.var[item], s.theta[item], lv[owner] * s.val[item])

    def select(self, index: np.ndarray) -> Affine:
        """Row r of the result is row ``index[r]`` of self (rows may repeat)."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        s, counts, starts = self._by_row()
        owner, item = _expand(starts[index], counts[index])
        return Affine(index.size, owner.astype(np.int64), s.var[item], s.theta[item], s.val[item])

    def remap(self, new_row: np.ndarray, size: int) -> Affine:
        """Move row i to ``new_row[i]`` in a result of ``size`` rows (injective, other rows zero)."""
        return Affine(size, np.asarray(new_row, dtype=np.int64)[self.row], self.var, self.theta, self.val)

    def scale(self, factor: np.ndarray | float) -> Affine:
        """Multiply row i by ``factor[i]`` (or a scalar)."""
        f = np.asarray(factor, dtype=float)
        if f.ndim == 0 or f.size == 1:
            f = float(f.reshape(-1)[0]) if f.size else 0.0
            if f == 0.0:
                return Affine.empty(self.size)
            # a nonzero scalar creates no zeros: share the index arrays (they are never written to)
            return Affine(self.size, self.row, self.var, self.theta, self.val * f)
        f = f.reshape(-1)
        val = self.val * f[self.row]
        if bool(np.all(f != 0)):
            return Affine(self.size, self.row, self.var, self.theta, val)
        keep = val != 0
        return Affine(self.size, self.row[keep], self.var[keep], self.theta[keep], val[keep])

    @staticmethod
    def concat(parts: list[Affine], size: int) -> Affine:
        """Sum of affines of the same size (entries are concatenated, not yet coalesced)."""
        if not parts:
            return Affine.empty(size)
        return Affine(
            size,
            np.concatenate([p.row for p in parts]),
            np.concatenate([p.var for p in parts]),
            np.concatenate([p.theta for p in parts]),
            np.concatenate([p.val for p in parts]),
        )

    def coalesce(self) -> Affine:
        """Sum duplicate (row, var, theta) entries and drop zeros."""
        if self.nnz == 0:
            return self
        order = np.lexsort((self.theta, self.var, self.row))
        row, var, theta, val = self.row[order], self.var[order], self.theta[order], self.val[order]
        new = np.ones(row.size, dtype=bool)
        new[1:] = (row[1:] != row[:-1]) | (var[1:] != var[:-1]) | (theta[1:] != theta[:-1])
        starts = np.flatnonzero(new)
        summed = np.add.reduceat(val, starts)
        keep = summed != 0
        idx = starts[keep]
        return Affine(self.size, row[idx], var[idx], theta[idx], summed[keep])

    @staticmethod
    def bilinear(
        left: Affine, right: Affine, out: np.ndarray, a: np.ndarray, b: np.ndarray, size: int, what: str
    ) -> Affine:
        """Sum over pairs p of ``left[a[p]] * right[b[p]]`` into row ``out[p]``.

        At most one factor of each product may hold a variable and at most one a parameter;
        ``what`` names the expression in the error otherwise.
        """
        ls, lcounts, lstarts = left._by_row()
        rs, rcounts, rstarts = right._by_row()
        pair, li = _expand(lstarts[a], lcounts[a])
        pair2, ri = _expand(rstarts[b[pair]], rcounts[b[pair]])
        li = li[pair2]
        pair = pair[pair2]
        lv, rv = ls.var[li], rs.var[ri]
        lt, rt = ls.theta[li], rs.theta[ri]
        if np.any((lv != NONE) & (rv != NONE)):
            raise ModelError(f"{what}: a product of two variables is not affine")
        if np.any((lt != NONE) & (rt != NONE)):
            raise ModelError(f"{what}: a product of two parameters would make the QP data non-affine")
        return Affine(size, out[pair], np.maximum(lv, rv), np.maximum(lt, rt), ls.val[li] * rs.val[ri])

    @staticmethod
    def param_times(
        other: Affine,
        offset: int,
        shape: tuple[int, int],
        param_left: bool,
        transposed: bool,
        m: int,
        k: int,
        n: int,
    ) -> Affine:
        """``P @ other`` (``param_left``) or ``other @ P`` for a Parameter P at ``offset`` of theta.

        A fast path of :meth:`bilinear` for the common ``A @ x``: no index pairs are searched,
        every term is a broadcast of one entry of ``other`` against one row or column of P,
        and nothing is written down until it is read (see :class:`ProductAffine`). ``other``
        (size k*n for ``P @ other``, m*k for ``other @ P``) must be free of parameters.
        ``shape`` is P's own shape and ``transposed`` says that the product uses ``P.T``. The
        result (m*n rows) is sorted by row when ``other`` is a single column (the ``A @ x`` case).
        """
        # row and theta indices in int32 when they fit: these are the largest arrays the
        # compiler writes (m * other.nnz entries), and fresh memory is slow to touch
        index = np.int32 if max(m * n, offset + m * k * n) < 2**31 else np.int64
        if param_left:  # out[i, j] = sum_l P[i, l] * other[l, j]: a grid (i, entry of other)
            o = other
            if n > 1:  # visit other's entries by column j so that each block i comes out sorted
                order = np.argsort(o.row % n, kind="stable")
                o = Affine(o.size, o.row[order], o.var[order], o.theta[order], o.val[order])
            l_e, j_e = np.divmod(o.row.astype(index), index(n))
            i = np.arange(m, dtype=index)[:, None]
            # P[i, l] is theta[offset + i*k + l]; for P.T (stored k x m) it is theta[offset + l*m + i]
            theta = (offset + i * k, l_e) if not transposed else (offset + i, l_e * m)
            return ProductAffine(m * n, (i * n, j_e), theta, o.var[None, :], o.val[None, :])
        # out[i, j] = sum_l other[i, l] * P[l, j]: a grid (entry of other, j)
        i_e, l_e = np.divmod(other.row.astype(index), index(k))
        j = np.arange(n, dtype=index)[None, :]
        theta = (offset + l_e[:, None] * n, j) if not transposed else (offset + l_e[:, None], j * k)
        return ProductAffine(m * n, (i_e[:, None] * n, j), theta, other.var[:, None], other.val[:, None])

    @staticmethod
    def row_products(left: Affine, right: Affine, out: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
        """Quadratic terms ``sum_i left_i * right_i`` grouped into ``out[i]``: (slot, va, vb, theta, val).

        Both factors may hold variables (this builds quadratic forms); at most one may hold
        parameters.
        """
        ls, lcounts, lstarts = left._by_row()
        rs, rcounts, rstarts = right._by_row()
        rows = np.arange(left.size, dtype=np.int64)
        pair, li = _expand(lstarts[rows], lcounts[rows])
        pair2, ri = _expand(rstarts[rows[pair]], rcounts[rows[pair]])
        li, pair = li[pair2], pair[pair2]
        lt, rt = ls.theta[li], rs.theta[ri]
        if np.any((lt != NONE) & (rt != NONE)):
            raise ModelError("a quadratic term would have a coefficient quadratic in the parameters")
        return out[pair], ls.var[li], rs.var[ri], np.maximum(lt, rt), ls.val[li] * rs.val[ri]


class ProductAffine(Affine):
    """An :class:`Affine` whose entries form a grid, each array a broadcast sum of two factors.

    Entry ``(a, b)`` of the grid has row ``row[0][a, b] + row[1][a, b]``, theta
    ``theta[0] + theta[1]``, variable ``var[a, b]`` and value ``val[a, b]`` (all broadcast to
    the grid's shape). :meth:`write_terms` writes them straight into the compiler's stacked
    arrays; any other use writes them down once, on first access. For ``A @ x`` this saves
    four arrays the size of A (and their page faults) per compile.
    """

    def __init__(
        self,
        size: int,
        row: tuple[np.ndarray, np.ndarray],
        theta: tuple[np.ndarray, np.ndarray],
        var: np.ndarray,
        val: np.ndarray,
    ) -> None:
        self.size = size
        self._factors = (row, theta, var, val)
        self._grid = np.broadcast_shapes(*(a.shape for a in (*row, *theta, var, val)))
        self._arrays: tuple[np.ndarray, ...] | None = None

    def _materialised(self) -> tuple[np.ndarray, ...]:
        if self._arrays is None:
            (r0, r1), (t0, t1), var, val = self._factors
            count = int(np.prod(self._grid))
            row = np.empty(count, dtype=np.result_type(r0, r1))
            theta = np.empty(count, dtype=np.result_type(t0, t1))
            out_var, out_val = np.empty(count, dtype=var.dtype), np.empty(count)
            self.write_terms(row, out_var, theta, out_val, 0)
            self._arrays = (row, out_var, theta, out_val)
        return self._arrays

    row = property(lambda self: self._materialised()[0])  # type: ignore[assignment]
    var = property(lambda self: self._materialised()[1])  # type: ignore[assignment]
    theta = property(lambda self: self._materialised()[2])  # type: ignore[assignment]
    val = property(lambda self: self._materialised()[3])  # type: ignore[assignment]

    @property
    def nnz(self) -> int:
        return int(np.prod(self._grid))

    def var_bounds(self) -> tuple[int, int]:
        var = self._factors[2]
        return (int(var.min()), int(var.max())) if var.size else (NONE, NONE)

    def write_terms(
        self, row: np.ndarray, var: np.ndarray, theta: np.ndarray, val: np.ndarray, row_offset: int
    ) -> None:
        (r0, r1), (t0, t1), v, x = self._factors
        grid = self._grid
        np.add(r0, r1, out=row.reshape(grid))
        if row_offset:
            row += row_offset
        np.add(t0, t1, out=theta.reshape(grid))
        var.reshape(grid)[...] = v
        val.reshape(grid)[...] = x


def broadcast_index(shape_from: tuple[int, ...], shape_to: tuple[int, ...]) -> np.ndarray | None:
    """Flat source index for each flat target entry of a NumPy broadcast (None if identity)."""
    if tuple(shape_from) == tuple(shape_to):
        return None
    size = int(np.prod(shape_from, dtype=np.int64))
    src = np.arange(size).reshape(shape_from)
    return np.broadcast_to(src, shape_to).reshape(-1)
