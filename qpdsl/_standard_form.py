"""Checks on standard-form layer inputs shared by :mod:`qpdsl.torch` and :mod:`qpdsl.jax`.

Framework-neutral: shapes are plain tuples.
"""

from __future__ import annotations

from .errors import ParameterError

NAMES = ("P", "q", "A", "b", "C", "l", "u")
CORE_NDIM = {"P": 2, "q": 1, "A": 2, "b": 1, "C": 2, "l": 1, "u": 1}


def missing_groups(present: dict[str, bool]) -> list[str]:
    """Names of absent constraint groups ((A, b) or (C, l, u)) to fill with empty arrays.

    Raises
    ------
    ParameterError
        If P or q is missing, or a group is only partly given.
    """
    if not (present["P"] and present["q"]):
        raise ParameterError("P and q are required (pass a zero P for an LP)")
    fill = []
    for group in (("A", "b"), ("C", "l", "u")):
        missing = [name for name in group if not present[name]]
        if len(missing) == len(group):
            fill.extend(group)
        elif missing:
            raise ParameterError(
                f"{', '.join(missing)} is None but {', '.join(sorted(set(group) - set(missing)))} is not; "
                f"pass all of {', '.join(group)} or none of them"
            )
    return fill


def core_shapes(shapes: dict[str, tuple[int, ...]]) -> tuple[dict[str, tuple[int, ...]], int, bool]:
    """Check the seven input shapes; return each input's unbatched shape, the batch size, and
    whether any input had a batch dimension (a batch of 1 broadcasts like no batch).
    """

    for name in ("q", "b", "l", "u"):  # they set the sizes the other shapes are checked against
        if len(shapes[name]) not in (1, 2):
            raise ParameterError(
                f"{name} has shape {tuple(shapes[name])}; expected a vector (k,) or a batch of vectors (B, k)"
            )

    def last(name: str) -> int:
        return shapes[name][-1]

    n, m, p = last("q"), last("b"), last("l")
    core = {"P": (n, n), "q": (n,), "A": (m, n), "b": (m,), "C": (p, n), "l": (p,), "u": (p,)}
    sizes: set[int] = set()
    batched = False
    for name, shape in core.items():
        got = tuple(shapes[name])
        if len(got) not in (len(shape), len(shape) + 1) or got[len(got) - len(shape) :] != shape:
            raise ParameterError(
                f"{name} has shape {got}; expected {shape} or (B, {', '.join(map(str, shape))}) "
                f"(n={n} from q, m={m} from b, p={p} from l)"
            )
        if len(got) == len(shape) + 1:
            batched = True
            if got[0] != 1:
                sizes.add(got[0])
    if len(sizes) > 1:
        raise ParameterError(
            f"inputs have different batch sizes {sorted(sizes)}; use one batch size B (or 1, or none)"
        )
    return core, (sizes.pop() if sizes else 1), batched
