"""Problem, objectives, and solving with numpy in and numpy out."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ._array import to_numpy
from .compiler import ParametricQP, compile_problem
from .cvxpy_import import translate
from .errors import ModelError, ParameterError, ProblemKeyError
from .expressions.constraints import Constraint
from .expressions.expression import Expression, Parameter, Variable, as_expr
from .qp import QPData, QPResult, Settings, Status, WarmStart
from .validation import as_real_array, batched_shape, check_all_parameter_values


class Minimize:
    """Minimise a convex scalar expression."""

    def __init__(self, expr: Any):
        self.expr = as_expr(expr)
        if self.expr.size != 1:
            raise ModelError(f"the objective must be a scalar, got shape {self.expr.shape}; sum it")
        if not self.expr.is_convex():
            raise ModelError(
                f"Minimize({self.expr.describe()}): the objective is {self.expr.curvature.value}, not convex"
                + _curvature_hint(self.expr, "qd.Maximize")
            )

    @property
    def minimized(self) -> Expression:
        return self.expr

    sign = 1.0


class Maximize:
    """Maximise a concave scalar expression."""

    def __init__(self, expr: Any):
        self.expr = as_expr(expr)
        if self.expr.size != 1:
            raise ModelError(f"the objective must be a scalar, got shape {self.expr.shape}; sum it")
        if not self.expr.is_concave():
            raise ModelError(
                f"Maximize({self.expr.describe()}): the objective is {self.expr.curvature.value}, not concave"
                + _curvature_hint(self.expr, "qd.Minimize")
            )

    @property
    def minimized(self) -> Expression:
        return -self.expr

    sign = -1.0


def _curvature_hint(expr: Expression, other: str = "") -> str:
    """Point at the first subexpression whose curvature is unknown (the culprit)."""
    if expr.curvature.value in ("convex", "concave"):
        return f"; did you mean {other}({expr.describe()})? Otherwise flip the sign of the objective"
    stack = [expr]
    culprit = None
    while stack:
        node = stack.pop()
        if node.curvature.value == "unknown" and all(a.curvature.value != "unknown" for a in node.args):
            culprit = node
            break
        stack.extend(node.args)
    if culprit is None:
        return ""
    hint = f"; the offending expression is {culprit.describe()}"
    curved = [a for a in culprit.args if a.curvature.value in ("convex", "concave")]
    factors = [a for a in culprit.args if a.curvature.value == "constant" and not a.sign.nonneg]
    if type(culprit).__name__ in ("Multiply", "MatMul") and factors:
        hint += (
            f" (the factor {factors[0].describe()} scaling a convex or concave term must have a known sign: "
            "a nonnegative constant, or a Parameter declared nonneg=True)"
        )
    elif type(culprit).__name__ == "Add":
        hint += (
            " (it adds "
            + " and ".join(f"{a.describe()} ({a.curvature.value})" for a in curved)
            + "; a sum must not mix convex and concave terms)"
        )
    elif curved:
        hint += (
            f" (its argument {curved[0].describe()} is {curved[0].curvature.value}; DCP allows a convex "
            "argument only where the function is increasing, a concave one only where it is decreasing)"
        )
    return hint


class Problem:
    """A parametric convex QP: ``Problem(Minimize(f), [constraints])``.

    The model is checked (curvature, QP-representability, parameter rules) and compiled
    when the problem is built; any violation raises :class:`~qpdsl.ModelError`.
    """

    def __init__(self, objective: Minimize | Maximize, constraints: Sequence[Constraint] | None = None):
        if not isinstance(objective, (Minimize, Maximize)):
            raise ModelError("the objective must be qd.Minimize(expr) or qd.Maximize(expr)")
        self.objective = objective
        self.constraints: list[Constraint] = _constraint_list(constraints)
        for c in self.constraints:
            if not isinstance(c, Constraint):
                raise ModelError(f"{c!r} is not a constraint; write expressions with ==, <= or >=")
            c.check()
        self._compiled: ParametricQP | None = None
        self.compile()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_cvxpy_ids", None)  # keyed by id() of objects of this process
        return state

    # ------------------------------------------------------------ structure
    def _expressions(self) -> Iterable[Expression]:
        yield self.objective.expr
        for c in self.constraints:
            yield c.lhs
            yield c.rhs

    def variables(self) -> list[Variable]:
        """User variables in order of first appearance."""
        seen: dict[int, Variable] = {}
        for e in self._expressions():
            for v in e.variables():
                seen.setdefault(v.id, v)
        return list(seen.values())

    def parameters(self) -> list[Parameter]:
        """Parameters in order of first appearance (the order of ``theta``)."""
        seen: dict[int, Parameter] = {}
        for e in self._expressions():
            for p in e.parameters():
                seen.setdefault(p.id, p)
        return list(seen.values())

    def compile(self) -> ParametricQP:
        """The standard-form program (cached)."""
        if self._compiled is None:
            variables = self.variables()
            if not variables:
                raise ModelError("the problem has no variables")
            self._compiled = compile_problem(
                self.objective.minimized, self.constraints, variables, self.parameters()
            )
        return self._compiled

    # ------------------------------------------------------------ layers
    def to_torch(
        self,
        parameters: Sequence[Parameter] | None = None,
        variables: Sequence[Any] | None = None,
        backend: str | None = None,
        on_failure: str = "raise",
        warm_start: bool = False,
        **settings: Any,
    ) -> Any:
        """A ``torch.nn.Module`` mapping parameter values to the requested outputs, differentiably.

        Parameters
        ----------
        parameters
            The layer's inputs, in order (default: every parameter of the problem). Parameters not
            listed keep their ``value=``.
        variables
            The outputs, in order: a Variable (its value), a Constraint (its dual) or
            ``qd.Shift(constraint)`` (its shift s*). Default: every variable.
        backend
            Any name from :func:`qpdsl.available_backends` (default ``auto``, chosen per call).
        on_failure
            ``"raise"`` (:class:`~qpdsl.SolverError`), ``"nan"`` or ``"ignore"`` for failed elements.
        warm_start
            Start each call from the previous call's solution when the batch size matches.
        **settings
            Fields of :class:`~qpdsl.Settings` or backend options.
        """
        from ._layers import make_torch_layer

        return make_torch_layer(
            self,
            *self._layer_signature(parameters, variables),
            backend,
            _check_on_failure(on_failure),
            warm_start,
            Settings().with_options(**settings),
        )

    def to_jax(
        self,
        parameters: Sequence[Parameter] | None = None,
        variables: Sequence[Any] | None = None,
        backend: str | None = None,
        on_failure: str = "raise",
        **settings: Any,
    ) -> Any:
        """A JAX function ``f(*parameter_values) -> outputs`` that works under jit, vmap, grad and jvp.

        Arguments as :meth:`to_torch`; the default backend is ``jax`` when installed. CPU backends
        are reached through ``jax.pure_callback``.
        """
        from ._layers import make_jax_function

        return make_jax_function(
            self,
            *self._layer_signature(parameters, variables),
            backend,
            _check_on_failure(on_failure),
            Settings().with_options(**settings),
        )

    def _layer_signature(
        self, parameters: Sequence[Parameter] | None, variables: Sequence[Any] | None
    ) -> tuple[Sequence[Parameter], Sequence[Any]]:
        """A layer's inputs and outputs: the given ones resolved, or every parameter and variable.

        Raises
        ------
        ParameterError
            When a parameter is listed twice (its gradient would be split between two inputs).
        """
        inputs = self.parameters() if parameters is None else translate(self, parameters)
        seen: set[int] = set()
        for p in inputs:
            if id(p) in seen:
                raise ParameterError(
                    f"parameter {getattr(p, 'name', p)} is listed twice in parameters=[...]; "
                    "list each layer input once"
                )
            seen.add(id(p))
        return inputs, self.variables() if variables is None else translate(self, variables)

    # ------------------------------------------------------------ solving
    def solve(
        self,
        params: Mapping[Parameter | str, Any] | None = None,
        backend: str | None = None,
        warm_start: WarmStart | None = None,
        **settings: Any,
    ) -> Solution:
        """Solve for one parameter set or a batch (a leading batch dimension on any value).

        Parameters
        ----------
        params
            ``{Parameter or name: value}``; parameters created with ``value=`` may be omitted.
        backend
            A name from :func:`qpdsl.available_backends` (default ``auto``, chosen per call).
        warm_start
            Initial guesses for the standard-form x, y, z.
        **settings
            Fields of :class:`~qpdsl.Settings` (``eps_abs``, ``max_iter``, ...) or backend options.
        """
        from .solve.core import resolve_backend, solve_batch

        if "on_failure" in settings:
            raise ParameterError(
                "Problem.solve takes no on_failure: it never raises for a failed solve (each batch "
                "element's outcome is in Solution.status) and always raises "
                "ParameterError for invalid parameter values; for on_failure='nan' on invalid values, "
                "use a layer (to_torch / to_jax)"
            )
        qp = self.compile()
        values, batch, batched = collect_parameter_values(qp.parameters, translate(self, params or {}))
        theta = qp.stack_theta(values, batch)
        data = qp.apply(theta)
        solver = resolve_backend(backend, None, sparse_hint=(qp.n, qp.density()))
        caps = solver.capabilities
        use_sparse = caps.sparse and qp.n > 300 and qp.density() < 0.05
        if not use_sparse or caps.framework != "numpy":
            data = data.dense()
        data = _to_framework(data, caps.framework)
        outcome = solve_batch(
            solver, data, Settings().with_options(**settings), warm_start, "ignore", qp.shiftable
        )
        return Solution(self, qp, _result_to_numpy(outcome.result), to_numpy_data(data), batched)


def _constraint_list(constraints: Any) -> list[Constraint]:
    """The constraints as a list; a single constraint or expression is refused (cvxpy needs a list too)."""
    if constraints is None:
        return []
    if isinstance(constraints, Constraint):
        raise ModelError(
            "the constraints of a Problem are a list: wrap the single constraint in [ ], "
            f"qd.Problem(objective, [{constraints.describe()}])"
        )
    if isinstance(constraints, Expression):
        raise ModelError(
            f"{constraints.describe()} is an expression, not a list of constraints; "
            "write constraints with ==, <= or >= and pass them in a list"
        )
    return list(constraints)


def _check_on_failure(on_failure: str) -> str:
    if on_failure not in ("raise", "nan", "ignore"):
        raise ParameterError(f"on_failure must be 'raise', 'nan' or 'ignore', not {on_failure!r}")
    return on_failure


def collect_parameter_values(
    parameters: list[Parameter], params: Mapping[Parameter | str, Any]
) -> tuple[dict[Parameter, np.ndarray], int, bool]:
    """Check and broadcast numpy parameter values to a common batch (B, *shape).

    Raises
    ------
    ParameterError
        Unknown or missing parameters, wrong shapes, NaN/Inf, invalid PSD or sign data.
    """
    lookup = _ParameterLookup(parameters)
    given: dict[Parameter, np.ndarray] = {}
    for key, value in params.items():
        p = lookup(key)
        if p in given:
            raise ParameterError(f"parameter {p.name} is given twice (by name and by object); give it once")
        given[p] = as_real_array(p, value)
    for p in parameters:
        if p not in given:
            if p.value is None:
                raise ParameterError(f"parameter {p.name} has no value; pass it to solve()")
            given[p] = p.value
    batch = 1
    batched = False
    batch_from = ""
    for p, v in given.items():
        if v.shape == p.shape:
            continue
        if v.ndim == len(p.shape) + 1 and v.shape[1:] == p.shape:
            if batched and v.shape[0] != batch:
                raise ParameterError(
                    f"parameter {p.name}: batch size {v.shape[0]} differs from the batch size "
                    f"{batch} of parameter {batch_from}; give every batched value the same "
                    "leading dimension"
                )
            batch, batched, batch_from = v.shape[0], True, p.name
            continue
        raise ParameterError(
            f"parameter {p.name}: expected shape {p.shape} (or {batched_shape(p.shape)}), got {v.shape}"
        )
    if batched and batch == 0:
        raise ParameterError(f"parameter {batch_from} has batch size 0; pass at least one batch element")
    out = {p: np.broadcast_to(v, (batch, *p.shape)) if v.shape == p.shape else v for p, v in given.items()}
    check_all_parameter_values([(p, v, given[p].shape != p.shape) for p, v in out.items()])
    return out, batch, batched


class _ParameterLookup:
    """Find a problem's parameter by object or by name; a name that two parameters share is refused."""

    def __init__(self, parameters: Sequence[Parameter]):
        self.ids = {id(p) for p in parameters}
        self.by_name: dict[str, list[Parameter]] = {}
        for p in parameters:
            self.by_name.setdefault(p.name, []).append(p)

    def __call__(self, key: Any) -> Parameter:
        if isinstance(key, str):
            named = self.by_name.get(key, [])
            if len(named) > 1:
                raise ParameterError(
                    f"{len(named)} parameters named {key!r} in this problem; pass the Parameter objects "
                    "as keys instead of the name (or give the parameters distinct names)"
                )
            if named:
                return named[0]
        elif isinstance(key, Parameter) and id(key) in self.ids:
            return key
        name = key if isinstance(key, str) else getattr(key, "name", repr(key))
        known = ", ".join(self.by_name) or "none"
        raise ParameterError(f"{name!r} is not a parameter of this problem (its parameters: {known})")


_WARNED_JAX_FLOAT32 = False


def _to_framework(data: QPData, fw: str) -> QPData:
    if fw == "torch":
        import torch

        return data.map_arrays(lambda a: torch.as_tensor(np.ascontiguousarray(a)))
    if fw == "jax":
        import jax
        import jax.numpy as jnp

        global _WARNED_JAX_FLOAT32
        wide = np.asarray(data.q).dtype == np.float64  # float32 values: the user chose float32
        if wide and not jax.config.jax_enable_x64 and not _WARNED_JAX_FLOAT32:
            _WARNED_JAX_FLOAT32 = True  # once per process: the setting does not change between calls
            warnings.warn(
                "jax_enable_x64 is off, so the jax backend solves in float32 (tolerance 1e-5); "
                "call jax.config.update('jax_enable_x64', True) for float64",
                stacklevel=3,
            )
        return data.map_arrays(jnp.asarray)
    return data


def to_numpy_data(data: QPData) -> QPData:
    return data.map_arrays(to_numpy) if not data.is_sparse else data


def _result_to_numpy(result: QPResult) -> QPResult:
    def conv(a: Any) -> Any:
        return None if a is None else to_numpy(a)

    return QPResult(
        **{f.name: conv(getattr(result, f.name)) for f in fields(QPResult) if f.name != "extras"},
        extras=result.extras,
    )


@dataclass(repr=False)
class Solution:
    """The result of :meth:`Problem.solve`, read back in the user's terms.

    ``sol[x]`` (or ``sol["x"]``, by name) is the value of variable x, with a leading batch
    dimension when the parameters were batched; ``status`` the status label(s); ``objective``
    the objective value(s); ``dual(c)`` the dual of constraint c; ``shift`` the constraint shift
    of each user constraint (zero when the problem is feasible).
    """

    problem: Problem
    qp: ParametricQP
    raw: QPResult
    data: QPData
    batched: bool

    def _unbatch(self, a: np.ndarray) -> Any:
        return a if self.batched else a[0]

    def __getitem__(self, var: Variable | str) -> np.ndarray:
        """The value of a variable, given as the Variable object or by its name.

        Raises
        ------
        ProblemKeyError
            The variable is not in the problem, no variable has the name, or several share it.
        """
        var = self._variable_named(var) if isinstance(var, str) else var
        sl = self.qp.variables.get(translate(self.problem, var))
        if sl is None:
            raise ProblemKeyError(f"{getattr(var, 'name', var)!r} is not a variable of this problem")
        x = self.raw.x[:, sl.offset : sl.offset + sl.size]
        return self._unbatch(x.reshape(x.shape[0], *sl.shape))

    def _variable_named(self, name: str) -> Variable:
        named = [v for v in self.qp.variables if v.name == name]
        if len(named) == 1:
            return named[0]
        if named:
            raise ProblemKeyError(
                f"{len(named)} variables named {name!r} in this problem; look them up with the "
                "Variable objects (sol[x]) or give them distinct names"
            )
        known = ", ".join(v.name for v in self.qp.variables)
        raise ProblemKeyError(f"no variable named {name!r} in this problem (its variables: {known})")

    def __repr__(self) -> str:
        variables = ", ".join(f"{v.name} {v.shape}" for v in self.qp.variables)
        batch = self.raw.x.shape[0] if self.batched else None
        return (
            f"Solution(status={_short(self.status)}, objective={_short(self.objective)}, "
            f"variables=[{variables}], batch={batch})"
        )

    @property
    def statuses(self) -> list[Status]:
        return self.raw.statuses()

    @property
    def status(self) -> str | list[str]:
        labels = [s.label for s in self.statuses]
        return labels if self.batched else labels[0]

    @property
    def objective(self) -> float | np.ndarray:
        data = self.data.dense()
        x = self.raw.x
        value = 0.5 * np.einsum("bi,bij,bj->b", x, data.P, x) + np.einsum("bi,bi->b", data.q, x)
        if data.r is not None:
            value = value + data.r
        value = self.problem.objective.sign * value
        ok = np.array([s.ok for s in self.statuses])
        value = np.where(ok, value, np.nan)
        return value if self.batched else float(value[0])

    def _rows(self, constraint: Constraint) -> tuple[str, slice, tuple[int, ...], float]:
        rows = self.qp.constraints.get(translate(self.problem, constraint))
        if rows is None:
            raise ProblemKeyError(f"{constraint} is not a constraint of this problem")
        return rows.kind, slice(rows.start, rows.stop), rows.shape, rows.sign

    def dual(self, constraint: Constraint) -> np.ndarray:
        """Dual variable of a user constraint (nonnegative for inequalities, as cvxpy's), in its shape."""
        kind, rows, shape, sign = self._rows(constraint)
        values = sign * (self.raw.y if kind == "eq" else self.raw.z)[:, rows]
        return self._unbatch(values.reshape(values.shape[0], *shape))

    @property
    def shift(self) -> dict[Constraint, np.ndarray]:
        """Constraint shift per user constraint (zeros when feasible).

        For ``lhs <= rhs`` it is how much ``lhs - rhs <= 0`` was relaxed; for ``lhs == rhs``
        the shift s with ``lhs - rhs == s`` after relaxation.
        """
        out = {}
        for c in self.problem.constraints:
            kind, rows, shape, sign = self._rows(c)
            values = sign * (self.raw.shift_eq if kind == "eq" else self.raw.shift_in)[:, rows]
            out[c] = self._unbatch(values.reshape(values.shape[0], *shape))
        return out

    @property
    def iterations(self) -> Any:
        return self._unbatch(np.asarray(self.raw.iterations))

    @property
    def residuals(self) -> dict[str, Any]:
        """The residuals verification measured on the standard-form data, per element: largest
        primal and dual residual, complementarity violation and |duality gap| (NaN where not
        measured). An ``inaccurate`` status means one of them exceeded its tolerance."""
        fields = {"primal": "prim_res", "dual": "dual_res", "complementarity": "compl_res", "gap": "gap"}
        out = {}
        for name, attr in fields.items():
            value = getattr(self.raw, attr)
            if value is None:
                value = np.full(np.asarray(self.raw.status).shape, np.nan)
            out[name] = self._unbatch(np.asarray(value, dtype=float))
        return out


def _short(value: Any) -> str:
    """A status or objective for a repr: in full for up to three elements, summarised beyond."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    items = list(value)
    if isinstance(value, list) and len(items) > 3:
        counts: dict[str, int] = {}
        for label in items:
            counts[label] = counts.get(label, 0) + 1
        return repr(counts)
    if isinstance(value, list):
        return repr(items)
    if len(items) > 3:
        return f"<array of {len(items)}>"
    return "[" + ", ".join(f"{float(v):.6g}" for v in items) + "]"
