"""Where numba caches the compiled kernels, and when a cached kernel is stale.

numba keys a cached function on the source of the file that defines it only, not on the
files of the functions it calls: editing :mod:`.linalg` would leave the cached
:func:`.solver.solve_batch` stale. The locator registered here gives every kernel of this
package a stamp of all its source files, and caches them where numba would (``NUMBA_CACHE_DIR``
when set, else the package's ``__pycache__`` when writable, else the user's cache directory).
Without numba's caching internals (another numba version) numba's own locators apply.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numba

PACKAGE_DIR = Path(__file__).resolve().parent
LOCATOR: Any = None  # the locator class, once installed


def _stamp() -> str:
    digest = hashlib.sha256(numba.__version__.encode())
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _install() -> None:
    global LOCATOR
    try:
        from numba.core import caching, config
    except ImportError:
        return
    base = getattr(caching, "_CacheLocator", None)
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    if base is None or impl is None or not isinstance(getattr(impl, "_locator_classes", None), list):
        return
    stamp = _stamp()

    class PackageLocator(base):  # type: ignore[misc, valid-type]
        """Caches this package's kernels with a stamp of all its sources."""

        qpdsl_cpu_alm = True  # marks it, so that a reload replaces it

        def __init__(self, py_func: Any, path: str) -> None:
            self._lineno = py_func.__code__.co_firstlineno
            self._path = path

        def get_cache_path(self) -> str:
            return self._path

        def get_source_stamp(self) -> str:
            return stamp

        def get_disambiguator(self) -> str:
            return str(self._lineno)

        @classmethod
        def from_function(cls, py_func: Any, py_file: str) -> Any:
            if Path(py_file).resolve().parent != PACKAGE_DIR:
                return None
            for path in cache_dirs(py_file, config.CACHE_DIR):
                self = cls(py_func, path)
                try:
                    self.ensure_cache_path()
                except OSError:  # not writable: try the next place
                    continue
                return self
            return None

    impl._locator_classes[:] = [c for c in impl._locator_classes if not hasattr(c, "qpdsl_cpu_alm")]
    impl._locator_classes.insert(0, PackageLocator)
    LOCATOR = PackageLocator


def cache_dirs(py_file: str, numba_cache_dir: str = "") -> list[str]:
    """Where the kernels of ``py_file`` may be cached, in order of preference."""
    from numba.misc.appdirs import AppDirs

    sub = f"qpdsl_cpu_alm_{hashlib.sha1(str(Path(py_file).resolve().parent).encode()).hexdigest()[:16]}"
    user = os.path.join(AppDirs(appname="numba", appauthor=False).user_cache_dir, sub)
    local = os.path.join(os.path.dirname(py_file), "__pycache__")
    return [os.path.join(numba_cache_dir, sub), user] if numba_cache_dir else [local, user]


_install()
