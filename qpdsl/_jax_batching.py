"""Batching helpers for traced JAX computations whose batch elements are independent.

Under ``jax.vmap`` such a computation can take the mapped axis into its own batch axis instead
of being batched primitive by primitive: :func:`fold_mapped_axis` does the reshaping, and
:func:`host_check` uses it so that a host callback sees the whole batch at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def fold_mapped_axis(arrays: Sequence[Any], mapped: Sequence[bool], axis_size: int, batch: int) -> list[Any]:
    """``(V, B, ...)`` arrays (``mapped``) and ``(B, ...)`` ones (not mapped) as ``(V * B, ...)`` arrays.

    Unmapped arrays are repeated for each of the ``axis_size`` mapped elements; element ``b`` of
    mapped element ``v`` becomes element ``v * batch + b``.
    """
    import jax.numpy as jnp

    def fold(a: Any, is_mapped: bool) -> Any:
        core = a.shape[2:] if is_mapped else a.shape[1:]
        full = jnp.broadcast_to(a if is_mapped else a[None], (axis_size, batch, *core))
        return full.reshape(axis_size * batch, *core)

    return [fold(a, m) for a, m in zip(arrays, mapped, strict=True)]


def host_check(check: Callable[..., None], *arrays: Any) -> None:
    """Call ``check(*arrays)`` on the host (numpy arrays) when the traced computation runs.

    Every array has the batch on axis 0. Under ``jax.vmap`` the mapped axes are folded into that
    axis (:func:`fold_mapped_axis`), so ``check`` runs once and sees the whole batch: the
    indices it names count the flattened ``vmap`` and batch dimensions, and it can report every
    failing element rather than the first mapped element it is called for.
    """
    import jax

    @jax.custom_batching.custom_vmap
    def run(values: list[Any]) -> Any:
        jax.debug.callback(check, *values)
        return values[0][:0]  # custom_vmap needs an output; the callback's effect keeps it

    @run.def_vmap
    def fold(axis_size: int, in_batched: list[Any], values: list[Any]) -> tuple[Any, bool]:
        mapped = in_batched[0]
        batch = next(v.shape[1] if m else v.shape[0] for v, m in zip(values, mapped, strict=True))
        out = run(fold_mapped_axis(values, mapped, axis_size, batch))
        return out.reshape(axis_size, *out.shape), True

    run([jax.lax.stop_gradient(a) for a in arrays])
