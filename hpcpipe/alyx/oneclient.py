"""Users' own ONE client as hpcpipe's transport to Alyx (``[alyx] client = "one"``).

An IBL user already has ONE set up (``~/.one``: URL, login, cached token); with this setting
hpcpipe talks to Alyx through ONE's REST client (``one.webclient.AlyxClient``, the object
``ONE().alyx`` is) instead of its own ``AlyxClient``. The store then reads with
``no_cache=True`` on every read that decides something, since ONE answers REST reads from a
5-minute local cache (ALYX-API.md §5).

ONE sends its requests without a timeout and retries 429/503 up to 8 times with growing
jitter, whoever calls it. ``bound(client)`` gives the calls hpcpipe makes through a ONE client
hpcpipe's limits (``limited``): a timeout on every request and the caller's retry budget (a
report's is short), so a hung Alyx cannot hang a task. The user's own calls on the same client
are left as ONE makes them.
"""
from __future__ import annotations

import contextlib
import functools
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..errors import BadInput
from ..settings import Settings
from . import params as alyx_params

#: the ``[alyx] client`` values
CLIENTS = ("hpcpipe", "one")
_local = threading.local()  # the limits of the call under way in this thread (``limited``)


@dataclass(frozen=True)
class Limits:
    """What one logical call may cost: ``timeout`` (connect, read) per request, at most
    ``retries`` retries and ``budget`` seconds of waiting before a retry."""

    timeout: tuple[float, float]
    retries: int
    budget: float


def client_kind(settings: Settings) -> str:
    """``[alyx] client`` ($HPCPIPE_ALYX_CLIENT): ``hpcpipe`` (default) or ``one``."""
    kind = settings.alyx.client.lower()
    if kind not in CLIENTS:
        raise BadInput(f"unknown [alyx] client {kind!r}; valid: {', '.join(CLIENTS)}")
    return kind


@contextlib.contextmanager
def limited(limits: Limits) -> Iterator[None]:
    """Calls made in this thread through a ``bound`` ONE client keep to ``limits``."""
    old = getattr(_local, "limits", None)
    _local.limits = limits
    try:
        yield
    finally:
        _local.limits = old


def bound(client: Any) -> Any:
    """Make ``client`` (ONE's ``AlyxClient``) honour ``limited`` for hpcpipe's calls.

    ONE sends every REST request through ``_generic_request(reqfunction, query, ...)``, with
    ``requests.get``/``post``... as ``reqfunction`` (and passes it on to its own retries): the
    request function is swapped, for calls inside ``limited``, for one with a timeout that
    gives up on a 429/503 once the budget is spent instead of letting ONE sleep on. A client
    without that method (another ONE version) is left alone: then only the down mark guards it.
    """
    original = getattr(client, "_generic_request", None)
    if original is None or getattr(original, "hpcpipe_bound", False):
        return client

    def generic_request(reqfunction: Callable, *args: Any, **kwargs: Any) -> Any:
        limits = getattr(_local, "limits", None)
        if limits is None:
            return original(reqfunction, *args, **kwargs)
        try:
            return original(_within(reqfunction, limits), *args, **kwargs)
        finally:
            if hasattr(client, "_attempt_counter"):
                client._attempt_counter = 0  # ONE resets it only on success or after its own retries

    generic_request.__wrapped__ = original  # ONE's retries call ``unwrap(self._generic_request)``
    generic_request.hpcpipe_bound = True
    client._generic_request = generic_request
    return client


def _within(reqfunction: Callable, limits: Limits) -> Callable:
    """``reqfunction`` with ``limits``: a timeout on each request; a 429/503 past the retry
    budget raises (``requests.HTTPError``, which the store maps to ``AlyxUnreachable``)."""
    import requests

    from .client import AlyxClient

    started = time.monotonic()
    attempts = 0

    @functools.wraps(reqfunction)  # ONE's REST cache tells GETs by the function's name
    def send(url: str, **kwargs: Any) -> Any:
        nonlocal attempts
        attempts += 1
        kwargs["timeout"] = limits.timeout
        resp = reqfunction(url, **kwargs)
        if resp.status_code in (429, 503):
            wait = AlyxClient._retry_after(resp) or 0.0
            if attempts > limits.retries or time.monotonic() - started + wait > limits.budget:
                raise requests.HTTPError(f"{resp.status_code} after {attempts} attempt(s); retry budget "
                                         f"{limits.retries} retries / {limits.budget:g}s", response=resp)
        return resp

    return send


def one_from_config(settings: Settings) -> Any:
    """ONE's REST client for the configured Alyx, ``bound`` to hpcpipe's limits. Making it asks
    Alyx nothing: a job started during an outage pays nothing for its client.

    ONE's own ``ONE()`` (``OneAlyx``) would also ask ``cache/info`` at construction, with no
    timeout, to load parquet cache tables hpcpipe never reads; its REST client is the part
    that talks to Alyx, REST cache and retries included. Credentials, in ONE's order of use:
    ONE's cached token for the login (taken now: no request); else the login is left to the
    first request the store makes (``ensure_login``), after the store's down mark was consulted
    and within that call's limits: hpcpipe's token (``[alyx] token`` or hpcpipe's token cache),
    which ONE checks once on ``/me`` and caches in ``~/.one``; else a login with the password,
    made by hpcpipe's client and handed to ONE as a token (ONE's own login has no timeout).
    """
    try:
        from one.webclient import AlyxClient as OneAlyxClient
    except ImportError:
        raise BadInput('[alyx] client = "one" needs the ONE-api package (pip install ONE-api)') from None

    found = alyx_params.resolve(settings)
    if not found["url"]:
        raise BadInput("no Alyx URL: set [alyx] url in the hpcpipe config, $HPCPIPE_ALYX_URL, "
                       "or set up ONE (~/.one)")
    username = found["username"]
    client = bound(OneAlyxClient(base_url=found["url"], silent=True))  # no credentials: no request yet
    if alyx_params.one_token(alyx_params.one_params(found["url"]), username):
        client.authenticate(username)  # ONE's cached token: no request
    else:
        client.user = username  # who registers files (``created_by``) before the login is made
        client.hpcpipe_login = functools.partial(_login, client, found, settings)
    return client


def ensure_login(client: Any, limits: Limits) -> None:
    """Make the login ``one_from_config`` left for the first request, within ``limits``
    (the calling store consulted its down mark first). Nothing for a client already logged in."""
    login = getattr(client, "hpcpipe_login", None)
    if login is None:
        return
    login(limits)
    client.hpcpipe_login = None


def _login(client: Any, found: dict, settings: Settings, limits: Limits) -> None:
    import requests

    from .client import AlyxClient, AlyxUnreachable

    token = found["token"]
    username = found["username"]
    if not token and found["password"] and username:
        own = AlyxClient(found["url"], username, found["password"], use_one_params=False, timeout=limits.timeout,
                         retries=limits.retries, retry_budget=limits.budget, settings=settings)
        try:
            own.authenticate()
        finally:
            own.close()
        token = own._token
    verify = client.token_verify_timeout  # ONE's /me check of a token it is handed (10 s)
    client.token_verify_timeout = min(float(verify), float(limits.timeout[1]))
    try:
        client.authenticate(username, token=token)
    except requests.RequestException:
        raise  # an answer (a rejected token): the store maps it
    except (ConnectionError, OSError) as exc:
        raise AlyxUnreachable(f"ONE could not reach Alyx at {found['url']}: {exc}") from None
    finally:
        client.token_verify_timeout = verify
