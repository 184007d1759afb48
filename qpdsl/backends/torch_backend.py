"""The ``torch`` backend: qpdsl's batched dense proximal ALM (:mod:`.alm`) driven in PyTorch.

Runs where the input tensors live (CPU or CUDA), in float32 or float64. The loop checks
the batch-wide "all done" flag only every few iterations; on CPU, where that costs
nothing, it also drops finished elements from the working batch and refactorises only
the elements whose active set or penalties changed. ``settings.options`` override the
fields of :class:`~.alm.core.Config` (e.g. ``rho``, ``mu_in``, ``max_inner``).
"""

from __future__ import annotations

from typing import Any

from ..errors import ParameterError
from ..qp import QPData, QPResult, Settings, WarmStart
from . import Capabilities, register
from .alm import core
from .alm.scaling import Problem, Scaling, equilibrate

try:
    import torch
except Exception:  # registration must never raise, whatever breaks inside the package
    torch = None  # type: ignore[assignment]

CHECK_EVERY = 4  # iterations between host-side looks at the "all done" flag
COMPACT_BELOW = 0.75  # shrink the working batch once this fraction or less is still running


class TorchBackend:
    """Batched dense proximal ALM in PyTorch; closest-feasible stage for infeasible elements."""

    capabilities: Capabilities

    def __init__(self, name: str = "torch") -> None:
        self.name = name
        self.capabilities = CAPABILITIES

    def solve(self, data: QPData, settings: Settings, warm_start: WarmStart | None = None) -> QPResult:
        """Solve a batch of dense (or SparseBatch, densified) torch QPs; see :class:`~qpdsl.backends.Backend`.

        Raises
        ------
        ParameterError
            If the data are not torch tensors of consistent shapes on one device.
        """
        from .closest import solve_closest_feasible

        return solve_closest_feasible(lambda d, w: solve_raw(d, settings, w), data, settings, warm_start)


def solve_raw(data: QPData, settings: Settings, warm_start: WarmStart | None = None) -> QPResult:
    """One ALM solve of the batch, without the closest-feasible stage (infeasible: PRIMAL_INFEASIBLE)."""
    prob, r = _problem(data)
    dtype = prob.q.dtype
    cfg = core.make_config(settings, dtype)
    warm = warm_start or WarmStart()
    with torch.no_grad():
        clean, valid = core.sanitize(prob)
        scaled, scaling = equilibrate(clean)
        x0, y0, z0 = (
            None if a is None else _tensor(a, name, dtype, prob.q.device)
            for a, name in ((warm.x, "warm_start.x"), (warm.y, "warm_start.y"), (warm.z, "warm_start.z"))
        )
        st = core.init_state(scaled, scaling, cfg, valid, x0, y0, z0)
        st = _iterate(scaled, scaling, st, cfg)
        sol = core.finalize(clean, scaling, st, valid)
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


def _iterate(prob: Problem, scaling: Scaling, st: core.State, cfg: core.Config) -> core.State:
    """Run :func:`core.step` until no element is running, shrinking the working batch on CPU."""
    compact = st.x.device.type == "cpu"
    factorize = _factorize_subset if compact else core.factorize_all
    index = torch.arange(st.x.shape[0], device=st.x.device)
    full, sub_prob, sub_scaling = st, prob, scaling
    while True:
        for _ in range(CHECK_EVERY):
            st = core.step(sub_prob, sub_scaling, st, cfg, factorize)
        running = st.status == core.RUNNING
        count = int(running.sum())
        if count == 0:
            break
        if compact and count <= COMPACT_BELOW * index.numel():
            full = _put(full, index, st)
            keep = running.nonzero()[:, 0]
            index = index[keep]
            st, sub_prob, sub_scaling = _take(st, keep), _take(sub_prob, keep), _take(sub_scaling, keep)
    return _put(full, index, st)


def _take(tree: Any, index: Any) -> Any:
    return type(tree)(*(a[index] for a in tree))


def _put(full: Any, index: Any, part: Any) -> Any:
    return type(full)(*(a.index_copy(0, index, b) for a, b in zip(full, part, strict=True)))


def _factorize_subset(prob: Problem, st: core.State, active: Any, need: Any, rho: float) -> tuple[Any, Any]:
    """:func:`core.factorize_all` computing only the elements in ``need`` and only their active rows."""
    ok = torch.ones_like(need)
    index = need.nonzero()[:, 0]
    if index.numel() == 0:
        return st.L, ok
    sub_active = active[index]
    rows = int(sub_active.sum(dim=-1).max()) if sub_active.shape[1] else 0
    H = core.hessian(_take(prob, index), st.mu_eq[index], st.mu_in[index], sub_active, rho, max_active=rows)
    from .._array import cholesky_ex

    L_sub, ok_sub = cholesky_ex(H)
    L = st.L.index_copy(0, index, torch.where(ok_sub[:, None, None], L_sub, st.L[index]))
    return L, ok.index_copy(0, index, ok_sub)


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
    names = ("P", "q", "A", "b", "C", "l", "u")
    arrays = [getattr(data, k) for k in names]
    for a, name in zip(arrays, names, strict=True):
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
    P, q, A, b, C, l, u = (_tensor(a, name, dtype, device) for a, name in zip(arrays, names, strict=True))
    batch, n = q.shape
    p, m = b.shape[1], l.shape[1]
    expected = {"P": (batch, n, n), "A": (batch, p, n), "C": (batch, m, n), "u": (batch, m)}
    for name, arr in (("P", P), ("A", A), ("C", C), ("u", u)):
        if tuple(arr.shape) != expected[name]:
            raise ParameterError(
                f"{name} has shape {tuple(arr.shape)}, expected {expected[name]} "
                f"from q {tuple(q.shape)}, b {tuple(b.shape)}, l {tuple(l.shape)}"
            )
    r = None if data.r is None else _tensor(data.r, "r", dtype, device)
    return Problem(P, q, A, b, C, l, u), r


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
