"""Packaging contract: framework adapters import independently, the version and extras are sane.

Each import check runs in a fresh interpreter whose ``sys.meta_path`` refuses the blocked
top-level packages, which is what a machine without them looks like to ``import``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
import tomllib
import warnings
from pathlib import Path

import pytest

import qpdsl

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"

_BLOCKER = """
import sys

BLOCKED = {blocked!r}


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, _Blocker())
"""


def _run_blocked(blocked: set[str], body: str) -> subprocess.CompletedProcess[str]:
    code = _BLOCKER.format(blocked=sorted(blocked)) + textwrap.dedent(body)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


_FRAMEWORKS = {"torch": {"torch", "functorch"}, "jax": {"jax", "jaxlib"}}


@pytest.mark.parametrize(("adapter", "missing"), [("torch", "jax"), ("jax", "torch")])
def test_adapter_imports_without_the_other_framework(adapter: str, missing: str) -> None:
    if not _has_module(f"qpdsl.{adapter}"):
        pytest.skip(f"qpdsl.{adapter} does not exist yet")
    if not _has_module(adapter):
        pytest.skip(f"{adapter} is not installed")
    blocked = _FRAMEWORKS[missing]
    proc = _run_blocked(
        blocked,
        f"""
        import qpdsl.{adapter}
        leaked = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
        assert not leaked, leaked
        """,
    )
    assert proc.returncode == 0, f"import qpdsl.{adapter} with {missing} unimportable failed:\n{proc.stderr}"


def test_core_imports_without_any_framework() -> None:
    proc = _run_blocked(
        _FRAMEWORKS["torch"] | _FRAMEWORKS["jax"],
        """
        import qpdsl
        leaked = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
        assert not leaked, leaked
        """,
    )
    assert proc.returncode == 0, f"import qpdsl with torch and jax unimportable failed:\n{proc.stderr}"


def _skip_unless_backends_written() -> None:
    from qpdsl import backends

    missing = [m for m in backends._MODULES.values() if not _has_module(f"qpdsl.backends.{m}")]
    if missing:
        pytest.skip(f"backend modules not written yet: {', '.join(missing)}")


def test_backend_registry_without_a_framework() -> None:
    _skip_unless_backends_written()
    proc = _run_blocked(
        _FRAMEWORKS["jax"],
        """
        from qpdsl.backends import available_backends
        names = available_backends()
        assert "jax" not in names, sorted(names)
        """,
    )
    assert proc.returncode == 0, f"available_backends() with jax unimportable failed:\n{proc.stderr}"


def test_version_is_readable() -> None:
    version = qpdsl.__version__
    assert isinstance(version, str)
    assert re.fullmatch(r"\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?(\+[\w.]+)?", version), version
    try:
        installed = importlib.metadata.version("qpdsl")
    except importlib.metadata.PackageNotFoundError:
        return
    assert installed == version


def _pyproject() -> dict:
    if not PYPROJECT.exists():
        pytest.skip("not running from a source checkout")
    with PYPROJECT.open("rb") as fh:
        return tomllib.load(fh)


def test_extras_cover_the_design() -> None:
    extras = _pyproject()["project"]["optional-dependencies"]
    for name in ("torch", "jax", "proxsuite", "solvers", "cvxpy", "all", "dev", "docs"):
        assert name in extras, name
    # torch must stay pinned exactly: any looser spec pulls a CUDA build on the project machines.
    assert extras["torch"] == ["torch==2.13.0"]


def test_backend_extras_exist() -> None:
    """A BackendNotFound message tells the user ``pip install 'qpdsl[<extra>]'``; that extra must exist."""
    from qpdsl import backends

    extras = _pyproject()["project"]["optional-dependencies"]
    _skip_unless_backends_written()
    backends._load_all()
    entries = list(backends._REGISTRY.items()) + list(backends._PREFIXES.items())
    named = {name: e.capabilities.extra for name, e in entries if e.capabilities.extra}
    unknown = {name: extra for name, extra in named.items() if extra not in extras}
    assert not unknown, f"backends name extras that pyproject.toml lacks: {unknown}"


def test_the_jax_extra_excludes_the_jaxlib_releases_whose_cpu_linear_algebra_deadlocks() -> None:
    """jaxlib 0.10.x and 0.11.0 hang a jitted solve + gradient on a 2-core CPU (two batched
    factorisations at once wait for each other's tasks on XLA's thread pool): the extra must
    not resolve to them, and the installed jaxlib must not be one of them."""
    from packaging.requirements import Requirement

    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["jax"]
    for requirement in map(Requirement, extras):
        for bad in ("0.10.0", "0.10.1", "0.10.2", "0.11.0"):
            assert bad not in requirement.specifier, f"{requirement} admits {bad}"
        for good in ("0.9.2", "0.11.1", "0.11.2"):
            assert good in requirement.specifier, f"{requirement} refuses {good}"
    if _has_module("jaxlib"):
        version = importlib.metadata.version("jaxlib")
        assert not (version.startswith("0.10.") or version == "0.11.0"), version


def test_importing_the_jax_front_end_warns_about_a_deadlocking_jaxlib(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("jaxlib")
    import jaxlib

    from qpdsl import _jax_setup

    monkeypatch.setattr(_jax_setup, "_warned", False)
    monkeypatch.setattr(jaxlib, "__version__", "0.10.2")
    with pytest.warns(RuntimeWarning, match=r"jaxlib 0\.10\.2 can deadlock.*0\.9\.2"):
        _jax_setup.warn_if_deadlocking_jaxlib()
    monkeypatch.setattr(_jax_setup, "_warned", False)
    monkeypatch.setattr(jaxlib, "__version__", "0.11.2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _jax_setup.warn_if_deadlocking_jaxlib()
