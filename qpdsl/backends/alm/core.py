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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import array_api_compat

from ..._array import cho_solve, cholesky_ex, namespace
from ...qp import Settings, Status
from .linesearch import exact_step
from .scaling import Problem, Scaling, amax, scale_duals, scale_primal, unscale_duals, unscale_primal

RUNNING = -1


class Config(NamedTuple):
    """Static solver parameters (plain Python numbers; penalties act on the scaled problem)."""

    eps_abs: float
    eps_rel: float
    max_outer: int
    max_iter: int
    rho: float
    mu_eq: float
    mu_in: float
    mu_min_eq: float
    mu_min_in: float
    mu_factor: float = 0.1
    eps_in_min: float = 1e-12
    max_inner: int = 100
    eps_primal_inf: float = 1e-4
    eps_dual_inf: float = 1e-4
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
        rho=1e-5 if single else 1e-7,
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


class State(NamedTuple):
    """The per-element iteration state (all arrays, leading batch dimension; scaled problem)."""

    x: Any  # (B, n) current iterate
    y: Any  # (B, p) multipliers at x
    z: Any  # (B, m)
    x_prox: Any  # (B, n) prox center = last outer iterate
    y_prox: Any  # (B, p) accepted multipliers
    z_prox: Any  # (B, m)
    mu_eq: Any  # (B,)
    mu_in: Any  # (B,)
    eta: Any  # (B,) BCL primal tolerance for accepting multipliers
    eps_in: Any  # (B,) inner (subproblem gradient) tolerance
    active: Any  # (B, m) bool, the active set J of the current factor
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
    """Quantities at the current iterate ``(x, y, z)`` (scaled)."""

    Ax: Any
    Cx: Any
    Px: Any
    w: Any  # C x + mu_in z_prox
    r_y: Any  # A x - b - mu_eq (y - y_prox): the equation y = y_prox + (Ax - b)/mu_eq
    r_z: Any  # [w - u]_+ + [w - l]_- - mu_in z: the equation for z
    dual: Any  # P x + q + A'y + C'z
    r_x: Any  # dual + rho (x - x_prox): stationarity of the subproblem in x
    grad: Any  # gradient of the primal subproblem merit: r_x + A'r_y/mu_eq + C'r_z/mu_in


def matvec(M: Any, v: Any) -> Any:
    """Batched ``M @ v`` for (B, r, c) and (B, c)."""
    xp = namespace(M, v)
    # A row vector times M' is several times faster than M times a column in batched BLAS.
    return xp.matmul(v[..., None, :], xp.matrix_transpose(M))[..., 0, :]


def rmatvec(M: Any, v: Any) -> Any:
    """Batched ``M' @ v`` for (B, r, c) and (B, r)."""
    xp = namespace(M, v)
    return xp.matmul(v[..., None, :], M)[..., 0, :]


def _dot(xp: Any, a: Any, b: Any) -> Any:
    return xp.sum(a * b, axis=-1)


def _norm(xp: Any, a: Any) -> Any:
    return amax(xp, xp.abs(a), -1)


def _col(a: Any) -> Any:
    return a[:, None]


def sanitize(prob: Problem) -> tuple[Problem, Any]:
    """Replace elements with NaN/inf data (or ``l = +inf``, ``u = -inf``) by a trivial QP.

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


def init_state(
    prob: Problem, scaling: Scaling, cfg: Config, valid: Any, x0: Any = None, y0: Any = None, z0: Any = None
) -> State:
    """The initial state: zeros or the (unscaled) warm start, initial penalties and tolerances."""
    xp = namespace(prob.q)
    batch, n = prob.q.shape
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

    def full(value: float) -> Any:
        return xp.full((batch,), value, dtype=dtype, device=dev)

    counts = xp.zeros((batch,), dtype=xp.int64, device=dev)
    mu_in = full(cfg.mu_in)
    return State(
        x=x,
        y=y,
        z=z,
        x_prox=x,
        y_prox=y,
        z_prox=z,
        mu_eq=full(cfg.mu_eq),
        mu_in=mu_in,
        eta=full(cfg.mu_in**cfg.alpha_bcl),
        eps_in=full(1.0),
        active=xp.zeros(prob.l.shape, dtype=xp.bool, device=dev),
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


def evaluate(prob: Problem, st: State, rho: float, at: Eval | None = None) -> Eval:
    """Products with the data and the residuals of the subproblem's optimality equations.

    ``y`` and ``z`` are iterates of their own (primal-dual Newton), not recomputed from
    ``x``: ``y_prox + (Ax - b)/mu_eq`` would carry a rounding error of order
    ``eps |Ax| / mu_eq`` into the dual residual, which caps the attainable accuracy.
    ``at``, an evaluation at the same ``(x, y, z)``, supplies the products that only
    depend on them (after an outer update changed penalties or prox centers).
    """
    xp = namespace(st.x)
    if at is None:
        Ax, Cx, Px = matvec(prob.A, st.x), matvec(prob.C, st.x), matvec(prob.P, st.x)
        dual = Px + prob.q + rmatvec(prob.A, st.y) + rmatvec(prob.C, st.z)
    else:
        Ax, Cx, Px, dual = at.Ax, at.Cx, at.Px, at.dual
    mu_eq, mu_in = _col(st.mu_eq), _col(st.mu_in)
    r_y = Ax - prob.b - mu_eq * (st.y - st.y_prox)
    w = Cx + mu_in * st.z_prox
    zeros = xp.zeros_like(w)
    r_z = xp.maximum(w - prob.u, zeros) + xp.minimum(w - prob.l, zeros) - mu_in * st.z
    r_x = dual + rho * (st.x - st.x_prox)
    grad = r_x + rmatvec(prob.A, r_y / mu_eq) + rmatvec(prob.C, r_z / mu_in)
    return Eval(Ax, Cx, Px, w, r_y, r_z, dual, r_x, grad)


def _violation(xp: Any, Cx: Any, l: Any, u: Any) -> Any:
    return Cx - xp.minimum(xp.maximum(Cx, l), u)


def residuals(prob: Problem, scaling: Scaling, st: State, ev: Eval, cfg: Config) -> tuple[Any, Any, Any]:
    """Unscaled primal and dual residuals (infinity norms) and the convergence mask.

    Convergence also asks for complementarity: a row with a multiplier above the tolerance
    must sit on the bound that multiplier belongs to (within the primal tolerance).
    """
    xp = namespace(ev.Ax)
    E_eq, E_in, DC = scaling.E_eq, scaling.E_in, scaling.D * _col(scaling.c)
    viol = _violation(xp, ev.Cx, prob.l, prob.u)
    # Multipliers below the tolerance (unscaled) are rounding noise of rows that left J.
    z = st.z * E_in / _col(scaling.c)
    comp = xp.where(z > cfg.eps_abs, ev.Cx - prob.u, xp.where(z < -cfg.eps_abs, ev.Cx - prob.l, viol))
    r_eq = _norm(xp, (ev.Ax - prob.b) / E_eq)
    prim = xp.maximum(r_eq, _norm(xp, viol / E_in))
    prim_comp = xp.maximum(r_eq, _norm(xp, comp / E_in))
    dual = _norm(xp, ev.dual / DC)
    if cfg.eps_rel > 0:
        p_scale = xp.maximum(
            xp.maximum(_norm(xp, ev.Ax / E_eq), _norm(xp, prob.b / E_eq)), _norm(xp, ev.Cx / E_in)
        )
        d_scale = xp.maximum(
            xp.maximum(_norm(xp, ev.Px / DC), _norm(xp, prob.q / DC)),
            xp.maximum(_norm(xp, rmatvec(prob.A, st.y) / DC), _norm(xp, rmatvec(prob.C, st.z) / DC)),
        )
    else:
        p_scale = d_scale = xp.zeros_like(prim)
    ok = (prim_comp <= cfg.eps_abs + cfg.eps_rel * p_scale) & (dual <= cfg.eps_abs + cfg.eps_rel * d_scale)
    return prim, dual, ok


def _certificates(prob: Problem, st: State, cfg: Config) -> tuple[Any, Any]:
    """Primal and dual infeasibility certificates from the last outer step, per element.

    Primal: ``d = (y - y_prox, z - z_prox)`` with ``A'dy + C'dz ≈ 0`` and
    ``b'dy + u'[dz]_+ + l'[dz]_- < 0`` (a Farkas certificate). Dual: ``dx = x - x_prox`` with
    ``P dx ≈ 0``, ``A dx ≈ 0``, ``C dx`` within the recession cone of ``[l, u]`` and ``q'dx < 0``.
    """
    xp = namespace(st.x)
    dy, dz = st.y - st.y_prox, st.z - st.z_prox
    size = xp.maximum(_norm(xp, dy), _norm(xp, dz))
    zeros = xp.zeros_like(dz)
    support = (
        _dot(xp, prob.b, dy)
        + xp.sum(xp.where(dz > 0, prob.u * dz, zeros), axis=-1)
        + xp.sum(xp.where(dz < 0, prob.l * dz, zeros), axis=-1)
    )
    tol_p = cfg.eps_primal_inf * size
    primal = (size > 0) & (_norm(xp, rmatvec(prob.A, dy) + rmatvec(prob.C, dz)) <= tol_p) & (support < -tol_p)

    dx = st.x - st.x_prox
    size_x = _norm(xp, dx)
    tol_d = cfg.eps_dual_inf * size_x
    Cdx = matvec(prob.C, dx)
    cone_ok = ((Cdx <= _col(tol_d)) | (prob.u == float("inf"))) & (
        (Cdx >= -_col(tol_d)) | (prob.l == float("-inf"))
    )
    cone = xp.all(cone_ok, axis=-1) if cone_ok.shape[1] else xp.ones_like(primal)
    dual = (
        (size_x > 0)
        & (_norm(xp, matvec(prob.P, dx)) <= tol_d)
        & (_norm(xp, matvec(prob.A, dx)) <= tol_d)
        & cone
        & (_dot(xp, prob.q, dx) < -tol_d)
    )
    return primal, dual


def _outer_update(prob: Problem, st: State, ev: Eval, done: Any, cfg: Config) -> State:
    """BCL update for the elements whose subproblem is solved (``done``)."""
    xp = namespace(st.x)
    primal_inf, dual_inf = _certificates(prob, st, cfg)
    pres = xp.maximum(_norm(xp, ev.Ax - prob.b), _norm(xp, _violation(xp, ev.Cx, prob.l, prob.u)))
    accept = done & (pres <= st.eta)
    reject = done & ~accept
    mu_eq = xp.where(reject, xp.clip(st.mu_eq * cfg.mu_factor, cfg.mu_min_eq, None), st.mu_eq)
    mu_in = xp.where(reject, xp.clip(st.mu_in * cfg.mu_factor, cfg.mu_min_in, None), st.mu_in)
    eta = xp.where(accept, st.eta * st.mu_in**cfg.beta_bcl, xp.where(reject, mu_in**cfg.alpha_bcl, st.eta))
    eps_in = xp.where(
        accept,
        xp.clip(st.eps_in * st.mu_in, cfg.eps_in_min, None),
        xp.where(reject, xp.clip(mu_in, cfg.eps_in_min, None), st.eps_in),
    )
    outer = st.outer + xp.astype(done, st.outer.dtype)
    status = xp.where(done & primal_inf, int(Status.PRIMAL_INFEASIBLE), st.status)
    status = xp.where(done & dual_inf & ~primal_inf, int(Status.DUAL_INFEASIBLE), status)
    status = xp.where((status == RUNNING) & (outer >= cfg.max_outer), int(Status.MAX_ITER), status)
    return st._replace(
        x_prox=xp.where(_col(done), st.x, st.x_prox),
        y_prox=xp.where(_col(accept), st.y, st.y_prox),
        z_prox=xp.where(_col(accept), st.z, st.z_prox),
        mu_eq=mu_eq,
        mu_in=mu_in,
        eta=eta,
        eps_in=eps_in,
        fresh=st.fresh & (mu_eq == st.mu_eq) & (mu_in == st.mu_in),
        inner=xp.where(done, xp.zeros_like(st.inner), st.inner),
        outer=outer,
        status=status,
    )


def hessian(
    prob: Problem, mu_eq: Any, mu_in: Any, active: Any, rho: float, max_active: int | None = None
) -> Any:
    """The generalised Hessian ``P + rho I + A'A/mu_eq + C_J'C_J/mu_in`` (B, n, n).

    ``max_active``, a bound on the size of every J known to the caller, restricts the
    product to that many gathered rows instead of all m (same result, fewer flops).
    """
    xp = namespace(prob.P)
    n = prob.P.shape[-1]
    eye = xp.eye(n, dtype=prob.P.dtype, device=array_api_compat.device(prob.P))
    C = prob.C
    weights = xp.where(active, 1.0 / _col(mu_in), xp.zeros_like(prob.l))
    if max_active is not None and max_active < C.shape[1]:
        rows = xp.argsort(xp.astype(~active, xp.int32), axis=-1, stable=True)[:, :max_active]
        weights = xp.take_along_axis(weights, rows, axis=-1)
        C = xp.take_along_axis(C, rows[..., None], axis=1)
    A_scaled = prob.A / mu_eq[:, None, None]
    CJ = C * weights[..., None]
    return (
        prob.P
        + rho * eye
        + xp.matmul(xp.matrix_transpose(A_scaled), prob.A)
        + xp.matmul(xp.matrix_transpose(CJ), C)
    )


Factorize = Callable[[Problem, State, Any, Any, float], "tuple[Any, Any]"]


def factorize_all(prob: Problem, st: State, active: Any, need: Any, rho: float) -> tuple[Any, Any]:
    """Refactorise every element (keeping the old factor where ``need`` is False).

    A framework may pass its own ``factorize`` to :func:`step` that computes only the
    elements in ``need`` (same signature, same result).

    Returns
    -------
    L, ok
        The factors and a (B,) mask, False where a needed factorisation failed.
    """
    xp = namespace(st.x)
    L, ok = cholesky_ex(hessian(prob, st.mu_eq, st.mu_in, active, rho))
    keep = need & ok
    return xp.where(keep[:, None, None], L, st.L), ok | ~need


def active_set(prob: Problem, w: Any) -> Any:
    """Rows whose shifted value ``C x + mu_in z_prox`` lies outside ``[l, u]``."""
    return (w > prob.u) | (w < prob.l)


def step(
    prob: Problem, scaling: Scaling, st: State, cfg: Config, factorize: Factorize = factorize_all
) -> State:
    """One iteration for every running element: convergence test, BCL update, Newton step.

    Parameters
    ----------
    prob, scaling
        The scaled problem (from :func:`~.scaling.equilibrate`) and its scaling.
    st
        The current state; elements whose status is not ``RUNNING`` are left unchanged.
    cfg
        Solver parameters.
    factorize
        How to compute the Cholesky factors (see :func:`factorize_all`).
    """
    xp = namespace(st.x)
    running = st.status == RUNNING
    ev = evaluate(prob, st, cfg.rho)
    prim, dual, converged = residuals(prob, scaling, st, ev, cfg)
    converged = running & converged
    st = st._replace(
        prim_res=xp.where(running, prim, st.prim_res),
        dual_res=xp.where(running, dual, st.dual_res),
        status=xp.where(converged, int(Status.SOLVED), st.status),
    )
    running = running & ~converged
    inner_res = xp.maximum(_norm(xp, ev.r_x), xp.maximum(_norm(xp, ev.r_y), _norm(xp, ev.r_z)))
    inner_done = running & ((inner_res <= st.eps_in) | st.stalled | (st.inner >= cfg.max_inner))
    st = _outer_update(prob, st, ev, inner_done, cfg)
    st = st._replace(
        status=xp.where((st.status == RUNNING) & (st.iters >= cfg.max_iter), int(Status.MAX_ITER), st.status)
    )
    running = st.status == RUNNING
    ev = evaluate(prob, st, cfg.rho, at=ev)

    active = active_set(prob, ev.w)
    changed = xp.any(active != st.active, axis=-1) if active.shape[1] else xp.zeros_like(running)
    need = running & (~st.fresh | changed)
    L, ok = factorize(prob, st, active, need, cfg.rho)
    running = running & ok
    status = xp.where(ok, st.status, int(Status.NUMERICAL_ERROR))

    dx = -cho_solve(L, ev.grad)
    dx = xp.where(_col(running), dx, xp.zeros_like(dx))
    Adx, Cdx = matvec(prob.A, dx), matvec(prob.C, dx)
    quad = _dot(xp, dx, matvec(prob.P, dx)) + cfg.rho * _dot(xp, dx, dx) + _dot(xp, Adx, Adx) / st.mu_eq
    alpha = exact_step(quad, _dot(xp, dx, ev.grad), ev.w, Cdx, prob.l, prob.u, st.mu_in)
    dy = (Adx + ev.r_y) / _col(st.mu_eq)
    dz = (xp.where(active, Cdx, xp.zeros_like(Cdx)) + ev.r_z) / _col(st.mu_in)
    step_x, step_y, step_z = (_col(alpha) * d for d in (dx, dy, dz))
    step_y = xp.where(_col(running), step_y, xp.zeros_like(step_y))
    step_z = xp.where(_col(running), step_z, xp.zeros_like(step_z))
    small = _norm(xp, step_x) <= cfg.stall * (1.0 + _norm(xp, st.x))
    small = small & (_norm(xp, step_y) <= cfg.stall * (1.0 + _norm(xp, st.y)))
    small = small & (_norm(xp, step_z) <= cfg.stall * (1.0 + _norm(xp, st.z)))
    bump = xp.astype(running, st.iters.dtype)
    return st._replace(
        x=st.x + step_x,
        y=st.y + step_y,
        z=st.z + step_z,
        active=xp.where(_col(need & ok), active, st.active),
        fresh=st.fresh | (need & ok),
        L=L,
        stalled=running & small,
        status=status,
        iters=st.iters + bump,
        inner=st.inner + bump,
    )


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
    x = unscale_primal(scaling, st.x)
    y, z = unscale_duals(scaling, st.y, st.z)
    nan = float("nan")
    x = xp.where(_col(valid), x, xp.full_like(x, nan))
    y = xp.where(_col(valid), y, xp.full_like(y, nan))
    z = xp.where(_col(valid), z, xp.full_like(z, nan))
    objective = 0.5 * _dot(xp, x, matvec(original.P, x)) + _dot(xp, original.q, x)
    status = xp.where(st.status == RUNNING, int(Status.MAX_ITER), st.status)
    return Solution(x, y, z, status, st.iters, st.prim_res, st.dual_res, objective)
