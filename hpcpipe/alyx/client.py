"""A REST client for Alyx, written to the behaviour recorded in ``shared/alyx/ALYX-API.md``.

``AlyxClient`` keeps one ``requests.Session`` (connection pooling), authenticates with a token
(``POST /auth-token``; header ``Authorization: Token <hex>``), follows pagination, retries what
is safe to retry, puts a timeout on every call and raises errors that carry the server's
message. ``rest(url, action, id=None, data=None, files=None, **filters)`` has ONE's interface,
so code written for ``one.alyx.rest`` works with it and vice versa.

Retry policy (the decision, in one place):

* **Connection never established** (refused, DNS, connect timeout): the request was not sent,
  so every method is retried with exponential backoff.
* **429**: the request was throttled before any work was done, so every method (POST too)
  waits ``Retry-After`` and retries, as long as that wait fits the retry budget; otherwise
  ``AlyxUnreachable`` at once (no point sleeping past the budget).
* **Read timeout / connection dropped after sending, 502/504, HTML (proxy) 5xx**: the request
  may have landed. Idempotent requests (GET, PATCH, PUT, DELETE, and POSTs the caller marks
  ``idempotent=True`` such as ``auth-token`` and ``register-file``, a get-or-create) are
  retried; a plain POST (``/tasks`` create) is **not**: a replay could create a second task
  (NULL ``arguments`` are not unique). It raises ``AlyxUnreachable`` with ``maybe_landed=True``
  so the caller can look before creating again.
* **503**: the service refused the request without processing it: retried for every method.
* **Alyx's own 500** (JSON body with ``status_code``): an exception inside Alyx -- in every
  case recorded (bad status filter, unknown dataset type, ``list index out of range``) it is
  deterministic, so it is **not** retried; ``AlyxServerError`` carries the detail.
* Budget: at most ``retries`` retries and ``retry_budget`` seconds of waiting per call; past
  it, ``AlyxUnreachable`` (an ``Unreachable``: the outbox takes over).

``update`` in ``rest()`` is sent as **PATCH**: Alyx's ``PUT`` with a partial body nulls
``name`` and ``arguments``. Use ``put()`` for a real full replacement.
"""
from __future__ import annotations

import contextlib
import email.utils
import logging
import random
import re
import threading
import time
from typing import Any, Iterable, Iterator
from urllib.parse import parse_qsl, urlsplit

import requests

from ..errors import BadInput, Conflict, NotFound, StoreError, Unreachable
from ..settings import Settings, current
from . import params as alyx_params

_logger = logging.getLogger("hpcpipe.alyx")

ACTIONS = ("list", "read", "create", "update", "partial_update", "delete")
#: POST endpoints whose replay is harmless (same answer, nothing doubled)
IDEMPOTENT_POSTS = ("auth-token", "register-file")
PAGE_LIMIT = 1000  # Alyx caps ``limit`` at 1000


# ---------------------------------------------------------------------- errors
class AlyxError(StoreError):
    """An error answered by (or on the way to) Alyx; carries the server's message.

    Attributes: ``status_code`` (None when no answer), ``detail`` (the server's message),
    ``method``, ``url``, ``body`` (the decoded JSON error body, when there is one).
    """

    def __init__(self, message: str, status_code: int | None = None, detail: str | None = None,
                 method: str | None = None, url: str | None = None, body: Any = None):
        super().__init__(message)
        self.status_code, self.detail, self.method, self.url, self.body = \
            status_code, detail, method, url, body

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "Alyx error"


class AlyxNotFound(AlyxError, NotFound):
    """404: no such record (or no such endpoint)."""


class AlyxConflict(AlyxError, Conflict):
    """400 for the (name, session, arguments) uniqueness rule."""


class AlyxBadInput(AlyxError, BadInput):
    """400 (or 405): the request was refused as invalid; ``detail`` names the field."""


class AlyxAuthError(AlyxError):
    """403: no token, a bad token, or a login refused."""


class AlyxServerError(AlyxError):
    """Alyx raised an exception (500 with Alyx's JSON body); deterministic, not retried."""


class AlyxUnreachable(AlyxError, Unreachable):
    """No usable answer within the retry budget: down, timing out, throttling, or 5xx.

    ``maybe_landed`` is True when a non-idempotent request may have been executed anyway.
    """

    def __init__(self, *args: Any, maybe_landed: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.maybe_landed = maybe_landed


def error_detail(body: Any, text: str = "") -> str:
    """The human part of an Alyx error body: ``detail``/``error`` or ``field: message`` pairs."""
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k != "status_code"}
        for key in ("detail", "error"):
            if key in body and len(body) == 1:
                return str(body[key])
        parts = []
        for key, value in body.items():
            msgs = value if isinstance(value, list) else [value]
            msg = "; ".join(str(m) for m in msgs)
            parts.append(msg if key in ("non_field_errors", "detail", "error") else f"{key}: {msg}")
        return "; ".join(parts) or "(empty error body)"
    if isinstance(body, list):
        return "; ".join(map(str, body))
    text = re.sub(r"<[^>]+>", " ", text or "")
    return re.sub(r"\s+", " ", text).strip()[:300] or "(no message)"


# ---------------------------------------------------------------------- client
class AlyxClient:
    """Talk to one Alyx server.

    Parameters: ``base_url`` (e.g. ``https://alyx.example.org``), ``username``/``password``
    (used to get a token when none is known, and to renew a rejected one), ``token`` (40 hex),
    ``timeout`` (seconds, or ``(connect, read)``), ``retries`` (max retries per call),
    ``retry_budget`` (max seconds spent waiting per call), ``backoff`` (first backoff, doubled
    each retry, capped at ``backoff_max``), ``cache_token`` (remember the token in the 0600
    token cache under hpcpipe's home).

    ``n_requests`` counts HTTP requests sent (retries included), ``n_calls`` logical calls;
    ``reset_counters()`` zeroes both.
    """

    def __init__(self, base_url: str | None = None, username: str | None = None,
                 password: str | None = None, token: str | None = None, *,
                 timeout: float | tuple[float, float] | None = None, retries: int | None = None,
                 retry_budget: float | None = None, backoff: float | None = None,
                 backoff_max: float = 30.0, cache_token: bool = True, use_one_params: bool = True,
                 settings: Settings | None = None):
        #: what is not given comes from ``settings`` (default ``settings.current()``), read here once
        self.settings = settings = settings or current()
        if use_one_params:
            found = alyx_params.resolve(settings, base_url, username, password, token)
        else:
            found = {"url": base_url.rstrip("/") if base_url else None, "username": username,
                     "password": password, "token": token,
                     "token_source": "argument" if token else None}
        if not found["url"]:
            raise BadInput("no Alyx URL: set [alyx] url in the hpcpipe config, $HPCPIPE_ALYX_URL, "
                           "or pass base_url")
        if not re.match(r"^https?://", found["url"]):
            raise BadInput(f"Alyx URL {found['url']!r} must start with http:// or https://")
        self.base_url: str = found["url"]
        self.username: str | None = found["username"]
        self._password: str | None = found["password"]
        self._token: str | None = found["token"]
        self._token_source: str | None = found["token_source"]
        self.cache_token = cache_token
        t = timeout if timeout is not None else settings.alyx.timeout
        self.timeout = tuple(t) if isinstance(t, (list, tuple)) else (min(float(t), 10.0), float(t))
        self.retries = int(retries if retries is not None else settings.alyx.retries)
        self.retry_budget = float(retry_budget if retry_budget is not None else settings.alyx.retry_budget)
        self.backoff = float(backoff if backoff is not None else settings.alyx.backoff)
        self.backoff_max = backoff_max
        self.session = requests.Session()
        self.session.headers.update({"Accept": "application/json",
                                     "User-Agent": "hpcpipe-alyx-client"})
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=8, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.n_requests = 0
        self.n_calls = 0
        self._local = threading.local()  # a report's budget, per thread (``budget``)

    @classmethod
    def from_config(cls, **kwargs: Any) -> "AlyxClient":
        """A client configured from ``settings`` (a keyword, default ``settings.current()``) and
        ONE's params (see ``hpcpipe.alyx.params``)."""
        return cls(**kwargs)

    def __repr__(self) -> str:  # never shows the token or password
        return f"AlyxClient({self.base_url!r}, username={self.username!r})"

    @property
    def is_logged_in(self) -> bool:
        return self._token is not None

    @property
    def url_key(self) -> str:
        return alyx_params.url_key(self.base_url)

    @contextlib.contextmanager
    def budget(self, retries: int, seconds: float, timeout: float | None = None) -> Iterator[None]:
        """Temporarily, in this thread, at most ``retries`` retries and ``seconds`` of waiting
        per call, and ``timeout`` seconds per request when given (reports: what cannot go now
        is queued, rather than holding a task back; a hung server costs one timeout)."""
        old = getattr(self._local, "budget", None), getattr(self._local, "timeout", None)
        self._local.budget = (min(self.retries, retries), min(self.retry_budget, seconds))
        self._local.timeout = None if timeout is None else (min(self.timeout[0], timeout), min(self.timeout[1], timeout))
        try:
            yield
        finally:
            self._local.budget, self._local.timeout = old

    def reset_counters(self) -> None:
        self.n_requests = 0
        self.n_calls = 0

    def close(self) -> None:
        self.session.close()

    # ------------------------------------------------------------------ auth
    def authenticate(self, password: str | None = None, force: bool = False) -> None:
        """Get a token with ``POST /auth-token`` (username + password) and cache it."""
        if self._token and not force:
            return
        password = password or self._password
        if not self.username or not password:
            raise AlyxAuthError(
                f"cannot log in to Alyx at {self.base_url}: no token and no username/password "
                "(set [alyx] username and password, $HPCPIPE_ALYX_USERNAME/_PASSWORD, "
                "or $HPCPIPE_ALYX_TOKEN)")
        try:
            body = self._request("POST", "auth-token",
                                 json={"username": self.username, "password": password},
                                 authenticated=False, idempotent=True)
        except AlyxBadInput as exc:
            raise AlyxAuthError(f"Alyx at {self.base_url} refused the login of user "
                                f"{self.username!r}: {exc.detail}", status_code=exc.status_code,
                                detail=exc.detail, method="POST", url=exc.url) from None
        token = body.get("token") if isinstance(body, dict) else None
        if not token:
            raise AlyxAuthError(f"Alyx at {self.base_url} answered /auth-token without a token")
        self._token, self._token_source = token, "login"
        if self.cache_token:
            alyx_params.store_token(self.settings, self.base_url, self.username, token)
        _logger.info("logged in to Alyx at %s as %s", self.base_url, self.username)

    def logout(self) -> None:
        """Forget the token (and its cached copy)."""
        if self.cache_token:
            alyx_params.store_token(self.settings, self.base_url, self.username, None)
        self._token = None

    # ------------------------------------------------------------------ low level
    def _url(self, url: str) -> str:
        """Absolute URL for an endpoint (``tasks``, ``/tasks/<id>`` or an absolute URL)."""
        if re.match(r"^https?://", url):
            return url
        return f"{self.base_url}/{url.strip('/')}"

    def _endpoint(self, url: str) -> str:
        path = urlsplit(self._url(url)).path
        base_path = urlsplit(self.base_url).path.rstrip("/")
        return path[len(base_path):].strip("/") if path.startswith(base_path) else path.strip("/")

    def _sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def _backoff(self, attempt: int) -> float:
        wait = min(self.backoff * 2 ** (attempt - 1), self.backoff_max)
        return wait * (0.75 + random.random() / 2)

    @staticmethod
    def _never_sent(exc: requests.RequestException) -> bool:
        """True when the connection was never established, so the request did not leave."""
        if isinstance(exc, requests.ConnectTimeout):
            return True
        from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NameResolutionError, NewConnectionError
        reason = exc.args[0] if exc.args else None
        if isinstance(reason, MaxRetryError):
            reason = reason.reason
        return isinstance(reason, (NewConnectionError, ConnectTimeoutError, NameResolutionError))

    @staticmethod
    def _retry_after(resp: requests.Response) -> float | None:
        raw = resp.headers.get("Retry-After")
        if raw is None:
            return None
        try:
            return max(float(raw), 0.0)
        except ValueError:
            when = email.utils.parsedate_to_datetime(raw)
            return max(when.timestamp() - time.time(), 0.0) if when else None

    def _request(self, method: str, url: str, *, params: dict | None = None, json: Any = None,
                 data: Any = None, files: Any = None, authenticated: bool = True,
                 idempotent: bool | None = None) -> Any:
        """One logical call, with retries; returns decoded JSON (None for 204)."""
        method = method.upper()
        full = self._url(url)
        endpoint = self._endpoint(url)
        if idempotent is None:
            idempotent = method != "POST" or endpoint.split("/")[0] in IDEMPOTENT_POSTS
        if authenticated and self._token is None and self._password and self.username:
            self.authenticate()
        self.n_calls += 1
        started = time.monotonic()
        attempt = 0
        renewed = False
        where = f"{method} {self._display(full, params)}"
        while True:
            attempt += 1
            headers = {}
            if authenticated and self._token:
                headers["Authorization"] = f"Token {self._token}"
            if files is not None:
                for handle in (files.values() if isinstance(files, dict) else []):
                    seekable = handle[1] if isinstance(handle, tuple) else handle
                    if hasattr(seekable, "seek"):
                        seekable.seek(0)
            self.n_requests += 1
            _logger.debug("%s (attempt %d)", where, attempt)
            reason: str
            maybe_landed = False
            wait: float | None = None
            try:
                resp = self.session.request(method, full, params=params, json=json, data=data, files=files,
                                            headers=headers, timeout=getattr(self._local, "timeout", None) or self.timeout)
            except requests.RequestException as exc:
                sent = not self._never_sent(exc)
                kind = "timed out" if isinstance(exc, requests.Timeout) else "connection failed"
                reason = f"{kind} ({type(exc).__name__})"
                if sent and not idempotent:
                    raise AlyxUnreachable(
                        f"Alyx {where}: {reason} after the request was sent; not retried "
                        "because a POST may have been executed", method=method, url=full,
                        maybe_landed=True) from None
            else:
                status = resp.status_code
                if status < 400:
                    if status == 204 or not resp.content:
                        return None
                    try:
                        return resp.json()
                    except ValueError:
                        raise AlyxServerError(f"Alyx {where}: answered {status} with non-JSON "
                                              f"content: {error_detail(None, resp.text)}",
                                              status_code=status, method=method, url=full) from None
                body = self._json_or_none(resp)
                detail = error_detail(body, resp.text)
                if status == 429:
                    wait = self._retry_after(resp)
                    reason = f"throttled (429: {detail})"
                elif status == 403 and authenticated and not renewed and self._password and \
                        self.username and detail == "Invalid token.":
                    # a cached/ONE token that was revoked: log in again, once
                    renewed = True
                    _logger.warning("Alyx rejected the %s token of %s; logging in again",
                                    self._token_source or "stored", self.username)
                    if self.cache_token:
                        alyx_params.store_token(self.settings, self.base_url, self.username, None)
                    self._token = None
                    self.authenticate()
                    continue
                elif status >= 500 and isinstance(body, dict) and "status_code" in body:
                    raise AlyxServerError(f"Alyx {where} failed on the server (500): {detail}",
                                          status_code=status, detail=detail, method=method,
                                          url=full, body=body)
                elif status >= 500:
                    reason = f"server error {status} ({detail})"
                    if not idempotent and status != 503:
                        raise AlyxUnreachable(f"Alyx {where}: {reason}; not retried because a POST "
                                              "may have been executed", status_code=status,
                                              detail=detail, method=method, url=full,
                                              maybe_landed=True)
                else:
                    raise self._client_error(status, detail, body, method, full, where)
            # ------------------------------------------------------ retry or give up
            elapsed = time.monotonic() - started
            if wait is None:
                wait = self._backoff(attempt)
            retries, budget = getattr(self._local, "budget", None) or (self.retries, self.retry_budget)
            if attempt > retries or elapsed + wait > budget:
                raise AlyxUnreachable(
                    f"Alyx {where}: {reason}; gave up after {attempt} attempt(s) in {elapsed:.1f}s "
                    f"(retry budget: {retries} retries / {budget:g}s)",
                    status_code=None if "429" not in reason else 429, method=method, url=full,
                    maybe_landed=maybe_landed)
            _logger.warning("Alyx %s: %s; retrying in %.1fs", where, reason, wait)
            self._sleep(wait)

    @staticmethod
    def _json_or_none(resp: requests.Response) -> Any:
        if "json" not in resp.headers.get("Content-Type", ""):
            return None
        try:
            return resp.json()
        except ValueError:
            return None

    @staticmethod
    def _display(url: str, params: dict | None) -> str:
        parts = urlsplit(url)
        query = parts.query
        if params:
            query = "&".join(filter(None, [query] + [f"{k}={v}" for k, v in params.items()]))
        return parts.path + (f"?{query}" if query else "")

    @staticmethod
    def _client_error(status: int, detail: str, body: Any, method: str, url: str,
                      where: str) -> AlyxError:
        kw = dict(status_code=status, detail=detail, method=method, url=url, body=body)
        if status in (401, 403):
            hint = ""
            if detail == "Authentication credentials were not provided.":
                hint = (" (no token: set [alyx] username/password or token, or "
                        "$HPCPIPE_ALYX_USERNAME/_PASSWORD or $HPCPIPE_ALYX_TOKEN)")
            elif detail == "Invalid token.":
                hint = " (the token is wrong or revoked; give a password to log in again)"
            return AlyxAuthError(f"Alyx {where} refused ({status}): {detail}{hint}", **kw)
        if status == 404:
            if body is None:  # Django's HTML 404: the route itself does not exist
                detail = "no such endpoint (check for a trailing slash or a malformed id)"
                kw["detail"] = detail
            return AlyxNotFound(f"Alyx {where}: not found (404): {detail}", **kw)
        if status == 400 and isinstance(body, dict) and any(
                "must make a unique set" in str(m) for m in body.get("non_field_errors", [])):
            return AlyxConflict(f"Alyx {where}: {detail}", **kw)
        if status in (400, 405, 409, 413, 415):
            return AlyxBadInput(f"Alyx {where} refused the request ({status}): {detail}", **kw)
        return AlyxError(f"Alyx {where} answered {status}: {detail}", **kw)

    # ------------------------------------------------------------------ verbs
    def get(self, url: str, paginate: bool = True, **params: Any) -> Any:
        """GET; a paginated list answer is followed to the end and returned as one list."""
        query = self._params(params)
        if paginate and "limit" not in query:
            query["limit"] = PAGE_LIMIT
        body = self._request("GET", url, params=query)
        if not (paginate and isinstance(body, dict) and {"count", "next", "results"} <= set(body)):
            return body
        results = list(body["results"])
        nxt = body["next"]
        endpoint = self._url(url).split("?")[0]
        while nxt:
            # Alyx builds ``next`` from the request's Host header (wrong behind some proxies):
            # keep only its query and ask our own endpoint for it.
            page_query = dict(parse_qsl(urlsplit(nxt).query, keep_blank_values=True))
            page = self._request("GET", endpoint, params=page_query)
            if not page.get("results"):
                break
            results.extend(page["results"])
            nxt = page.get("next")
        return results

    def post(self, url: str, data: Any = None, files: Any = None,
             idempotent: bool | None = None) -> Any:
        if files is not None:
            return self._request("POST", url, data=data, files=files, idempotent=idempotent)
        return self._request("POST", url, json=data if data is not None else {}, idempotent=idempotent)

    def patch(self, url: str, data: Any = None, files: Any = None) -> Any:
        if files is not None:
            return self._request("PATCH", url, data=data, files=files)
        return self._request("PATCH", url, json=data if data is not None else {})

    def put(self, url: str, data: Any = None) -> Any:
        """A real PUT. Beware: Alyx nulls ``name`` and ``arguments`` when they are omitted."""
        return self._request("PUT", url, json=data if data is not None else {})

    def delete(self, url: str) -> None:
        self._request("DELETE", url)

    @staticmethod
    def _params(filters: dict) -> dict:
        """ONE's query conventions: lists comma-joined, None dropped, bools as True/False."""
        out = {}
        for key, value in filters.items():
            if value is None:
                continue
            if isinstance(value, (list, tuple, set)):
                value = ",".join(map(str, value))
            elif isinstance(value, bool):
                value = str(value)
            out[key] = value
        return out

    # ------------------------------------------------------------------ ONE's interface
    def rest(self, url: str | None = None, action: str | None = None, id: str | None = None,
             data: Any = None, files: Any = None, no_cache: bool = False, **filters: Any) -> Any:
        """ONE's ``AlyxClient.rest``: ``rest('tasks', 'list', session=eid)``,
        ``rest('tasks', 'partial_update', id=tid, data={...})``...

        ``action``: list, read, create, update, partial_update, delete. ``update`` is sent as
        PATCH (Alyx's PUT nulls omitted ``name``/``arguments``). ``list`` returns every page.
        """
        if not url:
            raise BadInput("rest() needs an endpoint, e.g. 'tasks'")
        action = action or ("read" if id else "list")
        if action not in ACTIONS:
            raise BadInput(f"unknown rest action {action!r}; valid: {', '.join(ACTIONS)}")
        endpoint = self._url(url).rstrip("/")
        if id is not None:
            id = str(id).rstrip("/").rsplit("/", 1)[-1]  # ONE accepts a record URL as id
        if action in ("read", "update", "partial_update", "delete") and id is None:
            if action == "read" and re.search(r"/[^/]+/[^/?]+$", urlsplit(endpoint).path):
                return self._request("GET", endpoint)  # 'sessions/<eid>' style
            raise BadInput(f"rest {url!r} {action!r} needs an id")
        if action == "list":
            return self.get(endpoint, **filters)
        if action == "read":
            return self._request("GET", f"{endpoint}/{id}")
        if action == "create":
            return self.post(endpoint, data=data, files=files)
        if action in ("update", "partial_update"):
            return self.patch(f"{endpoint}/{id}", data=data, files=files)
        self.delete(f"{endpoint}/{id}")
        return None

    # ------------------------------------------------------------------ helpers
    def iter_list(self, url: str, **filters: Any) -> Iterable[dict]:
        yield from self.get(url, **filters)
