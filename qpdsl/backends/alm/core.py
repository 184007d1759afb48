"""One iteration of a batched, dense proximal augmented-Lagrangian QP solver (ProxQP family).

The math is written once against the array API (``xp``), with the iteration state a
:class:`State` of arrays, and no data-dependent Python control flow: every decision is a
per-element mask, so a framework drives the loop (a Python ``while`` in torch, a
``lax.while_loop`` in JAX) and elements that are done stay frozen.

The method, on the Ruiz-equilibrated problem: an outer bound-constrained-Lagrangian (BCL)
loop over the prox center ``x_prox`` and multipliers ``(y_prox, z_prox)``, and an inner
semi-smooth Newton loop on the strongly convex, piecewise-quadratic subproblem::

    min_x  1/2 x'Px + q'x + rho/2 ||x - x_prox||² + 1/(2 mu_eq) ||Ax - b + mu_eq y_prox||²
           + 1/(2 mu_in) ||[Cx - u + mu_in z_prox]_+ + [Cx - l + mu_in z_prox]_-||²

whose generalised Hessian is ``P + rho I + A'A / mu_eq + C_J'C_J / mu_in`` (J: the rows whose
shifted value leaves ``[l, u]``), factorised by a batched Cholesky only when J or a penalty
changes, followed by an exact line search (:mod:`.linesearch`). The multipliers at ``x``,
``y = y_prox + (Ax - b)/mu_eq`` and ``z = [z_prox + (Cx - u)/mu_in]_+ + [z_prox + (Cx - l)/mu_in]_-``,
follow the sign convention ``Px + q + A'y + C'z = 0``.

Soft rows: a row marked soft is not a constraint but the penalty ``1/2 dist(G_i x, [lo_i, hi_i])²``
(in the original units) added to the objective. It is the subproblem's own term with a fixed
penalty and a zero prox multiplier, so the iteration is unchanged: the BCL update never touches
those rows, and their multiplier converges to the row's residual ``G_i x - clip(G_i x, lo_i, hi_i)``.
With ``P = 0``, ``q = 0`` and the rows that may be shifted marked soft, the solve is the
least-squares feasibility problem of the closest feasible QP, on the QP's own shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import array_api_compat

from ..._array import cho_solve, cholesky_ex, int_dtype, matvec, namespace, rmatvec
from ...qp import Settings, Status
from .linesearch import exact_step
from .scaling import Problem, Scaling, amax, scale_duals, scale_primal, unscale_duals, unscale_primal

RUNNING = -1
ROUNDING = 10.0  # a residual counts as zero below this many unit roundoffs of its terms


class Config(NamedTuple):
    """Static solver parameters (plain Python numbers; penalties act on the scaled problem)."""

    eps_abs: float
    eps_rel: float
    max_outer: int
    max_iter: int
    rho: float
    rho_max: float
    mu_eq: float
    mu_in: float
    mu_min_eq: float
    mu_min_in: float
    mu_factor: float = 0.1
    eps_in_min: float = 1e-12
    max_inner: int = 100
    eps_primal_inf: float = 1e-4
    eps_dual_inf: float = 1e-7
    stall: float = 1e-14
    alpha_bcl: float = 0.1
    beta_bcl: float = 0.9


def make_config(settings: Settings, dtype: Any) -> Config:
    """Solver parameters for ``settings`` in ``dtype``; ``settings.options`` override any field.

    Raises
    ------
    ParameterError
        If an option is not a field of :class:`Config`.
    """
    from ...errors import ParameterError

    single = "float32" in str(dtype)
    eps = settings.tolerance(dtype)
    base = dict(
        eps_abs=eps,
        eps_rel=float(settings.eps_rel),
        max_outer=int(settings.max_iter),
        max_iter=20 * int(settings.max_iter),
        # float32: the Hessian must stay positive definite at rounding level 1e-7 |H|, and |H| starts
        # near 1/mu_eq = 1e2 (at rho = 1e-5 an L1 model with auxiliary variables failed at once)
        rho=1e-4 if single else 1e-7,
        # the largest proximal weight tried when P + rho I has no factor (P psd only to rounding)
        rho_max=1e-2 if single else 1e-3,
        mu_eq=1e-2 if single else 1e-3,
        mu_in=1e-1,
        mu_min_eq=1e-5 if single else 1e-9,
        mu_min_in=1e-4 if single else 1e-8,
        eps_in_min=min(eps, 1e-6 if single else 1e-12),
        stall=1e-6 if single else 1e-14,
    )
    unknown = set(settings.options) - set(Config._fields)
    if unknown:
        raise ParameterError(
            f"unknown option(s) {sorted(unknown)} for the ALM solver; "
            f"valid options: {', '.join(Config._fields)}"
        )
    base.update(settings.options)
    return Config(**base)


class Data(NamedTuple):
    """The scaled problem in the form the iteration uses (built once by :func:`prepare`).

    Equality rows are inequality rows with ``lo = hi = b``: the constraint rows are
    ``G = [A; C]`` with bounds ``[lo, hi] = [[b; l], [b; u]]`` and one multiplier vector
    ``v = [y; z]``, so each product with the data is one batched matmul.
    """

    K: Any  # (B, n + k, n) [P; A; C]
    P: Any  # (B, n, n) view of K
    A: Any  # (B, p, n) view of K (its shape gives the number of equality rows)
    G: Any  # (B, k, n) view of K: [A; C]
    q: Any  # (B, n)
    lo: Any  # (B, k) [b; l]
    hi: Any  # (B, k) [b; u]
    eq: Any  # (1, k) bool, the equality rows
    inv_E: Any  # (B, k) 1 / [E_eq; E_in]: scaled to original primal residuals
    inv_DC: Any  # (B, n) 1 / (c D): scaled to original dual residuals
    v_scale: Any  # (B, k) [E_eq; E_in] / c: scaled to original multipliers
    inv_c: Any  # (B,) 1 / c: scaled to original objective values
    row_norm: Any  # (B, k) max |G_ij| over j: the scale of each constraint row
    lo_fin: Any  # (B, k) lo with -inf replaced by 0
    hi_fin: Any  # (B, k) hi with +inf replaced by 0
    lo_inf: Any  # (B, k) bool, lo == -inf
    hi_inf: Any  # (B, k) bool, hi == +inf
    soft: Any = None  # (B, k) bool, the soft rows; None: none
    soft_mu: Any = None  # (B, k) the fixed penalty of a soft row (scaled): E² / c


def soft_penalties(scaling: Scaling) -> Any:
    """(B, k) the scaled penalty that makes a soft row's term ``1/2 ||residual||²`` in original units."""
    xp = namespace(scaling.c)
    E = xp.concat([scaling.E_eq, scaling.E_in], axis=-1)
    return E * E / scaling.c[:, None]


def prepare(prob: Problem, scaling: Scaling, soft: Any = None) -> Data:
    """Stack the scaled problem's data for :func:`step` (do it once per solve).

    ``soft``: (B, k) or (1, k) bool, the soft rows (equality rows first), or None.
    """
    xp = namespace(prob.q)
    n, p = prob.q.shape[1], prob.b.shape[1]
    K = xp.concat([prob.P, prob.A, prob.C], axis=1)
    E = xp.concat([scaling.E_eq, scaling.E_in], axis=-1)
    k = E.shape[1]
    eq = xp.arange(k, device=array_api_compat.device(prob.q))[None, :] < p
    lo = xp.concat([prob.b, prob.l], axis=-1)
    hi = xp.concat([prob.b, prob.u], axis=-1)
    lo_inf, hi_inf = lo == float("-inf"), hi == float("inf")
    zeros = xp.zeros_like(lo)
    return Data(
        K=K,
        P=K[:, :n, :],
        A=K[:, n : n + p, :],
        G=K[:, n:, :],
        q=prob.q,
        lo=lo,
        hi=hi,
        eq=eq,
        inv_E=1.0 / E,
        inv_DC=1.0 / (scaling.D * scaling.c[:, None]),
        v_scale=E / scaling.c[:, None],
        inv_c=1.0 / scaling.c,
        row_norm=amax(xp, xp.abs(K[:, n:, :]), -1),
        lo_fin=xp.where(lo_inf, zeros, lo),
        hi_fin=xp.where(hi_inf, zeros, hi),
        lo_inf=lo_inf,
        hi_inf=hi_inf,
        soft=None if soft is None else xp.broadcast_to(soft, lo.shape),
        soft_mu=None if soft is None else soft_penalties(scaling),
    )


class State(NamedTuple):
    """The per-element iteration state (all arrays, leading batch dimension; scaled problem)."""

    x: Any  # (B, n) current iterate
    v: Any  # (B, k) multipliers [y; z] at x
    KX: Any  # (B, n + k) [P x; G x], updated with the steps (see :func:`refresh`)
    x_prox: Any  # (B, n) prox center = last outer iterate
    v_prox: Any  # (B, k) accepted multipliers
    mu_eq: Any  # (B,)
    mu_in: Any  # (B,)
    mu: Any  # (B, k) per-row penalty: mu_eq on equality rows, mu_in on the others
    mu_floor_eq: Any  # (B,) lowest mu_eq the BCL update may reach (raised after a failed factorisation)
    mu_floor_in: Any  # (B,)
    rho: Any  # (B,) proximal weight (raised where P + rho I had no Cholesky factor)
    eta: Any  # (B,) BCL primal tolerance for accepting multipliers
    eps_in: Any  # (B,) inner (subproblem gradient) tolerance
    active: Any  # (B, k) bool, the active set J of the current factor (equality rows always)
    fresh: Any  # (B,) bool, whether L matches the current penalties
    L: Any  # (B, n, n) Cholesky factor of the generalised Hessian
    stalled: Any  # (B,) bool, last Newton step was negligible
    status: Any  # (B,) int, RUNNING or a Status code
    iters: Any  # (B,) Newton iterations
    inner: Any  # (B,) Newton iterations in the current subproblem
    outer: Any  # (B,) BCL iterations
    prim_res: Any  # (B,) unscaled primal residual (infinity norm) at x
    dual_res: Any  # (B,) unscaled dual residual at x


class Eval(NamedTuple):
    """Quantities at the current iterate ``(x, v)`` (scaled)."""

    KX: Any  # (B, n + k) [P x; G x]
    GTv: Any  # (B, n) G'v
    w: Any  # G x + mu v_prox
    r: Any  # [w - hi]_+ + [w - lo]_- - mu v: the equation for v (Gx - b - mu (y - y_prox) on eq rows)
    dual: Any  # P x + q + G'v
    r_x: Any  # dual + rho (x - x_prox): stationarity of the subproblem in x
    grad: Any  # gradient of the primal subproblem merit: r_x + G'(r / mu)
    viol: Any  # G x - clip(G x, lo, hi): the (scaled) violation of the constraints


def _dot(xp: Any, a: Any, b: Any) -> Any:
    return xp.sum(a * b, axis=-1)


def _norm(xp: Any, a: Any) -> Any:
    return amax(xp, xp.abs(a), -1)


def _col(a: Any) -> Any:
    return a[:, None]


def sanitize(prob: Problem) -> tuple[Problem, Any]:
    """Replace elements with NaN/inf data (or ``l = +inf``, ``u = -inf``, or ``l > u``) by a trivial QP.

    Returns
    -------
    prob, valid
        The cleaned problem (finite wherever it matters) and the (B,) mask of valid elements.
    """
    xp = namespace(prob.q)

    def finite(a: Any) -> Any:
        flat = xp.reshape(xp.isfinite(a), (a.shape[0], -1))
        return (
            xp.all(flat, axis=-1)
            if flat.shape[1]
            else xp.ones(a.shape[0], dtype=xp.bool, device=array_api_compat.device(a))
        )

    def bounds_ok(a: Any, bad: float) -> Any:
        good = ~xp.isnan(a) & (a != bad)
        return (
            xp.all(good, axis=-1)
            if a.shape[1]
            else xp.ones(a.shape[0], dtype=xp.bool, device=array_api_compat.device(a))
        )

    valid = finite(prob.P) & finite(prob.q) & finite(prob.A) & finite(prob.b) & finite(prob.C)
    valid = valid & bounds_ok(prob.l, float("inf")) & bounds_ok(prob.u, float("-inf"))
    if prob.l.shape[1]:
        valid = valid & xp.all(prob.l <= prob.u, axis=-1)

    def clean(a: Any, fill: float) -> Any:
        mask = xp.reshape(valid, (-1,) + (1,) * (a.ndim - 1))
        return xp.where(mask, a, xp.full_like(a, fill))

    return Problem(
        clean(prob.P, 0.0),
        clean(prob.q, 0.0),
        clean(prob.A, 0.0),
        clean(prob.b, 0.0),
        clean(prob.C, 0.0),
        clean(prob.l, -1.0),
        clean(prob.u, 1.0),
    ), valid


def row_penalties(xp: Any, eq: Any, mu_eq: Any, mu_in: Any, soft: Any = None, soft_mu: Any = None) -> Any:
    """(B, k) penalties: ``mu_eq`` on the equality rows, ``mu_in`` on the others, ``soft_mu`` on soft rows."""
    mu = xp.where(eq, _col(mu_eq), _col(mu_in))
    return mu if soft is None else xp.where(soft, soft_mu, mu)


def _hard(xp: Any, data: Data, a: Any) -> Any:
    """``a`` (B, k) with the soft rows set to zero."""
    return a if data.soft is None else xp.where(data.soft, xp.zeros_like(a), a)


def init_state(
    prob: Problem,
    scaling: Scaling,
    cfg: Config,
    valid: Any,
    x0: Any = None,
    y0: Any = None,
    z0: Any = None,
    soft: Any = None,
) -> State:
    """The initial state: zeros or the (unscaled) warm start, initial penalties and tolerances.

    ``soft``: the soft rows as for :func:`prepare`; their prox multipliers are zero.
    """
    xp = namespace(prob.q)
    batch, n = prob.q.shape
    p = prob.b.shape[1]
    dev = array_api_compat.device(prob.q)
    dtype = prob.q.dtype
    x = (
        xp.zeros_like(prob.q)
        if x0 is None
        else scale_primal(scaling, xp.where(_col(valid), x0, xp.zeros_like(x0)))
    )
    y = xp.zeros_like(prob.b) if y0 is None else xp.where(_col(valid), y0, xp.zeros_like(y0))
    z = xp.zeros_like(prob.l) if z0 is None else xp.where(_col(valid), z0, xp.zeros_like(z0))
    y, z = scale_duals(scaling, y, z)
    v = xp.concat([y, z], axis=-1)
    k = v.shape[1]
    soft_mu = None
    if soft is not None:
        soft = xp.broadcast_to(soft, v.shape)
        soft_mu = soft_penalties(scaling)
    KX = xp.concat([matvec(prob.P, x), matvec(prob.A, x), matvec(prob.C, x)], axis=-1)

    def full(value: float) -> Any:
        return xp.full((batch,), value, dtype=dtype, device=dev)

    counts = xp.zeros((batch,), dtype=int_dtype(xp), device=dev)
    mu_eq, mu_in = full(cfg.mu_eq), full(cfg.mu_in)
    eq = xp.arange(k, device=dev)[None, :] < p
    return State(
        x=x,
        v=v,
        KX=KX,
        x_prox=x,
        v_prox=v if soft is None else xp.where(soft, xp.zeros_like(v), v),
        mu_eq=mu_eq,
        mu_in=mu_in,
        mu=row_penalties(xp, eq, mu_eq, mu_in, soft, soft_mu),
        mu_floor_eq=full(cfg.mu_min_eq),
        mu_floor_in=full(cfg.mu_min_in),
        rho=full(cfg.rho),
        eta=full(cfg.mu_in**cfg.alpha_bcl),
        eps_in=full(1.0),
        active=xp.zeros((batch, k), dtype=xp.bool, device=dev),
        fresh=xp.zeros((batch,), dtype=xp.bool, device=dev),
        L=xp.zeros((batch, n, n), dtype=dtype, device=dev) + xp.eye(n, dtype=dtype, device=dev),
        stalled=xp.zeros((batch,), dtype=xp.bool, device=dev),
        status=xp.where(valid, counts + RUNNING, counts + int(Status.NUMERICAL_ERROR)),
        iters=counts,
        inner=counts,
        outer=counts,
        prim_res=full(float("inf")),
        dual_res=full(float("inf")),
    )


def evaluate(data: Data, st: State, at: Eval | None = None) -> Eval:
    """Products with the data and the residuals of the subproblem's optimality equations.

    ``v`` is an iterate of its own (primal-dual Newton), not recomputed from ``x``:
    ``v_prox + (Gx - b)/mu`` would carry a rounding error of order ``eps |Gx| / mu`` into
    the dual residual, which caps the attainable accuracy. ``at``, an evaluation at the
    same ``(x, v)``, supplies the products that only depend on them (after an outer update
    changed penalties or prox centers).
    """
    xp = namespace(st.x)
    n = st.x.shape[1]
    KX = st.KX
    Gx = KX[:, n:]
    w = Gx + st.mu * st.v_prox
    # [w - hi]_+ + [w - lo]_- (lo <= hi: sanitize() sets the other elements aside).
    r = _violation(xp, w, data.lo, data.hi) - st.mu * st.v
    viol = _violation(xp, Gx, data.lo, data.hi) if at is None else at.viol
    if at is None:
        # G'v and G'(r / mu) in one product.
        both = xp.matmul(xp.stack([st.v, r / st.mu], axis=1), data.G)
        GTv, GTr = both[:, 0, :], both[:, 1, :]
    else:
        GTv, GTr = at.GTv, rmatvec(data.G, r / st.mu)
    dual = KX[:, :n] + data.q + GTv
    r_x = dual + _col(st.rho) * (st.x - st.x_prox)
    return Eval(KX, GTv, w, r, dual, r_x, r_x + GTr, viol)


def _violation(xp: Any, Gx: Any, lo: Any, hi: Any) -> Any:
    return Gx - xp.clip(Gx, lo, hi)


def residuals(data: Data, st: State, ev: Eval, cfg: Config) -> tuple[Any, Any, Any]:
    """Unscaled primal and dual residuals (infinity norms) and the convergence mask.

    Convergence also asks for complementarity: a row with a multiplier above the tolerance
    must sit on the bound that multiplier belongs to (within the primal tolerance). A soft row's
    primal residual is that of the equation for its multiplier (``r``), its only condition.
    """
    xp = namespace(st.x)
    n = st.x.shape[1]
    Gx = ev.KX[:, n:]
    viol = ev.viol if data.soft is None else xp.where(data.soft, ev.r, ev.viol)
    # Multipliers below the tolerance (unscaled) are rounding noise of rows that left J.
    z = st.v * data.v_scale
    comp = xp.where(z > cfg.eps_abs, Gx - data.hi, xp.where(z < -cfg.eps_abs, Gx - data.lo, viol))
    if data.soft is not None:
        comp = xp.where(data.soft, ev.r, comp)
    prim = _norm(xp, viol * data.inv_E)
    prim_comp = _norm(xp, comp * data.inv_E)
    dual = _norm(xp, ev.dual * data.inv_DC)
    p = data.A.shape[1]
    p_scale = xp.maximum(_norm(xp, Gx * data.inv_E), _norm(xp, data.lo[:, :p] * data.inv_E[:, :p]))
    GTy = rmatvec(data.G[:, :p, :], st.v[:, :p])
    d_scale = xp.maximum(
        xp.maximum(_norm(xp, ev.KX[:, :n] * data.inv_DC), _norm(xp, data.q * data.inv_DC)),
        xp.maximum(_norm(xp, GTy * data.inv_DC), _norm(xp, (ev.GTv - GTy) * data.inv_DC)),
    )
    gap, g_scale = duality_gap(data, st, ev)
    # Each residual is a sum of terms of the size of its scale: below their rounding error it
    # cannot improve (in float32 the dual residual of a well-scaled QP stalls there above 1e-5).
    rounding = ROUNDING * float(xp.finfo(st.x.dtype).eps) / 2.0  # as verification allows
    ok = (
        (prim_comp <= xp.maximum(cfg.eps_abs + cfg.eps_rel * p_scale, rounding * p_scale))
        & (dual <= xp.maximum(cfg.eps_abs + cfg.eps_rel * d_scale, rounding * d_scale))
        & (gap <= xp.maximum(cfg.eps_abs + cfg.eps_rel * g_scale, rounding * g_scale))
    )
    return prim, dual, ok


def duality_gap(data: Data, st: State, ev: Eval) -> tuple[Any, Any]:
    """Unscaled duality gap ``|x'Px + q'x + hi'[v]_+ + lo'[v]_-|`` and its relative scale.

    Soft rows add their quadratic term ``mu v²`` (the squared residual) to ``x'Px``.

    Small residuals do not bound the gap when ``x`` or ``v`` are large, so the public QP
    benchmark (and proxsuite's ``check_duality_gap``) test it separately. A multiplier on an
    infinite bound contributes nothing here; it shows in the dual residual instead.
    The scale is the largest magnitude of the three terms (proxsuite's relative gap).
    """
    xp = namespace(st.x)
    n = st.x.shape[1]
    support = xp.sum(xp.where(st.v > 0, data.hi_fin, data.lo_fin) * st.v, axis=-1)
    xPx = _dot(xp, st.x, ev.KX[:, :n])
    if data.soft is not None:
        xPx = xPx + xp.sum(xp.where(data.soft, st.mu * st.v * st.v, xp.zeros_like(st.v)), axis=-1)
    qx = _dot(xp, data.q, st.x)
    gap = xp.abs(xPx + qx + support) * data.inv_c
    scale = amax(xp, xp.abs(xp.stack([xPx, qx, support], axis=-1)), -1) * data.inv_c
    return gap, scale


def certificates_of(data: Data, st: Any, cfg: Config) -> tuple[Any, Any]:
    """Primal and dual infeasibility certificates from the last outer step, per element.

    Primal: ``dv = v - v_prox`` with ``G'dv ≈ 0`` and ``hi'[dv]_+ + lo'[dv]_- < 0``
    (a Farkas certificate). Dual: ``dx = x - x_prox`` with ``P dx ≈ 0``, ``G dx`` within the
    recession cone of ``[lo, hi]`` (so ``A dx ≈ 0``) and ``q'dx < 0``. Reads only the fields
    ``x``, ``x_prox``, ``v``, ``v_prox`` of ``st``.
    """
    xp = namespace(st.x)
    n = st.x.shape[1]
    dv = _hard(xp, data, st.v - st.v_prox)
    size = _norm(xp, dv)
    zeros = xp.zeros_like(dv)
    support = xp.sum(xp.where(dv > 0, data.hi * dv, xp.where(dv < 0, data.lo * dv, zeros)), axis=-1)
    tol_p = cfg.eps_primal_inf * size
    primal = (size > 0) & (_norm(xp, rmatvec(data.G, dv)) <= tol_p) & (support < -tol_p)

    dx = st.x - st.x_prox
    size_x = _norm(xp, dx)
    tol_d = _col(cfg.eps_dual_inf * size_x)
    KD = matvec(data.K, dx)
    Gdx = KD[:, n:]
    # Per row, relative to the row's size: a row with small coefficients must not let a
    # direction that violates it pass as a recession direction.
    tol_rows = tol_d * data.row_norm
    below = (Gdx <= tol_rows) | data.hi_inf
    cone_ok = below & ((Gdx >= -tol_rows) | data.lo_inf)
    cone = xp.all(cone_ok, axis=-1) if cone_ok.shape[1] else xp.ones_like(primal)
    dual = (size_x > 0) & (_norm(xp, KD[:, :n]) <= tol_d[:, 0]) & cone & (_dot(xp, data.q, dx) < -tol_d[:, 0])
    return primal, dual


def refresh(data: Data, st: State) -> State:
    """Recompute the products ``K x`` that :func:`newton` updates along the steps.

    The updates drift from the exact products by rounding only (``eps |K| |dx|`` per step);
    a driver may refresh them now and then.
    """
    return st._replace(KX=matvec(data.K, st.x))


def check(data: Data, st: State, cfg: Config) -> tuple[State, Eval, Any]:
    """Convergence test at the current iterate.

    Returns
    -------
    st, ev, inner_done
        The state with residuals and SOLVED statuses recorded, the evaluation at the
        iterate, and the mask of running elements whose subproblem is solved (they need
        :func:`outer_update`).
    """
    xp = namespace(st.x)
    running = st.status == RUNNING
    ev = evaluate(data, st)
    prim, dual, converged = residuals(data, st, ev, cfg)
    converged = running & converged
    st = st._replace(
        prim_res=xp.where(running, prim, st.prim_res),
        dual_res=xp.where(running, dual, st.dual_res),
        status=xp.where(converged, int(Status.SOLVED), st.status),
    )
    running = running & ~converged
    inner_res = xp.maximum(_norm(xp, ev.r_x), _norm(xp, ev.r))
    inner_done = running & ((inner_res <= st.eps_in) | st.stalled | (st.inner >= cfg.max_inner))
    return st, ev, inner_done


def outer_update(
    data: Data, st: State, ev: Eval, done: Any, cfg: Config, certificates: tuple[Any, Any] | None = None
) -> tuple[State, Eval]:
    """BCL update for the elements whose subproblem is solved (``done``), and the new evaluation.

    ``certificates``, the (B,) masks of :func:`certificates` if the caller computed them
    (e.g. for the ``done`` elements only; the others are not read).
    """
    xp = namespace(st.x)
    primal_inf, dual_inf = certificates_of(data, st, cfg) if certificates is None else certificates
    pres = _norm(xp, _hard(xp, data, ev.viol))
    accept = done & (pres <= st.eta)
    reject = done & ~accept
    mu_eq = xp.where(reject, xp.maximum(st.mu_eq * cfg.mu_factor, st.mu_floor_eq), st.mu_eq)
    mu_in = xp.where(reject, xp.maximum(st.mu_in * cfg.mu_factor, st.mu_floor_in), st.mu_in)
    # A rejection with both penalties at their floors would pose the same subproblem again and
    # stall; at a fixed penalty the multiplier step is the proximal point method on the dual,
    # which converges for any penalty: take it.
    step = accept | (reject & (mu_eq == st.mu_eq) & (mu_in == st.mu_in))
    eta = xp.where(accept, st.eta * st.mu_in**cfg.beta_bcl, xp.where(reject, mu_in**cfg.alpha_bcl, st.eta))
    eps_in = xp.where(
        accept,
        xp.clip(st.eps_in * st.mu_in, cfg.eps_in_min, None),
        xp.where(reject, xp.clip(mu_in, cfg.eps_in_min, None), st.eps_in),
    )
    outer = st.outer + xp.astype(done, st.outer.dtype)
    # Primal infeasibility wins where both certificates hold.
    status = xp.where(done & dual_inf, int(Status.DUAL_INFEASIBLE), st.status)
    status = xp.where(done & primal_inf, int(Status.PRIMAL_INFEASIBLE), status)
    status = xp.where((status == RUNNING) & (outer >= cfg.max_outer), int(Status.MAX_ITER), status)
    st = st._replace(
        # an unbounded element keeps its last prox center: x - x_prox is its certificate
        x_prox=xp.where(_col(done & (status != int(Status.DUAL_INFEASIBLE))), st.x, st.x_prox),
        v_prox=xp.where(_col(step) if data.soft is None else _col(step) & ~data.soft, st.v, st.v_prox),
        mu_eq=mu_eq,
        mu_in=mu_in,
        mu=row_penalties(xp, data.eq, mu_eq, mu_in, data.soft, data.soft_mu),
        eta=eta,
        eps_in=eps_in,
        fresh=st.fresh & (mu_eq == st.mu_eq) & (mu_in == st.mu_in),
        inner=xp.where(done, xp.zeros_like(st.inner), st.inner),
        outer=outer,
        status=status,
    )
    return st, evaluate(data, st, at=ev)


def hessian(data: Data, mu: Any, active: Any, rho: Any) -> Any:
    """The generalised Hessian ``P + rho I + G_J' diag(1/mu_J) G_J`` (B, n, n); ``rho`` (B,)."""
    xp = namespace(data.P)
    n = data.P.shape[-1]
    eye = xp.eye(n, dtype=data.P.dtype, device=array_api_compat.device(data.P))
    GJ = data.G * (xp.astype(active, mu.dtype) / mu)[..., None]
    return data.P + rho[:, None, None] * eye + xp.matmul(xp.matrix_transpose(GJ), data.G)


Factorize = Callable[[Data, State, Any, Any], "tuple[Any, Any]"]


def factorize_all(data: Data, st: State, active: Any, need: Any) -> tuple[Any, Any]:
    """Refactorise every element (keeping the old factor where ``need`` is False).

    A framework may pass its own ``factorize`` to :func:`step` that computes only the
    elements in ``need`` (same signature, same result).

    Returns
    -------
    L, ok
        The factors and a (B,) mask, False where a needed factorisation failed.
    """
    xp = namespace(st.x)
    L, ok = cholesky_ex(hessian(data, st.mu, active, st.rho))
    keep = need & ok
    return xp.where(keep[:, None, None], L, st.L), ok | ~need


def active_set(data: Data, w: Any) -> Any:
    """Equality rows and the rows whose shifted value ``G x + mu v_prox`` lies outside ``[lo, hi]``."""
    return (w > data.hi) | (w < data.lo) | data.eq


def newton(
    data: Data,
    st: State,
    ev: Eval,
    cfg: Config,
    factorize: Factorize = factorize_all,
    solve: Callable[[Any, Any], Any] = cho_solve,
) -> State:
    """The iteration limit, then one semi-smooth Newton step with exact line search.

    ``solve(L, rhs)`` applies the inverse Hessian given the factors from ``factorize``
    (a framework may pair the two, e.g. to correct an older factor by a low-rank update).
    """
    xp = namespace(st.x)
    n, p = st.x.shape[1], data.A.shape[1]
    status = xp.where((st.status == RUNNING) & (st.iters >= cfg.max_iter), int(Status.MAX_ITER), st.status)
    running = status == RUNNING

    active = active_set(data, ev.w)
    changed = xp.any(active != st.active, axis=-1) if active.shape[1] else xp.zeros_like(running)
    need = running & (~st.fresh | changed)
    L, ok = factorize(data, st, active, need)
    # The Hessian's condition number grows like 1 / (mu rho): when its Cholesky factorisation
    # fails, back the penalties off by 1 / mu_factor and keep them at least there from now on.
    # With no room left above the initial penalties, P is positive semidefinite only to rounding
    # (e.g. a rank-deficient L L' formed in float32): a tenfold proximal weight makes the
    # subproblems strongly convex again, and the limit of the proximal iteration does not depend
    # on it. The element fails only past rho_max.
    failed = running & ~ok
    retry = failed & (st.mu_in < 0.5 * cfg.mu_in)
    mu_eq = xp.where(retry, xp.clip(st.mu_eq / cfg.mu_factor, None, cfg.mu_eq), st.mu_eq)
    mu_in = xp.where(retry, xp.clip(st.mu_in / cfg.mu_factor, None, cfg.mu_in), st.mu_in)
    stiffen = failed & ~retry & (st.rho < cfg.rho_max)
    rho = xp.where(stiffen, 10.0 * st.rho, st.rho)
    running = running & ok
    status = xp.where(failed & ~retry & ~stiffen, int(Status.NUMERICAL_ERROR), status)

    dx = -solve(L, ev.grad)
    dx = xp.where(_col(running), dx, xp.zeros_like(dx))
    KD = matvec(data.K, dx)
    Gdx = KD[:, n:]
    quad = _dot(xp, dx, KD[:, :n]) + st.rho * _dot(xp, dx, dx)
    if p:
        Adx = Gdx[:, :p]
        quad = quad + _dot(xp, Adx, Adx / st.mu[:, :p])
    alpha = exact_step(
        quad, _dot(xp, dx, ev.grad), ev.w[:, p:], Gdx[:, p:], data.lo[:, p:], data.hi[:, p:], st.mu[:, p:]
    )
    alpha = xp.where(running, alpha, xp.zeros_like(alpha))
    dv = (Gdx * xp.astype(active, Gdx.dtype) + ev.r) / st.mu
    step_x, step_v = _col(alpha) * dx, _col(alpha) * dv
    small = (_norm(xp, step_x) <= cfg.stall * (1.0 + _norm(xp, st.x))) & (
        _norm(xp, step_v) <= cfg.stall * (1.0 + _norm(xp, st.v))
    )
    bump = xp.astype(running, st.iters.dtype)
    return st._replace(
        x=st.x + step_x,
        v=st.v + step_v,
        KX=st.KX + _col(alpha) * KD,
        active=xp.where(_col(need & ok), active, st.active),
        fresh=(st.fresh | (need & ok)) & ~retry & ~stiffen,
        mu_eq=mu_eq,
        mu_in=mu_in,
        mu=row_penalties(xp, data.eq, mu_eq, mu_in, data.soft, data.soft_mu),
        mu_floor_eq=xp.where(retry, mu_eq, st.mu_floor_eq),
        mu_floor_in=xp.where(retry, mu_in, st.mu_floor_in),
        rho=rho,
        L=L,
        stalled=running & small,
        status=status,
        iters=st.iters + bump,
        inner=st.inner + bump,
    )


def step(
    prob: Data | Problem, scaling: Scaling, st: State, cfg: Config, factorize: Factorize = factorize_all
) -> State:
    """One iteration for every running element: convergence test, BCL update, Newton step.

    Parameters
    ----------
    prob
        The prepared scaled problem (:func:`prepare`; a scaled :class:`Problem` is prepared
        here on every call, which is correct but slower).
    scaling
        Its scaling (from :func:`~.scaling.equilibrate`).
    st
        The current state; elements whose status is not ``RUNNING`` are left unchanged.
    cfg
        Solver parameters.
    factorize
        How to compute the Cholesky factors (see :func:`factorize_all`).
    """
    data = prob if isinstance(prob, Data) else prepare(prob, scaling)
    st, ev, inner_done = check(data, st, cfg)
    st, ev = outer_update(data, st, ev, inner_done, cfg)
    return newton(data, st, ev, cfg, factorize)


class Solution(NamedTuple):
    """Unscaled outputs (arrays with a leading batch dimension)."""

    x: Any
    y: Any
    z: Any
    status: Any
    iterations: Any
    prim_res: Any
    dual_res: Any
    objective: Any


def finalize(original: Problem, scaling: Scaling, st: State, valid: Any) -> Solution:
    """Unscale the state; elements still running get MAX_ITER, invalid ones NaN outputs."""
    xp = namespace(st.x)
    p = original.b.shape[1]
    # An unbounded element returns its certificate, the direction of the last outer step, as x.
    unbounded = _col(st.status == int(Status.DUAL_INFEASIBLE))
    x = unscale_primal(scaling, xp.where(unbounded, st.x - st.x_prox, st.x))
    y, z = unscale_duals(scaling, st.v[:, :p], st.v[:, p:])
    nan = float("nan")
    x = xp.where(_col(valid), x, xp.full_like(x, nan))
    y = xp.where(_col(valid), y, xp.full_like(y, nan))
    z = xp.where(_col(valid), z, xp.full_like(z, nan))
    objective = 0.5 * _dot(xp, x, matvec(original.P, x)) + _dot(xp, original.q, x)
    status = xp.where(st.status == RUNNING, int(Status.MAX_ITER), st.status)
    return Solution(x, y, z, status, st.iters, st.prim_res, st.dual_res, objective)
