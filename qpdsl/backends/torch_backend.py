"""The ``torch`` backend: qpdsl's batched dense proximal ALM (:mod:`.alm`) driven in PyTorch.

Runs where the input tensors live (CPU or CUDA), in float32 or float64. Every value the
host reads from a device (a flag, a count, an index list) stalls a GPU until its queued work
is done, so the driver has two modes:

- on the devices of :data:`HOST_DRIVEN` (the CPU), where reading a flag costs nothing, it
  looks at per-element flags every iteration: finished elements leave the working batch and
  only the elements whose active set or penalties changed are refactorised;
- elsewhere (CUDA) it runs :data:`CHECK_EVERY` full batched steps between reads of the
  number of running elements (one host read), and shrinks the working batch (one more read)
  only when at most :data:`DEVICE_COMPACT_BELOW` of it is still running.

``settings.options`` override the fields of :class:`~.alm.core.Config` (e.g. ``rho``,
``mu_in``, ``max_inner``).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from .._standard_form import NAMES
from ..errors import ParameterError
from ..qp import QPData, QPResult, Settings, WarmStart
from . import Backend, Capabilities, register
from .alm import core
from .alm.scaling import Problem, check_shapes, equilibrate

try:
    import torch
except Exception:  # registration must never raise, whatever breaks inside the package
    torch = None  # type: ignore[assignment]

HOST_DRIVEN = frozenset({"cpu"})  # device types where the driver reads per-element flags every iteration
CHECK_EVERY = 4  # iterations between host reads of the number of running elements (devices)
DEVICE_COMPACT_BELOW = 0.5  # shrink the working batch once this fraction or less is running (devices)
LOW_RANK, MIN_RANK = 0.2, 4  # update the factor by up to max(MIN_RANK, LOW_RANK * n) rows (CPU)
REFRESH_EVERY = 8  # iterations between exact recomputations of the products K x (CPU)
COMPACT_BELOW = 0.75  # shrink the working batch once this fraction or less is still running (CPU)


class TorchBackend(Backend):
    """Batched dense proximal ALM in PyTorch."""

    capabilities: Capabilities

    def __init__(self, name: str = "torch") -> None:
        self.name = name
        self.capabilities = CAPABILITIES

    def solve_raw(self, data: QPData, settings: Settings, warm_start: WarmStart | None = None) -> QPResult:
        """One solve of a batch of dense (or SparseBatch, densified) torch QPs; see :class:`Backend`.

        Raises
        ------
        ParameterError
            If the data are not torch tensors of consistent shapes on one device.
        """
        return solve_raw(data, settings, warm_start)


def solve_raw(data: QPData, settings: Settings, warm_start: WarmStart | None = None) -> QPResult:
    """One ALM solve of the batch: the claims, unverified (an infeasible element: PRIMAL_INFEASIBLE)."""
    prob, r = _problem(data)
    dtype = prob.q.dtype
    cfg = core.make_config(settings, dtype)
    warm = warm_start or WarmStart()
    x0, y0, z0 = (
        None if a is None else _tensor(a, name, dtype, prob.q.device)
        for a, name in ((warm.x, "warm_start.x"), (warm.y, "warm_start.y"), (warm.z, "warm_start.z"))
    )
    # Inference mode skips autograd's per-op bookkeeping (version counters, view tracking): about
    # 10% of the time of a batch of small QPs, whose cost is per-op overhead. Its tensors cannot
    # be saved for a backward, so the outputs are copied out of it.
    with torch.inference_mode():
        sol = _solve(prob, cfg, x0, y0, z0)
    sol = core.Solution(*(a.clone() for a in sol))
    zeros_eq, zeros_in = torch.zeros_like(prob.b), torch.zeros_like(prob.l)
    objective = sol.objective if r is None else sol.objective + r
    return QPResult(
        x=sol.x,
        y=sol.y,
        z=sol.z,
        shift_eq=zeros_eq,
        shift_in=zeros_in,
        status=sol.status,
        iterations=sol.iterations,
        prim_res=sol.prim_res,
        dual_res=sol.dual_res,
        objective=objective,
    )


def _solve(prob: Problem, cfg: core.Config, x0: Any, y0: Any, z0: Any) -> core.Solution:
    clean, valid = core.sanitize(prob)
    scaled, scaling = equilibrate(clean)
    st = core.init_state(scaled, scaling, cfg, valid, x0, y0, z0)
    st = _iterate(core.prepare(scaled, scaling), st, cfg)
    return core.finalize(clean, scaling, st, valid)


def _iterate(data: core.Data, st: core.State, cfg: core.Config) -> core.State:
    """Run the iteration of :func:`core.step` until no element is running (see the module docstring)."""
    if compacts(st.x.device):
        return _iterate_host(data, st, cfg)
    return _iterate_device(data, st, cfg)


def _iterate_device(data: core.Data, st: core.State, cfg: core.Config) -> core.State:
    """Full batched steps with one host read every :data:`CHECK_EVERY` iterations.

    Finished elements stay in the batch, frozen by the masks of :func:`core.step`, until at
    most :data:`DEVICE_COMPACT_BELOW` of the working batch is running; then the working batch
    shrinks to the running elements, so the batch is compacted at most log2(B) times.
    """
    full, sub, index = st, data, None
    while True:
        for _ in range(CHECK_EVERY):
            st = core.step(sub, None, st, cfg)
        running = st.status == core.RUNNING
        count = int(running.sum())
        if count == 0:
            break
        if count <= DEVICE_COMPACT_BELOW * running.shape[0]:
            keep = running.nonzero()[:, 0]
            if index is None:
                index = torch.arange(running.shape[0], device=running.device)
            full = _put(full, index, st)
            index = index[keep]
            st, sub = _take(st, keep), _take_data(sub, keep)
        st = core.refresh(sub, st)
    return st if index is None else _put(full, index, st)


def _iterate_host(data: core.Data, st: core.State, cfg: core.Config) -> core.State:
    """Per-element decisions every iteration: selective BCL updates, compaction and refactorisation."""
    index = torch.arange(st.x.shape[0], device=st.x.device)
    full, sub = st, data
    st = st._replace(L=st.L.clone())
    factorize = _Factorizer(data, max(MIN_RANK, int(LOW_RANK * data.P.shape[1])))
    iteration = 0
    while True:
        iteration += 1
        if iteration % REFRESH_EVERY == 0:
            st = core.refresh(sub, st)
        st, ev, done = core.check(sub, st, cfg)
        finished = done.nonzero()[:, 0]
        if finished.numel():
            st, ev = core.outer_update(sub, st, ev, done, cfg, _certificates(sub, st, cfg, finished))
        running = st.status == core.RUNNING
        count = int(running.sum())
        if count == 0:
            break
        if count <= COMPACT_BELOW * index.numel():
            full = _put(full, index, st)
            keep = running.nonzero()[:, 0]
            index = index[keep]
            st, ev, sub = _take(st, keep), _take(ev, keep), _take_data(sub, keep)
            factorize.take(keep)
        st = core.newton(sub, st, ev, cfg, factorize, factorize.solve)
    return _put(full, index, st)


def compacts(device: Any) -> bool:
    """Whether the driver decides per element every iteration on ``device`` (see the module docstring).

    They need the host to read per-element flags every iteration: free on the CPU, a
    synchronisation per read on a GPU.
    """
    return device.type in HOST_DRIVEN


def _certificates(data: core.Data, st: core.State, cfg: core.Config, index: Any) -> tuple[Any, Any]:
    """:func:`core.certificates_of` computed for the elements in ``index`` only (False elsewhere)."""
    if index.numel() == st.x.shape[0]:
        return core.certificates_of(data, st, cfg)
    part = SimpleNamespace(x=st.x[index], x_prox=st.x_prox[index], v=st.v[index], v_prox=st.v_prox[index])
    primal, dual = core.certificates_of(_take_data(data, index, _CERTIFICATE_FIELDS), part, cfg)
    none = torch.zeros_like(st.fresh)
    return none.index_copy(0, index, primal), none.index_copy(0, index, dual)


def _take(tree: Any, index: Any) -> Any:
    return type(tree)(*(a[index] for a in tree))


# what certificates_of reads, besides K
_CERTIFICATE_FIELDS = ("q", "lo", "hi", "row_norm", "lo_inf", "hi_inf", "soft")


def _take_data(data: core.Data, index: Any, fields: tuple[str, ...] | None = None) -> core.Data:
    """The elements ``index`` of ``data``: K and its views, and ``fields`` (default: all; the others None)."""
    n, p = data.P.shape[1], data.A.shape[1]
    K = data.K[index]
    views = {"K": K, "P": K[:, :n], "A": K[:, n : n + p], "G": K[:, n:], "eq": data.eq}

    def part(f: str) -> Any:
        a = getattr(data, f)
        return a[index] if (fields is None or f in fields) and a is not None else None

    rest = {f: part(f) for f in core.Data._fields if f not in views}
    return core.Data(**views, **rest)


def _put(full: Any, index: Any, part: Any) -> Any:
    return type(full)(*(a.index_copy(0, index, b) for a, b in zip(full, part, strict=True)))


def _rows(K: Any, index: Any, rows: Any) -> Any:
    """``K[index[i], rows[i, j]]`` (len(index), r, n) for a contiguous K, without copying whole matrices."""
    B, k, n = K.shape
    flat = (index[:, None] * k + rows).reshape(-1)
    return K.reshape(B * k, n).index_select(0, flat).reshape(rows.shape[0], rows.shape[1], n)


class _Factorizer:
    """``factorize`` and ``solve`` hooks of :func:`core.newton` that avoid most refactorisations.

    Keeps ``P + rho I + A'A / mu_eq`` per element (it changes only with ``mu_eq`` and ``rho``) and, per
    element, the active set ``J0`` of its factor ``L0``. When the active set moved from ``J0``
    by at most ``max_rank`` rows (and the penalties did not change), the factor stays and
    the solve adds the Woodbury correction for those rows::

        H = H0 + U diag(s / mu_in) U',   H^-1 g = L0^-T (h - V (mu_in diag(s) + V'V)^-1 V'h)

    with ``U`` the changed rows of ``C``, ``s = ±1`` (added, removed), ``V = L0^-1 U`` and
    ``h = L0^-1 g``. Otherwise it refactorises, forming ``C_J'C_J`` from the gathered active
    rows only.
    """

    def __init__(self, data: core.Data, max_rank: int) -> None:
        self.max_rank = max_rank
        self.H_eq = torch.empty_like(data.P)
        self.mu_eq = torch.full_like(data.q[:, 0], float("nan"))
        self.rho = torch.full_like(data.q[:, 0], float("nan"))
        self.base = torch.zeros_like(data.lo, dtype=torch.bool)
        self.low_rank: tuple[Any, Any, Any] | None = None  # (elements, V, capacitance)

    def take(self, keep: Any) -> None:
        self.H_eq, self.mu_eq, self.base = self.H_eq[keep], self.mu_eq[keep], self.base[keep]
        self.rho = self.rho[keep]

    def __call__(self, data: core.Data, st: core.State, active: Any, need: Any) -> tuple[Any, Any]:
        ok = torch.ones_like(need)
        self.low_rank = None
        n, p = data.P.shape[1], data.A.shape[1]
        diff = active[:, p:] != self.base[:, p:]
        count = diff.sum(dim=-1)
        running = st.status == core.RUNNING
        refactor = need & (~st.fresh | (count > self.max_rank))
        index = refactor.nonzero()[:, 0]
        if index.numel():
            ok = self._refactor(data, st, active, index, ok)
        lr = (running & ~refactor & (count > 0)).nonzero()[:, 0]
        if lr.numel():
            diff = diff[lr]
            k = int(count[lr].max())
            pick = torch.argsort((~diff).to(torch.int8), dim=-1)[:, :k]
            used = diff.gather(1, pick)
            U = _rows(data.K, lr, pick + (n + p)) * used[..., None]
            sign = torch.where(active[lr, p:].gather(1, pick), 1.0, -1.0).to(U.dtype)
            V = torch.linalg.solve_triangular(st.L[lr], U.mT, upper=False)
            cap = V.mT @ V
            diag = torch.where(used, sign * st.mu_in[lr, None], torch.ones_like(sign))
            cap.diagonal(dim1=-2, dim2=-1).add_(diag)
            LU, pivots, info = torch.linalg.lu_factor_ex(cap)
            bad = info != 0
            if bool(bad.any()):  # a singular correction: refactorise those elements instead
                ok = self._refactor(data, st, active, lr[bad], ok)
                good = ~bad
                lr, V, LU, pivots = lr[good], V[good], LU[good], pivots[good]
            if lr.numel():
                self.low_rank = (lr, V, (LU, pivots))
        return st.L, ok

    def _refactor(self, data: core.Data, st: core.State, active: Any, index: Any, ok: Any) -> Any:
        p = data.A.shape[1]
        mu_eq = st.mu_eq[index]
        stale = index[(self.mu_eq[index] != mu_eq) | (self.rho[index] != st.rho[index])]
        if stale.numel():
            A = data.A[stale]
            H = torch.baddbmm(data.P[stale], (A / st.mu_eq[stale, None, None]).mT, A)
            H.diagonal(dim1=-2, dim2=-1).add_(st.rho[stale, None])
            self.H_eq.index_copy_(0, stale, H)
            self.mu_eq.index_copy_(0, stale, st.mu_eq[stale])
            self.rho.index_copy_(0, stale, st.rho[stale])
        sub_active = active[index, p:]
        rows = int(sub_active.sum(dim=-1).max()) if sub_active.shape[1] else 0
        if rows < sub_active.shape[1]:
            pick = torch.argsort((~sub_active).to(torch.int8), dim=-1)[:, :rows]
            C = _rows(data.K, index, pick + (data.P.shape[1] + p))
            weights = sub_active.gather(1, pick) / st.mu_in[index, None]
        else:
            C = data.G[index, p:]
            weights = sub_active / st.mu_in[index, None]
        H = torch.baddbmm(self.H_eq[index], (C * weights[..., None]).mT, C)
        L_sub, info = torch.linalg.cholesky_ex(H)
        ok_sub = info == 0
        if not bool(ok_sub.all()):
            L_sub = torch.where(ok_sub[:, None, None], L_sub, st.L[index])
        # In place: the driver holds no other reference to this state's factors.
        st.L.index_copy_(0, index, L_sub)
        self.base.index_copy_(0, index, torch.where(ok_sub[:, None], active[index], self.base[index]))
        return ok.index_copy(0, index, ok_sub)

    def solve(self, L: Any, rhs: Any) -> Any:
        h = torch.linalg.solve_triangular(L, rhs[..., None], upper=False)
        if self.low_rank is not None:
            lr, V, (LU, pivots) = self.low_rank
            hv = h[lr]
            t = torch.linalg.lu_solve(LU, pivots, V.mT @ hv)
            h.index_copy_(0, lr, hv - V @ t)
        return torch.linalg.solve_triangular(L.mT, h, upper=True)[..., 0]


def _tensor(a: Any, name: str, dtype: Any, device: Any) -> Any:
    if not isinstance(a, torch.Tensor):
        raise ParameterError(
            f"the torch backend takes torch tensors, but {name} is a {type(a).__name__}; "
            "convert it with torch.as_tensor or choose a numpy backend such as 'proxsuite'"
        )
    if a.device != device:
        raise ParameterError(
            f"{name} is on {a.device} but the problem data are on {device}; move all tensors to one device"
        )
    return a.detach().to(dtype)


def _problem(data: QPData) -> tuple[Problem, Any]:
    """The data as a :class:`Problem` of detached tensors in one float dtype, and ``r``."""
    data = data.dense()
    arrays = data.arrays()
    for a, name in zip(arrays, NAMES, strict=True):
        if not isinstance(a, torch.Tensor):
            _tensor(a, name, None, None)
    dtype = arrays[0].dtype
    for a in arrays[1:]:
        dtype = torch.promote_types(dtype, a.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float64
    if dtype not in (torch.float32, torch.float64):
        raise ParameterError(
            f"the torch backend solves in float32 or float64, not {dtype}; cast the data with .double()"
        )
    device = data.q.device
    prob = Problem(*(_tensor(a, name, dtype, device) for a, name in zip(arrays, NAMES, strict=True)))
    check_shapes(prob)
    r = None if data.r is None else _tensor(data.r, "r", dtype, device)
    return prob, r


CAPABILITIES = Capabilities(
    framework="torch",
    devices=("cpu", "cuda"),
    dense=True,
    sparse=False,
    warm_start=True,
    dtypes=("float32", "float64"),
    extra="torch",
    installed=torch is not None,
    description="qpdsl's batched dense proximal ALM (ProxQP-style) in PyTorch; follows the tensors' device",
)

register("torch", TorchBackend, CAPABILITIES)
