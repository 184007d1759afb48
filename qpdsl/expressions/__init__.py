"""The symbolic modelling language: leaves, affine operators, atoms, constraints."""

from .atoms import (
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
from .constraints import Constraint, Equality, Inequality
from .expression import Constant, Curvature, Expression, Parameter, Sign, Variable

__all__ = [
    "Constant", "Constraint", "Curvature", "Equality", "Expression", "Inequality", "Parameter", "Sign",
    "Variable", "abs", "cumsum", "diag", "hstack", "huber", "max", "maximum", "mean", "min", "minimum",
    "multiply", "neg", "norm1", "norm_inf", "pos", "quad_form", "reshape", "square", "sum", "sum_squares",
    "vstack",
]
