"""The shared backward pass (qpdsl.diff) against finite differences of reference solutions.

References are computed here with ProxQP directly (tight tolerances) and, for infeasible
problems, the closest feasible QP built step by step: the least-squares
feasibility problem, the exact residual on the violated rows, then the shifted QP.
"""

from __future__ import annotations

import numpy as np
import pytest

from qpdsl.diff import QPGrads, qp_jvp, qp_vjp
from qpdsl.qp import QPData, QPResult, Status

proxqp = pytest.importorskip("proxsuite").proxqp
cp = pytest.importorskip("cvxpy")

NAMES = ("P", "q", "A", "b", "C", "l", "u")
BIG = 1e20  # ProxQP's stand-in for an infinite bound
FD_STEP = 1e-6


# ----------------------------------------------------------------------------- references


def _proxqp(P, q, A, b, C, l, u):
    n, p, m = q.size, b.size, l.size
    qp = proxqp.dense.QP(n, p, m)
    qp.settings.eps_abs = 1e-12
    qp.settings.eps_rel = 0.0
    qp.settings.max_iter = 5_000
    qp.settings.eps_primal_inf = qp.settings.eps_dual_inf = 1e-14  # the default misfires on LPs
    qp.init(
        P,
        q,
        A if p else None,
        b if p else None,
        C if m else None,
        np.clip(l, -BIG, BIG) if m else None,
        np.clip(u, -BIG, BIG) if m else None,
    )
    qp.solve()
    assert qp.results.info.status == proxqp.QPSolverOutput.PROXQP_SOLVED
    return qp.results.x.copy(), qp.results.y.copy(), qp.results.z.copy()


def _shift(A, b, C, l, u):
    """The minimal shift s*: least squares, then the exact residual on the violated rows."""
    n, p, m = A.shape[1], b.size, l.size
    up, lo = np.isfinite(u), np.isfinite(l)
    if p + up.sum() + lo.sum() == 0:
        return np.zeros(p), np.zeros(m)
    x = cp.Variable(n)
    terms = [cp.sum_squares(A @ x - b)] if p else []
    terms += [cp.sum_squares(cp.pos(C[up] @ x - u[up]))] if up.any() else []
    terms += [cp.sum_squares(cp.pos(l[lo] - C[lo] @ x))] if lo.any() else []
    # the tiny proximal term keeps x bounded where the minimisers form an unbounded set
    cp.Problem(cp.Minimize(sum(terms) + 1e-10 * cp.sum_squares(x))).solve(solver="CLARABEL")
    # only the violated set is taken from this solve; the shift is then computed exactly
    x_ls = x.value
    cx = C @ x_ls
    s_in = cx - np.clip(cx, l, u)
    viol = np.abs(s_in) > 1e-6
    if np.abs(A @ x_ls - b).max(initial=0.0) < 1e-6 and not viol.any():
        return np.zeros(p), np.zeros(m)
    M = np.vstack([A, C[viol]])
    c = np.concatenate([b, np.where(s_in > 0, u, l)[viol]])
    res = M @ np.linalg.lstsq(M, c, rcond=None)[0] - c
    if np.abs(res).max() < 1e-9:
        return np.zeros(p), np.zeros(m)
    s_in = np.zeros(m)
    s_in[viol] = res[p:]
    return res[:p], s_in


def _shifted_qp(P, q, A, b, C, l, u, s_eq, s_in):
    """Solve the QP shifted by s: its equality and violated rows, dependent, are reduced to a basis."""
    p, viol = b.size, s_in != 0
    M = np.vstack([A, C[viol]])
    c = np.concatenate([b + s_eq, (np.where(s_in > 0, u, l) + s_in)[viol]])
    U, sv, _ = np.linalg.svd(M, full_matrices=False)
    U = U[:, sv > 1e-10 * sv.max(initial=1.0)]
    rest = ~viol
    x, lam, z_rest = _proxqp(P, q, U.T @ M, U.T @ c, C[rest], l[rest], u[rest])
    y_M = U @ lam  # the multipliers of M's rows with no part along null(M')
    z = np.zeros(l.size)
    z[rest], z[viol] = z_rest, y_M[p:]
    return x, y_M[:p], z


def reference(data: QPData) -> QPResult:
    """Solve every element (closest feasible QP when infeasible) to ~1e-12 with ProxQP."""
    out = {k: [] for k in ("x", "y", "z", "se", "si", "st")}
    for k in range(data.batch_size):
        P, q, A, b, C, l, u = (np.asarray(getattr(data, name))[k] for name in NAMES)
        s_eq, s_in = _shift(A, b, C, l, u)
        closest = bool(np.any(s_eq) or np.any(s_in))
        x, y, z = _shifted_qp(P, q, A, b, C, l, u, s_eq, s_in) if closest else _proxqp(P, q, A, b, C, l, u)
        for key, v in zip(
            out,
            (x, y, z, s_eq, s_in, Status.SOLVED_CLOSEST_FEASIBLE if closest else Status.SOLVED),
            strict=True,
        ):
            out[key].append(v)
    B = data.batch_size
    return QPResult(
        x=np.stack(out["x"]),
        y=np.stack(out["y"]).reshape(B, -1),
        z=np.stack(out["z"]).reshape(B, -1),
        shift_eq=np.stack(out["se"]).reshape(B, -1),
        shift_in=np.stack(out["si"]).reshape(B, -1),
        status=np.array(out["st"], dtype=np.int64),
        iterations=np.zeros(B, dtype=np.int64),
        prim_res=np.zeros(B),
        dual_res=np.zeros(B),
    )


# ----------------------------------------------------------------------------- problems


def constructed(rng, n, p, kinds, lp=False) -> dict:
    """One QP whose solution, active set and duals are chosen first (strictly complementary).

    ``kinds`` per inequality row: "up"/"lo" active at the upper/lower bound, "up_only"
    active with l = -inf, "in" inactive two-sided, "in_inf" inactive with u = +inf,
    "free" both bounds infinite.
    """
    m = len(kinds)
    G = rng.standard_normal((n, n))
    P = np.zeros((n, n)) if lp else G @ G.T / n + 0.5 * np.eye(n)
    A, C = rng.standard_normal((p, n)), rng.standard_normal((m, n))
    x, y = rng.standard_normal(n), rng.standard_normal(p)
    cx = C @ x
    z, l, u = np.zeros(m), np.full(m, -np.inf), np.full(m, np.inf)
    for i, kind in enumerate(kinds):
        gap = rng.uniform(0.5, 2.0, size=2)
        if kind in ("up", "up_only"):
            z[i], u[i] = gap[0], cx[i]
            l[i] = cx[i] - gap[1] if kind == "up" else -np.inf
        elif kind == "lo":
            z[i], l[i], u[i] = -gap[0], cx[i], cx[i] + gap[1]
        elif kind == "in":
            l[i], u[i] = cx[i] - gap[0], cx[i] + gap[1]
        elif kind == "in_inf":
            l[i] = cx[i] - gap[0]
    q = -(P @ x + A.T @ y + C.T @ z)
    return dict(P=P, q=q, A=A, b=A @ x, C=C, l=l, u=u)


def infeasible(rng, n) -> dict:
    """An infeasible QP: a combination of the equality rows and a pair of parallel rows conflict.

    The rows of M = [A; C_V] span only a subspace, so P and q still matter; the shift is
    differentiable only along perturbations that keep the rank of M (:func:`_keep_rank`).
    """
    G = rng.standard_normal((n, n))
    P = G @ G.T / n + 0.5 * np.eye(n)
    A = rng.standard_normal((2, n))
    b = rng.standard_normal(2)
    c = rng.standard_normal(n)
    C = np.vstack([A[0] + 0.5 * A[1], c, 2.0 * c, rng.standard_normal((2, n))])
    # the last two rows bound the least-squares minimisers (a set) without being active
    l = np.array([-np.inf, -np.inf, 2.0, -50.0, -50.0])
    u = np.array([b[0] + 0.5 * b[1] - 1.0, -1.0, np.inf, 50.0, 50.0])
    return dict(P=P, q=rng.standard_normal(n), A=A, b=b, C=C, l=l, u=u)


def infeasible_full_rank(rng, n) -> dict:
    """An infeasible QP whose violated rows span R^n: the shift is differentiable in every direction."""
    pr = infeasible(rng, n)
    pairs = rng.standard_normal((n - 3, n))
    pr["C"] = np.vstack([pr["C"][:3], pairs, 1.5 * pairs])
    pr["l"] = np.concatenate([pr["l"][:3], np.full(n - 3, -np.inf), np.full(n - 3, 1.5)])
    pr["u"] = np.concatenate([pr["u"][:3], np.full(n - 3, -1.0), np.full(n - 3, np.inf)])
    return pr


def _keep_rank(t: QPData) -> QPData:
    """Restrict a tangent so that the dependent rows of :func:`infeasible` stay dependent."""
    C = t.C.copy()
    C[:, 0] = t.A[:, 0] + 0.5 * t.A[:, 1]
    C[:, 2] = 2.0 * C[:, 1]
    return QPData(**{**vars(t), "C": C})


def batch(*problems: dict) -> QPData:
    return QPData(**{k: np.stack([pr[k] for pr in problems]) for k in NAMES})


def worked_example() -> QPData:
    """The worked example of the closest feasible QP: min x²/2 s.t. x = 5, -3 <= x <= 3."""
    one = np.ones((1, 1, 1))
    return QPData(
        P=one,
        q=np.zeros((1, 1)),
        A=one.copy(),
        b=np.full((1, 1), 5.0),
        C=one.copy(),
        l=np.full((1, 1), -3.0),
        u=np.full((1, 1), 3.0),
    )


# ----------------------------------------------------------------------------- checks


def _cotangents(rng, data: QPData, duals: bool) -> tuple:
    B, n, p, m = data.batch_size, data.n, data.n_eq, data.n_in
    g = [
        rng.standard_normal((B, n)),
        rng.standard_normal((B, p)),
        rng.standard_normal((B, m)),
        rng.standard_normal((B, p)),
        rng.standard_normal((B, m)),
    ]
    if not duals:
        g[1], g[2] = 0 * g[1], 0 * g[2]
    return tuple(g)


def _direction(rng, data: QPData) -> QPData:
    """A random tangent: symmetric in P, zero on infinite bounds."""
    t = {k: rng.standard_normal(np.shape(getattr(data, k))) for k in NAMES}
    t["P"] = t["P"] + np.swapaxes(t["P"], 1, 2)
    for k in ("l", "u"):
        t[k] = np.where(np.isfinite(getattr(data, k)), t[k], 0.0)
    return QPData(**t)


def _step(data: QPData, t: QPData, h: float) -> QPData:
    return QPData(**{k: getattr(data, k) + h * getattr(t, k) for k in NAMES})


def _loss(res: QPResult, g: tuple) -> np.ndarray:
    """Per element <g, (x, y, z, shift_eq, shift_in)>; a shorter g leaves the last outputs out."""
    outs = (res.x, res.y, res.z, res.shift_eq, res.shift_in)[: len(g)]
    return np.array(
        [sum(float(np.sum(o[k] * gi[k])) for o, gi in zip(outs, g, strict=True)) for k in range(len(res.x))]
    )


def _inner(grads: QPGrads, t: QPData) -> np.ndarray:
    return sum(
        np.sum((np.asarray(getattr(grads, k)) * getattr(t, k)).reshape(len(t.q), -1), axis=1) for k in NAMES
    )


def check_against_fd(
    data: QPData, seed: int, duals: bool = True, directions: int = 3, keep_rank: bool = False
) -> QPResult:
    """qp_vjp vs central differences along random directions, and qp_jvp vs qp_vjp (adjoint identity)."""
    rng = np.random.default_rng(seed)
    res = reference(data)
    g = _cotangents(rng, data, duals)
    grads = qp_vjp(data, res, *g)
    for name in NAMES:
        assert np.shape(getattr(grads, name)) == np.shape(getattr(data, name))
        assert np.all(np.isfinite(getattr(grads, name)))
    for _ in range(directions):
        t = _keep_rank(_direction(rng, data)) if keep_rank else _direction(rng, data)
        fd = (
            _loss(reference(_step(data, t, FD_STEP)), g) - _loss(reference(_step(data, t, -FD_STEP)), g)
        ) / (2 * FD_STEP)
        vjp = _inner(grads, t)
        jvp = _loss(
            QPResult(*qp_jvp(data, res, t), status=None, iterations=None, prim_res=None, dual_res=None), g
        )
        np.testing.assert_allclose(vjp, fd, rtol=1e-5, atol=1e-5 * (1 + np.abs(fd).max()))
        np.testing.assert_allclose(jvp, vjp, rtol=1e-9, atol=1e-9 * (1 + np.abs(vjp).max()))
    return res


# ----------------------------------------------------------------------------- tests


def test_random_qps_with_all_kinds_of_rows():
    rng = np.random.default_rng(0)
    kinds = ["up", "lo", "up_only", "in", "in_inf", "free"]
    data = batch(*(constructed(rng, 6, 2, kinds) for _ in range(3)))
    res = check_against_fd(data, seed=1)
    assert np.all(res.status == Status.SOLVED)


def test_linear_program_at_a_vertex():
    rng = np.random.default_rng(2)
    # n = p + active rows: the solution is a nondegenerate vertex
    data = batch(
        *(constructed(rng, 5, 2, ["up", "lo", "up_only", "in", "in_inf"], lp=True) for _ in range(2))
    )
    assert np.all(data.P == 0)
    check_against_fd(data, seed=3)


def test_equality_only_and_inequality_only():
    rng = np.random.default_rng(4)
    check_against_fd(batch(*(constructed(rng, 5, 3, []) for _ in range(2))), seed=5)
    check_against_fd(batch(*(constructed(rng, 4, 0, ["up", "lo", "in", "free"]) for _ in range(2))), seed=6)


def test_unconstrained():
    rng = np.random.default_rng(7)
    data = batch(constructed(rng, 4, 0, []))
    res = check_against_fd(data, seed=8)
    grads = qp_vjp(data, res, np.ones((1, 4)))
    # x = -P^{-1} q, so dL/dq = -P^{-1} g
    np.testing.assert_allclose(grads.q[0], -np.linalg.solve(data.P[0], np.ones(4)), rtol=1e-10)


def test_worked_example_of_the_design():
    data = worked_example()
    res = reference(data)
    np.testing.assert_allclose(res.x, [[4.0]], atol=1e-9)
    np.testing.assert_allclose(np.concatenate([res.shift_eq, res.shift_in], axis=1), [[-1.0, 1.0]], atol=1e-9)
    assert res.status[0] == Status.SOLVED_CLOSEST_FEASIBLE
    grads = qp_vjp(data, res, np.ones((1, 1)))

    def closed_form(a, b, c, u):  # least-squares compromise of a x = b and c x = u
        return (a * b + c * u) / (a**2 + c**2)

    args = np.array([1.0, 5.0, 1.0, 3.0])
    fd = [
        (closed_form(*(args + h * e)) - closed_form(*(args - h * e))) / (2 * h)
        for e in np.eye(4)
        for h in (1e-6,)
    ]
    got = [grads.A[0, 0, 0], grads.b[0, 0], grads.C[0, 0, 0], grads.u[0, 0]]
    np.testing.assert_allclose(got, fd, rtol=1e-7)
    np.testing.assert_allclose([grads.b[0, 0], grads.u[0, 0]], [0.5, 0.5], rtol=1e-9)
    np.testing.assert_allclose([grads.P[0, 0, 0], grads.q[0, 0], grads.l[0, 0]], 0.0, atol=1e-12)
    check_against_fd(data, seed=9, duals=False)


def test_infeasible_qps():
    rng = np.random.default_rng(10)
    data = batch(*(infeasible(rng, 5) for _ in range(2)))
    res = check_against_fd(data, seed=11, duals=False, keep_rank=True)
    assert np.all(res.status == Status.SOLVED_CLOSEST_FEASIBLE)
    assert np.all(np.count_nonzero(res.shift_in, axis=1) == 3)  # the three conflicting rows
    assert np.abs(qp_vjp(data, res, np.ones((2, 5))).q).max() > 1e-3  # x is not pinned by the shift


def test_infeasible_qps_with_violated_rows_spanning_the_space():
    rng = np.random.default_rng(18)
    data = batch(*(infeasible_full_rank(rng, 5) for _ in range(2)))
    res = check_against_fd(data, seed=19, duals=False)
    assert np.all(res.status == Status.SOLVED_CLOSEST_FEASIBLE)


def mixed_batch(rng) -> QPData:
    kinds = ["up", "lo", "in", "in_inf", "free"]
    feasible = constructed(rng, 5, 2, kinds)
    bad = infeasible(rng, 5)
    return batch(feasible, bad, constructed(rng, 5, 2, kinds))


def test_mixed_batch_and_failed_elements():
    rng = np.random.default_rng(12)
    data = mixed_batch(rng)
    res = check_against_fd(data, seed=13, duals=False, keep_rank=True)
    assert list(res.status) == [Status.SOLVED, Status.SOLVED_CLOSEST_FEASIBLE, Status.SOLVED]

    g = _cotangents(rng, data, duals=True)
    full = qp_vjp(data, res, *g)
    # element 2 failed: NaN solution, zero gradients, other elements unchanged
    failed = QPResult(
        **{
            **vars(res),
            "status": np.array([0, 1, int(Status.MAX_ITER)]),
            "x": np.where(np.arange(3)[:, None] == 2, np.nan, res.x),
        }
    )
    part = qp_vjp(data, failed, *g)
    for name in NAMES:
        np.testing.assert_array_equal(getattr(part, name)[2], 0.0)
        np.testing.assert_allclose(getattr(part, name)[:2], getattr(full, name)[:2], rtol=1e-12, atol=1e-14)
    outs = qp_jvp(data, failed, _direction(rng, data))
    assert all(np.all(o[2] == 0) and np.all(np.isfinite(o)) for o in outs)


def test_dependent_equalities_give_finite_gradients():
    """LICQ fails (a repeated equality row): duals are not unique, x still is."""
    rng = np.random.default_rng(14)
    pr = constructed(rng, 5, 2, ["up", "in"])
    pr["A"] = np.vstack([pr["A"], pr["A"][:1]])
    pr["b"] = np.append(pr["b"], pr["b"][0])
    data = batch(pr)
    res = reference(data)
    g = _cotangents(rng, data, duals=True)
    grads = qp_vjp(data, res, *g)
    assert all(np.all(np.isfinite(getattr(grads, k))) for k in NAMES)
    assert np.abs(grads.b).max() < 1e3 * (1 + np.abs(np.concatenate(g, axis=1)).max())
    # along q, P, l, u (which keep the rows dependent) x is differentiable: compare with FD
    gx = (g[0],)
    grads = qp_vjp(data, res, *gx)
    t = _direction(rng, data)
    t = QPData(**{**vars(t), "A": 0 * t.A, "b": 0 * t.b, "C": 0 * t.C, "r": None})
    fd = (_loss(reference(_step(data, t, FD_STEP)), gx) - _loss(reference(_step(data, t, -FD_STEP)), gx)) / (
        2 * FD_STEP
    )
    np.testing.assert_allclose(_inner(grads, t), fd, rtol=1e-5, atol=1e-6)


def test_float32_close_to_float64():
    rng = np.random.default_rng(15)
    data = mixed_batch(rng)
    res = reference(data)
    g = _cotangents(rng, data, duals=False)
    ref = qp_vjp(data, res, *g)
    f32 = lambda obj: type(obj)(
        **{
            k: (v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype == np.float64 else v)
            for k, v in vars(obj).items()
        }
    )
    got = qp_vjp(f32(data), f32(res), *(a.astype(np.float32) for a in g))
    for name in NAMES:
        assert getattr(got, name).dtype == np.float32
        scale = 1 + np.abs(getattr(ref, name)).max()
        np.testing.assert_allclose(getattr(got, name), getattr(ref, name), atol=2e-3 * scale)


# ----------------------------------------------------------------------------- frameworks


def _convert(obj, fn):
    return type(obj)(**{k: (fn(v) if isinstance(v, np.ndarray) else v) for k, v in vars(obj).items()})


def test_torch_matches_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(16)
    data = mixed_batch(rng)
    res = reference(data)
    g = _cotangents(rng, data, duals=True)
    ref = qp_vjp(data, res, *g)
    got = qp_vjp(
        _convert(data, torch.from_numpy), _convert(res, torch.from_numpy), *(torch.from_numpy(a) for a in g)
    )
    t = _direction(rng, data)
    ref_t = qp_jvp(data, res, t)
    got_t = qp_jvp(
        _convert(data, torch.from_numpy), _convert(res, torch.from_numpy), _convert(t, torch.from_numpy)
    )
    for name in NAMES:
        assert isinstance(getattr(got, name), torch.Tensor)
        np.testing.assert_allclose(getattr(got, name).numpy(), getattr(ref, name), rtol=1e-8, atol=1e-10)
    for a, b in zip(got_t, ref_t, strict=True):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-8, atol=1e-10)


def test_jax_jit_and_transpose_of_jvp_match_numpy():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    rng = np.random.default_rng(17)
    data = mixed_batch(rng)
    res = reference(data)
    g = _cotangents(rng, data, duals=True)
    ref = qp_vjp(data, res, *g)
    dj, rj = _convert(data, jnp.asarray), _convert(res, jnp.asarray)

    @jax.jit
    def vjp(*gs):
        return tuple(vars(qp_vjp(dj, rj, *gs)).values())

    @jax.jit
    def transposed(*gs):
        jvp = lambda *t: qp_jvp(dj, rj, QPData(*t))
        return jax.linear_transpose(jvp, *(getattr(dj, k) for k in NAMES))(tuple(gs))

    got_vjp = vjp(*(jnp.asarray(a) for a in g))
    got_tr = transposed(*(jnp.asarray(a) for a in g))
    for k, name in enumerate(NAMES):
        expected = getattr(ref, name)
        if name in ("l", "u"):  # the transpose also reaches infinite bounds' tangents, which are ignored
            expected = np.where(np.isfinite(getattr(data, name)), expected, 0.0)
        np.testing.assert_allclose(np.asarray(got_vjp[k]), getattr(ref, name), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(np.asarray(got_tr[k]), expected, rtol=1e-8, atol=1e-10)


def test_float32_solutions_get_float64_accurate_gradients():
    """A float32 solve (cpu backend, eps 1e-5) of random dense QPs, differentiated: the float32
    gradients match central differences of ProxQP's float64 solutions to about 1e-5 relative.
    (Computed in float32 arithmetic, the adjoint gave relative errors near 1 on these problems.)"""
    from qpdsl.backends import get_backend
    from qpdsl.qp import Settings

    rng = np.random.default_rng(7)
    B, n, p, m = 4, 30, 6, 30
    M = rng.standard_normal((B, n, n))
    x0 = rng.standard_normal((B, n))
    A, C = rng.standard_normal((B, p, n)), rng.standard_normal((B, m, n))
    cx = np.einsum("bij,bj->bi", C, x0)
    arrays = dict(
        P=M @ np.swapaxes(M, 1, 2) + 1e-2 * np.eye(n),
        q=rng.standard_normal((B, n)),
        A=A,
        b=np.einsum("bij,bj->bi", A, x0),
        C=C,
        l=cx - rng.uniform(0, 1, (B, m)),
        u=cx + rng.uniform(0, 1, (B, m)),
    )
    arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
    data32 = QPData(**arrays)
    data64 = QPData(**{k: v.astype(np.float64) for k, v in arrays.items()})
    res32 = get_backend("cpu").solve(data32, Settings(eps_abs=1e-5))
    assert res32.x.dtype == np.float32 and np.all(res32.status == Status.SOLVED)
    g = rng.standard_normal((B, n)).astype(np.float32)
    grads = qp_vjp(data32, res32, g)
    assert np.asarray(grads.q).dtype == np.float32
    for _ in range(2):
        t = _direction(rng, data64)
        fd = (
            _loss(reference(_step(data64, t, FD_STEP)), (g,))
            - _loss(reference(_step(data64, t, -FD_STEP)), (g,))
        ) / (2 * FD_STEP)
        np.testing.assert_allclose(_inner(grads, t), fd, rtol=1e-4, atol=1e-4 * np.abs(fd).max())
        t32 = QPData(**{k: getattr(t, k).astype(np.float32) for k in NAMES})
        dx = qp_jvp(data32, res32, t32)[0]
        assert dx.dtype == np.float32
        jvp = np.sum(dx.astype(np.float64) * g, axis=1)
        np.testing.assert_allclose(jvp, fd, rtol=1e-4, atol=1e-4 * np.abs(fd).max())


def test_float32_activity_tolerance_does_not_grow_with_the_row_value():
    """min 1/2 |x - c|^2 s.t. x_0 <= 20, x_1 >= 1 with c = (19.998, 0.5): row 0 is inactive by
    2e-3 (ten times a float32 solve's accuracy away, but only 1e-4 of its value), row 1 active.
    Exactly, dx/dc = diag(1, 0) and dL/du = 0, dL/dl_1 = g_1. A float32 solution differentiated
    with a tolerance scaled by |C x| counted row 0 as active and returned dx_0/dc_0 = 0."""
    f32 = np.float32
    data = QPData(
        P=np.eye(2, dtype=f32)[None],
        q=-np.array([[19.998, 0.5]], f32),
        A=np.zeros((1, 0, 2), f32),
        b=np.zeros((1, 0), f32),
        C=np.eye(2, dtype=f32)[None],
        l=np.array([[-np.inf, 1.0]], f32),
        u=np.array([[20.0, np.inf]], f32),
    )
    res = QPResult(
        x=np.array([[19.998, 1.0]], f32),
        y=np.zeros((1, 0), f32),
        z=np.array([[0.0, -0.5]], f32),
        shift_eq=np.zeros((1, 0), f32),
        shift_in=np.zeros((1, 2), f32),
        status=np.array([Status.SOLVED]),
        iterations=np.array([10]),
        prim_res=np.zeros(1, f32),
        dual_res=np.zeros(1, f32),
    )
    g = np.array([[1.0, 1.0]], f32)
    grads = qp_vjp(data, res, g)
    np.testing.assert_allclose(grads.q, [[-1.0, 0.0]], atol=1e-5)
    np.testing.assert_allclose(grads.u, [[0.0, 0.0]], atol=1e-5)
    np.testing.assert_allclose(grads.l, [[0.0, 1.0]], atol=1e-5)
