"""qpdsl's proximal ALM for the CPU, compiled by numba: one batch element per thread.

:mod:`.solver` holds the method for one element and the batch kernels, :mod:`.linalg` the
dense factorisation and its updates, :mod:`.linesearch` the exact line search,
:mod:`.scaling` the Ruiz equilibration, :mod:`.params` the solver parameters and
:mod:`.runtime` the threading. The ``cpu`` backend (``qpdsl.backends.cpu_backend``) drives them;
:mod:`.kkt` holds the backward pass's KKT solves for float64 host arrays (``qpdsl.diff.kkt``).
"""

from . import cache  # noqa: F401  (first: the kernels below are cached by its locator)
from .params import VALID_OPTIONS, Options, pack, parse
from .runtime import run, thread_count
from .solver import INFO_FIELDS, compiled_solve_one, solve_batch, solve_batch_serial

__all__ = [
    "INFO_FIELDS",
    "VALID_OPTIONS",
    "Options",
    "compiled_solve_one",
    "pack",
    "parse",
    "run",
    "solve_batch",
    "solve_batch_serial",
    "thread_count",
]
