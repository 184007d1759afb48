"""Gradients at degenerate points: finite, and equal to a valid element of the
conservative Jacobian, with each test saying which element.

At a degenerate point the solution map is only piecewise smooth; its conservative (Clarke)
Jacobian is the convex hull of the Jacobians of the *active-set selections* valid around the
point: the equality-constrained QPs obtained by keeping the strongly active rows and any
subset of the degenerate ones, whenever the rest stays optimal on one side of the kink. The
reference gradients here are computed in numpy from those selections (one KKT solve each).

One standard-form QP holds four independent blocks (so the JAX layer compiles one shape):

* ``weak``: a weakly active row (active, zero multiplier). Selections: with or without the row.
  Expected (weakly active rows count as active): the selection *with* the row,
  i.e. the left one-sided derivative.
* ``dup``: a strongly active row listed twice (LICQ fails, the multiplier splits). Selections:
  either copy. Expected: their average, the minimum-norm element that the regularised adjoint
  picks (the total derivative with respect to the shared bound is exact).
* ``rank``: rank-deficient equalities: a duplicated row and a zero row ``0 x = 0``. Perturbing
  one copy makes the QP infeasible, and the closest feasible QP then follows the
  mean of the two right-hand sides, so the map is smooth in ``b``: expected the half split, and
  exactly 0 for the zero row.
* ``lp``: a degenerate LP vertex (three active rows in two dimensions). Valid selections: the two
  bases that stay optimal when the bounds move; expected: a point of their convex hull.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy.optimize import nnls

import qpdsl as qd
from qpdsl.qp import Settings, Status

torch = pytest.importorskip("torch")
from qpdsl.torch import solve_qp  # noqa: E402

AVAILABLE = set(qd.available_backends())
TORCH_BACKENDS = [b for b in ("cpu", "proxsuite", "torch") if b in AVAILABLE]
JAX_BACKENDS = [b for b in ("jax", "proxsuite") if b in AVAILABLE]
SETTINGS = Settings(eps_abs=1e-10)
NAMES = ("P", "q", "A", "b", "C", "l", "u")
INF = np.inf
TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- the degenerate QP


def block_qp() -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """The four blocks (module docstring) in one standard-form QP, and where each block sits."""
    blocks = {}
    # weak: x* = (0.3, -0.2); eq row x0 + x1 = 0.1 (y = 0.4); row 0 (upper) active with z = 0
    P = np.array([[2.0, 0.5], [0.5, 1.0]])
    xs, A, y = np.array([0.3, -0.2]), np.array([[1.0, 1.0]]), np.array([0.4])
    C = np.array([[1.0, -1.0], [0.5, 1.0]])
    blocks["weak"] = dict(
        P=P,
        q=-(P @ xs + A.T @ y),
        A=A,
        b=A @ xs,
        C=C,
        l=np.array([-INF, C[1] @ xs - 1.0]),
        u=np.array([C[0] @ xs, INF]),
    )
    # dup: min (x - 2)^2 / 2, x <= 1 twice
    blocks["dup"] = dict(
        P=np.eye(1),
        q=np.array([-2.0]),
        A=np.zeros((0, 1)),
        b=np.zeros(0),
        C=np.ones((2, 1)),
        l=np.full(2, -INF),
        u=np.ones(2),
    )
    # rank: min |x|^2 / 2 + q'x, x0 + 2 x1 = 1 twice, 0 x = 0
    blocks["rank"] = dict(
        P=np.eye(2),
        q=np.array([0.3, -0.1]),
        A=np.array([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]]),
        b=np.array([1.0, 1.0, 0.0]),
        C=np.zeros((0, 2)),
        l=np.zeros(0),
        u=np.zeros(0),
    )
    # lp: min -x0 + x1 / 2, x0 >= 0, x1 >= 0, x0 + x1 <= 1, x0 <= 1: vertex (1, 0), rows 1, 2, 3 active
    blocks["lp"] = dict(
        P=np.zeros((2, 2)),
        q=np.array([-1.0, 0.5]),
        A=np.zeros((0, 2)),
        b=np.zeros(0),
        C=np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]]),
        l=np.array([0.0, 0.0, -INF, -INF]),
        u=np.array([INF, INF, 1.0, 1.0]),
    )
    n = sum(b["q"].size for b in blocks.values())
    p = sum(b["b"].size for b in blocks.values())
    m = sum(b["l"].size for b in blocks.values())
    d = dict(
        P=np.zeros((n, n)),
        q=np.zeros(n),
        A=np.zeros((p, n)),
        b=np.zeros(p),
        C=np.zeros((m, n)),
        l=np.zeros(m),
        u=np.zeros(m),
    )
    where: dict[str, dict[str, Any]] = {}
    i = j = k = 0
    for name, blk in blocks.items():
        ni, pj, mk = blk["q"].size, blk["b"].size, blk["l"].size
        xs_, es, is_ = slice(i, i + ni), slice(j, j + pj), slice(k, k + mk)
        d["P"][xs_, xs_], d["q"][xs_] = blk["P"], blk["q"]
        d["A"][es, xs_], d["b"][es] = blk["A"], blk["b"]
        d["C"][is_, xs_], d["l"][is_], d["u"][is_] = blk["C"], blk["l"], blk["u"]
        where[name] = dict(x=xs_, eq=es, ineq=is_, data=blk)
        i, j, k = i + ni, j + pj, k + mk
    return d, where


D, WHERE = block_qp()
W = np.random.default_rng(7).uniform(0.5, 1.5, D["q"].size)  # the loss w'x


def selection_gradient(
    blk: dict[str, np.ndarray], w: np.ndarray, eq_rows: list[int], upper: list[int], lower: list[int]
) -> dict[str, np.ndarray]:
    """dL/d(q, b, l, u) of L = w'x for the QP with rows ``eq_rows`` of A and the given rows of C
    held as equalities (the other rows dropped): one symmetric KKT solve."""
    n = blk["q"].size
    E = np.vstack([blk["A"][eq_rows], blk["C"][upper], blk["C"][lower]])
    K = np.block([[blk["P"], E.T], [E, np.zeros((E.shape[0], E.shape[0]))]])
    sol = np.linalg.solve(K, np.concatenate([w, np.zeros(E.shape[0])]))
    alpha, beta = sol[:n], sol[n:]
    g = {
        "q": -alpha,
        "b": np.zeros(blk["b"].size),
        "l": np.zeros(blk["l"].size),
        "u": np.zeros(blk["u"].size),
    }
    k = len(eq_rows)
    g["b"][eq_rows] = beta[:k]
    g["u"][upper] = beta[k : k + len(upper)]
    g["l"][lower] = beta[k + len(upper) :]
    return g


def flat(g: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate(
        [np.nan_to_num(np.asarray(g[k], dtype=float)).ravel() for k in ("q", "b", "l", "u")]
    )


def expected(name: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """(the element the implementation should return, the valid selections' gradients) of a block."""
    blk, w = WHERE[name]["data"], W[WHERE[name]["x"]]
    if name == "weak":
        with_row = selection_gradient(blk, w, [0], upper=[0], lower=[])
        without = selection_gradient(blk, w, [0], upper=[], lower=[])
        return flat(with_row), [flat(with_row), flat(without)]
    if name == "dup":
        first, second = (flat(selection_gradient(blk, w, [], upper=[i], lower=[])) for i in (0, 1))
        return (first + second) / 2, [first, second]
    if name == "rank":
        first, second = (flat(selection_gradient(blk, w, [i], upper=[], lower=[])) for i in (0, 1))
        return (first + second) / 2, [first, second]
    bases = [flat(selection_gradient(blk, w, [], upper=up, lower=[1])) for up in ([2], [3])]
    return np.full_like(bases[0], np.nan), bases  # any point of the hull


def in_hull(g: np.ndarray, vertices: list[np.ndarray]) -> tuple[float, np.ndarray]:
    """Distance from ``g`` to the convex hull of ``vertices`` (least squares, weights >= 0, sum 1)."""
    V = np.stack(vertices, axis=1)
    big = 1e3
    M = np.vstack([V, big * np.ones((1, V.shape[1]))])
    lam, _ = nnls(M, np.concatenate([g, [big]]))
    return float(np.abs(V @ lam - g).max()), lam


def block_gradient(grads: dict[str, np.ndarray], name: str) -> np.ndarray:
    at = WHERE[name]
    return flat(
        {
            "q": grads["q"][at["x"]],
            "b": grads["b"][at["eq"]],
            "l": grads["l"][at["ineq"]],
            "u": grads["u"][at["ineq"]],
        }
    )


def check_blocks(x: np.ndarray, grads: dict[str, np.ndarray]) -> None:
    assert all(np.all(np.isfinite(g)) for g in grads.values()), grads
    np.testing.assert_allclose(x[WHERE["dup"]["x"]], [1.0], atol=1e-7)
    np.testing.assert_allclose(x[WHERE["lp"]["x"]], [1.0, 0.0], atol=1e-7)
    for name in WHERE:
        g = block_gradient(grads, name)
        want, vertices = expected(name)
        dist, lam = in_hull(g, vertices)
        assert dist < TOL, f"{name}: gradient {g} is not in the conservative Jacobian {vertices}"
        if not np.isnan(want).any():
            np.testing.assert_allclose(g, want, atol=TOL, err_msg=f"{name}: not the expected element")


# ---------------------------------------------------------------- torch layer


@pytest.mark.parametrize("backend", TORCH_BACKENDS)
def test_torch_degenerate_blocks(backend: str) -> None:
    args = [torch.tensor(D[k], requires_grad=True) for k in NAMES]
    x, *_, status = solve_qp(*args, backend=backend, settings=SETTINGS)
    assert int(status) == Status.SOLVED
    (torch.as_tensor(W) @ x).backward()
    grads = {k: a.grad.numpy() for k, a in zip(NAMES, args, strict=True)}
    check_blocks(x.detach().numpy(), grads)


@pytest.mark.parametrize("backend", TORCH_BACKENDS)
def test_torch_weakly_active_matches_left_one_sided_difference(backend: str) -> None:
    """min (x - a)^2 / 2 s.t. x <= u at a = u: x = min(a, u). The gradient (dx/da, dx/du) is
    (0, 1), the left one-sided derivative in u (the row counted active); (1, 0) would be the right."""

    def x_of(a: float, u: float, grad: bool = False) -> tuple[torch.Tensor, ...]:
        f64 = torch.float64
        qa, ut = (
            torch.tensor([-a], dtype=f64, requires_grad=grad),
            torch.tensor([u], dtype=f64, requires_grad=grad),
        )
        x = solve_qp(
            torch.eye(1, dtype=torch.float64),
            qa,
            None,
            None,
            torch.ones(1, 1, dtype=torch.float64),
            torch.tensor([-INF], dtype=torch.float64),
            ut,
            backend=backend,
            settings=SETTINGS,
        )[0]
        return x, qa, ut

    x, qa, ut = x_of(0.7, 0.7, grad=True)
    x.sum().backward()
    g_a, g_u = -float(qa.grad), float(ut.grad)
    h = 1e-4
    left_u = (float(x_of(0.7, 0.7)[0]) - float(x_of(0.7, 0.7 - h)[0])) / h
    right_u = (float(x_of(0.7, 0.7 + h)[0]) - float(x_of(0.7, 0.7)[0])) / h
    assert (left_u, right_u) == pytest.approx((1.0, 0.0), abs=1e-5)
    assert (g_a, g_u) == pytest.approx((0.0, left_u), abs=1e-6)


@pytest.mark.parametrize("backend", TORCH_BACKENDS)
def test_problem_layer_weak_and_duplicated_constraint(backend: str) -> None:
    """The DSL path: ``x[0] <= h`` listed twice and weakly active (a[0] = h). Selections: the rows
    active (dL/da = (0, 2), dL/dh = 1) or not (dL/da = (1, 2), dL/dh = 0). Expected: active."""
    x = qd.Variable(2, name="x")
    a, h = qd.Parameter(2, name="a"), qd.Parameter(name="h")
    row = x[0] <= h
    prob = qd.Problem(qd.Minimize(0.5 * qd.sum_squares(x - a)), [row, row])
    layer = prob.to_torch([a, h], [x], backend=backend, eps_abs=1e-10)
    at = torch.tensor([0.4, 0.3], dtype=torch.float64, requires_grad=True)
    ht = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    (xs,) = layer(at, ht)
    (xs[0] + 2 * xs[1]).backward()
    g = np.concatenate([at.grad.numpy(), [float(ht.grad)]])
    dist, _ = in_hull(g, [np.array([0.0, 2.0, 1.0]), np.array([1.0, 2.0, 0.0])])
    assert dist < TOL, g
    np.testing.assert_allclose(g, [0.0, 2.0, 1.0], atol=TOL)


@pytest.mark.parametrize("backend", TORCH_BACKENDS)
def test_torch_inconsistent_rank_deficient_equalities(backend: str) -> None:
    """x0 + 2 x1 = b0 and x0 + 2 x1 = b1 with b0 != b1 (and 0 x = b2 != 0): infeasible; the closest
    feasible QP keeps x0 + 2 x1 = (b0 + b1) / 2, a smooth map of b: its gradient (the unique element)
    is checked against central differences, and d/db2 = 0."""
    blk = WHERE["rank"]["data"]
    b = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64, requires_grad=True)
    q = torch.tensor(blk["q"], requires_grad=True)
    w = torch.tensor([1.0, -0.5], dtype=torch.float64)

    def loss(bb: torch.Tensor, qq: torch.Tensor) -> torch.Tensor:
        out = solve_qp(
            torch.tensor(blk["P"]),
            qq,
            torch.tensor(blk["A"]),
            bb,
            None,
            None,
            None,
            backend=backend,
            settings=SETTINGS,
        )
        assert int(out[5]) == Status.SOLVED_CLOSEST_FEASIBLE
        return w @ out[0]

    loss(b, q).backward()
    assert torch.isfinite(b.grad).all() and float(b.grad[2]) == pytest.approx(0.0, abs=1e-9)
    h = 1e-6
    for var, grad in ((b, b.grad), (q, q.grad)):
        for i in range(var.numel()):
            e = torch.zeros_like(var)
            e[i] = h
            with torch.no_grad():
                bb, qq = (b + e, q) if var is b else (b, q + e)
                plus = float(loss(bb, qq))
                bb, qq = (b - e, q) if var is b else (b, q - e)
                minus = float(loss(bb, qq))
            assert float(grad[i]) == pytest.approx((plus - minus) / (2 * h), abs=1e-5)


# ---------------------------------------------------------------- JAX layer


@pytest.mark.parametrize("backend", JAX_BACKENDS)
def test_jax_degenerate_blocks(backend: str) -> None:
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    from qpdsl.jax import solve_qp as jax_solve_qp

    args = [jnp.asarray(D[k]) for k in NAMES]

    def loss(*a: Any) -> Any:
        x = jax_solve_qp(*a, backend=backend, settings=SETTINGS)[0]
        return jnp.asarray(W) @ x, x

    (_, x), g = jax.value_and_grad(loss, argnums=(1, 3, 5, 6), has_aux=True)(*args)
    grads = dict(zip(("q", "b", "l", "u"), (np.asarray(v) for v in g), strict=True))
    check_blocks(np.asarray(x), grads)
