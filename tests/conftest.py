"""Setup shared by every test module (pytest imports this before any test module)."""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator

import pytest

# XLA's multi-threaded Eigen pool on the CPU can wedge: a jitted call's block_until_ready never
# returns while every worker thread waits for work. It happened here in long jitted runs (about
# one in twenty on the loaded 2-core machine) and is known upstream; single-threaded Eigen avoids
# it. Set before any test imports jax.
NO_EIGEN_THREADS = "--xla_cpu_multi_thread_eigen=false"
if NO_EIGEN_THREADS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {NO_EIGEN_THREADS}".strip()


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Run a module's torch work on one thread: on small batched problems torch's intra-op threads
    only add wake-up latency (100x on this busy 2-core CPU). Restores the previous setting."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def release_compiled_jax_programs() -> Iterator[None]:
    """Drop JAX's compiled programs after each test module.

    XLA:CPU maps each compiled kernel's code into memory separately: a jitted qpdsl solve takes
    several hundred memory mappings, and a process that keeps every program of the suite runs
    into the kernel's per-process limit (``vm.max_map_count``, 65530 by default), where the next
    compilation crashes the interpreter.
    """
    yield
    jax = sys.modules.get("jax")
    if jax is not None:
        jax.clear_caches()
        gc.collect()
