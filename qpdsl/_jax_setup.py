"""A warning for the jaxlib releases whose CPU linear algebra can deadlock."""

from __future__ import annotations

import warnings

# jaxlib 0.10.0 to 0.11.0 split a batched LAPACK call (Cholesky, SVD, ...) into tasks on XLA's
# CPU thread pool and block the calling pool thread until they finish. When as many such calls
# run at once as the pool has threads (two on a 2-core machine: a jitted solve and its
# backward have independent factorisations), every thread waits and the call never returns.

_warned = False


def warn_if_deadlocking_jaxlib() -> None:
    """Warn once per process when the installed jaxlib is 0.10.x or 0.11.0."""
    global _warned
    if _warned:
        return
    _warned = True
    try:
        import jaxlib
    except ImportError:
        return
    version = getattr(jaxlib, "__version__", "")
    if version == "0.11.0" or version.startswith("0.10."):
        warnings.warn(
            f"jaxlib {version} can deadlock on the CPU when two batched factorisations run at "
            "once (a jitted call never returns, every XLA thread idle); qpdsl's jitted solves and "
            "gradients do this. Install jax and jaxlib 0.9.2 or >= 0.11.1, e.g. "
            "pip install 'jax==0.9.2' 'jaxlib==0.9.2'.",
            RuntimeWarning,
            stacklevel=3,
        )
