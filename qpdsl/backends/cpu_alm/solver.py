"""The proximal augmented-Lagrangian method (ProxQP family) for one batch element, and the batch drivers.

On the Ruiz-equilibrated problem, an outer bound-constrained-Lagrangian (BCL) loop updates the
prox center ``x_prox``, the multipliers ``v_prox = [y_prox; z_prox]`` and the penalties; an
inner semi-smooth Newton loop minimises the strongly convex, piecewise-quadratic merit::

    1/2 x'Px + q'x + rho/2 ||x - x_prox||² + 1/(2 mu_eq) ||Ax - b + mu_eq y_prox||²
    + 1/(2 mu_in) ||[Cx - u + mu_in z_prox]_+ + [Cx - l + mu_in z_prox]_-||²

whose generalised Hessian ``P + rho I + A'A / mu_eq + C_J'C_J / mu_in`` (J: the rows whose
shifted value leaves ``[l, u]``) is factorised only when the penalties change or J changes
by many rows; a change of a few rows updates the factor by rank-one updates and downdates.
Equality rows are rows with ``l = u = b``, with their own penalty; ``G = [A; C]`` and the
multipliers ``v`` follow ``Px + q + G'v = 0``. The stopping test is on the unscaled primal
and dual residuals and duality gap, confirmed on the original data before an element is
declared solved.
"""

from __future__ import annotations

import math
import threading

import numpy as np
from numba import cfunc, njit, prange, types

from ...qp import Status
from . import params as prm
from .linalg import KERNEL, add_outers_upper, cho_solve, cholesky, gram_upper, matvec, rank_updates
from .linesearch import exact_step
from .scaling import cost_scale, equilibrate

RUNNING = -1
SOLVED = int(Status.SOLVED)
DUAL_INFEASIBLE = int(Status.DUAL_INFEASIBLE)
MAX_ITER = int(Status.MAX_ITER)
NUMERICAL_ERROR = int(Status.NUMERICAL_ERROR)
PRIMAL_INFEASIBLE = int(Status.PRIMAL_INFEASIBLE)
# The largest proximal weight (scaled problem) tried when P + rho I has no Cholesky factor.
RHO_MAX = 1e-3
INFINITE_BOUND = 1e20  # bounds of at least this magnitude are infinite
GAP_ROUNDING = 10.0  # the duality gap counts as zero below this many ulps of its terms
RESIDUAL_ROUNDING = 5.0  # a residual counts as zero below this many ulps of its terms (10 unit roundoffs)
REFRESH_EVERY = 8  # Newton steps between exact recomputations of the products K x
EPS = float(np.finfo(np.float64).eps)
INFO_FIELDS = (
    "iterations",
    "prim_res",
    "dual_res",
    "objective",
    "outer_iterations",
    "factorizations",
    "rank_one_updates",
)


@njit(**KERNEL)
def _valid(P, q, A, b, C, l, u) -> bool:
    """Finite data, no NaN bound, no ``l = +inf`` or ``u = -inf``, and ``l <= u``."""
    for arr in (P, A, C):
        for i in range(arr.shape[0]):
            for j in range(arr.shape[1]):
                if not np.isfinite(arr[i, j]):
                    return False
    for vec in (q, b):
        for i in range(vec.shape[0]):
            if not np.isfinite(vec[i]):
                return False
    for i in range(l.shape[0]):
        if not (l[i] < INFINITE_BOUND and u[i] > -INFINITE_BOUND and l[i] <= u[i]):
            return False
    return True


@njit(**KERNEL)
def _evaluate(GT, n, p, qs, lo, hi, x, xp, v, vp, KX, mu_eq, mu_in, rho, w, r, rmu, GTv, GTr, dual, rx, grad):
    """The subproblem's optimality equations at ``(x, v)``, given ``KX = [P x; G x]``.

    ``w = Gx + mu v_prox``, ``r = [w - hi]_+ + [w - lo]_- - mu v`` (the equation for ``v``),
    ``dual = Px + q + G'v``, ``rx = dual + rho (x - x_prox)`` and ``grad = rx + G'(r / mu)``,
    the gradient of the primal merit.
    """
    k = lo.shape[0]
    for i in range(k):
        mu = mu_eq if i < p else mu_in
        wi = KX[n + i] + mu * vp[i]
        w[i] = wi
        out = wi - hi[i] if wi > hi[i] else (wi - lo[i] if wi < lo[i] else 0.0)
        r[i] = out - mu * v[i]
        rmu[i] = r[i] / mu
    matvec(GT, v, GTv)
    matvec(GT, rmu, GTr)
    for j in range(n):
        dual[j] = KX[j] + qs[j] + GTv[j]
        rx[j] = dual[j] + rho * (x[j] - xp[j])
        grad[j] = rx[j] + GTr[j]


@njit(**KERNEL)
def _norm(a) -> float:
    out = 0.0
    for i in range(a.shape[0]):
        out = max(out, abs(a[i]))
    return out


@njit(**KERNEL)
def _dot(a, b) -> float:
    s = 0.0
    for i in range(a.shape[0]):
        s += a[i] * b[i]
    return s


@njit(**KERNEL)
def _residuals(Gx, Px_dot_x, qx, v, z_scale, inv_row, lo, hi, lo_fin, hi_fin, eps_abs):
    """Primal residual, its complementarity-aware variant and the duality gap with its scale.

    ``Gx``, ``v`` and the bounds may be scaled, with ``inv_row`` the factors back to the
    original rows and ``z_scale`` to the original multipliers; the gap terms are returned
    in the same (cost-scaled) units as ``Px_dot_x``. Multipliers below ``eps_abs`` (unscaled)
    are rounding noise of rows that left the active set; a larger one asks its row to sit on
    its bound.
    """
    prim, prim_comp, support = 0.0, 0.0, 0.0
    for i in range(Gx.shape[0]):
        g = Gx[i]
        viol = g - min(max(g, lo[i]), hi[i])
        z = v[i] * z_scale[i]
        comp = g - hi[i] if z > eps_abs else (g - lo[i] if z < -eps_abs else viol)
        prim = max(prim, abs(viol) * inv_row[i])
        prim_comp = max(prim_comp, abs(comp) * inv_row[i])
        support += (hi_fin[i] if v[i] > 0.0 else lo_fin[i]) * v[i]
    gap = abs(Px_dot_x + qx + support)
    scale = max(abs(Px_dot_x), abs(qx), abs(support))
    return prim, prim_comp, gap, scale


@njit(**KERNEL)
def _tolerances_met(prim_comp, dual, gap, gap_scale, p_scale, d_scale, eps_abs, eps_rel) -> bool:
    # The gap is a sum of terms of size up to gap_scale: below its rounding error it cannot improve.
    # That floor only replaces a tolerance below it; it is not added to the requested one.
    # The residuals likewise: below RESIDUAL_ROUNDING ulps of their terms (e.g. P x of 1e8) they
    # cannot improve, which the verification allows for too.
    gap_floor = GAP_ROUNDING * EPS * gap_scale
    return (
        prim_comp <= max(eps_abs + eps_rel * p_scale, RESIDUAL_ROUNDING * EPS * p_scale)
        and dual <= max(eps_abs + eps_rel * d_scale, RESIDUAL_ROUNDING * EPS * d_scale)
        and gap <= max(eps_abs + eps_rel * gap_scale, gap_floor)
    )


@njit(**KERNEL)
def _original_check(P, q, A, b, C, lo0, hi0, lo0_fin, hi0_fin, xo, yo, zo, eps_abs, eps_rel):
    """The stopping test on the original data at the unscaled point ``(xo, yo, zo)``.

    Returns
    -------
    ok, prim, dual
    """
    n, p, m = q.shape[0], b.shape[0], lo0.shape[0] - b.shape[0]
    Px = np.empty(n)
    matvec(P, xo, Px)
    Gx = np.empty(p + m)
    matvec(A, xo, Gx[:p])
    matvec(C, xo, Gx[p:])
    vo = np.empty(p + m)
    vo[:p] = yo
    vo[p:] = zo
    ones = np.ones(p + m)
    ATy, CTz = np.zeros(n), np.zeros(n)
    for i in range(p):
        for j in range(n):
            ATy[j] += yo[i] * A[i, j]
    for i in range(m):
        for j in range(n):
            CTz[j] += zo[i] * C[i, j]
    dual, d_scale = 0.0, 0.0
    for j in range(n):
        dual = max(dual, abs(Px[j] + q[j] + ATy[j] + CTz[j]))
        d_scale = max(d_scale, abs(Px[j]), abs(q[j]), abs(ATy[j]), abs(CTz[j]))
    prim, prim_comp, gap, g_scale = _residuals(
        Gx, _dot(xo, Px), _dot(q, xo), vo, ones, ones, lo0, hi0, lo0_fin, hi0_fin, eps_abs
    )
    p_scale = max(_norm(Gx), _norm(b))
    ok = _tolerances_met(prim_comp, dual, gap, g_scale, p_scale, d_scale, eps_abs, eps_rel)
    return ok, prim, dual


@njit(**KERNEL)
def _certificates(K, GT, n, p, qs, lo, hi, row_norm, x, xp, v, vp, eps_pinf, eps_dinf):
    """Primal and dual infeasibility certificates from the last outer step.

    Primal: ``dv = v - v_prox`` with ``G'dv ≈ 0`` and ``hi'[dv]_+ + lo'[dv]_- < 0`` (Farkas).
    Dual: ``dx = x - x_prox`` with ``P dx ≈ 0``, ``G dx`` in the recession cone of
    ``[lo, hi]`` (each row relative to its size) and ``q'dx < 0``.
    """
    k = lo.shape[0]
    dv = v - vp
    size = _norm(dv)
    primal = False
    if size > 0.0:
        tol = eps_pinf * size
        support = 0.0
        for i in range(k):
            # A multiplier of the order of the tolerance on an infinite side is rounding noise
            # (the exact certificate is zero there), not an infinite support.
            if dv[i] > 0.0 and (hi[i] < np.inf or dv[i] > tol):
                support += hi[i] * dv[i]
            elif dv[i] < 0.0 and (lo[i] > -np.inf or dv[i] < -tol):
                support += lo[i] * dv[i]
        if support < -tol:
            GTdv = np.empty(n)
            matvec(GT, dv, GTdv)
            primal = _norm(GTdv) <= tol
    dx = x - xp
    size_x = _norm(dx)
    dual = False
    tol = eps_dinf * size_x
    if size_x > 0.0 and _dot(qs, dx) < -tol:
        KD = np.empty(K.shape[0])
        matvec(K, dx, KD)
        dual = _norm(KD[:n]) <= tol
        for i in range(k):
            if not dual:
                break
            g, bound = KD[n + i], tol * row_norm[i]
            dual = (g <= bound or hi[i] == np.inf) and (g >= -bound or lo[i] == -np.inf)
    return primal, dual


@njit(**KERNEL)
def _sync_gram(M, G, p, active, in_gram, rows, signs) -> None:
    """Bring ``M = C_J'C_J`` (upper triangle, J = ``in_gram``) to J = the inequality rows of ``active``.

    The changed rows are added or subtracted as outer products, unless more rows leave than
    stay: then the Gram matrix of the new rows is formed anew (fewer products, and no rounding
    carried over). ``rows`` and ``signs`` (k) are work arrays.
    """
    k = active.shape[0]
    changed, kept, removed = 0, 0, 0
    for i in range(p, k):
        if active[i] != in_gram[i]:
            rows[changed] = i
            signs[changed] = 1.0 if active[i] else -1.0
            changed += 1
            removed += in_gram[i]
        elif active[i]:
            kept += 1
    if changed == 0:
        return
    if kept < removed:
        gram_upper(M, G, p, k, active)
    else:
        add_outers_upper(M, G, rows, signs, changed)
    in_gram[:] = active


_VEC, _MAT = types.float64[::1], types.float64[:, ::1]
SOLVE_ONE = types.int64(
    _MAT, _VEC, _MAT, _VEC, _MAT, _VEC, _VEC, _VEC, _VEC, _VEC, _VEC, types.int64[::1], _VEC, _VEC, _VEC, _VEC
)


def solve_one(P, q, A, b, C, l, u, x0, y0, z0, fp, ip, x_out, y_out, z_out, info):
    """Solve one QP from the (unscaled) starting point ``(x0, y0, z0)``; write the solution to the outputs.

    ``info`` (:data:`INFO_FIELDS`) receives the Newton iterations, the primal and dual residuals,
    the objective, the outer iterations, the factorisations and the rank-one updates of the
    factor; returns the status.
    """
    info[:] = 0.0
    n, p, m = q.shape[0], b.shape[0], l.shape[0]
    k = p + m
    if not _valid(P, q, A, b, C, l, u):
        x_out[:] = np.nan
        y_out[:] = np.nan
        z_out[:] = np.nan
        info[1], info[2], info[3] = np.nan, np.nan, np.nan
        return NUMERICAL_ERROR
    eps_abs, eps_rel, rho = fp[prm.EPS_ABS], fp[prm.EPS_REL], fp[prm.RHO]
    mu_eq0, mu_in0, mu_factor = fp[prm.MU_EQ], fp[prm.MU_IN], fp[prm.MU_FACTOR]
    max_outer, max_iter, max_inner = ip[prm.MAX_OUTER], ip[prm.MAX_ITER], ip[prm.MAX_INNER]
    max_rank = ip[prm.MAX_RANK]

    # Original bounds (|bound| >= INFINITE_BOUND is infinite), and with 0 for infinite ones.
    lo0, hi0 = np.empty(k), np.empty(k)
    lo0[:p] = b
    hi0[:p] = b
    for i in range(m):
        lo0[p + i] = -np.inf if l[i] <= -INFINITE_BOUND else l[i]
        hi0[p + i] = np.inf if u[i] >= INFINITE_BOUND else u[i]
    lo0_fin = np.where(np.isfinite(lo0), lo0, 0.0)
    hi0_fin = np.where(np.isfinite(hi0), hi0, 0.0)

    # The scaled problem: K = [P; A; C] equilibrated, then the cost scaled by c.
    K = np.empty((n + k, n))
    K[:n] = P
    K[n : n + p] = A
    K[n + p :] = C
    D, E = np.empty(n), np.empty(k)
    equilibrate(K, n, D, E, ip[prm.RUIZ_ITERATIONS], fp[prm.RUIZ_TOL])
    qs = D * q
    c = cost_scale(K, n, qs)
    K[:n] *= c
    qs *= c
    G = K[n:]
    lo, hi = E * lo0, E * hi0
    lo_fin, hi_fin = E * lo0_fin, E * hi0_fin
    inv_E, inv_DC, v_scale = 1.0 / E, 1.0 / (D * c), E / c
    row_norm = np.zeros(k)
    for i in range(k):
        row_norm[i] = _norm(G[i])
    GT = np.empty((n, k))  # G' for the products G'v
    for i in range(k):
        for j in range(n):
            GT[j, i] = G[i, j]

    # The state: the warm start (zeros when cold) in scaled variables.
    x = np.where(np.isfinite(x0), x0, 0.0) / D
    v = np.empty(k)
    v[:p] = np.where(np.isfinite(y0), y0, 0.0) / v_scale[:p]
    v[p:] = np.where(np.isfinite(z0), z0, 0.0) / v_scale[p:]
    xp, vp = x.copy(), v.copy()
    mu_eq, mu_in = mu_eq0, mu_in0
    floor_eq, floor_in = fp[prm.MU_MIN_EQ], fp[prm.MU_MIN_IN]
    eta = mu_in0 ** fp[prm.ALPHA_BCL]
    eps_in = 1.0
    KX = np.empty(n + k)
    matvec(K, x, KX)

    # Work arrays.
    w, r, rmu, dv, KD = np.empty(k), np.empty(k), np.empty(k), np.empty(k), np.empty(n + k)
    GTv, GTr, dual, rx, grad, dx = (
        np.empty(n),
        np.empty(n),
        np.empty(n),
        np.empty(n),
        np.empty(n),
        np.empty(n),
    )
    t, delta = np.empty(2 * m), np.empty(2 * m)
    active = np.zeros(k, dtype=np.bool_)
    active[:p] = True
    factored = np.zeros(k, dtype=np.bool_)
    # Upper triangles: A'A (once), P + rho I + A'A / mu_eq (for mu_eq = H_eq_mu) and C_J'C_J for
    # the rows J of `in_gram`, kept up to date by outer products of the rows that changed.
    M_eq = np.empty((n, n))
    H_eq = np.empty((n, n))
    H_eq_mu = np.nan
    M_in = np.zeros((n, n))
    in_gram = np.zeros(k, dtype=np.bool_)
    rows, signs = np.empty(k, dtype=np.int64), np.empty(k)  # work arrays of the Gram matrices
    gram_upper(M_eq, G, 0, p, active)
    X = np.empty((min(max_rank, m) if max_rank > 0 else 0, n))  # the rows of a factor update
    U = np.empty((n, n))  # Cholesky factor U'U of the generalised Hessian for the active set `factored`
    fresh = False  # L matches the current penalties
    updates = 0  # rank-one changes of L since it was factorised
    stalled = False

    status, iters, outer, inner = RUNNING, 0, 0, 0
    prim_res, dual_res = np.inf, np.inf
    while True:
        _evaluate(
            GT, n, p, qs, lo, hi, x, xp, v, vp, KX, mu_eq, mu_in, rho, w, r, rmu, GTv, GTr, dual, rx, grad
        )
        prim, prim_comp, gap, g_scale = _residuals(
            KX[n:], _dot(x, KX[:n]), _dot(qs, x), v, v_scale, inv_E, lo, hi, lo_fin, hi_fin, eps_abs
        )
        dual_res_s = 0.0
        for j in range(n):
            dual_res_s = max(dual_res_s, abs(dual[j]) * inv_DC[j])
        prim_res, dual_res = prim, dual_res_s
        # The scales also bound the residuals' rounding floor, so they are needed with eps_rel = 0.
        p_scale = max(_norm(KX[n:] * inv_E), _norm(lo[:p] * inv_E[:p]))
        d_scale = max(_norm(KX[:n] * inv_DC), _norm(qs * inv_DC), _norm(GTv * inv_DC))
        if _tolerances_met(prim_comp, dual_res_s, gap / c, g_scale / c, p_scale, d_scale, eps_abs, eps_rel):
            for j in range(n):
                x_out[j] = D[j] * x[j]
            y_out[:] = v[:p] * v_scale[:p]
            z_out[:] = v[p:] * v_scale[p:]
            ok, prim_o, dual_o = _original_check(
                P, q, A, b, C, lo0, hi0, lo0_fin, hi0_fin, x_out, y_out, z_out, eps_abs, eps_rel
            )
            if ok:
                status, prim_res, dual_res = SOLVED, prim_o, dual_o
                break

        if max(_norm(rx), _norm(r)) <= eps_in or stalled or inner >= max_inner:
            # BCL update: accept the multipliers when the (scaled) violation is small enough.
            primal_inf, dual_inf = _certificates(
                K, GT, n, p, qs, lo, hi, row_norm, x, xp, v, vp, fp[prm.EPS_PRIMAL_INF], fp[prm.EPS_DUAL_INF]
            )
            violation = 0.0
            for i in range(k):
                g = KX[n + i]
                violation = max(violation, abs(g - min(max(g, lo[i]), hi[i])))
            accept = violation <= eta
            outer += 1
            if primal_inf:
                status = PRIMAL_INFEASIBLE
                break
            if dual_inf:
                status = DUAL_INFEASIBLE
                break
            if outer >= max_outer:
                status = MAX_ITER
                break
            if accept:
                eta *= mu_in ** fp[prm.BETA_BCL]
                eps_in = max(eps_in * mu_in, fp[prm.EPS_IN_MIN])
                vp[:] = v
            else:
                new_eq, new_in = max(mu_eq * mu_factor, floor_eq), max(mu_in * mu_factor, floor_in)
                if new_eq == mu_eq and new_in == mu_in:
                    # Both penalties at their floors: a plain rejection would pose the same
                    # subproblem again and stall. At a fixed penalty the multiplier step is the
                    # proximal point method on the dual, which converges for any penalty: take it.
                    vp[:] = v
                fresh = fresh and new_eq == mu_eq and new_in == mu_in
                mu_eq, mu_in = new_eq, new_in
                eta = mu_in ** fp[prm.ALPHA_BCL]
                eps_in = max(mu_in, fp[prm.EPS_IN_MIN])
            xp[:] = x
            inner = 0
            _evaluate(
                GT, n, p, qs, lo, hi, x, xp, v, vp, KX, mu_eq, mu_in, rho, w, r, rmu, GTv, GTr, dual, rx, grad
            )

        if iters >= max_iter:
            status = MAX_ITER
            break

        # The active set, and a factor of the generalised Hessian for it.
        changed = 0
        for i in range(k):
            active[i] = i < p or w[i] > hi[i] or w[i] < lo[i]
            if active[i] != factored[i]:
                changed += 1
        if not fresh or changed:
            updated = False
            if fresh and changed <= max_rank and updates + changed <= n:
                # Additions first: the downdates then start from a larger matrix.
                scale = 1.0 / math.sqrt(mu_in)
                count = 0
                for adding in (True, False):
                    for i in range(p, k):
                        if active[i] != factored[i] and active[i] == adding:
                            for j in range(n):
                                X[count, j] = G[i, j] * scale
                            signs[count] = 1.0 if adding else -1.0
                            count += 1
                updated = rank_updates(U, X, signs, count)
                if updated:
                    updates += changed
                    info[6] += changed
            if not updated:
                if H_eq_mu != mu_eq:
                    inv_mu = 1.0 / mu_eq
                    for a in range(n):  # the symmetric part of P
                        for j in range(a, n):
                            H_eq[a, j] = 0.5 * (K[a, j] + K[j, a]) + inv_mu * M_eq[a, j]
                        H_eq[a, a] += rho
                    H_eq_mu = mu_eq
                _sync_gram(M_in, G, p, active, in_gram, rows, signs)
                inv_mu = 1.0 / mu_in
                for a in range(n):
                    for j in range(a, n):
                        U[a, j] = H_eq[a, j] + inv_mu * M_in[a, j]
                updates = 0
                fresh = cholesky(U)
                info[5] += 1
                if not fresh:
                    # The Hessian's condition number grows like 1 / (mu rho): back the penalties
                    # off and keep them at least there; fail only with no room left above the
                    # initial penalties (e.g. an indefinite P).
                    factored[:] = False
                    if mu_in < 0.5 * mu_in0:
                        mu_eq, mu_in = min(mu_eq / mu_factor, mu_eq0), min(mu_in / mu_factor, mu_in0)
                        floor_eq, floor_in = mu_eq, mu_in
                        continue
                    # P is only positive semidefinite to rounding (e.g. a rank-deficient L L' formed
                    # in float32): a larger proximal weight makes the subproblems strongly convex
                    # again. The limit of the proximal point iteration does not depend on it.
                    if rho < RHO_MAX:
                        rho *= 10.0
                        H_eq_mu = np.nan
                        continue
                    status = NUMERICAL_ERROR
                    break
            factored[:] = active

        # Newton direction and exact line search.
        for j in range(n):
            dx[j] = -grad[j]
        cho_solve(U, dx)
        matvec(K, dx, KD)
        quad = _dot(dx, KD[:n]) + rho * _dot(dx, dx)
        for i in range(p):
            quad += KD[n + i] * KD[n + i] / mu_eq
        alpha = exact_step(quad, _dot(dx, grad), w[p:], KD[n + p :], lo[p:], hi[p:], mu_in, t, delta)
        step_x, step_v = 0.0, 0.0
        for i in range(k):
            mu = mu_eq if i < p else mu_in
            dv[i] = alpha * ((KD[n + i] if active[i] else 0.0) + r[i]) / mu
            step_v = max(step_v, abs(dv[i]))
        for j in range(n):
            step_x = max(step_x, abs(alpha * dx[j]))
        stall = fp[prm.STALL]
        stalled = step_x <= stall * (1.0 + _norm(x)) and step_v <= stall * (1.0 + _norm(v))
        for j in range(n):
            x[j] += alpha * dx[j]
        for i in range(k):
            v[i] += dv[i]
        iters += 1
        inner += 1
        if iters % REFRESH_EVERY == 0:
            matvec(K, x, KX)
        else:
            for i in range(n + k):
                KX[i] += alpha * KD[i]

    # An unbounded element returns its certificate, the direction of the last outer step, as x.
    unbounded = status == DUAL_INFEASIBLE
    for j in range(n):
        x_out[j] = D[j] * (x[j] - xp[j] if unbounded else x[j])
    y_out[:] = v[:p] * v_scale[:p]
    z_out[:] = v[p:] * v_scale[p:]
    Px = np.empty(n)
    matvec(P, x_out, Px)
    info[0], info[1], info[2], info[4] = iters, prim_res, dual_res, outer
    info[3] = 0.5 * _dot(x_out, Px) + _dot(q, x_out)
    return status


_compiled: list = []
_compile_lock = threading.Lock()


def compiled_solve_one():
    """:func:`solve_one` compiled as a C function (on the first call; numba caches it on disk).

    The batch kernels call it through its address: linked into them, its code would be
    optimised again for each, tens of seconds of compilation each.
    """
    if not _compiled:
        with _compile_lock:
            if not _compiled:
                _compiled.append(cfunc(SOLVE_ONE, cache=True, error_model="numpy")(solve_one))
    return _compiled[0]


@njit(parallel=True, **KERNEL)
def solve_batch(one, P, q, A, b, C, l, u, x0, y0, z0, fp, ip, x, y, z, status, info) -> None:
    """Solve every element with ``one`` (:func:`compiled_solve_one`), one per thread, in parallel.

    Outputs are written in place; ``info`` (B, len(INFO_FIELDS)) as in :func:`solve_one`.
    """
    for i in prange(q.shape[0]):
        status[i] = one(
            P[i], q[i], A[i], b[i], C[i], l[i], u[i], x0[i], y0[i], z0[i], fp, ip, x[i], y[i], z[i], info[i]
        )


@njit(**KERNEL)
def solve_batch_serial(one, P, q, A, b, C, l, u, x0, y0, z0, fp, ip, x, y, z, status, info) -> None:
    """:func:`solve_batch` in the calling thread only (where the threading layer cannot be used)."""
    for i in range(q.shape[0]):
        status[i] = one(
            P[i], q[i], A[i], b[i], C[i], l[i], u[i], x0[i], y0[i], z0[i], fp, ip, x[i], y[i], z[i], info[i]
        )
