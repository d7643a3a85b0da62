"""Users' own ONE client as hpcpipe's transport to Alyx (``[alyx] client = "one"``).

An IBL user already has ``one.api.ONE`` set up (``~/.one``: URL, login, cached token); with
this setting hpcpipe talks to Alyx through that ONE instead of its own ``AlyxClient``. The
store then reads with ``no_cache=True`` on every read that decides something, since ONE
answers REST reads from a 5-minute local cache (ALYX-API.md §5).
"""
from __future__ import annotations

from typing import Any

from .. import config
from ..errors import BadInput
from . import params as alyx_params

#: the ``[alyx] client`` values
CLIENTS = ("hpcpipe", "one")


def client_kind() -> str:
    """``[alyx] client`` ($HPCPIPE_ALYX_CLIENT): ``hpcpipe`` (default) or ``one``."""
    kind = str(config.get("alyx", "client", "hpcpipe")).lower()
    if kind not in CLIENTS:
        raise BadInput(f"unknown [alyx] client {kind!r}; valid: {', '.join(CLIENTS)}")
    return kind


def one_from_config() -> Any:
    """A ``one.api.ONE`` for the configured Alyx: hpcpipe's URL/login/password/token when set,
    else ONE's own ``~/.one`` settings (ONE keeps and renews its token there)."""
    try:
        from one.api import ONE
    except ImportError:
        raise BadInput('[alyx] client = "one" needs the ONE-api package (pip install ONE-api)') from None
    found = alyx_params.resolve()
    if not found["url"]:
        raise BadInput("no Alyx URL: set [alyx] url in the hpcpipe config, $HPCPIPE_ALYX_URL, "
                       "or set up ONE (~/.one)")
    kwargs: dict[str, Any] = {"base_url": found["url"], "silent": True}
    if found["username"]:
        kwargs["username"] = found["username"]
    if found["token"] and found["token_source"] in ("argument", "config"):
        kwargs["token"] = found["token"]
    elif found["password"] and not alyx_params.one_token(alyx_params.one_params(found["url"]), found["username"]):
        # ONE logs in at construction when given a password; with its token cached it does not,
        # so a job started while Alyx is down still gets its client
        kwargs["password"] = found["password"]
    try:
        return ONE(**kwargs)
    except (ConnectionError, OSError) as exc:
        from .client import AlyxUnreachable

        raise AlyxUnreachable(f"ONE could not reach Alyx at {found['url']}: {exc}") from None
