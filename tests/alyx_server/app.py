"""A stand-in for the Alyx REST API, behaving as ``shared/alyx/ALYX-API.md`` records.

A Flask app over a sqlite3 file. It reproduces what hpcpipe relies on *and* the quirks a
client must survive: 403 (not 401) for missing/bad tokens, no trailing slashes, the
``{count,next,previous,results}`` envelope (250 by default, ``limit`` capped at 1000), the exact
task status vocabulary and error bodies, the (name, session, arguments) uniqueness with NULL
arguments distinct, the SmallInteger 32767 cap, ``POST /tasks`` without ``status`` creating a
corrupt row that breaks list pages until patched, the per-user throttle with ``Retry-After``,
and a non-atomic ``register-file`` that answers 500 for unknown dataset types/formats.

Test hooks live under ``/_test/`` (never throttled, never authenticated): bulk task seeding,
throttle reconfiguration, request statistics and fault injection.
"""
from __future__ import annotations

import datetime as dt
import fnmatch
import json
import math
import re
import sqlite3
import threading
import time
import uuid
from collections import Counter, defaultdict
from typing import Any, Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from flask import Flask, Response, request

from . import db as dbmod

STATUS_INT = {"Waiting": 20, "Held": 25, "Started": 30, "Errored": 40, "Abandoned": 45,
              "Empty": 50, "Incomplete": 55, "Complete": 60}
INT_STATUS = {v: k for k, v in STATUS_INT.items()}
STATUS_CHOICES = ", ".join(STATUS_INT)
QC_INT = {"NOT_SET": 0, "PASS": 10, "WARNING": 30, "FAIL": 40, "CRITICAL": 50}
INT_QC = {v: k for k, v in QC_INT.items()}
TASK_FIELDS = ("id", "parents", "session", "data_repository", "status", "name", "priority",
               "io_charge", "level", "gpu", "cpu", "ram", "time_out_secs", "time_elapsed_secs",
               "executable", "graph", "log", "version", "datetime", "arguments")
SMALLINT = ("priority", "io_charge", "level", "gpu", "cpu", "ram", "time_out_secs")
CHAR_MAX = {"name": 64, "executable": 128, "graph": 64, "version": 64}
UUID_RE = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
SLUG_RE = r"[^/]+"
HTML_404 = ("<!doctype html>\n<html lang=\"en\">\n<head>\n  <title>Not Found</title>\n</head>\n"
            "<body>\n  <h1>Not Found</h1><p>The requested resource was not found on this "
            "server.</p>\n</body>\n</html>\n")


class ApiError(Exception):
    def __init__(self, status: int, body: dict | str, headers: dict | None = None):
        super().__init__(body)
        self.status, self.body, self.headers = status, body, headers or {}


_SCHEMA: dict | None = None
#: endpoints served here beyond the recorded schema subset: path -> (methods, list filters)
_EXTRA_PATHS = {
    "/labs": (("get", "post"), ("name",)), "/labs/{id}": (("get", "patch"), ()),
    "/subjects": (("get", "post"), ("nickname", "lab")), "/subjects/{id}": (("get",), ()),
    "/users": (("get", "post"), ("username",)), "/users/{id}": (("get",), ()),
    "/projects": (("get", "post"), ("name",)),
    "/data-repository/{id}": (("get", "patch"), ()), "/data-repository-type": (("get",), ()),
    "/dataset-types/{id}": (("get",), ()), "/data-formats/{id}": (("get",), ()),
    "/datasets/{id}": (("get", "delete"), ()),
    "/files": (("get",), ("dataset", "data_repository", "exists")),
}


def openapi_schema() -> dict:
    global _SCHEMA
    if _SCHEMA is None:
        from pathlib import Path

        schema = json.loads((Path(__file__).with_name("openapi-subset.json")).read_text())
        for path, (methods, filters) in _EXTRA_PATHS.items():
            entry = schema["paths"].setdefault(path, {})
            for method in methods:
                params = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}] \
                    if "{id}" in path else \
                    [{"name": f, "in": "query", "schema": {"type": "string"}} for f in (*filters, "limit", "offset")]
                entry.setdefault(method, {"operationId": f"{path}:{method}", "parameters": params})
        _SCHEMA = schema
    return _SCHEMA


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds")


def field_error(field: str, msg: str, status: int = 400) -> ApiError:
    return ApiError(status, {field: [msg]})


def server_error(msg: str) -> ApiError:
    return ApiError(500, {"detail": msg})


def parse_uuid(value: Any) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except (ValueError, TypeError, AttributeError):
        raise ValueError(f"“{value}” is not a valid UUID.") from None


def parse_datetime(value: str) -> str:
    """ISO input → naive UTC ISO string, as Alyx stores it (TZ=UTC)."""
    s = str(value).strip().replace("Z", "+00:00")
    try:
        t = dt.datetime.fromisoformat(s)
    except ValueError:
        raise ValueError("Datetime has wrong format. Use one of these formats instead: "
                         "YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z].") from None
    if t.tzinfo is not None:
        t = t.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return t.isoformat(timespec="microseconds") if t.microsecond else t.isoformat(timespec="seconds")


def canon(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def parse_rate(rate: str) -> tuple[int, float]:
    num, period = str(rate).split("/")
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400}[period.strip()[0]]
    return int(num), float(seconds)


def split_django(value: str) -> list[tuple[str, str]]:
    """``django=field__lookup,value[,field2,value2]``; commas inside [] or () don't split."""
    parts, depth, cur = [], 0, ""
    for ch in value:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    if len(parts) % 2:
        raise server_error("list index out of range")
    return list(zip(parts[::2], parts[1::2]))


def literal(value: str) -> Any:
    v = value.strip()
    if v in ("True", "true"):
        return True
    if v in ("False", "false"):
        return False
    if v in ("None", "null"):
        return None
    if v.startswith("[") or v.startswith("("):
        inner = v[1:-1].strip()
        return [literal(x) for x in inner.split(",")] if inner else []
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v.strip("'\"")


def lookup_match(actual: Any, lookup: str, expected: Any) -> bool:
    if lookup in ("exact", ""):
        return actual == expected or (actual is not None and str(actual) == str(expected))
    if lookup == "iexact":
        return actual is not None and str(actual).lower() == str(expected).lower()
    if lookup == "icontains":
        return actual is not None and str(expected).lower() in str(actual).lower()
    if lookup == "contains":
        return actual is not None and str(expected) in str(actual)
    if lookup == "startswith":
        return actual is not None and str(actual).startswith(str(expected))
    if lookup == "istartswith":
        return actual is not None and str(actual).lower().startswith(str(expected).lower())
    if lookup == "in":
        values = expected if isinstance(expected, list) else [expected]
        return actual in values or str(actual) in [str(x) for x in values]
    if lookup == "isnull":
        return (actual is None) == bool(expected)
    if lookup == "date":
        return actual is not None and str(actual)[:10] == str(expected)
    if lookup in ("gt", "gte", "lt", "lte"):
        if actual is None:
            return False
        try:
            a, e = float(actual), float(expected)
        except (TypeError, ValueError):
            a, e = str(actual), str(expected)
        return {"gt": a > e, "gte": a >= e, "lt": a < e, "lte": a <= e}[lookup]
    raise server_error(f"Unsupported lookup '{lookup}'")


def django_filter(rows: list[dict], value: str, getter: Callable[[dict, str], Any]) -> list[dict]:
    for key, val in split_django(value):
        exclude = key.startswith("~")
        key = key.lstrip("~")
        field, _, lookup = key.partition("__")
        expected = literal(val)
        rows = [r for r in rows if lookup_match(getter(r, field), lookup, expected) != exclude]
    return rows


class AlyxTestServer:
    """The app's state: database path, throttle, statistics, fault injection."""

    def __init__(self, db_path: str, username: str = "admin", password: str = "admin-password",
                 throttle_rate: str = "550/min"):
        self.db_path = db_path
        self.lock = threading.RLock()
        self.db = dbmod.connect(db_path)
        dbmod.init(self.db, username, password)
        self.set_throttle(throttle_rate)
        self.stats: Counter = Counter()
        self.faults: list[dict] = []
        self.app = self._make_app()

    # ------------------------------------------------------------------ infrastructure
    def set_throttle(self, rate: str | None) -> None:
        self.throttle_rate = rate
        self.throttle_num, self.throttle_period = parse_rate(rate) if rate else (0, 0.0)
        self.history: dict[str, list[float]] = defaultdict(list)

    def throttle(self, key: str) -> None:
        if not self.throttle_num:
            return
        t = time.time()
        hist = self.history[key]
        while hist and hist[-1] <= t - self.throttle_period:
            hist.pop()
        if len(hist) >= self.throttle_num:
            self.stats["throttled 429"] += 1
            remaining = self.throttle_period - (t - hist[-1])
            wait = math.ceil(remaining / max(self.throttle_num - len(hist) + 1, 1))
            raise ApiError(429, {"detail": f"Request was throttled. Expected available in "
                                           f"{wait} seconds."}, {"Retry-After": str(wait)})
        hist.insert(0, t)

    def q(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        return self.db.execute(sql, args).fetchall()

    def q1(self, sql: str, args: tuple = ()) -> sqlite3.Row | None:
        return self.db.execute(sql, args).fetchone()

    def absolute(self, path: str) -> str:
        return request.host_url.rstrip("/") + path

    def body(self) -> dict:
        ctype = request.mimetype or ""
        if ctype == "application/json":
            raw = request.get_data(as_text=True)
            if not raw:
                return {}
            try:
                data = json.loads(raw)
            except ValueError as exc:
                raise ApiError(400, {"detail": f"JSON parse error - {exc}"}) from None
            if not isinstance(data, dict):
                raise ApiError(400, {"non_field_errors": [
                    f"Invalid data. Expected a dictionary, but got {type(data).__name__}."]})
            return data
        form = request.form
        data: dict[str, Any] = {}
        for key in form.keys():
            values = form.getlist(key)
            data[key] = values if len(values) > 1 or key in ("parents",) else values[0]
        if isinstance(data.get("arguments"), str):
            try:
                data["arguments"] = json.loads(data["arguments"])
            except ValueError:
                pass
        return data

    def paginate(self, rows: list, serialize: Callable[[Any], dict]) -> dict:
        args = request.args

        def positive(raw: str | None, strict: bool, default: int, cutoff: int | None = None) -> int:
            try:
                val = int(raw)  # type: ignore[arg-type]
                if val < 0 or (strict and val == 0):
                    raise ValueError
            except (TypeError, ValueError):
                return default
            return min(val, cutoff) if cutoff else val

        limit = positive(args.get("limit"), True, 250, 1000)
        offset = positive(args.get("offset"), False, 0)
        count = len(rows)
        page = [serialize(r) for r in rows[offset:offset + limit]]

        def link(new_offset: int | None) -> str:
            parts = urlsplit(request.url)
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            query["limit"] = str(limit)
            if new_offset is None:
                query.pop("offset", None)
            else:
                query["offset"] = str(new_offset)
            return urlunsplit((parts.scheme, parts.netloc, parts.path,
                               urlencode(sorted(query.items())), ""))

        nxt = link(offset + limit) if offset + limit < count else None
        if offset <= 0:
            prev = None
        elif offset - limit <= 0:
            prev = link(None)
        else:
            prev = link(offset - limit)
        return {"count": count, "next": nxt, "previous": prev, "results": page}

    def _make_app(self) -> Flask:
        app = Flask("alyx_test_server")
        app.config["MAX_CONTENT_LENGTH"] = 64 * 1024 * 1024
        routes: list[tuple[re.Pattern, dict[str, Callable], bool]] = []

        def route(pattern: str, auth: bool = True, **methods: Callable) -> None:
            routes.append((re.compile(f"^{pattern}$"), methods, auth))

        route("auth-token", auth=False, POST=self.auth_token)
        route("api/schema", auth=False, GET=self.api_schema)
        route("tasks", GET=self.tasks_list, POST=self.tasks_create)
        route(f"tasks/({UUID_RE})", GET=self.task_read, PUT=self.task_put,
              PATCH=self.task_patch, DELETE=self.task_delete)
        route("sessions", GET=self.sessions_list, POST=self.sessions_create)
        route(f"sessions/({UUID_RE})", GET=self.session_read, PATCH=self.session_patch,
              DELETE=self.session_delete)
        route("subjects", GET=self.subjects_list, POST=self.subjects_create)
        route(f"subjects/({SLUG_RE})", GET=self.subject_read)
        route("labs", GET=self.labs_list, POST=self.labs_create)
        route(f"labs/({SLUG_RE})", GET=self.lab_read, PATCH=self.lab_patch)
        route("users", GET=self.users_list, POST=self.users_create)
        route(f"users/({SLUG_RE})", GET=self.user_read)
        route("projects", GET=self.projects_list, POST=self.projects_create)
        route("data-repository", GET=self.repos_list, POST=self.repos_create)
        route(f"data-repository/({SLUG_RE})", GET=self.repo_read, PATCH=self.repo_patch)
        route("data-repository-type", GET=self.repo_types_list)
        route("dataset-types", GET=self.dtypes_list, POST=self.dtypes_create)
        route(f"dataset-types/({SLUG_RE})", GET=self.dtype_read)
        route("data-formats", GET=self.dformats_list, POST=self.dformats_create)
        route(f"data-formats/({SLUG_RE})", GET=self.dformat_read)
        route("register-file", auth=False, POST=self.register_file)
        route("datasets", GET=self.datasets_list)
        route(f"datasets/({UUID_RE})", GET=self.dataset_read, DELETE=self.dataset_delete)
        route("files", GET=self.files_list)
        route(f"files/({UUID_RE})", GET=self.file_read, PATCH=self.file_patch)

        hooks = {"_test/seed-tasks": self.hook_seed_tasks, "_test/throttle": self.hook_throttle,
                 "_test/stats": self.hook_stats, "_test/fault": self.hook_fault,
                 "_test/sql": self.hook_sql, "_test/reset": self.hook_reset}

        @app.route("/", defaults={"path": ""}, methods=["GET", "POST", "PUT", "PATCH", "DELETE",
                                                        "OPTIONS", "HEAD"])
        @app.route("/<path:path>", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS",
                                            "HEAD"])
        def dispatch(path: str) -> Response:
            if path in hooks:
                with self.lock:
                    return self.respond(200, hooks[path]())
            self.stats[f"{request.method} {path.split('/')[0]}"] += 1
            self.stats["total"] += 1
            delay, fault = self.take_fault(path)
            if delay:
                time.sleep(delay)
            if fault:
                return Response(fault.get("body", "<h1>Bad Gateway</h1>"),
                                status=fault["status"], mimetype="text/html")
            if path == "":
                return self.respond(200, {name.split("/")[0]: self.absolute("/" + name)
                                          for name in ("tasks", "sessions", "datasets")})
            for pattern, methods, auth in routes:
                m = pattern.match(path)
                if not m:
                    continue
                try:
                    with self.lock:
                        user = self.authenticate(required=auth)
                        self.throttle(user or request.remote_addr or "anon")
                        handler = methods.get(request.method)
                        if handler is None:
                            raise ApiError(405, {"detail": f'Method "{request.method}" not allowed.'})
                        if request.method == "OPTIONS":
                            raise server_error("'list' object has no attribute 'items'")
                        self.user = user
                        status, body = handler(*m.groups())
                except ApiError as exc:
                    return self.respond(exc.status, exc.body, exc.headers)
                except Exception as exc:  # Alyx: unhandled → 500 {"detail": str(exc)}
                    return self.respond(500, {"detail": str(exc)})
                return self.respond(status, body)
            return Response(HTML_404, status=404, mimetype="text/html")

        return app

    def respond(self, status: int, body: Any, headers: dict | None = None) -> Response:
        if status == 204:
            return Response(status=204)
        if isinstance(body, dict) and status >= 400:
            body = {**body, "status_code": status}
        return Response(json.dumps(body), status=status, mimetype="application/json",
                        headers=headers or {})

    def take_fault(self, path: str) -> tuple[float, dict | None]:
        with self.lock:
            for fault in self.faults:
                if re.search(fault.get("path", ".*"), path) and \
                        fault.get("method", request.method) == request.method and fault["times"] > 0:
                    fault["times"] -= 1
                    return float(fault.get("delay", 0)), (fault if fault.get("status") else None)
        return 0.0, None

    def authenticate(self, required: bool) -> str | None:
        header = request.headers.get("Authorization", "")
        parts = header.split()
        if not parts or parts[0].lower() != "token":
            if required:
                raise ApiError(403, {"detail": "Authentication credentials were not provided."})
            return None
        if len(parts) == 1:
            raise ApiError(403, {"detail": "Invalid token header. No credentials provided."})
        if len(parts) > 2:
            raise ApiError(403, {"detail": "Invalid token header. Token string should not "
                                           "contain spaces."})
        row = self.q1("SELECT username FROM users WHERE token=?", (parts[1],))
        if row is None:
            raise ApiError(403, {"detail": "Invalid token."})
        return row["username"]

    # ------------------------------------------------------------------ test hooks
    def hook_seed_tasks(self) -> dict:
        """Bulk-insert tasks straight into the database: {session, count, prefix, status, graph}."""
        data = request.get_json(force=True)
        status = STATUS_INT[data.get("status", "Waiting")]
        rows = []
        for i in range(int(data["count"])):
            rows.append((str(uuid.uuid4()), "[]", data.get("session"), None, status,
                         f"{data.get('prefix', 'Seeded')}_{i:05d}", data.get("priority"),
                         None, data.get("level", 0), None, None, None, None, None, None,
                         data.get("graph"), None, None, now(), None))
        self.db.execute("BEGIN")
        self.db.executemany(f"INSERT INTO tasks({','.join(TASK_FIELDS)}) VALUES "
                            f"({','.join('?' * len(TASK_FIELDS))})", rows)
        self.db.execute("COMMIT")
        return {"count": len(rows)}

    def hook_throttle(self) -> dict:
        data = request.get_json(force=True, silent=True) or {}
        self.set_throttle(data.get("rate", self.throttle_rate))
        return {"rate": self.throttle_rate}

    def hook_stats(self) -> dict:
        stats = dict(self.stats)
        if request.method == "POST":
            self.stats.clear()
        return stats

    def hook_fault(self) -> dict:
        """{path: regex, method, status, times, delay}; {"clear": true} removes all faults."""
        data = request.get_json(force=True)
        if data.get("clear"):
            self.faults.clear()
        else:
            self.faults.append({"times": 1, **data})
        return {"faults": len(self.faults)}

    def hook_reset(self) -> dict:
        """Forget sessions, subjects, tasks and datasets (seeds, labs, repos and types stay)."""
        self.db.execute("BEGIN")
        for table in ("tasks", "file_records", "datasets", "sessions", "subjects"):
            self.db.execute(f"DELETE FROM {table}")
        self.db.execute("COMMIT")
        self.history.clear()
        self.faults.clear()
        self.stats.clear()
        return {"reset": True}

    def hook_sql(self) -> dict:
        data = request.get_json(force=True)
        rows = self.q(data["sql"], tuple(data.get("args", ())))
        return {"rows": [dict(r) for r in rows]}

    # ------------------------------------------------------------------ auth
    def api_schema(self) -> tuple[int, dict]:
        """``GET /api/schema``: the OpenAPI 3 document ONE reads to learn endpoints and actions.

        The recorded part of the real schema (``openapi-subset.json``, copied from
        ``shared/alyx``), completed with minimal entries for the other endpoints served here
        (labs, subjects, users...), which the real schema has too.
        """
        return 200, openapi_schema()

    def auth_token(self) -> tuple[int, dict]:
        data = self.body()
        errors = {k: ["This field is required."] for k in ("username", "password") if not data.get(k)}
        if errors:
            raise ApiError(400, errors)
        row = self.q1("SELECT token, password_hash FROM users WHERE username=?", (data["username"],))
        if row is None or row["password_hash"] != dbmod.hash_password(str(data["password"])):
            raise ApiError(400, {"non_field_errors": ["Unable to log in with provided credentials."]})
        return 200, {"token": row["token"]}

    # ------------------------------------------------------------------ tasks
    def task_row(self, task_id: str) -> sqlite3.Row:
        row = self.q1("SELECT * FROM tasks WHERE id=?", (task_id.lower(),))
        if row is None:
            raise ApiError(404, {"detail": "No Task matches the given query."})
        return row

    def task_dict(self, row: sqlite3.Row | dict) -> dict:
        out = {}
        for f in TASK_FIELDS:
            v = row[f]
            if f == "status":
                if v not in INT_STATUS:
                    raise server_error("list index out of range")
                v = INT_STATUS[v]
            elif f in ("parents", "arguments"):
                v = json.loads(v) if v is not None else None
            out[f] = v
        return out

    def validate_task(self, data: dict, instance: dict | None, partial: bool) -> dict:
        errors: dict[str, list[str]] = {}
        clean: dict[str, Any] = {}
        creating = instance is None
        if creating and "session" not in data:
            errors["session"] = ["This field is required."]
        for key, value in data.items():
            try:
                if key == "status":
                    if value is None:
                        raise ValueError("This field may not be null.")
                    if not isinstance(value, str) or value not in STATUS_INT:
                        raise ValueError(f"Invalid status, choices are: {STATUS_CHOICES}")
                    clean[key] = STATUS_INT[value]
                elif key == "session":
                    if value is None:
                        clean[key] = None
                    else:
                        sid = parse_uuid(value)
                        if not self.q1("SELECT 1 FROM sessions WHERE id=?", (sid,)):
                            raise ValueError(f"Object with id={sid} does not exist.")
                        clean[key] = sid
                elif key == "parents":
                    if value is None:
                        raise ValueError("This field may not be null.")
                    if isinstance(value, str) or not isinstance(value, list):
                        raise ValueError(f'Expected a list of items but got type "{type(value).__name__}".')
                    parents = []
                    for p in value:
                        pid = parse_uuid(p)
                        if not self.q1("SELECT 1 FROM tasks WHERE id=?", (pid,)):
                            raise ValueError(f"Object with id={pid} does not exist.")
                        parents.append(pid)
                    clean[key] = json.dumps(parents)
                elif key == "data_repository":
                    if value is not None and not self.q1(
                            "SELECT 1 FROM data_repository WHERE name=?", (value,)):
                        raise ValueError(f"Object with name={value} does not exist.")
                    clean[key] = value
                elif key in SMALLINT:
                    if value is None:
                        clean[key] = None
                        continue
                    if isinstance(value, float) and not value.is_integer():
                        raise ValueError("A valid integer is required.")
                    try:
                        ivalue = int(str(value).strip().split(".")[0]) if isinstance(value, str) \
                            else int(value)
                    except (TypeError, ValueError):
                        raise ValueError("A valid integer is required.") from None
                    if ivalue > 32767:
                        raise ValueError("Ensure this value is less than or equal to 32767.")
                    if ivalue < -32768:
                        raise ValueError("Ensure this value is greater than or equal to -32768.")
                    clean[key] = ivalue
                elif key == "time_elapsed_secs":
                    if value is None:
                        clean[key] = None
                        continue
                    try:
                        clean[key] = float(value)
                    except (TypeError, ValueError):
                        raise ValueError("A valid number is required.") from None
                elif key in CHAR_MAX or key == "log":
                    if value is None:
                        clean[key] = None
                        continue
                    if isinstance(value, (dict, list)):
                        raise ValueError("Not a valid string.")
                    value = str(value)
                    if key in CHAR_MAX and len(value) > CHAR_MAX[key]:
                        raise ValueError(f"Ensure this field has no more than {CHAR_MAX[key]} characters.")
                    clean[key] = value
                elif key == "arguments":
                    clean[key] = canon(value)
                # unknown keys (and read-only id/datetime) are silently ignored
            except ValueError as exc:
                errors[key] = [str(exc)]
        if errors:
            raise ApiError(400, errors)
        # (name, session, arguments) uniqueness; any NULL → distinct (Postgres semantics)
        merged = {k: (instance or {}).get(k) for k in ("name", "session", "arguments")}
        if instance is not None and not partial:  # PUT nulls name/arguments when omitted
            merged.update(name=None, arguments=None)
        merged.update({k: clean[k] for k in ("name", "session", "arguments") if k in clean})
        if None not in merged.values():
            sql = "SELECT id FROM tasks WHERE name=? AND session=? AND arguments=?"
            args = (merged["name"], merged["session"], merged["arguments"])
            for row in self.q(sql, args):
                if instance is None or row["id"] != instance["id"]:
                    raise ApiError(400, {"non_field_errors": [
                        "The fields name, session, arguments must make a unique set."]})
        return clean

    def tasks_create(self) -> tuple[int, dict]:
        data = self.body()
        clean = self.validate_task(data, None, partial=False)
        tid = str(uuid.uuid4())
        record = {f: None for f in TASK_FIELDS}
        record.update(id=tid, parents="[]", datetime=now())
        record.update(clean)
        record.setdefault("status", None)
        if "status" not in clean:
            record["status"] = 10  # the server bug: row created with an invalid status
        self.db.execute(f"INSERT INTO tasks({','.join(TASK_FIELDS)}) VALUES "
                        f"({','.join('?' * len(TASK_FIELDS))})",
                        tuple(record[f] for f in TASK_FIELDS))
        if "status" not in clean:
            raise server_error("list index out of range")
        return 201, self.task_dict(self.task_row(tid))

    def task_read(self, task_id: str) -> tuple[int, dict]:
        return 200, self.task_dict(self.task_row(task_id))

    def _task_update(self, task_id: str, partial: bool) -> tuple[int, dict]:
        row = self.task_row(task_id)
        instance = dict(row)
        clean = self.validate_task(self.body(), instance, partial)
        if not partial:
            clean.setdefault("name", None)
            clean.setdefault("arguments", None)
        clean["datetime"] = now()
        sets = ", ".join(f"{k}=?" for k in clean)
        self.db.execute(f"UPDATE tasks SET {sets} WHERE id=?", (*clean.values(), row["id"]))
        return 200, self.task_dict(self.task_row(row["id"]))

    def task_put(self, task_id: str) -> tuple[int, dict]:
        return self._task_update(task_id, partial=False)

    def task_patch(self, task_id: str) -> tuple[int, dict]:
        return self._task_update(task_id, partial=True)

    def task_delete(self, task_id: str) -> tuple[int, None]:
        row = self.task_row(task_id)
        self.db.execute("BEGIN")
        self.db.execute("DELETE FROM tasks WHERE id=?", (row["id"],))
        for child in self.q("SELECT id, parents FROM tasks WHERE parents LIKE ?", (f"%{row['id']}%",)):
            parents = [p for p in json.loads(child["parents"]) if p != row["id"]]
            self.db.execute("UPDATE tasks SET parents=? WHERE id=?", (json.dumps(parents), child["id"]))
        self.db.execute("COMMIT")
        return 204, None

    def tasks_list(self) -> tuple[int, dict]:
        args = request.args
        where, params = [], []
        for key in args:
            value = args.get(key)
            if key in ("limit", "offset", "format", "django"):
                continue
            if key in ("session", "id"):
                try:
                    params.append(parse_uuid(value))
                except ValueError as exc:
                    raise field_error(key, str(exc)) from None
                where.append(f"t.{key}=?")
            elif key == "status":
                match = [i for s, i in STATUS_INT.items() if s.lower() == value.lower()]
                if not match:
                    raise server_error(f"Invalidstatus, choices are: {STATUS_CHOICES}")
                where.append("t.status=?")
                params.append(match[0])
            elif key in ("name", "graph", "executable", "version", "log"):
                where.append(f"t.{key}=?")
                params.append(value)
            elif key in SMALLINT or key == "time_elapsed_secs":
                try:
                    params.append(float(value) if key == "time_elapsed_secs" else int(value))
                except ValueError:
                    raise field_error(key, "Enter a number.") from None
                where.append(f"t.{key}=?")
            elif key == "parents":
                try:
                    pid = parse_uuid(value)
                except ValueError as exc:
                    raise field_error(key, str(exc)) from None
                where.append("t.parents LIKE ?")
                params.append(f'%"{pid}"%')
            elif key == "lab":
                where.append("s.lab=?")
                params.append(value)
            elif key == "data_repository":
                try:
                    rid = parse_uuid(value)
                except ValueError as exc:
                    raise field_error(key, str(exc)) from None
                where.append("t.data_repository=(SELECT name FROM data_repository WHERE id=?)")
                params.append(rid)
            elif key == "arguments":
                where.append("t.arguments=?")
                params.append(canon(literal(value)) if not value.startswith("{") else
                              canon(json.loads(value)))
        sql = ("SELECT t.*, s.start_time AS _start FROM tasks t LEFT JOIN sessions s "
               "ON s.id=t.session")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += (" ORDER BY t.level IS NULL, t.level ASC, t.priority IS NOT NULL, t.priority DESC,"
                " s.start_time IS NULL, s.start_time DESC, t.rowid ASC")
        rows = [dict(r) for r in self.q(sql, tuple(params))]
        if args.get("django"):
            def get(r: dict, f: str) -> Any:
                if f == "session" and False:
                    return None
                return r.get(f)
            rows = django_filter(rows, args["django"], get)
        return 200, self.paginate(rows, self.task_dict)

    # ------------------------------------------------------------------ sessions
    def session_row(self, sid: str) -> sqlite3.Row:
        row = self.q1("SELECT * FROM sessions WHERE id=?", (sid.lower(),))
        if row is None:
            raise ApiError(404, {"detail": "No Session matches the given query."})
        return row

    def session_short(self, row: sqlite3.Row | dict) -> dict:
        return {"id": row["id"], "subject": row["subject"], "start_time": row["start_time"],
                "number": row["number"], "lab": row["lab"], "projects": json.loads(row["projects"]),
                "url": self.absolute(f"/sessions/{row['id']}"), "task_protocol": row["task_protocol"]}

    def session_detail(self, row: sqlite3.Row) -> dict:
        out = self.session_short(row)
        out.update(users=json.loads(row["users"]), type=row["type"],
                   parent_session=self.absolute(f"/sessions/{row['parent_session']}")
                   if row["parent_session"] else None,
                   qc=INT_QC.get(row["qc"], "NOT_SET"), extended_qc=None,
                   json=json.loads(row["json"]) if row["json"] else None,
                   end_time=None, narrative="")
        return out

    def sessions_create(self) -> tuple[int, dict]:
        data = self.body()
        errors = {}
        subject = None
        if not data.get("subject"):
            errors["subject"] = ["This field is required."]
        else:
            subject = self.q1("SELECT * FROM subjects WHERE nickname=?", (data["subject"],))
            if subject is None:
                errors["subject"] = [f"Object with nickname={data['subject']} does not exist."]
        lab = data.get("lab") or (subject["lab"] if subject else None)
        if data.get("lab") and not self.q1("SELECT 1 FROM labs WHERE name=?", (lab,)):
            errors["lab"] = [f"Object with name={lab} does not exist."]
        try:
            start = parse_datetime(data["start_time"]) if data.get("start_time") else now()
        except ValueError as exc:
            errors["start_time"] = [str(exc)]
        number = data.get("number")
        try:
            number = int(number) if number is not None else None
        except (TypeError, ValueError):
            errors["number"] = ["A valid integer is required."]
        users = data.get("users") or [self.user]
        for u in users:
            if not self.q1("SELECT 1 FROM users WHERE username=?", (u,)):
                errors["users"] = [f"Object with username={u} does not exist."]
        projects = data.get("projects") or []
        for p in projects:
            if not self.q1("SELECT 1 FROM projects WHERE name=?", (p,)):
                errors["projects"] = [f"Object with name={p} does not exist."]
        if errors:
            raise ApiError(400, errors)
        sid = str(uuid.uuid4())
        self.db.execute("INSERT INTO sessions(id, subject, number, lab, start_time, users, projects,"
                        " task_protocol, type, parent_session, json) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (sid, subject["nickname"], number, lab, start, json.dumps(users),
                         json.dumps(projects), data.get("task_protocol", ""),
                         data.get("type", "Experiment"), None,
                         json.dumps(data["json"]) if data.get("json") is not None else None))
        return 201, self.session_detail(self.session_row(sid))

    def session_read(self, sid: str) -> tuple[int, dict]:
        return 200, self.session_detail(self.session_row(sid))

    def session_patch(self, sid: str) -> tuple[int, dict]:
        row = self.session_row(sid)
        data = self.body()
        for key in ("task_protocol", "type", "number"):
            if key in data:
                self.db.execute(f"UPDATE sessions SET {key}=? WHERE id=?", (data[key], row["id"]))
        if "start_time" in data:
            self.db.execute("UPDATE sessions SET start_time=? WHERE id=?",
                            (parse_datetime(data["start_time"]), row["id"]))
        return 200, self.session_detail(self.session_row(sid))

    def session_delete(self, sid: str) -> tuple[int, None]:
        row = self.session_row(sid)
        self.db.execute("BEGIN")
        self.db.execute("DELETE FROM tasks WHERE session=?", (row["id"],))
        self.db.execute("DELETE FROM file_records WHERE dataset IN "
                        "(SELECT id FROM datasets WHERE session=?)", (row["id"],))
        self.db.execute("DELETE FROM datasets WHERE session=?", (row["id"],))
        self.db.execute("DELETE FROM sessions WHERE id=?", (row["id"],))
        self.db.execute("COMMIT")
        return 204, None

    def sessions_list(self) -> tuple[int, dict]:
        args = request.args
        rows = [dict(r) for r in self.q("SELECT * FROM sessions ORDER BY start_time DESC, rowid")]
        for key in args:
            value = args.get(key)
            if key in ("subject", "nickname"):
                rows = [r for r in rows if r["subject"].lower() == value.lower()]
            elif key == "number":
                try:
                    n = int(value)
                except ValueError:
                    raise field_error(key, "Enter a number.") from None
                rows = [r for r in rows if r["number"] == n]
            elif key in ("lab", "type"):
                rows = [r for r in rows if r[key] == value]
            elif key == "task_protocol":
                rows = [r for r in rows if value.lower() in (r["task_protocol"] or "").lower()]
            elif key in ("projects", "project"):
                rows = [r for r in rows if any(value.lower() in p.lower()
                                               for p in json.loads(r["projects"]))]
            elif key == "users":
                wanted = value.split(",")
                rows = [r for r in rows if set(wanted) <= set(json.loads(r["users"]))]
            elif key == "id":
                rows = [r for r in rows if r["id"] == parse_uuid(value)]
            elif key == "start_time":
                t = parse_datetime(value)
                rows = [r for r in rows if parse_datetime(r["start_time"]) == t]
            elif key == "date_range":
                parts = value.split(",")
                start, end = parts[0], parts[1]  # single date → IndexError → 500, as Alyx
                rows = [r for r in rows if start <= r["start_time"][:10] <= end]
            elif key == "django":
                rows = django_filter(rows, value, lambda r, f: r.get(f))
        return 200, self.paginate(rows, self.session_short)

    # ------------------------------------------------------------------ subjects, labs, users...
    def subject_dict(self, row: sqlite3.Row) -> dict:
        return {"id": row["id"], "nickname": row["nickname"], "lab": row["lab"],
                "responsible_user": row["responsible_user"], "species": row["species"],
                "sex": row["sex"], "url": self.absolute(f"/subjects/{row['nickname']}")}

    def subjects_create(self) -> tuple[int, dict]:
        data = self.body()
        errors = {}
        if not data.get("nickname"):
            errors["nickname"] = ["This field is required."]
        elif self.q1("SELECT 1 FROM subjects WHERE nickname=?", (data["nickname"],)):
            errors["nickname"] = ["subject with this nickname already exists."]
        lab = data.get("lab")
        if not lab:
            errors["lab"] = ["This field is required."]
        elif not self.q1("SELECT 1 FROM labs WHERE name=?", (lab,)):
            errors["lab"] = [f"Object with name={lab} does not exist."]
        if errors:
            raise ApiError(400, errors)
        self.db.execute("INSERT INTO subjects VALUES (?,?,?,?,?,?)",
                        (str(uuid.uuid4()), data["nickname"], lab,
                         data.get("responsible_user", self.user),
                         data.get("species", "Laboratory mouse"), data.get("sex", "U")))
        return 201, self.subject_dict(self.q1("SELECT * FROM subjects WHERE nickname=?",
                                              (data["nickname"],)))

    def subjects_list(self) -> tuple[int, dict]:
        rows = self.q("SELECT * FROM subjects ORDER BY nickname")
        if request.args.get("nickname"):
            rows = [r for r in rows if r["nickname"] == request.args["nickname"]]
        if request.args.get("lab"):
            rows = [r for r in rows if r["lab"] == request.args["lab"]]
        return 200, self.paginate(rows, self.subject_dict)

    def subject_read(self, nickname: str) -> tuple[int, dict]:
        row = self.q1("SELECT * FROM subjects WHERE nickname=?", (nickname,))
        if row is None:
            raise ApiError(404, {"detail": "No Subject matches the given query."})
        return 200, self.subject_dict(row)

    def lab_dict(self, row: sqlite3.Row) -> dict:
        return {"name": row["name"], "repositories": json.loads(row["repositories"]),
                "institution": "", "address": "", "timezone": "UTC"}

    def labs_create(self) -> tuple[int, dict]:
        data = self.body()
        name = data.get("name")
        if not name:
            raise field_error("name", "This field is required.")
        if not re.fullmatch(r"\w+", name):
            raise field_error("name", "Lab name must only contain letters, numbers, and underscores.")
        if self.q1("SELECT 1 FROM labs WHERE name=?", (name,)):
            raise field_error("name", "lab with this name already exists.")
        repos = self._check_repos(data.get("repositories", []))
        self.db.execute("INSERT INTO labs VALUES (?,?)", (name, json.dumps(repos)))
        return 201, self.lab_dict(self.q1("SELECT * FROM labs WHERE name=?", (name,)))

    def _check_repos(self, repos: list[str]) -> list[str]:
        for r in repos:
            if not self.q1("SELECT 1 FROM data_repository WHERE name=?", (r,)):
                raise field_error("repositories", f"Object with name={r} does not exist.")
        return list(repos)

    def labs_list(self) -> tuple[int, dict]:
        return 200, self.paginate(self.q("SELECT * FROM labs ORDER BY name"), self.lab_dict)

    def lab_read(self, name: str) -> tuple[int, dict]:
        row = self.q1("SELECT * FROM labs WHERE name=?", (name,))
        if row is None:
            raise ApiError(404, {"detail": "No Lab matches the given query."})
        return 200, self.lab_dict(row)

    def lab_patch(self, name: str) -> tuple[int, dict]:
        self.lab_read(name)
        data = self.body()
        if "repositories" in data:
            self.db.execute("UPDATE labs SET repositories=? WHERE name=?",
                            (json.dumps(self._check_repos(data["repositories"])), name))
        return self.lab_read(name)

    def user_dict(self, row: sqlite3.Row) -> dict:
        extra = json.loads(row["json"] or "{}")
        return {"id": row["username"], "username": row["username"], "email": row["email"],
                "first_name": "", "last_name": "", "is_superuser": bool(row["is_superuser"]),
                **extra}

    def users_create(self) -> tuple[int, dict]:
        data = self.body()
        errors = {k: ["This field is required."] for k in
                  ("username", "subjects_responsible", "allowed_users") if k not in data}
        if not errors and self.q1("SELECT 1 FROM users WHERE username=?", (data["username"],)):
            errors["username"] = ["A user with that username already exists."]
        if errors:
            raise ApiError(400, errors)
        dbmod.add_user(self.db, data["username"], None, email=data.get("email", ""))  # password ignored
        return 201, self.user_dict(self.q1("SELECT * FROM users WHERE username=?", (data["username"],)))

    def users_list(self) -> tuple[int, dict]:
        return 200, self.paginate(self.q("SELECT * FROM users ORDER BY username"), self.user_dict)

    def user_read(self, username: str) -> tuple[int, dict]:
        row = self.q1("SELECT * FROM users WHERE username=?", (username,))
        if row is None:
            raise ApiError(404, {"detail": "No LabMember matches the given query."})
        return 200, self.user_dict(row)

    def projects_create(self) -> tuple[int, dict]:
        data = self.body()
        if not data.get("name"):
            raise field_error("name", "This field is required.")
        self.db.execute("INSERT INTO projects VALUES (?,?)",
                        (data["name"], json.dumps(data.get("users", []))))
        return 201, {"name": data["name"], "users": data.get("users", [])}

    def projects_list(self) -> tuple[int, dict]:
        return 200, self.paginate(self.q("SELECT * FROM projects ORDER BY name"),
                                  lambda r: {"name": r["name"], "users": json.loads(r["users"])})

    # ------------------------------------------------------------------ repositories, types, formats
    def repo_dict(self, row: sqlite3.Row) -> dict:
        return {"name": row["name"], "timezone": row["timezone"], "globus_path": row["globus_path"],
                "hostname": row["hostname"], "data_url": row["data_url"],
                "repository_type": row["repository_type"],
                "globus_endpoint_id": row["globus_endpoint_id"],
                "globus_is_personal": None if row["globus_is_personal"] is None
                else bool(row["globus_is_personal"]),
                "json": json.loads(row["json"]) if row["json"] else None}

    def repos_create(self) -> tuple[int, dict]:
        data = self.body()
        name = data.get("name")
        if not name:
            raise field_error("name", "This field is required.")
        if self.q1("SELECT 1 FROM data_repository WHERE name=?", (name,)):
            raise field_error("name", "data repository with this name already exists.")
        rtype = data.get("repository_type")
        if rtype and not self.q1("SELECT 1 FROM repository_types WHERE name=?", (rtype,)):
            raise field_error("repository_type", f"Object with name={rtype} does not exist.")
        personal = data.get("globus_is_personal")
        self.db.execute("INSERT INTO data_repository(id, name, data_url, globus_is_personal, "
                        "repository_type, hostname, globus_path, globus_endpoint_id) "
                        "VALUES (?,?,?,?,?,?,?,?)",
                        (str(uuid.uuid4()), name, data.get("data_url"),
                         None if personal is None else int(bool(personal) and personal != "False"),
                         rtype, data.get("hostname", ""), data.get("globus_path", ""),
                         data.get("globus_endpoint_id")))
        return 201, self.repo_dict(self.q1("SELECT * FROM data_repository WHERE name=?", (name,)))

    def repos_list(self) -> tuple[int, dict]:
        rows = self.q("SELECT * FROM data_repository ORDER BY name")
        a = request.args
        if "name" in a:
            rows = [r for r in rows if r["name"] == a["name"]]
        if "globus_is_personal" in a:
            want = a["globus_is_personal"].lower() in ("true", "1")
            rows = [r for r in rows if bool(r["globus_is_personal"]) == want]
        return 200, self.paginate(rows, self.repo_dict)

    def repo_read(self, name: str) -> tuple[int, dict]:
        row = self.q1("SELECT * FROM data_repository WHERE name=?", (name,))
        if row is None:
            raise ApiError(404, {"detail": "No DataRepository matches the given query."})
        return 200, self.repo_dict(row)

    def repo_patch(self, name: str) -> tuple[int, dict]:
        self.repo_read(name)
        data = self.body()
        for key in ("data_url", "hostname", "globus_path"):
            if key in data:
                self.db.execute(f"UPDATE data_repository SET {key}=? WHERE name=?", (data[key], name))
        return self.repo_read(name)

    def repo_types_list(self) -> tuple[int, dict]:
        return 200, self.paginate(self.q("SELECT * FROM repository_types"),
                                  lambda r: {"name": r["name"], "json": None})

    def dtype_dict(self, row: sqlite3.Row) -> dict:
        return {"id": row["id"], "name": row["name"], "created_by": row["created_by"],
                "description": row["description"], "filename_pattern": row["filename_pattern"]}

    def dtypes_create(self) -> tuple[int, dict]:
        data = self.body()
        name = data.get("name")
        if not name:
            raise field_error("name", "This field is required.")
        if self.q1("SELECT 1 FROM dataset_types WHERE name=?", (name,)):
            raise field_error("name", "dataset type with this name already exists.")
        self.db.execute("INSERT INTO dataset_types VALUES (?,?,?,?,?)",
                        (str(uuid.uuid4()), name, data.get("filename_pattern") or "",
                         data.get("description", ""), self.user))
        return 201, self.dtype_dict(self.q1("SELECT * FROM dataset_types WHERE name=?", (name,)))

    def dtypes_list(self) -> tuple[int, dict]:  # no filters: ?name= is ignored, as on Alyx
        return 200, self.paginate(self.q("SELECT * FROM dataset_types ORDER BY name"), self.dtype_dict)

    def dtype_read(self, name: str) -> tuple[int, dict]:
        row = self.q1("SELECT * FROM dataset_types WHERE name=?", (name,))
        if row is None:
            raise ApiError(404, {"detail": "No DatasetType matches the given query."})
        return 200, self.dtype_dict(row)

    def dformat_dict(self, row: sqlite3.Row) -> dict:
        return {"id": row["id"], "json": None, "name": row["name"],
                "description": row["description"], "file_extension": row["file_extension"],
                "matlab_loader_function": "", "python_loader_function": ""}

    def dformats_create(self) -> tuple[int, dict]:
        data = self.body()
        errors = {}
        if not data.get("name"):
            errors["name"] = ["This field is required."]
        elif self.q1("SELECT 1 FROM data_formats WHERE name=?", (data["name"],)):
            errors["name"] = ["data format with this name already exists."]
        ext = data.get("file_extension")
        if ext is None:
            errors["file_extension"] = ["This field is required."]
        elif ext and not re.fullmatch(r"\.[^\.]+", ext):
            errors["file_extension"] = ["Enter a valid value."]
        if errors:
            raise ApiError(400, errors)
        self.db.execute("INSERT INTO data_formats VALUES (?,?,?,?)",
                        (str(uuid.uuid4()), data["name"], ext, data.get("description", "")))
        return 201, self.dformat_dict(self.q1("SELECT * FROM data_formats WHERE name=?",
                                              (data["name"],)))

    def dformats_list(self) -> tuple[int, dict]:
        return 200, self.paginate(self.q("SELECT * FROM data_formats ORDER BY name"), self.dformat_dict)

    def dformat_read(self, name: str) -> tuple[int, dict]:
        row = self.q1("SELECT * FROM data_formats WHERE name=?", (name,))
        if row is None:
            raise ApiError(404, {"detail": "No DataFormat matches the given query."})
        return 200, self.dformat_dict(row)

    # ------------------------------------------------------------------ register-file
    @staticmethod
    def _listify(value: Any) -> list:
        if value is None:
            return []
        if isinstance(value, str):
            return [v.strip() for v in value.split(",")] if value else []
        return list(value)

    @staticmethod
    def _bool(value: Any, default: bool) -> bool:
        if value is None:
            return default
        if isinstance(value, str):
            return value.lower() in ("true", "1")
        return bool(value)

    def _register_session(self, path: str) -> tuple[sqlite3.Row, str]:
        m = re.match(r"^([^/]+)/(\d{4}-\d{2}-\d{2})/(\d+)(?:/(.*))?$", path.strip("/"))
        if not m:
            raise ApiError(400, {"error": f"The path {path} should be `nickname/YYYY-MM-DD/n/..."})
        nickname, date, number, rest = m.group(1), m.group(2), int(m.group(3)), m.group(4) or ""
        subject = self.q1("SELECT * FROM subjects WHERE nickname=?", (nickname,))
        if subject is None:
            raise ApiError(400, {"error": f'A subject with nickname "{nickname}" does not exist.'})
        on_date = self.q("SELECT * FROM sessions WHERE subject=? AND substr(start_time,1,10)=? "
                         "ORDER BY rowid", (nickname, date))
        base = next((s for s in on_date if s["parent_session"] is None), None)
        if base is None:
            raise ApiError(400, {"error": f"A base session for {nickname} on {date} does not exist"})
        target = next((s for s in on_date if s["number"] == number), None)
        if target is None:
            raise ApiError(400, {"error": f"A session for {nickname}/{number} on {date} does not exist"})
        if target["parent_session"] is None and base["id"] != target["id"]:
            # the observed side effect: the base session becomes the target's parent
            self.db.execute("UPDATE sessions SET parent_session=? WHERE id=?", (base["id"], target["id"]))
        return target, rest

    def _dataset_type(self, filename: str) -> sqlite3.Row:
        """one.registration.get_dataset_type: fnmatch on the pattern, else ALF object.attribute."""
        m = re.match(r"^(?:_[a-zA-Z0-9]+_)?([a-zA-Z0-9]+)\.([a-zA-Z0-9]+(?:_times|_intervals)?)"
                     r"(?:_[a-zA-Z0-9]+)?(?:\.[^.]+)*\.[^.]+$", filename)
        objattr = f"{m.group(1)}.{m.group(2)}" if m else None
        matches = []
        for dtype in self.q("SELECT * FROM dataset_types ORDER BY name"):
            pattern = (dtype["filename_pattern"] or "").strip()
            if pattern:
                if fnmatch.fnmatch(filename.lower(), pattern.lower()):
                    matches.append(dtype)
            elif objattr is not None and dtype["name"] == objattr:
                matches.append(dtype)
        if not matches:
            raise server_error(f'No dataset type found for filename "{filename}"')
        if len(matches) > 1:
            raise server_error(f'Multiple matching dataset types found for filename "{filename}"')
        return matches[0]

    def _data_format(self, filename: str) -> sqlite3.Row:
        ext = "." + filename.rsplit(".", 1)[-1] if "." in filename else ""
        rows = self.q("SELECT * FROM data_formats WHERE file_extension=?", (ext,)) if ext else []
        if len(rows) != 1:
            raise server_error("DataFormat matching query does not exist.")
        return rows[0]

    def register_file(self) -> tuple[int, list]:
        data = self.body()
        user = data.get("created_by") or self.user
        if not user:
            raise server_error('Field \'id\' expected a number but got <django.contrib.auth.models.'
                               'AnonymousUser object>.')
        if not self.q1("SELECT 1 FROM users WHERE username=?", (user,)):
            raise server_error("LabMember matching query does not exist.")
        if not data.get("path"):
            raise server_error("The path argument is required.")
        filenames = self._listify(data.get("filenames"))
        hashes = self._listify(data.get("hashes"))
        sizes = self._listify(data.get("filesizes"))
        versions = data.get("versions")
        versions = [versions] * len(filenames) if isinstance(versions, str) and "," not in versions \
            else self._listify(versions)
        qcs = data.get("qc")
        qcs = [qcs] * len(filenames) if isinstance(qcs, str) and "," not in qcs else self._listify(qcs)
        server_only = self._bool(data.get("server_only"), False)
        exists = self._bool(data.get("exists"), True)
        default = self._bool(data.get("default"), True)
        repo_name = data.get("name")
        if data.get("hostname") and not repo_name:
            row = self.q1("SELECT name FROM data_repository WHERE hostname=?", (data["hostname"],))
            if row is None:
                raise ApiError(400, {"detail": "The specified repository does not exist."})
            repo_name = row["name"]
        if repo_name and not self.q1("SELECT 1 FROM data_repository WHERE name=?", (repo_name,)):
            raise ApiError(400, {"detail": "The specified repository does not exist."})
        session, prefix = self._register_session(data["path"])
        labs = self._listify(data.get("labs", data.get("projects"))) or [session["lab"]]
        repos: list[str] = []
        for lab in labs:
            row = self.q1("SELECT repositories FROM labs WHERE name=?", (lab,))
            if row is None:
                raise ApiError(400, {"detail": "One or more of the specified labs do not exist."})
            repos += [r for r in json.loads(row["repositories"]) if r not in repos]
        if repo_name and repo_name not in repos:
            repos.append(repo_name)
        if server_only:
            repos = [r for r in repos if not self.q1(
                "SELECT globus_is_personal FROM data_repository WHERE name=?", (r,))[0]]
        rel_session = f"{session['subject']}/{session['start_time'][:10]}/{session['number']:03d}"
        columns: list[list] = [filenames]
        for extra in (hashes, sizes, versions, qcs):
            if extra:
                columns.append(extra)
        n = min(len(c) for c in columns)  # zip(): mismatched lengths silently truncate
        out = []
        for i in range(n):
            fname = filenames[i]
            if prefix:
                fname = f"{prefix.strip('/')}/{fname}"
            folder, _, base = fname.rpartition("/")
            parts = [p for p in folder.split("/") if p]
            revision = ""
            if parts and re.fullmatch(r"#.*#", parts[-1]):
                revision = parts.pop()[1:-1]
            parts = [p for p in parts if re.fullmatch(r"[\w.-]+", p)]  # invalid folders dropped
            collection = "/".join(parts)
            dtype = self._dataset_type(base)
            dformat = self._data_format(base)
            qc = qcs[i] if qcs else None
            if qc is not None and str(qc) not in QC_INT and str(qc) not in map(str, QC_INT.values()):
                raise ApiError(400, {"detail": f'Invalid QC value "{qc}" for dataset "{fname}"'})
            qc_int = (QC_INT.get(str(qc), None) if qc is not None else None)
            if qc is not None and qc_int is None:
                qc_int = int(qc)
            file_hash = hashes[i] if hashes else None
            size = int(sizes[i]) if sizes and sizes[i] not in (None, "", "None") else None
            version = versions[i] if versions else None
            self.db.execute("BEGIN")
            row = self.q1("SELECT * FROM datasets WHERE session=? AND collection=? AND name=? AND "
                          "revision=? AND dataset_type=? AND data_format=?",
                          (session["id"], collection, base, revision, dtype["name"], dformat["name"]))
            same_hash = row is not None and file_hash is not None and row["hash"] == file_hash
            if default:
                self.db.execute("UPDATE datasets SET default_dataset=0 WHERE session=? AND "
                                "collection=? AND name=?", (session["id"], collection, base))
            if row is None:
                did = str(uuid.uuid4())
                self.db.execute("INSERT INTO datasets VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                                (did, session["id"], collection, revision, base, dtype["name"],
                                 dformat["name"], size, file_hash, version, int(default),
                                 qc_int or 0, user, now(), now(), 0, 0))
            else:
                did = row["id"]
                self.db.execute("UPDATE datasets SET file_size=?, hash=?, version=COALESCE(?, version),"
                                " default_dataset=?, qc=COALESCE(?, qc), auto_datetime=? WHERE id=?",
                                (size, file_hash, version, int(default), qc_int, now(), did))
            relpath = f"{rel_session}/{fname}"
            for repo in repos:
                personal = self.q1("SELECT globus_is_personal FROM data_repository WHERE name=?",
                                   (repo,))[0]
                flag = exists and (server_only or repo == repo_name)
                if server_only:
                    flag = exists
                fr = self.q1("SELECT * FROM file_records WHERE dataset=? AND data_repository=?",
                             (did, repo))
                if fr is None:
                    self.db.execute("INSERT INTO file_records VALUES (?,?,?,?,?)",
                                    (str(uuid.uuid4()), did, repo, relpath, int(flag)))
                elif not same_hash:
                    self.db.execute("UPDATE file_records SET exists_=?, relative_path=? WHERE id=?",
                                    (int(flag), relpath, fr["id"]))
                del personal
            if user not in json.loads(session["users"]):
                users = json.loads(self.session_row(session["id"])["users"])
                if user not in users:
                    self.db.execute("UPDATE sessions SET users=? WHERE id=?",
                                    (json.dumps(users + [user]), session["id"]))
            self.db.execute("COMMIT")  # one file at a time: NOT atomic, as on Alyx
            ds = self.q1("SELECT * FROM datasets WHERE id=?", (did,))
            out.append({
                "id": did, "name": base, "file_size": ds["file_size"], "subject": session["subject"],
                "created_by": ds["created_by"], "created_datetime": ds["created_datetime"],
                "dataset_type": ds["dataset_type"], "data_format": ds["data_format"],
                "session": session["id"], "session_number": session["number"],
                "session_users": ",".join(json.loads(self.session_row(session["id"])["users"])),
                "session_start_time": session["start_time"], "collection": collection,
                "revision": revision, "default": bool(ds["default_dataset"]), "qc": ds["qc"],
                "file_records": [{"id": fr["id"], "data_repository": fr["data_repository"],
                                  "relative_path": fr["relative_path"], "exists": bool(fr["exists_"])}
                                 for fr in self.q("SELECT * FROM file_records WHERE dataset=? "
                                                  "ORDER BY rowid", (did,))]})
        return 201, out

    # ------------------------------------------------------------------ datasets and files
    def _data_url(self, repo: str, relpath: str, did: str) -> str | None:
        row = self.q1("SELECT data_url FROM data_repository WHERE name=?", (repo,))
        if not row or not row["data_url"]:
            return None
        stem, dot, ext = relpath.rpartition(".")
        return row["data_url"].rstrip("/") + "/" + (f"{stem}.{did}.{ext}" if dot else f"{relpath}.{did}")

    def dataset_dict(self, row: sqlite3.Row | dict) -> dict:
        session = self.q1("SELECT * FROM sessions WHERE id=?", (row["session"],))
        records = []
        for fr in self.q("SELECT * FROM file_records WHERE dataset=? ORDER BY rowid", (row["id"],)):
            repo = self.q1("SELECT globus_path FROM data_repository WHERE name=?",
                           (fr["data_repository"],))
            records.append({"id": fr["id"], "data_repository": fr["data_repository"],
                            "data_repository_path": repo["globus_path"] if repo else "",
                            "relative_path": fr["relative_path"],
                            "data_url": self._data_url(fr["data_repository"], fr["relative_path"],
                                                       row["id"]),
                            "exists": bool(fr["exists_"])})
        return {"url": self.absolute(f"/datasets/{row['id']}"), "name": row["name"],
                "created_by": row["created_by"], "created_datetime": row["created_datetime"],
                "dataset_type": row["dataset_type"], "data_format": row["data_format"],
                "collection": row["collection"], "session": self.absolute(f"/sessions/{row['session']}"),
                "file_size": row["file_size"], "hash": row["hash"], "version": row["version"],
                "experiment_number": session["number"] if session else None,
                "file_records": records, "auto_datetime": row["auto_datetime"],
                "revision": row["revision"], "default_dataset": bool(row["default_dataset"]),
                "protected": row["protected"], "public": row["public"], "tags": [],
                "qc": INT_QC.get(row["qc"], "NOT_SET"), "json": None}

    def datasets_list(self) -> tuple[int, dict]:
        a = request.args
        rows = [dict(r) for r in self.q("SELECT d.*, s.subject AS _subject, s.start_time AS _start "
                                        "FROM datasets d LEFT JOIN sessions s ON s.id=d.session "
                                        "ORDER BY d.created_datetime, d.rowid")]
        for key in a:
            value = a.get(key)
            if key == "session":
                try:
                    sid = parse_uuid(value)
                except ValueError as exc:
                    raise field_error(key, str(exc)) from None
                rows = [r for r in rows if r["session"] == sid]
            elif key in ("name", "collection", "dataset_type", "revision", "created_by", "hash"):
                rows = [r for r in rows if r[key] == value]
            elif key == "default_dataset":
                want = value.lower() in ("true", "1")
                rows = [r for r in rows if bool(r["default_dataset"]) == want]
            elif key == "subject":
                rows = [r for r in rows if r["_subject"] == value]
            elif key == "date":
                rows = [r for r in rows if (r["_start"] or "")[:10] == value]
        return 200, self.paginate(rows, self.dataset_dict)

    def dataset_read(self, did: str) -> tuple[int, dict]:
        row = self.q1("SELECT * FROM datasets WHERE id=?", (did.lower(),))
        if row is None:
            raise ApiError(404, {"detail": "No Dataset matches the given query."})
        return 200, self.dataset_dict(row)

    def dataset_delete(self, did: str) -> tuple[int, None]:
        self.dataset_read(did)
        self.db.execute("DELETE FROM file_records WHERE dataset=?", (did.lower(),))
        self.db.execute("DELETE FROM datasets WHERE id=?", (did.lower(),))
        return 204, None

    def file_dict(self, row: sqlite3.Row) -> dict:
        return {"url": self.absolute(f"/files/{row['id']}"), "id": row["id"],
                "dataset": self.absolute(f"/datasets/{row['dataset']}"),
                "data_repository": row["data_repository"], "relative_path": row["relative_path"],
                "exists": bool(row["exists_"]), "json": None}

    def files_list(self) -> tuple[int, dict]:
        rows = self.q("SELECT * FROM file_records ORDER BY rowid")
        a = request.args
        if "dataset" in a:
            rows = [r for r in rows if r["dataset"] == parse_uuid(a["dataset"])]
        if "data_repository" in a:
            rows = [r for r in rows if r["data_repository"] == a["data_repository"]]
        if "exists" in a:
            want = a["exists"].lower() in ("true", "1")
            rows = [r for r in rows if bool(r["exists_"]) == want]
        return 200, self.paginate(rows, self.file_dict)

    def file_read(self, fid: str) -> tuple[int, dict]:
        row = self.q1("SELECT * FROM file_records WHERE id=?", (fid.lower(),))
        if row is None:
            raise ApiError(404, {"detail": "No FileRecord matches the given query."})
        return 200, self.file_dict(row)

    def file_patch(self, fid: str) -> tuple[int, dict]:
        self.file_read(fid)
        data = self.body()
        if "exists" in data:
            self.db.execute("UPDATE file_records SET exists_=? WHERE id=?",
                            (int(self._bool(data["exists"], True)), fid.lower()))
        return self.file_read(fid)
