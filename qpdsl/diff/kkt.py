"""Solves with the active-set KKT matrix of the backward pass.

The matrix, with ``G = [A; C]`` and ``a`` the 0/1 mask of the rows in the system (equality
rows and active inequality rows), is::

    K = [[P,        G' diag(a)         ],
         [diag(a) G, -diag(1 - a)      ]]

(an inactive row only says ``w_i = -r_i``). It is never formed. Each solve applies the
inverse of the regularised matrix ``K_d`` (``+d`` on the primal block, ``-d`` on the active
rows) through the Cholesky factor of its Schur complement ::

    H = P + d I + G' diag(a / d) G        (n x n, positive definite for convex P)

and refines the result against ``K`` itself, so the answer is the exact adjoint wherever
it exists. A failed factorisation is retried with more regularisation. Eagerly, elements
whose refinement does not settle (ill-conditioned or singular K) are solved again by an LU
factorisation of the regularised ``(n + k)``-square matrix; under ``jit`` the number of
refinement steps is fixed and there is no fallback (the map must stay linear in the
right-hand side for JAX to transpose it).

For float64 host arrays (numpy, torch on the CPU) the factorisation and the refinement run
in compiled kernels, one batch element per thread (``qpdsl.backends.cpu_alm.kkt``): the same
steps, with ``H`` gathered from the active rows only and each element refining until its own
residual settles; about twice as fast as the batched array code on random QPs at batch 64.

Factorising ``H`` (n x n) costs much less than an LU factorisation of the whole
``(n + k)``-square matrix for every element. Reusing the forward solver's last Cholesky
factor instead does not work: its penalties (1e-7 to 1e-3 of |K| at the end of the ALM) are
so large that refinement with it had not settled after 30 steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._array import (
    branch,
    cho_solve,
    cholesky_ex,
    concrete_any,
    device,
    from_host,
    host_float64,
    is_traced,
    lu_factor,
    lu_solve,
    matvec,
    put_rows,
    rmatvec,
    values_known,
)

# Refinement against the unregularised K stops once the residual is within this many
# rounding units of |rhs| + |K| |w| ...
REFINE_TOL = 1e3
# ... or after this many steps (each costs a few products with P and G, no factorisation).
REFINE_STEPS = 8
# Where the Cholesky factorisation fails, it is retried with this many times more
# regularisation (refinement then needs a few more steps).
RETRY = 100.0
# Refinement steps of the LU fallback, whose regularisation is smaller.
LU_REFINE_STEPS = 5


@dataclass(frozen=True)
class KKTSolver:
    """``K w = rhs`` for a batch of active-set KKT matrices (see the module docstring).

    Build it with :func:`kkt_solver`. ``scale`` (B,) is max |K_ij|, the scale of rounding
    errors in ``K w`` and of the regularisation.
    """

    xp: Any
    P: Any  # (B, n, n) symmetric
    G: Any  # (B, k, n) [A; C]
    a: Any  # (B, k) 1.0 on the rows in the system, 0.0 elsewhere
    scale: Any  # (B,)
    d: Any  # (B,) regularisation of the Cholesky path
    L: Any  # (B, n, n) Cholesky factor of H
    chol_ok: Any  # (B,) bool, False where H was not numerically positive definite
    all_factored: bool = False  # known on the host: chol_ok holds everywhere
    compiled: bool = False  # float64 host arrays: factor and refinement by the compiled kernels

    @property
    def n(self) -> int:
        return self.P.shape[-1]

    def matvec(self, w: Any) -> Any:
        """``K w`` for (B, n + k) ``w``."""
        n = self.n
        wx, wv = w[:, :n], w[:, n:]
        top = matvec(self.P, wx) + rmatvec(self.G, self.a * wv)
        return self.xp.concat([top, self.a * matvec(self.G, wx) - (1.0 - self.a) * wv], axis=1)

    def precondition(self, r: Any) -> Any:
        """``K_d^{-1} r`` through the Cholesky factor of the Schur complement."""
        n = self.n
        rx, rv = r[:, :n], r[:, n:]
        inv_d = (1.0 / self.d)[:, None]
        rv_in = self.a * rv
        wx = cho_solve(self.L, rx + rmatvec(self.G, rv_in) * inv_d)
        wv = self.a * (matvec(self.G, wx) - rv) * inv_d - (1.0 - self.a) * rv
        return self.xp.concat([wx, wv], axis=1)

    def unsettled(self, rhs: Any, w: Any, r: Any) -> Any:
        """(B,) mask of elements whose residual ``r = rhs - K w`` is above rounding level."""
        xp = self.xp
        eps = xp.finfo(rhs.dtype).eps
        size = xp.max(xp.abs(rhs), axis=1) + self.scale * xp.max(xp.abs(w), axis=1)
        return xp.any(xp.abs(r) > REFINE_TOL * eps * size[:, None], axis=1)

    def solve(self, rhs: Any) -> Any:
        """Solve ``K w = rhs`` (B, n + k); linear in ``rhs`` (under ``jit`` the step count is fixed)."""
        return self._solve(rhs)[0]

    def solve_checked(self, rhs: Any) -> tuple[Any, Any]:
        """:meth:`solve` and the mask of :meth:`failed`, whose residual test is skipped when every
        element settled at rounding level in the refinement (then none failed)."""
        w, settled = self._solve(rhs)
        if settled:
            return w, self.xp.zeros_like(self.chol_ok)
        return w, self.failed(rhs, w)

    def _solve(self, rhs: Any) -> tuple[Any, bool]:
        """The solution, and whether every element is known to have settled (one host read)."""
        xp = self.xp
        compiled = self._refined_compiled(rhs) if self.compiled else None
        if compiled is not None:
            w, bad = compiled
            if self.all_factored and not concrete_any(bad):
                return w, True
        else:
            w, settled = self._refined(rhs)
            if not values_known(rhs):
                return w, False
            if settled and self.all_factored:
                return w, True
            bad = self.unsettled(rhs, w, rhs - self.matvec(w))
        # Eagerly, redo with LU only the elements that did not settle (a rhs-dependent choice,
        # which a transposed JAX trace could not make).
        idx = xp.nonzero(bad | ~self.chol_ok)[0]
        if idx.shape[0] == 0:
            return w, False
        return put_rows(w, idx, self.take(idx)._solve_lu(xp.take(rhs, idx, axis=0))), False

    def failed(self, rhs: Any, w: Any) -> Any:
        """(B,) mask of elements whose solution ``w`` of ``K w = rhs`` cannot be trusted.

        Eagerly: a non-finite ``w`` or a residual above ``sqrt(eps)`` of ``|rhs| + |K| |w|`` after
        refinement and the LU fallback. Traced (no fallback there): a failed Cholesky factorisation,
        which depends on the primal data only, so linear maps built on it stay transposable.
        """
        xp = self.xp
        if not (values_known(rhs) and values_known(w)):
            return ~self.chol_ok
        eps = float(xp.finfo(rhs.dtype).eps)
        r = rhs - self.matvec(w)
        size = xp.max(xp.abs(rhs), axis=1) + self.scale * xp.max(xp.abs(w), axis=1)
        finite = xp.all(xp.isfinite(w), axis=1)
        return ~finite | xp.any(xp.abs(r) > math.sqrt(eps) * size[:, None], axis=1)

    def take(self, idx: Any) -> KKTSolver:
        """The solver of the elements ``idx`` only."""
        xp = self.xp

        def t(a: Any) -> Any:
            return xp.take(a, idx, axis=0)

        fields = (self.P, self.G, self.a, self.scale, self.d, self.L, self.chol_ok)
        return KKTSolver(xp, *(t(f) for f in fields), all_factored=self.all_factored, compiled=self.compiled)

    def _refined(self, rhs: Any) -> tuple[Any, bool]:
        """Refined ``K^-1 rhs``, and whether every element was seen settled (one host read per step).

        Where values cannot be read (traced, meta): a fixed step count, nothing nonlinear in rhs.
        """
        w = self.precondition(rhs)
        eager = values_known(rhs)
        for _ in range(REFINE_STEPS):
            r = rhs - self.matvec(w)
            if eager and not concrete_any(self.unsettled(rhs, w, r)):
                return w, True
            w = w + self.precondition(r)
        return w, False

    def _refined_compiled(self, rhs: Any) -> tuple[Any, Any] | None:
        """:meth:`_refined` by the compiled kernel, and the (B,) mask of the elements that did not
        settle; None where ``rhs`` is not a float64 host array."""
        from ..backends.cpu_alm import kkt as kernels

        host = [host_float64(a) for a in (self.P, self.G, self.a, self.d, self.scale, rhs)]
        U = host_float64(self.xp.matrix_transpose(self.L))
        if U is None or any(h is None for h in host):
            return None
        P, G, a, d, scale, rhs_h = host
        w, settled = kernels.refined_solve(P, G, a, d, U, scale, rhs_h, REFINE_STEPS, REFINE_TOL)
        return from_host(w, rhs), from_host(~settled, rhs)

    def _solve_lu(self, rhs: Any) -> Any:
        """LU of ``K`` regularised by sqrt(eps) |K|, refined against ``K``."""
        xp = self.xp
        reg = math.sqrt(float(xp.finfo(rhs.dtype).eps)) * self.scale
        n = self.n
        ones = xp.ones_like(rhs[:, :n])
        factor = lu_factor(self._dense(xp.concat([ones, -self.a], axis=1) * reg[:, None]))
        w = lu_solve(factor, rhs)
        eager = values_known(rhs)
        for _ in range(LU_REFINE_STEPS):
            r = rhs - self.matvec(w)
            if eager and not concrete_any(self.unsettled(rhs, w, r)):
                break
            w = w + lu_solve(factor, r)
        return w

    def _dense(self, reg_diag: Any) -> Any:
        """``K`` plus ``diag(reg_diag)`` as a dense (B, n + k, n + k) array."""
        xp = self.xp
        GJ = self.G * self.a[:, :, None]
        top = xp.concat([self.P, xp.matrix_transpose(GJ)], axis=2)
        bottom = xp.concat([GJ, _diag(xp, self.a - 1.0)], axis=2)
        return xp.concat([top, bottom], axis=1) + _diag(xp, reg_diag)


def kkt_solver(xp: Any, P: Any, G: Any, a: Any) -> KKTSolver:
    """Factorise the Schur complement of the regularised KKT matrices (see the module docstring).

    Parameters
    ----------
    P
        (B, n, n) symmetric positive semidefinite.
    G
        (B, k, n) constraint rows ``[A; C]``.
    a
        (B, k) 0/1 floats: the rows in the system (equality and active inequality rows).
    """
    compiled = _compiled_solver(xp, P, G, a)
    if compiled is not None:
        return compiled
    batch, n = P.shape[0], P.shape[-1]
    scale = xp.ones((batch,), dtype=P.dtype, device=device(P))
    for mat in (P, G):
        if mat.shape[1] * mat.shape[2]:  # max over an empty axis is an error
            scale = xp.maximum(scale, xp.max(xp.abs(mat), axis=(1, 2)))
    # The same sqrt(eps) |K| as the LU fallback: cond(H) may reach about k / eps, so the
    # factor is accurate only to a few digits, but each refinement step gains a factor of
    # about d / |K| (three or four steps on random problems) and a failed factorisation
    # falls back to LU.
    d = math.sqrt(float(xp.finfo(P.dtype).eps)) * scale
    eye = xp.eye(n, dtype=P.dtype, device=device(P))
    S = xp.matrix_transpose(G * (a / d[:, None])[:, :, None]) @ G
    H = P + d[:, None, None] * eye + S
    L, ok = cholesky_ex(H)
    d_retry = RETRY * d
    all_factored = False

    def retry(args: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
        """Refactorise with more regularisation where the first factorisation failed."""
        L, ok, d = args
        H_retry = xp.where(ok[:, None, None], H, P + d_retry[:, None, None] * eye + S / RETRY)
        L_retry, ok_retry = cholesky_ex(H_retry)
        return L_retry, ok_retry, xp.where(ok, d, d_retry)

    if is_traced(P):
        # Under jit, inside a branch taken only when some factorisation failed. (Two
        # independent Cholesky calls in one program have deadlocked XLA's CPU runtime here.)
        L, ok, d = branch(xp.all(ok), lambda args: args, retry, (L, ok, d))
    elif not values_known(P):  # meta tensors: no value to branch on
        L, ok, d = retry((L, ok, d))
    elif concrete_any(~ok):
        L_retry, ok_retry = cholesky_ex(P + d_retry[:, None, None] * eye + S / RETRY)
        use = ~ok & ok_retry
        L = xp.where(use[:, None, None], L_retry, L)
        d = xp.where(use, d_retry, d)
        ok = ok | ok_retry
    else:
        all_factored = True
    L = xp.where(ok[:, None, None], L, xp.zeros_like(L) + eye)  # keep failed factors finite
    return KKTSolver(xp, P, G, a, scale, d, L, ok, all_factored)


def _compiled_solver(xp: Any, P: Any, G: Any, a: Any) -> KKTSolver | None:
    """:func:`kkt_solver` by the compiled kernels, for float64 host arrays; None for others."""
    host = [host_float64(m) for m in (P, G, a)]
    if any(h is None for h in host):
        return None
    from ..backends.cpu_alm import kkt as kernels

    P_h, G_h, a_h = host
    rel = math.sqrt(float(np.finfo(np.float64).eps))  # as in kkt_solver
    U, ok, scale, d = kernels.factor(P_h, G_h, a_h, rel, RETRY)
    L = xp.matrix_transpose(from_host(U, P))
    fields = (from_host(scale, P), from_host(d, P), L, from_host(ok, P))
    return KKTSolver(xp, P, G, a, *fields, all_factored=bool(ok.all()), compiled=True)


def _diag(xp: Any, v: Any) -> Any:
    k = v.shape[1]
    return xp.eye(k, dtype=v.dtype, device=device(v))[None, :, :] * v[:, None, :]
