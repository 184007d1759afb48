"""Small helpers that let the shared math run on numpy, torch and jax arrays alike.

The math modules (``qpdsl.diff``, the ALM core) take an array namespace ``xp`` from
:func:`namespace` and use only array-API functions plus the few helpers below, which
paper over the places where the frameworks differ (in-place scatter, dtype queries).
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

_NAMESPACES: dict[type, Any] = {}


def namespace(*arrays: Any) -> Any:
    """Return the array-API compatible namespace of ``arrays`` (numpy, torch or jax)."""
    import array_api_compat

    # The solvers ask for the namespace of one array many times per iteration: remember it per type.
    if len(arrays) == 1 and arrays[0] is not None:
        kind = type(arrays[0])
        xp = _NAMESPACES.get(kind)
        if xp is None:
            xp = _NAMESPACES[kind] = array_api_compat.array_namespace(arrays[0])
        return xp
    return array_api_compat.array_namespace(*[a for a in arrays if a is not None])


def int_dtype(xp: Any) -> Any:
    """The integer dtype for counts and status codes in namespace ``xp``: int64, except int32 for
    JAX without ``jax_enable_x64`` (asking it for int64 truncates and warns on every call)."""
    if xp.__name__.startswith("jax"):
        import jax

        if not jax.config.jax_enable_x64:
            return xp.int32
    return xp.int64


def framework(array: Any) -> str:
    """Return ``"numpy"``, ``"torch"`` or ``"jax"`` for an array."""
    mod = type(array).__module__
    if mod.startswith("torch"):
        return "torch"
    if mod.startswith("jax") or mod.startswith("jaxlib"):
        return "jax"
    return "numpy"


def device(array: Any) -> Any:
    """The device an array lives on (array-API ``device``)."""
    import array_api_compat

    dev = array_api_compat.device(array)
    # A jax array sharded over several devices reports its sharding, which is tied to the array's
    # rank: new arrays of other ranks (scalars, index vectors, masks) go to the default device.
    if hasattr(dev, "device_set") and not hasattr(dev, "platform"):
        return None
    return dev


def matvec(mat: Any, v: Any) -> Any:
    """Batched ``mat @ v`` for (B, r, c) and (B, c)."""
    # A row vector times mat' is several times faster than mat times a column in batched BLAS.
    return (v[..., None, :] @ namespace(mat).matrix_transpose(mat))[..., 0, :]


def rmatvec(mat: Any, v: Any) -> Any:
    """Batched ``mat' @ v`` for (B, r, c) and (B, r)."""
    return (v[..., None, :] @ mat)[..., 0, :]


def outer(a: Any, b: Any) -> Any:
    """Batched outer products (B, r, c) of (B, r) and (B, c)."""
    return a[..., :, None] * b[..., None, :]


def outer_sum(lefts: list[Any], rights: list[Any]) -> Any:
    """``sum_k outer(lefts[k], rights[k])`` (B, r, c) as one batched product of rank ``len(lefts)``:
    one pass over the output instead of one per term, many times faster than broadcasting."""
    xp = namespace(lefts[0])
    return xp.stack(lefts, axis=-1) @ xp.stack(rights, axis=-2)


def to_numpy(array: Any) -> np.ndarray:
    """Copy any framework's array to a host numpy array (detached)."""
    if framework(array) == "torch":
        return array.detach().cpu().numpy()
    return np.asarray(array)


def host_float64(array: Any) -> np.ndarray | None:
    """A C-contiguous float64 numpy view of ``array`` when it is a float64 numpy array or torch
    tensor on the CPU (copied only if not contiguous); None for anything else (other dtypes,
    devices, JAX arrays), which callers then handle with array code."""
    fw = framework(array)
    if isinstance(array, np.ndarray) and array.dtype == np.float64:
        return np.ascontiguousarray(array)
    if fw == "torch" and array.device.type == "cpu":
        import torch

        if array.dtype == torch.float64:
            return array.detach().contiguous().numpy()
    return None


def from_host(values: np.ndarray, like: Any) -> Any:
    """``values`` as an array of the framework of ``like`` (without a copy for torch on the CPU)."""
    if framework(like) == "torch":
        import torch

        return torch.from_numpy(values)
    return values


def scatter_2d(values: Any, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> Any:
    """Scatter batched ``values`` (B, nnz) into dense (B, *shape) at (rows, cols).

    The pattern (rows, cols) must not repeat an entry; compiled patterns never do.

    Differentiable in every framework (torch autograd, jax).
    """
    fw = framework(values)
    batch = values.shape[0]
    flat_idx = np.asarray(rows, dtype=np.int64) * shape[1] + np.asarray(cols, dtype=np.int64)
    size = shape[0] * shape[1]
    if fw == "torch":
        import torch

        idx = _flat_index(rows, cols, shape[1], values.device).expand(batch, -1)
        out = torch.zeros((batch, size), dtype=values.dtype, device=values.device)
        out = out.scatter_add(1, idx, values)
        return out.reshape(batch, *shape)
    if fw == "jax":
        import jax.numpy as jnp

        out = jax_add_columns(jnp.zeros((batch, size), dtype=values.dtype), flat_idx, values)
        return out.reshape(batch, *shape)
    out = np.zeros((batch, size), dtype=values.dtype)
    out[:, flat_idx] = values  # patterns compiled by qpdsl hold no duplicates
    return out.reshape(batch, *shape)


_FLAT_INDEX: dict[tuple[int, int, int, str], tuple[Any, Any, Any]] = {}
_FLAT_INDEX_SIZE = 64


def _flat_index(rows: np.ndarray, cols: np.ndarray, width: int, dev: Any) -> Any:
    """The flat positions ``rows * width + cols`` as an int64 tensor on ``dev``, kept for as long as
    the pattern arrays live: a compiled pattern is copied to the device once, not on every call.
    The pattern arrays must not change in place."""
    import torch

    key = (id(rows), id(cols), width, str(dev))
    hit = _FLAT_INDEX.get(key)
    if hit is not None and hit[0]() is rows and hit[1]() is cols:
        return hit[2]
    flat = np.asarray(rows, dtype=np.int64) * width + np.asarray(cols, dtype=np.int64)
    tensor = torch.as_tensor(flat, device=dev)
    try:
        refs = (weakref.ref(rows), weakref.ref(cols))
    except TypeError:  # not numpy arrays: nothing to key a cache on
        return tensor
    if len(_FLAT_INDEX) >= _FLAT_INDEX_SIZE:
        _FLAT_INDEX.clear()
    _FLAT_INDEX[key] = (*refs, tensor)
    return tensor


def jax_take_columns(a: Any, index: np.ndarray) -> Any:
    """``a[:, index]`` for a (B, k) JAX array and a numpy array of valid, non-negative columns.

    The gather ``a[:, index]`` traces to, without the index normalisation that ``jax.numpy``
    stages for negative entries (``index`` is known on the host).
    """
    from jax import lax

    return lax.gather(
        a,
        _jax_index(index, a.shape[1]),
        lax.GatherDimensionNumbers(offset_dims=(0,), collapsed_slice_dims=(1,), start_index_map=(1,)),
        slice_sizes=(a.shape[0], 1),
        mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS,
    )


def jax_add_columns(a: Any, index: np.ndarray, values: Any) -> Any:
    """``a.at[:, index].add(values)`` for JAX arrays and a numpy array of valid, non-negative columns
    (the scatter it traces to, without the index normalisation)."""
    from jax import lax

    return lax.scatter_add(
        a,
        _jax_index(index, a.shape[1]),
        values,
        lax.ScatterDimensionNumbers(
            update_window_dims=(0,), inserted_window_dims=(1,), scatter_dims_to_operand_dims=(1,)
        ),
        mode=lax.GatherScatterMode.FILL_OR_DROP,
    )


def _jax_index(index: np.ndarray, size: int) -> np.ndarray:
    """``index`` as the (k, 1) start indices of a gather or scatter along an axis of ``size``
    (int32 where the axis allows, as ``jax.numpy`` indexing makes them)."""
    dtype = np.int32 if size <= np.iinfo(np.int32).max else np.int64
    return np.asarray(index, dtype=dtype).reshape(-1, 1)


def gather_2d(dense: Any, rows: np.ndarray, cols: np.ndarray) -> Any:
    """Inverse of :func:`scatter_2d`'s adjoint: ``dense[:, rows, cols]`` (B, nnz)."""
    return dense[:, rows, cols]


def host_float(array: Any) -> bool:
    """Whether ``array`` is a float32 or float64 numpy array (what the compiled host kernels take)."""
    return isinstance(array, np.ndarray) and array.dtype in (np.float32, np.float64)


def host_kernels() -> Any:
    """The compiled host kernels (``qpdsl.backends.cpu_alm.linalg``), or None where numba is
    unavailable (callers then use their array code)."""
    try:
        from .backends.cpu_alm import linalg
    except ImportError:
        return None
    return linalg


def cholesky_ex(matrices: Any) -> tuple[Any, Any]:
    """Batched Cholesky factor of symmetric matrices (B, n, n) that reports failure per element.

    Returns
    -------
    L, ok
        Lower-triangular factors and a (B,) boolean array, False where the matrix was not
        numerically positive definite or has NaN or Inf entries (that element's factor is then
        meaningless: finite in torch, NaN in jax, possibly non-finite for numpy). Never raises
        for a failed element.
    """
    fw = framework(matrices)
    if fw == "torch":
        import torch

        L, info = torch.linalg.cholesky_ex(matrices)
        return L, (info == 0) & torch.isfinite(L).all(dim=(-2, -1))
    if fw == "jax":
        import jax.numpy as jnp

        L = jnp.linalg.cholesky(matrices)
        return L, jnp.all(jnp.isfinite(L), axis=(-2, -1))
    mats = np.asarray(matrices)
    if mats.ndim == 3 and host_float(mats) and (kernels := host_kernels()) is not None:
        return kernels.cholesky_batch(mats)
    out = np.zeros_like(mats)
    ok = np.ones(mats.shape[0], dtype=bool)
    for k, M in enumerate(mats):
        try:
            out[k] = np.linalg.cholesky(M)
        except np.linalg.LinAlgError:
            ok[k] = False
    return out, ok


def cho_solve(L: Any, rhs: Any) -> Any:
    """Solve ``L L' x = rhs`` for batched lower-triangular ``L`` (B, n, n) and ``rhs`` (B, n)."""
    fw = framework(L)
    if fw == "torch":
        import torch

        # Two triangular solves beat torch.cholesky_solve for one right-hand side per matrix.
        w = torch.linalg.solve_triangular(L, rhs[..., None], upper=False)
        return torch.linalg.solve_triangular(L.mT, w, upper=True)[..., 0]
    if fw == "jax":
        from jax.scipy.linalg import solve_triangular

        w = solve_triangular(L, rhs[..., None], lower=True)
        return solve_triangular(L, w, lower=True, trans=1)[..., 0]
    import scipy.linalg

    pairs = zip(np.asarray(L), np.asarray(rhs), strict=True)
    return np.stack([scipy.linalg.cho_solve((Lk, True), r) for Lk, r in pairs])


def lu_factor(matrices: Any) -> Any:
    """Batched LU factorisation (with partial pivoting) of square matrices (B, n, n).

    Returns an opaque factor for :func:`lu_solve`. Cheaper than an inverse by a factor of
    about three, and as accurate.
    """
    fw = framework(matrices)
    if fw == "torch":
        import torch

        return torch.linalg.lu_factor(matrices)
    if fw == "jax":
        import jax.scipy.linalg

        return jax.scipy.linalg.lu_factor(matrices)
    import scipy.linalg

    return [scipy.linalg.lu_factor(M) for M in np.asarray(matrices)]


def lu_solve(factor: Any, rhs: Any) -> Any:
    """Solve ``K x = rhs`` (B, n) with a factor from :func:`lu_factor`; linear in ``rhs``."""
    fw = framework(rhs)
    if fw == "torch":
        import torch

        lu, pivots = factor
        return torch.linalg.lu_solve(lu, pivots, rhs[..., None])[..., 0]
    if fw == "jax":
        import jax.scipy.linalg

        return jax.scipy.linalg.lu_solve(factor, rhs[..., None])[..., 0]
    import scipy.linalg

    return np.stack([scipy.linalg.lu_solve(f, r) for f, r in zip(factor, np.asarray(rhs), strict=True)])


def host_values(*scalars: Any) -> list[Any]:
    """The values of 0-d arrays as Python numbers, copied to the host together (one read)."""
    if framework(scalars[0]) == "torch":
        import torch

        dtype = torch.float64 if any(s.is_floating_point() for s in scalars) else torch.int64
        return torch.stack([s.to(dtype) for s in scalars]).tolist()
    return [np.asarray(s).item() for s in scalars]


def concrete_any(mask: Any) -> bool:
    """``bool(any(mask))`` where the value is known now; True for a traced JAX array.

    Lets shared math skip work that no batch element needs, without breaking ``jit``.
    """
    try:
        return bool(namespace(mask).any(mask))
    except Exception as err:  # jax.errors.ConcretizationTypeError and its relatives
        if framework(mask) == "jax":
            return True
        raise err


def is_traced(array: Any) -> bool:
    """True for a JAX tracer (inside ``jit``, ``vmap``, ``grad``...): its values are not known now."""
    if framework(array) != "jax":
        return False
    import jax

    return isinstance(array, jax.core.Tracer)


def values_known(array: Any) -> bool:
    """False for arrays whose values cannot be read now: a JAX tracer, a torch tensor on the
    ``meta`` device (shapes only). Code that must run on them makes no value-dependent choice."""
    if is_traced(array):
        return False
    return not (framework(array) == "torch" and array.device.type == "meta")


def branch(pred: Any, true_fn: Any, false_fn: Any, operand: Any) -> Any:
    """``true_fn(operand) if pred else false_fn(operand)``, also for a traced JAX ``pred``.

    Traced, this is :func:`jax.lax.cond`: use it on primal values only (JAX cannot transpose
    a branch on a value that depends on the linear inputs of a JVP).
    """
    if is_traced(pred):
        import jax

        return jax.lax.cond(pred, true_fn, false_fn, operand)
    return true_fn(operand) if bool(pred) else false_fn(operand)


def put_rows(array: Any, index: Any, values: Any) -> Any:
    """A copy of ``array`` with ``array[index] = values`` along the first axis (concrete arrays)."""
    fw = framework(array)
    if fw == "torch":
        return array.index_copy(0, index, values)
    if fw == "jax":
        return array.at[index].set(values)
    out = np.array(array, copy=True)
    out[np.asarray(index)] = values
    return out
