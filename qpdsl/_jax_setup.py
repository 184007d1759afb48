"""JAX set-up shared by qpdsl's JAX modules: a warning for the jaxlib releases whose CPU linear
algebra can deadlock, and the persistent compilation cache."""

from __future__ import annotations

import os
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


def enable_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache, unless the user chose otherwise.

    A qpdsl solve compiles for several seconds per new shape; with the cache, a later process
    loads the compiled program instead. ``QPDSL_JAX_CACHE`` decides: ``0`` or ``off`` leaves
    the cache off, a path puts it there, unset means ``$XDG_CACHE_HOME/qpdsl/jax`` (else
    ``~/.cache/qpdsl/jax``). A cache directory the user already configured
    (``jax_compilation_cache_dir`` or ``JAX_COMPILATION_CACHE_DIR``) is kept, and nothing is
    changed when the folder cannot be created. JAX does not cache programs that contain host
    callbacks (``on_failure="raise"`` under ``jax.jit``, backends reached through
    ``pure_callback``).

    Returns
    -------
    str or None
        The cache directory in use, or None when the cache stays off.
    """
    import jax

    current = jax.config.jax_compilation_cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if current:
        return current
    choice = os.environ.get("QPDSL_JAX_CACHE", "")
    if choice.lower() in ("0", "off", "false", "no"):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = choice or os.path.join(base, "qpdsl", "jax")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return None
    if not os.access(folder, os.W_OK):
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    return folder
