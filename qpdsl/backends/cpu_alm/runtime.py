"""Where the ``cpu`` kernels run: numba's threading layer, the thread count, and the safe fallbacks.

The batch kernel is a ``prange`` loop, run by numba's threading layer. The ``tbb`` layer is
the one that is safe both under concurrent calls from several Python threads and in forked
children (e.g. torch DataLoader workers); pip's ``tbb`` wheel puts its library where numba
does not look, so it is loaded here first. With another layer the backend stays correct:

- ``workqueue`` (not thread-safe): a call that finds another one running solves its batch in
  its own thread instead;
- ``omp`` (GNU OpenMP, not fork-safe): a forked child solves in its own thread.

numba picks the layer once per process, at its first parallel call; a layer chosen before
(``NUMBA_THREADING_LAYER``, or another package's parallel code) is respected.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import numba

SAFE_LAYERS = {"tbb"}
THREADSAFE_LAYERS = {"tbb", "omp"}
FORKSAFE_LAYERS = {"tbb", "workqueue"}

_launch_lock = threading.Lock()
_busy = threading.Lock()  # held while a parallel kernel runs on a layer that is not thread-safe
_layer: str | None = None
_parallel_ran = False  # a parallel kernel ran in this process (before a fork: in the parent)
_forked_after_parallel = False


def _after_fork_in_child() -> None:
    global _forked_after_parallel, _busy
    _forked_after_parallel = _forked_after_parallel or _parallel_ran
    _busy = threading.Lock()  # the parent's holder does not exist here


os.register_at_fork(after_in_child=_after_fork_in_child)


def _preload_tbb() -> None:
    """Load pip's ``libtbb`` by path so that numba's TBB layer, which looks it up by name, finds it."""
    if not sys.platform.startswith("linux"):
        return
    try:
        from importlib import metadata

        files = metadata.distribution("tbb").files or []
    except Exception:  # no tbb distribution: numba may still find a system or conda TBB
        return
    for f in files:
        if f.name == "libtbb.so.12":
            try:
                ctypes.CDLL(str(f.locate()), mode=ctypes.RTLD_GLOBAL)
            except OSError:
                continue
            return


def layer() -> str:
    """The threading layer of this process, launching numba's threads on the first call."""
    global _layer
    if _layer is None:
        with _launch_lock:
            if _layer is None:
                from numba.np.ufunc import parallel

                if not parallel._is_initialized:
                    _preload_tbb()
                parallel._launch_threads()
                _layer = str(numba.threading_layer())
    return _layer


def thread_count(requested: int | None) -> int:
    """The threads for one call: ``requested``, else torch's thread count when torch is imported,
    else numba's default; at most numba's thread pool size."""
    if requested is None:
        torch = sys.modules.get("torch")
        get = getattr(torch, "get_num_threads", None)
        requested = int(get()) if get is not None else int(numba.config.NUMBA_NUM_THREADS)
    return max(1, min(int(requested), int(numba.config.NUMBA_NUM_THREADS)))


def run(
    parallel: Callable[..., Any], serial: Callable[..., Any], args: tuple[Any, ...], threads: int
) -> None:
    """Run ``parallel(*args)`` on ``threads`` threads where the layer allows it, else ``serial(*args)``."""
    global _parallel_ran
    name = layer()
    if _forked_after_parallel and name not in FORKSAFE_LAYERS:
        serial(*args)
        return
    if name in THREADSAFE_LAYERS:
        numba.set_num_threads(threads)  # per calling thread in numba
        _parallel_ran = True
        parallel(*args)
        return
    if not _busy.acquire(blocking=False):
        serial(*args)
        return
    try:
        numba.set_num_threads(threads)
        _parallel_ran = True
        parallel(*args)
    finally:
        _busy.release()
