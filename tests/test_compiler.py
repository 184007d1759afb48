"""The compiler's fast path for parameter products (``A @ x``), against its generic path.

``Affine.param_times`` returns a :class:`ProductAffine` that writes its entries only when read
(straight into A or C when it is a constraint's term); the generic ``Affine.bilinear`` searches
index pairs. Both must give the same terms, and models using either must compile to the same QP.
"""

from __future__ import annotations

import numpy as np
import pytest

import qpdsl as qd
from qpdsl.compiler.affine import NONE, Affine, ProductAffine


def _terms(aff: Affine) -> list[tuple[int, int, int, float]]:
    """The coalesced entries of an affine as a sorted list (order-free comparison)."""
    c = aff.coalesce()
    return sorted(zip(c.row.tolist(), c.var.tolist(), c.theta.tolist(), c.val.tolist(), strict=True))


def _other(size: int, rng: np.random.Generator) -> Affine:
    """A parameter-free affine of ``size`` rows: a variable entry per row plus a few constants."""
    var = Affine.variable(7, size)
    consts = Affine.constant(np.where(rng.random(size) < 0.3, rng.standard_normal(size), 0.0))
    return Affine.concat([var.scale(rng.uniform(0.5, 2.0, size)), consts], size)


@pytest.mark.parametrize("param_left", [True, False])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("cols", [1, 3])
def test_param_times_matches_bilinear(param_left: bool, transposed: bool, cols: int) -> None:
    rng = np.random.default_rng(0)
    offset = 11
    if param_left:  # P (m x k) @ other (k x n)
        m, k, n = 4, 5, cols
        other = _other(k * n, rng)
        p_shape = (k, m) if transposed else (m, k)
    else:  # other (m x k) @ P (k x n)
        m, k, n = cols, 5, 4
        other = _other(m * k, rng)
        p_shape = (n, k) if transposed else (k, n)
    fast = Affine.param_times(other, offset, p_shape, param_left, transposed, m, k, n)
    assert isinstance(fast, ProductAffine)

    # the generic path: P's entries as a parameter affine, index pairs of the product
    p_index = np.arange(m * k if param_left else k * n).reshape((m, k) if param_left else (k, n))
    if transposed:  # entry (a, b) of P.T is entry (b, a) of the stored P
        stored = np.arange(p_index.size).reshape(p_shape)
        p_index = stored.T
    P = Affine.parameter(offset, p_index.size).select(p_index.reshape(-1))
    i, l, j = np.meshgrid(np.arange(m), np.arange(k), np.arange(n), indexing="ij")
    out = (i * n + j).reshape(-1)
    left, right = (P, other) if param_left else (other, P)
    slow = Affine.bilinear(left, right, out, (i * k + l).reshape(-1), (l * n + j).reshape(-1), m * n, "t")
    got, want = _terms(fast), _terms(slow)
    assert [t[:3] for t in got] == [t[:3] for t in want]
    np.testing.assert_allclose([t[3] for t in got], [t[3] for t in want], rtol=1e-14)

    # written into a stack of arrays with a row offset, as the compiler does
    row, var, theta = (np.full(fast.nnz + 2, -9, dtype=np.int64) for _ in range(3))
    val = np.zeros(fast.nnz + 2)
    fast.write_terms(row[1:-1], var[1:-1], theta[1:-1], val[1:-1], 100)
    np.testing.assert_array_equal(row[1:-1], fast.row + 100)
    np.testing.assert_array_equal(var[1:-1], fast.var)
    np.testing.assert_array_equal(theta[1:-1], fast.theta)
    np.testing.assert_array_equal(val[1:-1], fast.val)
    assert row[0] == row[-1] == -9  # nothing written outside the slice
    assert fast.var_bounds() == (int(fast.var.min()), int(fast.var.max()))
    if np.any(other.var == NONE):
        assert fast.var_bounds()[0] == NONE


def _dense_data(prob: qd.Problem, theta: np.ndarray) -> dict[str, np.ndarray]:
    data = prob.compile().apply(theta).dense()
    return {k: np.asarray(getattr(data, k)) for k in ("P", "q", "A", "b", "C", "l", "u")}


def test_fast_and_generic_products_compile_to_the_same_qp() -> None:
    """Parameter products in constraints (<=, >=, ==), in sums of squares and through indexing."""
    rng = np.random.default_rng(1)

    def build(generic: bool) -> qd.Problem:
        x, X = qd.Variable(6, name="x"), qd.Variable((6, 2), name="X")
        A, B = qd.Parameter((4, 6), name="A"), qd.Parameter((2, 3), name="B")
        b, lo = qd.Parameter(4, name="b"), qd.Parameter(4, name="lo")
        # ``A + 0`` is not a bare Parameter, so the compiler takes the generic bilinear path
        AA = A + np.zeros((4, 6)) if generic else A
        BB = B + np.zeros((2, 3)) if generic else B
        objective = qd.sum_squares(AA @ x - b) + qd.sum_squares(X) + qd.sum(X @ BB) + qd.sum_squares(x)
        constraints = [
            AA @ x <= b + 1,
            lo <= AA @ x,
            (AA @ X)[:, 0] == b,
            qd.sum(AA.T @ x[:4]) <= 3,
            (AA @ x)[1:3] <= 2,
        ]
        return qd.Problem(qd.Minimize(objective), constraints)

    fast, generic = build(False), build(True)
    theta = rng.standard_normal((3, fast.compile().n_theta))
    got, want = _dense_data(fast, theta), _dense_data(generic, theta)
    for key in got:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=1e-12, err_msg=key)
    # the fast path's problem also solves (its data went through write_terms into A and C)
    qp = fast.compile()
    values = {
        p.name: theta[0, qp.param_offsets[p] : qp.param_offsets[p] + p.size].reshape(p.shape)
        for p in qp.parameters
    }
    values["b"], values["lo"] = values["b"] + 3, values["lo"] - 10
    assert fast.solve(values, backend="proxsuite").status == "solved"
