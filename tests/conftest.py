"""Suite-wide fixtures: nothing a test does touches the real hpcpipe home, config or GPU lock."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def hpcpipe_home(tmp_path, monkeypatch):
    """``HPCPIPE_HOME`` and ``HPCPIPE_GPU_LOCK_DIR`` under ``tmp_path``; no user config file.

    Also clears settings a developer's shell may carry (``HPCPIPE_STORE_*``, ``HPCPIPE_GPU_*``,
    ``CUDA_VISIBLE_DEVICES``) so every test sees the documented defaults.
    """
    home = tmp_path / "hpcpipe-home"
    for name in list(os.environ):
        if name.startswith(("HPCPIPE_STORE_", "HPCPIPE_GPU_")):
            monkeypatch.delenv(name)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("HPCPIPE_HOME", str(home))
    monkeypatch.setenv("HPCPIPE_GPU_LOCK_DIR", str(tmp_path / "gpu-lock"))
    monkeypatch.setenv("HPCPIPE_CONFIG", str(tmp_path / "no-config.toml"))
    return home
