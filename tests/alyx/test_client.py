"""AlyxClient over HTTP: auth and tokens, ONE params, errors, retries, throttling, pagination."""
from __future__ import annotations

import json
import logging
import stat
import time

import pytest

from hpcpipe.alyx import params as alyx_params
from hpcpipe.alyx.client import (
    AlyxAuthError,
    AlyxBadInput,
    AlyxClient,
    AlyxConflict,
    AlyxNotFound,
    AlyxServerError,
    AlyxUnreachable,
)
from hpcpipe.errors import BadInput, Conflict, NotFound, Unreachable
from hpcpipe.settings import Settings
from tests.alyx_server import PASSWORD, USERNAME


def fast(url, **kw):
    kw.setdefault("retries", 3)
    kw.setdefault("retry_budget", 10.0)
    kw.setdefault("backoff", 0.05)
    kw.setdefault("timeout", 10.0)
    return AlyxClient(url, **kw)


# ---------------------------------------------------------------------- auth and secrets
def test_login_caches_the_token_0600_and_never_logs_it(alyx_server, caplog):
    caplog.set_level(logging.DEBUG)  # urllib3 and hpcpipe at their most verbose
    client = fast(alyx_server.url, username=USERNAME, password=PASSWORD)
    tasks = client.rest("tasks", "list")
    assert tasks == []
    token = client._token
    assert len(token) == 40
    path = alyx_params.token_cache_path(Settings.load())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text())[alyx_params.url_key(alyx_server.url)][USERNAME] == token
    # a wrong call still says what is wrong, without secrets
    with pytest.raises(AlyxNotFound) as err:
        client.rest("tasks", "read", id="00000000-0000-0000-0000-000000000000")
    assert "No Task matches the given query." in str(err.value)
    # the cached token is reused by the next client: no /auth-token round trip
    again = fast(alyx_server.url, username=USERNAME)
    again.rest("tasks", "list")
    assert again.n_requests == 1
    text = caplog.text + repr(client) + repr(again) + str(err.value)
    assert token not in text and PASSWORD not in text
    assert any("GET" in r.getMessage() for r in caplog.records)  # it did log the requests


def test_missing_or_wrong_token_is_a_clear_error(alyx_server, caplog):
    caplog.set_level(logging.DEBUG)
    anon = fast(alyx_server.url)
    with pytest.raises(AlyxAuthError, match="Authentication credentials were not provided") as err:
        anon.rest("tasks", "list")
    assert "HPCPIPE_ALYX" in str(err.value)  # says how to configure it
    wrong = "f" * 40
    bad = fast(alyx_server.url, token=wrong)
    with pytest.raises(AlyxAuthError, match="Invalid token") as err:
        bad.rest("tasks", "list")
    assert wrong not in str(err.value)
    with pytest.raises(AlyxAuthError, match="Unable to log in with provided credentials") as err:
        fast(alyx_server.url, username=USERNAME, password="wrong-password").rest("tasks", "list")
    assert "wrong-password" not in str(err.value)
    # a revoked token with a known password: log in again once, transparently
    renew = fast(alyx_server.url, username=USERNAME, password=PASSWORD, token=wrong)
    assert renew.rest("tasks", "list") == []
    assert renew._token != wrong
    assert wrong not in caplog.text and PASSWORD not in caplog.text


def test_one_params_discovery(alyx_server, monkeypatch, tmp_path):
    """With ONE set up in ~/.one (HOME is a tmp dir here), no hpcpipe config is needed."""
    login = fast(alyx_server.url, username=USERNAME, password=PASSWORD, cache_token=False)
    login.authenticate()
    key = alyx_params.url_key(alyx_server.url)
    assert key == alyx_server.url.split("://")[1].replace(":", "_")
    one = tmp_path / "user-home" / ".one"
    one.mkdir()
    (one / ".caches").write_text(json.dumps({"CLIENT_MAP": {key: str(tmp_path / "one-cache")}, "DEFAULT": key}))
    (one / f".{key}").write_text(json.dumps({
        "ALYX_URL": alyx_server.url, "ALYX_LOGIN": USERNAME, "HTTP_DATA_SERVER": "http://example.org",
        "TOKEN": {USERNAME: {"token": login._token}}}))
    client = AlyxClient.from_config(retries=1, retry_budget=2)
    assert (client.base_url, client.username) == (alyx_server.url, USERNAME)
    assert client.rest("tasks", "list") == []
    assert client.n_requests == 1  # ONE's token used as is
    # hpcpipe's own settings win over ONE's
    monkeypatch.setenv("HPCPIPE_ALYX_URL", "http://127.0.0.1:9")
    assert AlyxClient.from_config().base_url == "http://127.0.0.1:9"


def test_no_url_is_a_clear_error():
    with pytest.raises(BadInput, match="HPCPIPE_ALYX_URL"):
        AlyxClient()


# ---------------------------------------------------------------------- errors and rest()
def test_rest_interface_and_error_mapping(alyx_server, tmp_path):
    from tests.alyx_server.fixtures import make_session

    client = fast(alyx_server.url, username=USERNAME, password=PASSWORD)
    _, eid = make_session(client, tmp_path, "SW010")
    rec = client.rest("tasks", "create", data={"name": "A", "session": eid, "status": "Waiting",
                                               "arguments": {"x": 1}})
    # 'update' is sent as PATCH: name and arguments survive a partial body
    out = client.rest("tasks", "update", id=rec["id"], data={"status": "Started"})
    assert (out["name"], out["arguments"], out["status"]) == ("A", {"x": 1}, "Started")
    assert client.rest("tasks", "read", id=rec["id"])["status"] == "Started"
    assert [t["id"] for t in client.rest("tasks", "list", session=eid, status="started")] == [rec["id"]]
    with pytest.raises(AlyxConflict, match="must make a unique set") as err:
        client.rest("tasks", "create", data={"name": "A", "session": eid, "status": "Waiting",
                                             "arguments": {"x": 1}})
    assert isinstance(err.value, Conflict)
    with pytest.raises(AlyxBadInput, match="time_out_secs: Ensure this value is less than or equal to 32767") as err:
        client.rest("tasks", "partial_update", id=rec["id"], data={"time_out_secs": 86400})
    assert isinstance(err.value, BadInput)
    with pytest.raises(AlyxBadInput, match="Invalid status, choices are: Waiting"):
        client.rest("tasks", "partial_update", id=rec["id"], data={"status": "Running"})
    with pytest.raises(AlyxServerError, match="Invalidstatus"):  # Alyx's own 500: not retried
        client.rest("tasks", "list", status="Bogus")
    assert client.rest("tasks", "delete", id=rec["id"]) is None
    with pytest.raises(AlyxNotFound) as err:
        client.rest("tasks", "delete", id=rec["id"])
    assert isinstance(err.value, NotFound)
    with pytest.raises(BadInput, match="unknown rest action"):
        client.rest("tasks", "patch", id=rec["id"])


# ---------------------------------------------------------------------- retries
def test_retries_follow_the_policy(alyx_server):
    client = fast(alyx_server.url, username=USERNAME, password=PASSWORD)
    client.authenticate()
    # a proxy 502 on a GET: retried
    alyx_server.fault(path="^tasks$", method="GET", status=502, times=2)
    client.reset_counters()
    assert client.rest("tasks", "list") == []
    assert client.n_requests == 3
    # a 502 on a task create (non-idempotent POST): NOT retried, flagged as maybe landed
    alyx_server.fault(path="^tasks$", method="POST", status=502, times=1)
    client.reset_counters()
    with pytest.raises(AlyxUnreachable) as err:
        client.rest("tasks", "create", data={"name": "A", "session": None, "status": "Waiting"})
    assert err.value.maybe_landed and client.n_requests == 1
    # 503 (not processed) on a POST: retried
    alyx_server.fault(path="^tasks$", method="POST", status=503, times=1)
    assert client.rest("tasks", "create", data={"name": "B", "session": None, "status": "Waiting"})["name"] == "B"
    # a server that answers too slowly: read timeout, retried for GET, then Unreachable
    slow = fast(alyx_server.url, username=USERNAME, password=PASSWORD, timeout=(2, 0.3), retries=1)
    slow.authenticate()
    alyx_server.fault(path="^tasks$", method="GET", delay=1.0, times=2)
    with pytest.raises(AlyxUnreachable, match="timed out"):
        slow.rest("tasks", "list")
    alyx_server.fault(clear=True)


def test_connection_refused_exhausts_the_budget(alyx_fresh_server):
    client = fast(alyx_fresh_server.url, username=USERNAME, password=PASSWORD, retries=3, backoff=0.05)
    client.authenticate()
    alyx_fresh_server.stop()
    t0 = time.monotonic()
    with pytest.raises(AlyxUnreachable, match="gave up after 4 attempt") as err:
        client.rest("tasks", "list")
    assert isinstance(err.value, Unreachable)
    assert time.monotonic() - t0 < 5
    alyx_fresh_server.start()  # same port, same database
    assert client.rest("tasks", "list") == []


def test_429_storm_waits_retry_after(alyx_fresh_server):
    server = alyx_fresh_server
    client = fast(server.url, username=USERNAME, password=PASSWORD, retries=10, retry_budget=30)
    client.authenticate()
    server.set_throttle("4/s")
    client.reset_counters()
    t0 = time.monotonic()
    for _ in range(12):
        assert client.rest("tasks", "list") == []
    elapsed = time.monotonic() - t0
    assert client.n_calls == 12 and client.n_requests > 12  # some were throttled, then retried
    assert elapsed >= 1.0  # it waited as told (Retry-After: 1)
    stats = server.stats()
    assert stats["GET tasks"] == client.n_requests
    # a budget smaller than Retry-After: give up at once, as Unreachable (the outbox takes over)
    server.set_throttle("1/min")
    impatient = fast(server.url, username=USERNAME, password=PASSWORD, retry_budget=2)
    assert impatient.rest("tasks", "list") == []  # the minute's only slot
    t0 = time.monotonic()
    with pytest.raises(AlyxUnreachable, match="throttled"):
        impatient.rest("tasks", "list")
    assert time.monotonic() - t0 < 15  # not the minute Retry-After asks for
    server.set_throttle("100000/min")


def test_pagination_follows_next_with_limit_1000(alyx_server):
    alyx_server.seed_tasks(None, 2100)
    client = fast(alyx_server.url, username=USERNAME, password=PASSWORD)
    client.authenticate()
    client.reset_counters()
    rows = client.rest("tasks", "list")
    assert len(rows) == 2100 and len({r["id"] for r in rows}) == 2100
    assert client.n_requests == 3  # 1000 + 1000 + 100
