"""The linearisation point of the backward pass: active sets, KKT matrix and the shift map.

Everything here depends on the primal data and the solution only (never on incoming
gradients or tangents), so :mod:`qpdsl.diff.adjoint` can apply it linearly: in JAX the
JVP built on it is transposable, in torch it runs inside ``autograd.Function.backward``.

Batch elements with a non-ok status are replaced by a harmless placeholder (zero data,
no active rows) so that no NaN leaks into the rest of the batch; callers zero their
gradients with :attr:`Linearization.ok`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .._array import (
    branch,
    cholesky_ex,
    device,
    host_values,
    is_traced,
    matvec,
    namespace,
    put_rows,
    values_known,
)
from ..qp import QPData, QPResult, Status
from .kkt import KKTSolver, kkt_solver

# A's rows count as independent when the Cholesky factor of AA' has no diagonal entry below
# this fraction of its largest (else the SVD decides the rank).
RANK_TOL = 1e-4


@dataclass(frozen=True)
class Linearization:
    """Primal quantities of one batch, shared by :func:`qp_vjp` and :func:`qp_jvp`.

    Masks are (B, m) booleans over inequality rows; ``*_f`` are the same as 0/1 floats.
    ``Pi`` is the orthogonal projector onto range(M), ``M = [A; C_V]`` (the equality rows and the
    violated inequality rows, others zeroed); None when no row is violated and every A has full
    row rank (then it is the identity on the equality rows, nothing needs projecting and the
    shift is identically zero nearby).
    ``y`` and ``z_act`` are the multipliers with no part along null(M') on the rows of M.
    """

    xp: Any
    n: int
    p: int
    ok: Any  # (B,) bool: status ok
    x: Any
    y: Any
    z_act: Any  # z on active rows, 0 elsewhere
    upper: Any  # upper bound active (violated-upper rows included)
    lower: Any
    act_f: Any
    viol_f: Any
    s_eq: Any  # shift, 0 unless closest feasible
    s_in: Any  # shift on violated rows, 0 elsewhere
    kkt: KKTSolver  # the active-set KKT matrix (identity-like rows for inactive constraints)
    Pi: Any | None  # (B, p + m, p + m)
    rows_f: Any  # (B, p + m): 1 on rows of M (equality rows and violated rows)
    shifted: bool  # some element may have a nonzero shift (always True under jit)
    any_failed: bool = True  # some element's status is not ok (decided once: a sync on a GPU)
    closest_f: Any = None  # (B,) 1.0 on closest-feasible elements
    S: Any = None  # (B, p + m) 0/1: rows the shift acts on (shiftable equality rows, shifted rows)
    H: Any = None  # (B, p + m) 0/1: hard rows that bind the shift (hard equality and active rows)
    K_pinv: Any | None = None  # pinv of the shift's linearised optimality system (see .shift)
    shift_weights: Any = None  # (B, p + m) D_S s + D_H lam

    def solve(self, rhs: Any) -> Any:
        """Solve ``K w = rhs`` (B, N) exactly up to rounding (see :mod:`qpdsl.diff.kkt`)."""
        return self.kkt.solve(rhs)

    def solve_checked(self, rhs: Any) -> tuple[Any, Any]:
        """:meth:`solve` and the (B,) mask of elements whose solution cannot be trusted."""
        return self.kkt.solve_checked(rhs)

    def project_duals(self, v: Any) -> Any:
        """Project a (B, p + m) dual vector onto range(M) on the rows of M; other rows unchanged."""
        if self.Pi is None:
            return v
        on = self.rows_f * v
        return v - on + self.rows_f * matvec(self.Pi, on)


# The relative part of the activity tolerance, in both dtypes: about 16 rounding units of a float32
# row value. Scaling the float32 tolerance (1e-4) itself by |C_i x| let rows 2e-3 away from their
# bound into the active set of rows of size 20, and gave wrong gradients for 4% of random QPs.
ACTIVE_TOL_REL = 1e-6


def linearize(
    data: QPData,
    result: QPResult,
    active_tol: float | None = None,
    shiftable: Any = None,
    flags: tuple[bool, bool] | None = None,
) -> Linearization:
    """Build the :class:`Linearization` of ``result`` on dense batched ``data``.

    ``shiftable`` (a :class:`~qpdsl.solve.closest.Shiftable`, default: every row) says which rows
    the closest feasible QP may shift; the others are hard. ``flags``, ``(all_ok, any_closest)``
    when the caller knows them (whether every status is ok, whether some element is closest
    feasible); otherwise they are read from the statuses in one host read (assumed
    ``(False, True)`` where values cannot be read).
    """
    xp = namespace(data.q)
    dtype, dev = data.q.dtype, device(data.q)
    n, p = data.n, data.n_eq
    eps = float(xp.finfo(dtype).eps)
    tol_abs = active_tol if active_tol is not None else (1e-6 if eps < 1e-10 else 1e-4)

    status = xp.asarray(result.status, device=dev)
    ok = (status == int(Status.SOLVED)) | (status == int(Status.SOLVED_CLOSEST_FEASIBLE))
    closest = status == int(Status.SOLVED_CLOSEST_FEASIBLE)
    all_ok, shifted = _flags(xp, ok, closest) if flags is None else flags
    okv, okm = ok[:, None], ok[:, None, None]

    def clean(a: Any, mask: Any = okv, fill: float = 0.0, keep_all: bool = all_ok) -> Any:
        a = xp.asarray(a, dtype=dtype, device=dev)
        if keep_all:  # nothing to replace (the common case, and a large copy saved)
            return a
        return xp.where(mask, a, xp.full_like(a, fill))

    def shift(a: Any) -> Any:
        a = xp.asarray(a, dtype=dtype, device=dev)
        return xp.where(closest[:, None], a, xp.zeros_like(a)) if shifted else xp.zeros_like(a)

    P = clean(data.P, okm)
    P = 0.5 * (P + xp.matrix_transpose(P))
    A, C = clean(data.A, okm), clean(data.C, okm)
    low, up = clean(data.l, fill=-math.inf), clean(data.u, fill=math.inf)
    x, y, z = clean(result.x), clean(result.y), clean(result.z)
    s_eq, s_in = shift(result.shift_eq), shift(result.shift_in)

    cx = matvec(C, x)
    tol = tol_abs + ACTIVE_TOL_REL * xp.abs(cx)
    v_up = closest[:, None] & (s_in > tol)
    v_lo = closest[:, None] & (s_in < -tol)
    viol = v_up | v_lo
    zero = xp.zeros_like(s_in)
    up_s = up + xp.where(v_up, s_in, zero)
    low_s = low + xp.where(v_lo, s_in, zero)
    # Weakly active rows count as active; a row close to both bounds goes to the side its
    # dual points to (for l = u the gap difference is 2 z).
    gap_up = cx + z - up_s
    gap_lo = low_s - cx - z
    upper = v_up | ((gap_up >= -tol) & (gap_up >= gap_lo) & ~v_lo)
    lower = v_lo | ((gap_lo >= -tol) & (gap_lo > gap_up) & ~v_up)
    active = upper | lower
    act_f = xp.astype(active, dtype)
    viol_f = xp.astype(viol, dtype)

    batch = x.shape[0]
    ones_p = xp.ones((batch, p), dtype=dtype, device=dev)
    kkt = kkt_solver(xp, P, xp.concat([A, C], axis=1), xp.concat([ones_p, act_f], axis=1))

    rows_f = xp.concat([ones_p, viol_f], axis=1)
    # Eagerly, only the closest-feasible elements pay for the pseudo-inverses of the shifted rows.
    index = xp.nonzero(closest)[0] if shifted and values_known(closest) else None
    # Traced (jit), whether an element is closest-feasible is known only when the program runs: the
    # pseudo-inverses (batched SVDs, which GPUs run one matrix at a time) run only when one is.
    some_closest = xp.any(closest) if shifted and index is None and is_traced(closest) else None
    if some_closest is not None:
        Pi = branch(
            some_closest,
            lambda ops: _range_projector(xp, *ops, True),
            lambda ops: _unshifted_projector(xp, *ops),
            (A, C, viol_f),
        )
    else:
        Pi = _range_projector(xp, A, C, viol_f, shifted, index)
    if Pi is not None:
        # Multipliers of dependent rows are determined only up to null(M'); backends return any
        # representative. Taking the one in range(M) makes the gradients independent of that choice.
        yz = xp.concat([y, z], axis=1) * rows_f
        yz = xp.concat([y, z], axis=1) - yz + rows_f * matvec(Pi, yz)
        y, z = yz[:, :p], yz[:, p:]

    closest_f = xp.astype(closest, dtype)
    S = H = K_pinv = weights = None
    if shifted:
        from ..solve.closest import Shiftable
        from .shift import shift_system

        d_eq, d_in = (shiftable or Shiftable()).masks(xp, p, data.n_in, dtype, dev)
        user = xp.concat([d_eq, d_in], axis=1)
        eq_rows = xp.concat([ones_p, xp.zeros_like(act_f)], axis=1)
        S = user * xp.maximum(eq_rows, xp.concat([xp.zeros_like(ones_p), viol_f], axis=1))
        H = (1.0 - user) * xp.maximum(eq_rows, xp.concat([xp.zeros_like(ones_p), act_f], axis=1))
        G = xp.concat([A, C], axis=1)
        s_all = xp.concat([s_eq, s_in * viol_f], axis=1) * S
        if some_closest is not None:
            k_rows = G.shape[1]

            def no_shift(ops: tuple[Any, ...]) -> tuple[Any, Any]:
                K = xp.zeros((batch, n + 2 * k_rows, k_rows + n), dtype=dtype, device=dev)
                return K, xp.zeros_like(ops[2])

            K_pinv, weights = branch(
                some_closest, lambda ops: shift_system(xp, *ops), no_shift, (G, x, s_all, S, H)
            )
        elif index is None:
            K_pinv, weights = shift_system(xp, G, x, s_all, S, H)
        else:

            def take(a: Any) -> Any:
                return xp.take(a, index, axis=0)

            K_sub, w_sub = shift_system(xp, take(G), take(x), take(s_all), take(S), take(H))
            k_rows = G.shape[1]
            K_pinv = xp.zeros((batch, n + 2 * k_rows, k_rows + n), dtype=dtype, device=dev)
            K_pinv = put_rows(K_pinv, index, K_sub)
            weights = put_rows(xp.zeros_like(s_all), index, w_sub)

    return Linearization(
        xp=xp,
        any_failed=not all_ok,
        closest_f=closest_f,
        S=S,
        H=H,
        K_pinv=K_pinv,
        shift_weights=weights,
        n=n,
        p=p,
        ok=ok,
        x=x,
        y=y,
        z_act=z * act_f,
        upper=upper,
        lower=lower,
        act_f=act_f,
        viol_f=viol_f,
        s_eq=s_eq,
        s_in=s_in * viol_f,
        kkt=kkt,
        Pi=Pi,
        rows_f=rows_f,
        shifted=shifted,
    )


def _flags(xp: Any, ok: Any, closest: Any) -> tuple[bool, bool]:
    """``(all_ok, any_closest)`` in one host read; ``(False, True)`` where values cannot be read."""
    if not values_known(ok):
        return False, True
    all_ok, any_closest = host_values(xp.all(ok), xp.any(closest))
    return bool(all_ok), bool(any_closest)


def _range_projector(xp: Any, A: Any, C: Any, viol_f: Any, shifted: bool, index: Any = None) -> Any | None:
    """The projector ``M M^+`` onto range(M), ``M = [A; C_V]`` (B, p + m, p + m), or None.

    Without violated rows (no element ``shifted``) M is ``[A; 0]``: only A's (small)
    pseudo-inverse is needed, and nothing when every A clearly has full row rank (decided
    eagerly; then the projector is the identity on the equality rows: None). With violated
    rows, M's pseudo-inverse is computed for the elements ``index`` (default: all) only.
    """
    batch, p, m = A.shape[0], A.shape[1], C.shape[1]
    if shifted and index is None:
        return _projector(xp, xp.concat([A, C * viol_f[:, :, None]], axis=1))

    def of_A(a: Any) -> Any:
        top = xp.concat([_projector(xp, a), _zeros(xp, a, batch, p, m)], axis=2)
        return xp.concat([top, _zeros(xp, a, batch, m, p + m)], axis=1)

    base = None
    if p and is_traced(A):
        # Traced: A's pseudo-inverse (a batched SVD) runs only when some A is not clearly of full rank.
        base = branch(_full_row_rank(xp, A), lambda a: _eq_identity(xp, a, m), of_A, A)
    elif p and not _clearly_full_row_rank(xp, A):
        base = of_A(A)
    if not shifted:
        return base
    if base is None:
        base = _eq_identity(xp, A, m)

    def take(a: Any) -> Any:
        return xp.take(a, index, axis=0)

    M = xp.concat([take(A), take(C) * take(viol_f)[:, :, None]], axis=1)
    return put_rows(base, index, _projector(xp, M))


def _projector(xp: Any, M: Any) -> Any:
    """The symmetric orthogonal projector ``M M^+`` onto the range of each (B, r, n) ``M``."""
    Pi = M @ xp.linalg.pinv(M)
    return 0.5 * (Pi + xp.matrix_transpose(Pi))


def _unshifted_projector(xp: Any, A: Any, C: Any, viol_f: Any) -> Any:
    """:func:`_range_projector` without violated rows, always as an array: the identity on the
    equality rows where A needs no projector."""
    base = _range_projector(xp, A, C, viol_f, False)
    return _eq_identity(xp, A, C.shape[1]) if base is None else base


def _eq_identity(xp: Any, A: Any, m: int) -> Any:
    """(B, p + m, p + m): the identity on the equality rows, zero on the others."""
    batch, p = A.shape[0], A.shape[1]
    ones = xp.concat([xp.ones((batch, p), dtype=A.dtype, device=device(A)), _zeros(xp, A, batch, m)], axis=1)
    return xp.eye(p + m, dtype=A.dtype, device=device(A))[None] * ones[:, None, :]


def _zeros(xp: Any, like: Any, *shape: int) -> Any:
    return xp.zeros(shape, dtype=like.dtype, device=device(like))


def _clearly_full_row_rank(xp: Any, A: Any) -> bool:
    """Whether every element's A clearly has full row rank (eager arrays only; False under ``jit``)."""
    if not values_known(A):
        return False
    return bool(_full_row_rank(xp, A))


def _full_row_rank(xp: Any, A: Any) -> Any:
    """Whether every element's A clearly has full row rank, as a 0-d boolean array.

    Decided from the Cholesky factor of ``AA'``: its diagonal must span less than
    ``1 / RANK_TOL``; otherwise the caller takes the SVD-based pseudo-inverse.
    """
    gram = A @ xp.matrix_transpose(A)
    L, ok = cholesky_ex(gram)
    diag = xp.abs(xp.linalg.diagonal(L))
    full = ok & (xp.min(diag, axis=1) > RANK_TOL * xp.max(diag, axis=1))
    return xp.all(full)
