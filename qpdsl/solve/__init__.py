"""The one path every solve takes, for every backend and both front ends.

:mod:`.verify` checks each backend's claims on the user's data, :mod:`.closest` runs the
closest-feasible stage, and :mod:`.core` holds what the layers share: argument validation,
invalid-element handling, ``on_failure``, warm-start memory and backend resolution.
"""

from .closest import Shiftable
from .verify import check_point, verify

__all__ = ["Shiftable", "check_point", "verify"]
