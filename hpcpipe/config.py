"""Configuration: one TOML file, overridden by environment variables, with built-in defaults.

A lab writes its cluster settings once, here. This module only reads: ``settings.Settings.load()``
is its one caller (at the edge, the CLI), which holds the defaults and checks every value, and
hands the settings down; a job gets its own from its ``run.json``, never from this module
(``tests/test_architecture.py`` pins both). Lookup order for ``get("slurm", "profile")``:

1. environment ``HPCPIPE_SLURM_PROFILE`` (section and key upper-cased, joined by ``_``);
2. the config file: ``$HPCPIPE_CONFIG`` or ``~/.config/hpcpipe/config.toml``;
3. the default given by the caller.

``HPCPIPE_HOME`` moves everything hpcpipe writes (task store, run folders, outbox, token
cache); by default it is the user's data directory (``~/.local/share/hpcpipe``).
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .errors import BadInput

_MISSING = object()


def config_path() -> Path:
    """Where the user's config file lives (it need not exist)."""
    env = os.environ.get("HPCPIPE_CONFIG")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "hpcpipe" / "config.toml"


@lru_cache(maxsize=8)
def _load(path: str, mtime: float) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"config file {path} is not valid TOML: {exc}") from None


def load() -> dict:
    """The parsed config file, or ``{}`` when there is none. Re-read when the file changes."""
    path = config_path()
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return {}
    return _load(str(path), mtime)


def get(section: str, key: str, default: Any = _MISSING) -> Any:
    """One option: environment first, then the config file, then ``default``.

    Environment values are strings; they are converted to the type of ``default`` when that is
    a bool, int or float, so ``HPCPIPE_LOCAL_CPUS=4`` works like ``cpus = 4`` in the file.
    """
    env_name = f"HPCPIPE_{section}_{key}".upper().replace(".", "_").replace("-", "_")
    if env_name in os.environ:
        return _coerce(os.environ[env_name], default, env_name)
    value = load().get(section, {}).get(key, _MISSING)
    if value is not _MISSING:
        return value
    if default is _MISSING:
        raise BadInput(f"missing setting [{section}] {key} in {config_path()} (or ${env_name})")
    return default


def _coerce(raw: str, default: Any, name: str) -> Any:
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off", ""):
            return False
        raise BadInput(f"${name}={raw!r} is not a boolean")
    if isinstance(default, (int, float)) and default is not None:
        try:
            return type(default)(raw)
        except ValueError:
            raise BadInput(f"${name}={raw!r} is not a {type(default).__name__}") from None
    return raw


def home() -> Path:
    """The folder for everything hpcpipe writes on this machine (created on first use)."""
    env = os.environ.get("HPCPIPE_HOME")
    if env:
        path = Path(env).expanduser()
    else:
        from platformdirs import user_data_dir

        path = Path(user_data_dir("hpcpipe", appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path
