"""Setup shared by every test module (pytest imports this before any test module)."""

from __future__ import annotations

import os
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
