"""The tests with the real ibllib and one-api (PyPI): run with the interpreter of
``scripts/ibllib-env``; skipped, saying why, in an interpreter without ibllib."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HAVE_IBLLIB = importlib.util.find_spec("ibllib") is not None
REASON = "ibllib is not installed in this interpreter: run with the python of `eval \"$(scripts/ibllib-env)\"`"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/ibllib/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.ibllib)


def hpcpipe_cmd(env: dict, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The ``hpcpipe`` console script of this interpreter's environment, as a user types it."""
    exe = Path(sys.executable).parent / "hpcpipe"
    return subprocess.run([str(exe), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def shadow_dir(tmp_path):
    """A submitting directory holding a folder named ``hpcpipe`` (a checkout's own folder, seen
    from one level up): jobs started there with ``python -m`` would import it instead of hpcpipe."""
    d = tmp_path / "cwd"
    (d / "hpcpipe").mkdir(parents=True)
    (d / "hpcpipe" / "__init__.py").write_text("raise ImportError('the shadowing folder was imported')\n")
    return d


@pytest.fixture
def env(tmp_path):
    """A user's environment: hpcpipe home and config of its own, the repository importable,
    started from a directory holding a folder named ``hpcpipe`` (it must not shadow the package)."""
    e = dict(os.environ, HPCPIPE_HOME=str(tmp_path / "home"), HPCPIPE_GPU_LOCK_DIR=str(tmp_path / "locks"),
             PYTHONPATH=str(REPO), HOME=str(tmp_path / "user-home"))
    (tmp_path / "user-home").mkdir()
    e["HPCPIPE_CONFIG"] = str(tmp_path / "config.toml")
    return e
