"""The backward pass shared by every backend: adjoint and tangent of the QP solution map.

Framework-neutral: the functions take numpy, torch or jax arrays and use only array-API
operations, batched, without host synchronisation (traceable under ``jax.jit``).
"""

from .adjoint import QPGrads, qp_jvp, qp_vjp

__all__ = ["QPGrads", "qp_jvp", "qp_vjp"]
