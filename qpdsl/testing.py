"""Random problems for tests and benchmarks (numpy only, no solver needed)."""

from __future__ import annotations

import numpy as np


def random_feasible_qps(
    batch: int, n: int, n_eq: int, n_in: int, seed: int = 0, lp: bool = False
) -> list[np.ndarray]:
    """A batch of random feasible dense QPs ``[P, q, A, b, C, l, u]`` in qpdsl's standard form.

    ``P = M M' + 1e-2 I`` (zero when ``lp``), ``A``, ``C``, ``q`` standard normal, ``b = A x0``
    and ``l, u = C x0 -/+ U(0, 1)`` for a random ``x0``, so every element is strictly feasible.
    The benchmark problems of the project's issues are this generator's output.
    """
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((batch, n, n))
    P = np.zeros((batch, n, n)) if lp else M @ M.transpose(0, 2, 1) + 1e-2 * np.eye(n)
    q = rng.standard_normal((batch, n))
    A = rng.standard_normal((batch, n_eq, n))
    C = rng.standard_normal((batch, n_in, n))
    x0 = rng.standard_normal((batch, n))
    cx = np.einsum("bij,bj->bi", C, x0)
    b = np.einsum("bij,bj->bi", A, x0)
    return [P, q, A, b, C, cx - rng.uniform(size=(batch, n_in)), cx + rng.uniform(size=(batch, n_in))]
