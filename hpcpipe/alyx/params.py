"""Where Alyx credentials come from: arguments, hpcpipe's settings, ONE's params, a token cache.

Lookup (first hit wins, per item):

* URL: argument → ``$HPCPIPE_ALYX_URL`` / ``[alyx] url`` → ONE's default (``~/.one/.caches``
  ``DEFAULT``, then that key's ``ALYX_URL``).
* username: argument → ``$HPCPIPE_ALYX_USERNAME`` / ``[alyx] username`` → ONE's ``ALYX_LOGIN``.
* password: argument → ``$HPCPIPE_ALYX_PASSWORD`` / ``[alyx] password`` → ONE's ``ALYX_PWD``
  (old ONE versions kept it).
* token: argument → ``$HPCPIPE_ALYX_TOKEN`` / ``[alyx] token`` → hpcpipe's token cache →
  ONE's ``TOKEN[<login>]["token"]`` → ``POST /auth-token`` with the password.

The token cache is ``<hpcpipe home>/alyx/tokens.json`` (``{url_key: {username: token}}``),
written atomically with mode 0600 inside a 0700 folder. Tokens are never logged. A job's
settings carry no password nor token (``run.json`` is no place for secrets): a job finds the
token its submitter's login cached there, or ONE's.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from ..files import atomic_write
from ..settings import Settings

_logger = logging.getLogger(__name__)


def url_key(url: str) -> str:
    """ONE's key for an Alyx URL: lower-cased, no scheme, no trailing slash, ``[^.\\w-]`` → ``_``.

    ``https://alyx.internationalbrainlab.org/`` → ``alyx.internationalbrainlab.org``;
    ``http://127.0.0.1:8000`` → ``127.0.0.1_8000``.
    """
    key = re.sub(r"^[a-z][a-z0-9+.-]*://", "", url.strip().lower()).rstrip("/")
    return re.sub(r"[^.\w-]", "_", key)


def one_dir() -> Path:
    """ONE's settings folder (``~/.one``; follows ``$HOME``)."""
    return Path.home() / ".one"


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        _logger.warning("ignoring unreadable ONE params file %s: %s", path, type(exc).__name__)
        return None
    return data if isinstance(data, dict) else None


def one_default_url() -> str | None:
    """The Alyx URL ONE uses by default, if ONE is set up on this machine."""
    caches = _read_json(one_dir() / ".caches") or {}
    key = caches.get("DEFAULT")
    if not key:
        return None
    params = _read_json(one_dir() / f".{key}") or {}
    return params.get("ALYX_URL") or None


def one_params(url: str | None = None) -> dict[str, Any]:
    """ONE's params for ``url`` (or ONE's default Alyx): ``ALYX_URL``, ``ALYX_LOGIN``, ``TOKEN``...

    ``{}`` when ONE is not set up for that server.
    """
    url = url or one_default_url()
    if not url:
        return {}
    return _read_json(one_dir() / f".{url_key(url)}") or {}


def one_token(params: dict, username: str | None) -> str | None:
    tokens = params.get("TOKEN") or {}
    if not isinstance(tokens, dict):
        return None
    login = username or params.get("ALYX_LOGIN")
    entry = tokens.get(login) if login else None
    if isinstance(entry, dict):
        return entry.get("token") or None
    return entry if isinstance(entry, str) else None


# ---------------------------------------------------------------------- token cache
def token_cache_path(settings: Settings) -> Path:
    return settings.home_dir() / "alyx" / "tokens.json"


def cached_token(settings: Settings, url: str, username: str | None) -> str | None:
    if not username:
        return None
    data = _read_json(token_cache_path(settings)) or {}
    return (data.get(url_key(url)) or {}).get(username)


def store_token(settings: Settings, url: str, username: str | None, token: str | None) -> None:
    """Remember (or with ``token=None`` forget) a token; the file is readable by its owner only."""
    if not username:
        return
    path = token_cache_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    data = _read_json(path) or {}
    entry = data.setdefault(url_key(url), {})
    if token is None:
        entry.pop(username, None)
    else:
        entry[username] = token
    atomic_write(path, json.dumps(data), mode=0o600, fsync=True)


def cache_for_jobs(settings: Settings) -> None:
    """Put a token the settings give (``[alyx] token``, ``$HPCPIPE_ALYX_TOKEN``) in the token cache
    of ``settings.home``, where the jobs of this submission look for it: ``run.json`` carries no
    secret. Needs the username (the cache's key); nothing to do without a token."""
    url = settings.alyx.url or one_default_url()
    token, username = settings.alyx.token, settings.alyx.username
    if token and url and username and cached_token(settings, url, username) != token:
        store_token(settings, url, username, token)


def resolve(settings: Settings, base_url: str | None = None, username: str | None = None,
            password: str | None = None, token: str | None = None) -> dict[str, Any]:
    """Fill in URL and credentials from ``settings`` and ONE (see module doc).

    Returns ``{url, username, password, token, token_source}``; the URL may be None (the
    caller says what to configure).
    """
    url = base_url or settings.alyx.url or one_default_url()
    params = one_params(url) if url else {}
    username = username or settings.alyx.username or params.get("ALYX_LOGIN")
    password = password or settings.alyx.password or params.get("ALYX_PWD")
    source = "argument" if token else None
    if not token:
        token = settings.alyx.token
        source = "config" if token else None
    if not token and url:
        token = cached_token(settings, url, username)
        source = "cache" if token else None
    if not token:
        token = one_token(params, username)
        source = "ONE" if token else None
    return {"url": url.rstrip("/") if url else None, "username": username, "password": password,
            "token": token, "token_source": source}
