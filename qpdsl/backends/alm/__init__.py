"""A batched dense proximal augmented-Lagrangian QP solver, written once for any array framework.

:mod:`.core` holds one iteration as pure functions of arrays; the framework backends
(``qpdsl.backends.torch_backend``, and a JAX one) only drive the loop.
"""

from .core import Config, Solution, State, finalize, init_state, make_config, sanitize, step
from .scaling import Problem, Scaling, equilibrate

__all__ = [
    "Config",
    "Problem",
    "Scaling",
    "Solution",
    "State",
    "equilibrate",
    "finalize",
    "init_state",
    "make_config",
    "sanitize",
    "step",
]
