"""The test server itself behaves as ALYX-API.md records (raw HTTP, no hpcpipe client)."""
from __future__ import annotations

import requests

from tests.alyx_server import PASSWORD, USERNAME


def token(url: str) -> str:
    return requests.post(f"{url}/auth-token", json={"username": USERNAME, "password": PASSWORD}).json()["token"]


def test_auth_and_routing_quirks(alyx_server):
    url = alyx_server.url
    tok = token(url)
    assert len(tok) == 40 and int(tok, 16) >= 0
    assert token(url) == tok  # same token every time
    form = requests.post(f"{url}/auth-token", data={"username": USERNAME, "password": PASSWORD})
    assert form.json()["token"] == tok
    assert requests.get(f"{url}/auth-token").status_code == 405
    bad = requests.post(f"{url}/auth-token", json={"username": USERNAME, "password": "nope"})
    assert bad.status_code == 400
    assert bad.json() == {"non_field_errors": ["Unable to log in with provided credentials."], "status_code": 400}
    r = requests.get(f"{url}/tasks")
    assert (r.status_code, r.json()) == (403, {"detail": "Authentication credentials were not provided.",
                                               "status_code": 403})
    r = requests.get(f"{url}/tasks", headers={"Authorization": "Token " + "0" * 40})
    assert (r.status_code, r.json()["detail"]) == (403, "Invalid token.")
    auth = {"Authorization": f"Token {tok}"}
    assert requests.get(f"{url}/tasks/", headers=auth).status_code == 404  # trailing slash
    r = requests.get(f"{url}/tasks/not-a-uuid", headers=auth)
    assert r.status_code == 404 and "text/html" in r.headers["Content-Type"]
    r = requests.get(f"{url}/tasks/00000000-0000-0000-0000-000000000000", headers=auth)
    assert r.json() == {"detail": "No Task matches the given query.", "status_code": 404}


def test_task_quirks(alyx_server, tmp_path):
    url = alyx_server.url
    s = requests.Session()
    s.headers["Authorization"] = f"Token {token(url)}"
    r = s.post(f"{url}/tasks", json={"name": "Minimal"})
    assert r.json() == {"session": ["This field is required."], "status_code": 400}
    r = s.post(f"{url}/tasks", json={"session": None, "name": "T", "status": "Running", "time_out_secs": 86400})
    assert r.json()["status"] == ["Invalid status, choices are: Waiting, Held, Started, Errored, "
                                  "Abandoned, Empty, Incomplete, Complete"]
    assert r.json()["time_out_secs"] == ["Ensure this value is less than or equal to 32767."]
    r = s.post(f"{url}/tasks", json={"session": None, "name": "x" * 65, "status": "Waiting"})
    assert r.json()["name"] == ["Ensure this field has no more than 64 characters."]
    ok = s.post(f"{url}/tasks", json={"session": None, "name": "T", "status": "Waiting", "arguments": {"a": 1}})
    assert ok.status_code == 201
    dup = s.post(f"{url}/tasks", json={"session": None, "name": "T", "status": "Waiting", "arguments": {"a": 1}})
    assert dup.status_code == 201  # session NULL: distinct, as in Postgres
    # PUT with a partial body nulls name and arguments
    r = s.put(f"{url}/tasks/{ok.json()['id']}", json={"status": "Started"})
    assert (r.json()["name"], r.json()["arguments"], r.json()["status"]) == (None, None, "Started")
    # the server bug: a create without status leaves a row that breaks the list until patched
    r = s.post(f"{url}/tasks", json={"session": None, "name": "NoStatus"})
    assert r.json() == {"detail": "list index out of range", "status_code": 500}
    assert s.get(f"{url}/tasks").status_code == 500
    bad_id = alyx_server.sql("SELECT id FROM tasks WHERE status=10")[0]["id"]
    assert s.patch(f"{url}/tasks/{bad_id}", json={"status": "Waiting"}).status_code == 200
    assert s.get(f"{url}/tasks").status_code == 200
    assert s.get(f"{url}/tasks?status=waiting").json()["count"] == 2  # case-insensitive filter
    assert s.get(f"{url}/tasks?status=Bogus").status_code == 500


def test_pagination_envelope(alyx_server):
    url = alyx_server.url
    alyx_server.seed_tasks(None, 1100)
    s = requests.Session()
    s.headers["Authorization"] = f"Token {token(url)}"
    page = s.get(f"{url}/tasks").json()
    assert (page["count"], len(page["results"]), page["previous"]) == (1100, 250, None)
    assert page["next"] == f"{url}/tasks?limit=250&offset=250"
    page = s.get(f"{url}/tasks?limit=5000").json()
    assert len(page["results"]) == 1000 and "limit=1000" in page["next"]
    assert len(s.get(f"{url}/tasks?limit=-5").json()["results"]) == 250
    assert s.get(f"{url}/tasks?offset=5000").json()["results"] == []


def test_register_file_quirks(alyx_server, tmp_path):
    from tests.alyx_server.fixtures import admin_client, make_session

    client = admin_client(alyx_server)
    make_session(client, tmp_path, "SW001", "2026-11-20", 1)
    url = alyx_server.url
    body = {"path": "SW001/2026-11-20/001", "filenames": ["alf/licks.times.npy", "alf/foo.bar.npy"],
            "created_by": USERNAME, "name": "hpc_server"}
    r = requests.post(f"{url}/register-file", json=body)  # no Authorization header at all
    assert r.status_code == 500
    assert r.json()["detail"] == 'No dataset type found for filename "foo.bar.npy"'
    # not atomic: the first file was registered anyway
    assert [d["name"] for d in client.get("datasets")] == ["licks.times.npy"]
    r = requests.post(f"{url}/register-file", json={**body, "filenames": ["alf/a.b.npy"], "created_by": None})
    assert r.status_code == 500  # no created_by and no auth
    # zipped lists: silent truncation
    r = requests.post(f"{url}/register-file", json={**body, "filenames": ["alf/licks.times.npy", "alf/spikes.times.npy"],
                                                    "hashes": ["h1"]})
    assert r.status_code == 201 and len(r.json()) == 1
    again = requests.post(f"{url}/register-file", json={**body, "filenames": ["alf/licks.times.npy"]}).json()
    assert again[0]["id"] == r.json()[0]["id"]
    r = requests.post(f"{url}/register-file", json={**body, "path": "NOPE/2026-11-20/001"})
    assert r.json() == {"error": 'A subject with nickname "NOPE" does not exist.', "status_code": 400}
    r = requests.post(f"{url}/register-file", json={**body, "path": "SW001/2026-11-20/007"})
    assert r.json()["error"] == "A session for SW001/7 on 2026-11-20 does not exist"
    r = requests.post(f"{url}/register-file", json={**body, "filenames": ["alf/spikes.times.xyz"]})
    assert r.json()["detail"] == "DataFormat matching query does not exist."
