"""qpdsl: parametric convex QPs, compiled once, solved batched, differentiable in every parameter."""

from .backends import available_backends
from .cvxpy_import import from_cvxpy
from .errors import BackendNotFound, ModelError, ParameterError, QPDSLError, SolverError
from .expressions import (
    Constant,
    Constraint,
    Expression,
    Parameter,
    Variable,
    abs,
    cumsum,
    diag,
    hstack,
    huber,
    max,
    maximum,
    mean,
    min,
    minimum,
    multiply,
    neg,
    norm1,
    norm_inf,
    pos,
    quad_form,
    reshape,
    square,
    sum,
    sum_squares,
    vstack,
)
from ._layers import Shift
from .problem import Maximize, Minimize, Problem, Solution
from .qp import QPData, QPResult, Settings, Status, WarmStart

__version__ = "0.1.0"

__all__ = [
    "BackendNotFound", "Constant", "Constraint", "Expression", "Maximize", "Minimize", "ModelError",
    "Parameter", "ParameterError", "Problem", "QPDSLError", "QPData", "QPResult", "Settings", "Solution",
    "Shift", "SolverError", "Status", "Variable", "WarmStart", "abs", "available_backends", "cumsum", "diag",
    "hstack", "huber", "max", "maximum", "mean", "min", "minimum", "multiply", "neg", "norm1", "norm_inf",
    "pos", "quad_form", "reshape", "square", "sum", "sum_squares", "vstack", "from_cvxpy",
]

