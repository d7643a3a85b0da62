"""The Alyx-backed task store: ``TaskStore`` over Alyx's REST API.

Works over an ``hpcpipe.alyx.AlyxClient`` or over *any* object with ONE's
``rest(url, action, **kwargs)`` (``one.alyx``; a ONE instance is unwrapped), so an IBL user's
ONE just works. Every call is written to the behaviour in ``shared/alyx/ALYX-API.md``:

* create always sends ``status`` and the ``session`` key (a create without status corrupts
  Alyx's task list); only PATCH is used for updates (PUT nulls ``name``/``arguments``);
* values Alyx would refuse are refused here first, naming the field (``check_fields`` plus the
  SmallInteger range and the string lengths);
* SmallInteger fields (``time_out_secs`` included) outside -32768..32767 are refused with
  ``BadInput`` naming the field, as every store does (``check_fields``): never sent to be
  rejected. Capping a long Task timeout is the caller's decision (docs/ALYX.md).
* ``list_tasks`` is one paginated query (several statuses: ``django=status__in,[...]``);
* ``register_files`` is one ``register-file`` request per call, after checking dataset types
  and formats against ``/dataset-types`` and ``/data-formats`` (cached): unknown ones are
  reported by name in ``RegistrationError`` and the others are still registered.
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any, ContextManager, Iterable, Iterator, Sequence

from ..alyx import oneclient
from ..alyx import register as reg
from ..alyx.client import PAGE_LIMIT, AlyxClient, AlyxError, AlyxNotFound, AlyxServerError, AlyxUnreachable, error_detail
from ..alyx.params import url_key
from ..errors import BadInput, Conflict, NotFound, StoreError, Unreachable
from ..files import atomic_write
from ..session import SessionRef, parse_session_path
from ..settings import Settings, current
from ..status import ALYX_INT, check_statuses
from . import health
from .base import SMALLINT_FIELDS, TASK_FIELDS, TaskStore, check_fields

_logger = logging.getLogger(__name__)
#: sessions named in one task listing (36 characters and quotes each: the URL stays under 4 KB)
SESSIONS_PER_QUERY = 80
CHAR_LIMITS = {"name": 64, "executable": 128, "graph": 64, "version": 64}
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
#: seconds a fetched /dataset-types + /data-formats catalogue is trusted
CATALOG_TTL = 600.0
_CATALOGS: dict[str, tuple[float, list[dict], list[dict]]] = {}


class RegistrationError(StoreError):
    """Some files could not be registered; the others were.

    ``registered``: dataset records of the files that registered (in request order);
    ``failed``: ``{filename: reason}`` for the others.
    """

    def __init__(self, message: str, registered: list[dict], failed: dict[str, str]):
        super().__init__(message)
        self.registered, self.failed = registered, failed


def _translate(exc: Exception) -> Exception | None:
    """Map a foreign (ONE) client's requests exception to hpcpipe's Alyx errors."""
    import requests

    if isinstance(exc, AlyxError):
        return None
    if isinstance(exc, requests.HTTPError) and getattr(exc, "response", None) is not None:
        resp = exc.response
        try:
            body = resp.json()
        except ValueError:
            body = None
        status = resp.status_code
        detail = error_detail(body, resp.text)
        where = f"{resp.request.method if resp.request else ''} {resp.url}".strip()
        if status in (429, 502, 503, 504) or (status >= 500 and not isinstance(body, dict)):
            return AlyxUnreachable(f"Alyx {where}: {status} {detail}", status_code=status, detail=detail)
        if status >= 500:
            return AlyxServerError(f"Alyx {where} failed on the server ({status}): {detail}",
                                   status_code=status, detail=detail, body=body)
        return AlyxClient._client_error(status, detail, body,
                                        resp.request.method if resp.request else "", resp.url, where)
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        # a read timeout or a dropped connection: a create may have landed (``create_task`` looks)
        return AlyxUnreachable(f"Alyx unreachable: {type(exc).__name__}",
                               maybe_landed=not AlyxClient._never_sent(exc))
    return None


def configured_client(settings: Settings) -> Any:
    """hpcpipe's own ``AlyxClient``, or the user's ONE with ``[alyx] client = "one"``."""
    if oneclient.client_kind(settings) == "one":
        return oneclient.one_from_config(settings)
    return AlyxClient.from_config(settings=settings)


class AlyxStore(TaskStore):
    """Task records on an Alyx server."""

    kind = "alyx"

    def __init__(self, alyx: Any = None, repository: str | None = None, settings: Settings | None = None) -> None:
        #: its limits, repository and state folder (default ``settings.current()``), read here once
        self.settings = settings or current()
        if alyx is None:
            alyx = configured_client(self.settings)
        owner = getattr(alyx, "alyx", alyx)  # a ONE instance → its AlyxClient
        if not callable(getattr(owner, "rest", None)):
            raise BadInput(f"{type(alyx).__name__} has no rest(url, action, ...) method")
        self.alyx = owner
        self.repository = repository if repository is not None else self.settings.alyx.repository
        base = getattr(owner, "base_url", None) or "unknown-alyx"
        self.base_url = str(base).rstrip("/")
        self.url_key = url_key(self.base_url)
        self._mode = threading.local()  # "report" / "forced" inside ``reporting``, per thread
        self._brief = False  # every call brief (``brief``)
        if not isinstance(owner, AlyxClient):
            oneclient.bound(owner)  # ONE's requests: hpcpipe's timeout and retry budget
        self._eids: dict[str, str] = {}   # short session path → eid
        self._paths: dict[str, str] = {}  # eid → local session folder
        self._catalog_fetches = 0

    @classmethod
    def from_config(cls, settings: Settings | None = None) -> "AlyxStore":
        settings = settings or current()
        return cls(configured_client(settings), settings=settings)

    def __repr__(self) -> str:
        return f"AlyxStore({self.base_url!r})"

    @property
    def outbox_key(self) -> str:
        """Which server a queued report belongs to (the outbox replays only matching ones)."""
        return f"alyx:{self.url_key}"

    @property
    def round_trips(self) -> int | None:
        """HTTP requests sent so far (None for a foreign client that does not count them)."""
        return getattr(self.alyx, "n_requests", None)

    @contextlib.contextmanager
    def reporting(self, forced: bool = False) -> Iterator[None]:
        """Calls in this thread are reports: short, so an outage never holds a task's work or
        the scheduler back (what cannot go now is queued and replayed later).

        * the down mark is consulted before each request: while the store is marked down
          (``health``), a call raises ``health.MarkedDown`` without a request;
        * each request has ``[alyx] report_timeout`` (5 s; a hung Alyx costs one timeout, not
          a hung task) and the call ``report_retries`` (1) retries within ``report_budget``
          (2 s), through hpcpipe's client and through ONE's alike.

        ``forced`` (``hpcpipe sync``: the user asked now): the mark is not consulted and requests
        get the normal ``[alyx] timeout``, so a slow but living server takes a large replay."""
        old = getattr(self._mode, "value", None)
        self._mode.value = "forced" if forced else "report"
        try:
            yield
        finally:
            self._mode.value = old

    def brief(self) -> None:
        """Every later call of this store is brief: the down mark is consulted first, a report's
        retries and budget apply, and a call that cannot reach Alyx marks the store down.
        ``hpcpipe status`` so answers from local knowledge at once during an outage instead
        of spending the normal retry budget on each read. Its requests keep the normal
        ``[alyx] timeout``: a listing of thousands of tasks may take Alyx longer than a report
        may wait, and status must still show the server's records then."""
        self._brief = True

    def _limits(self, mode: str | None) -> oneclient.Limits:
        s = self.settings.alyx
        t = s.timeout
        timeout = tuple(t) if isinstance(t, (list, tuple)) else (min(float(t), 10.0), float(t))
        if mode is None:
            return oneclient.Limits(timeout, s.retries, s.retry_budget)
        if mode == "report":  # a hung Alyx costs a report this once
            timeout = (min(timeout[0], s.report_timeout), min(timeout[1], s.report_timeout))
        return oneclient.Limits(timeout, s.report_retries, s.report_budget)

    def _within(self, mode: str | None) -> ContextManager[None]:
        """The limits of ``mode`` on this call, whichever client makes it."""
        if isinstance(self.alyx, AlyxClient) and mode is None:
            return contextlib.nullcontext()  # the client's own settings are the normal ones
        limits = self._limits(mode)
        if isinstance(self.alyx, AlyxClient):
            return self.alyx.budget(limits.retries, limits.budget, limits.timeout[1] if mode == "report" else None)
        return oneclient.limited(limits)

    def close(self) -> None:
        if isinstance(self.alyx, AlyxClient):
            self.alyx.close()

    # ------------------------------------------------------------------ plumbing
    def _rest(self, url: str, action: str, **kwargs: Any) -> Any:
        """One REST call. Reads bypass ONE's REST cache (``no_cache=True``): every read here
        decides something (which tasks exist, which types, which session), and a 5-minute-old
        answer made ``create_alyx_tasks`` create every task again (ALYX-API.md §5). Lists ask
        for Alyx's largest page: 1,100 tasks are 2 requests through either client."""
        if action in ("list", "read"):
            kwargs["no_cache"] = True
        if action == "list":  # ONE pages by the first page's size: ask Alyx's cap, as our client does
            kwargs.setdefault("limit", PAGE_LIMIT)
        mode = getattr(self._mode, "value", None) or ("brief" if self._brief else None)
        if mode in ("report", "brief") and health.is_down(self.outbox_key):
            raise health.MarkedDown(f"Alyx {self.base_url} is marked down (a call failed to reach it within the "
                                    f"last {health.down_secs():g} s); not asked")
        try:
            with self._within(mode):
                # ONE's login, if not made yet (``one_from_config``): after the mark, in this call's limits
                if getattr(self.alyx, "hpcpipe_login", None) is not None:
                    oneclient.ensure_login(self.alyx, self._limits(mode))
                out = self.alyx.rest(url, action, **kwargs)
                if action == "list" and out is not None and not isinstance(out, list):
                    # ONE's lazy paginated list: its later pages are requests too, under the same limits
                    out = list(out)
        except Exception as exc:
            translated = _translate(exc)
            if self._brief and isinstance(translated or exc, Unreachable):
                health.mark_down(self.outbox_key, str(translated or exc))
            if translated is None:
                raise
            raise translated from None
        return out

    def rest(self, url: str, action: str, **kwargs: Any) -> Any:
        """A REST call with the store's error mapping and cache bypass (``hpcpipe.alyx.check``)."""
        return self._rest(url, action, **kwargs)

    def catalog(self, refresh: bool = False) -> tuple[list[dict], list[dict]]:
        """The dataset types and data formats (cached; ``refresh`` reads them again)."""
        return self._catalog(refresh)

    def _state_dir(self) -> Path:
        path = self.settings.home_dir() / "alyx" / self.url_key
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _load_json(self, name: str) -> dict:
        try:
            return json.loads((self._state_dir() / name).read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _save_json(self, name: str, data: dict) -> None:
        atomic_write(self._state_dir() / name, json.dumps(data))

    # ------------------------------------------------------------------ sessions
    def session_id(self, session_path: Path | str, create: bool = False) -> str:
        ref = parse_session_path(session_path, must_exist=False)
        if ref.short in self._eids:
            return self._eids[ref.short]
        rows = self._rest("sessions", "list", subject=ref.subject,
                          date_range=f"{ref.date},{ref.date}", number=ref.number)
        rows = [r for r in rows if str(r.get("subject", "")).lower() == ref.subject.lower()]
        if len(rows) > 1 and ref.lab:
            rows = [r for r in rows if r.get("lab") == ref.lab] or rows
        if not rows:
            raise NotFound(f"no session {ref.short} on Alyx ({self.base_url}) for {session_path}; "
                           "hpcpipe never creates Alyx sessions: register the session on Alyx "
                           "first (from the rig, ONE or the admin)")
        if len(rows) > 1:
            raise Conflict(f"{len(rows)} Alyx sessions match {ref.short} "
                           f"({', '.join(r['id'] for r in rows)}); remove the duplicates on Alyx")
        eid = rows[0]["id"]
        self._eids[ref.short] = eid
        self._remember_path(eid, ref.path)
        return eid

    def session_ids(self, refs: Sequence[SessionRef], create: bool = False) -> list[str | None]:
        """The eids of many sessions in a few requests: one ``/sessions?date_range=first,last``
        listing (per lab when the paths name one; paginated by 1,000), matched here by subject,
        date and number with ``session_id``'s rules (several matches: ``Conflict``; none:
        ``NotFound`` when ``create``, else ``None``). A backfill of 1,000 sessions spends 1 or 2
        requests here, not 1,000 (Alyx allows about 550 a minute)."""
        todo = [ref for ref in refs if ref.short not in self._eids]
        by_lab: dict[str | None, list[SessionRef]] = {}
        for ref in todo:
            by_lab.setdefault(ref.lab, []).append(ref)
        found: dict[tuple[str, str, int], list[dict]] = {}
        for lab, group in by_lab.items():
            dates = [ref.date for ref in group]
            query: dict[str, Any] = {"date_range": f"{min(dates)},{max(dates)}"}
            if lab:
                query["lab"] = lab
            for row in self._rest("sessions", "list", **query):
                key = (str(row.get("subject", "")).lower(), str(row.get("start_time", ""))[:10], row.get("number"))
                found.setdefault(key, []).append(row)
        out: list[str | None] = []
        for ref in refs:
            if ref.short in self._eids:
                out.append(self._eids[ref.short])
                continue
            rows = found.get((ref.subject.lower(), ref.date, ref.number), [])
            if len(rows) > 1 and ref.lab:
                rows = [r for r in rows if r.get("lab") == ref.lab] or rows
            if len(rows) != 1:
                if rows or create:
                    self.session_id(ref.path)  # the single lookup raises its own clear error
                out.append(None)
                continue
            self._eids[ref.short] = rows[0]["id"]
            self._paths[rows[0]["id"]] = str(ref.path)
            out.append(rows[0]["id"])
        fresh = {eid: self._paths[eid] for eid in out if eid is not None}
        paths = self._load_json("sessions.json")
        if any(paths.get(eid) != path for eid, path in fresh.items()):
            self._save_json("sessions.json", {**paths, **fresh})  # one write for the lot
        return out

    def _remember_path(self, eid: str, path: Path) -> None:
        if self._paths.get(eid) == str(path):
            return
        self._paths[eid] = str(path)
        paths = self._load_json("sessions.json")
        if paths.get(eid) != str(path):
            paths[eid] = str(path)
            self._save_json("sessions.json", paths)

    def session_path(self, session_id: str) -> Path | None:
        if session_id in self._paths:
            return Path(self._paths[session_id])
        found = self._load_json("sessions.json").get(session_id)
        if found:
            self._paths[session_id] = found
            return Path(found)
        return None

    # ------------------------------------------------------------------ validation
    def _check(self, fields: dict) -> dict:
        """Refuse what Alyx would refuse, naming the field, before anything is sent."""
        check_fields(fields)  # unknown keys, status vocabulary, parents shape, name, SmallIntegers
        for key, limit in CHAR_LIMITS.items():
            value = fields.get(key)
            if value is not None and len(str(value)) > limit:
                raise BadInput(f"task {key} {str(value)[:80]!r} is longer than {limit} characters "
                               f"(Alyx's limit)")
        for key in SMALLINT_FIELDS:
            value = fields.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or int(value) != value):
                raise BadInput(f"task {key}={value!r} must be a whole number")
        for parent in fields.get("parents") or []:
            if not isinstance(parent, str) or not _UUID_RE.match(parent):
                raise BadInput(f"task parent {parent!r} is not a task id (UUID)")
        if fields.get("session") is not None and not _UUID_RE.match(str(fields["session"])):
            raise BadInput(f"task session {fields['session']!r} is not a session id (UUID)")
        return fields

    @staticmethod
    def _record(rec: dict) -> dict:
        rec = {k: rec.get(k) for k in TASK_FIELDS}
        if rec.get("parents") is None:
            rec["parents"] = []
        return rec

    @staticmethod
    def _check_id(task_id: str) -> str:
        if not isinstance(task_id, str) or not _UUID_RE.match(task_id):
            raise NotFound(f"no task with id {task_id!r} (not a UUID)")
        return task_id

    # ------------------------------------------------------------------ tasks
    def list_tasks(self, session: str | None = None, status: Iterable[str] | str | None = None,
                   name: str | None = None, graph: str | None = None,
                   fields: Sequence[str] | None = None) -> list[dict]:
        filters: dict[str, Any] = {}
        if session is not None:
            filters["session"] = session
        if name is not None:
            filters["name"] = name
        if graph is not None:
            filters["graph"] = graph
        statuses = check_statuses(status)
        if len(statuses) == 1:
            filters["status"] = statuses[0]
        elif statuses:
            filters["django"] = f"status__in,[{','.join(str(ALYX_INT[s]) for s in statuses)}]"
        rows = [self._record(r) for r in self._rest("tasks", "list", **filters)]
        if statuses:  # belt and braces: a server ignoring the filter must not widen the answer
            rows = [r for r in rows if r["status"] in statuses]
        return rows

    def tasks_by_session(self, sessions: Sequence[str], graph: str | None = None) -> dict[str, list[dict]]:
        """Tasks of many sessions in one paginated ``/tasks?django=session__in,[...]`` listing
        per ``SESSIONS_PER_QUERY`` sessions (Alyx evaluates the bracketed list; quoted ids keep
        it a list of strings), so the query string stays under the 4 KB request line of
        common servers."""
        out: dict[str, list[dict]] = {s: [] for s in sessions}
        ids = list(out)
        for i in range(0, len(ids), SESSIONS_PER_QUERY):
            chunk = ids[i:i + SESSIONS_PER_QUERY]
            filters: dict[str, Any] = {"django": "session__in,[" + ",".join(f"'{s}'" for s in chunk) + "]"}
            if graph is not None:
                filters["graph"] = graph
            for row in self._rest("tasks", "list", **filters):
                rec = self._record(row)
                if rec["session"] in out:
                    out[rec["session"]].append(rec)
        return out

    def get_task(self, task_id: str) -> dict:
        try:
            return self._record(self._rest("tasks", "read", id=self._check_id(task_id)))
        except AlyxNotFound:
            raise NotFound(f"no task with id {task_id} on Alyx ({self.base_url})") from None

    def create_task(self, record: dict) -> dict:
        fields = self._check(dict(record))
        if "session" not in fields:
            raise BadInput("a task needs a 'session' key (an id, or None)")
        if "status" not in fields:
            raise BadInput("a task needs a 'status' when it is created")
        fields.setdefault("parents", [])
        try:
            rec = self._rest("tasks", "create", data=fields)
        except AlyxUnreachable as exc:
            rec = self._find_landed(fields) if exc.maybe_landed else None
            if rec is None:
                raise
        except Conflict as exc:
            raise Conflict(f"a task named {fields.get('name')!r} with these arguments already exists "
                           f"for session {fields.get('session')} ({exc})") from None
        return self._record(rec)

    def _find_landed(self, fields: dict) -> dict | None:
        """After an ambiguous failure of a create: the task, if it is there and unique by key."""
        if fields.get("arguments") is None or fields.get("name") is None or fields.get("session") is None:
            return None  # NULLs are not unique on Alyx: cannot tell ours from another
        try:
            rows = self._rest("tasks", "list", session=fields["session"], name=fields["name"])
        except Unreachable:
            return None
        same = [r for r in rows if r.get("arguments") == fields["arguments"]]
        return same[0] if len(same) == 1 else None

    def update_task(self, task_id: str, **fields: Any) -> dict:
        self._check_id(task_id)
        fields = self._check(fields)
        if not fields:
            return self.get_task(task_id)
        try:
            rec = self._rest("tasks", "partial_update", id=task_id, data=fields)
        except AlyxNotFound:
            raise NotFound(f"no task with id {task_id} on Alyx ({self.base_url})") from None
        except Conflict as exc:
            raise Conflict(f"update of task {task_id} breaks (name, session, arguments) "
                           f"uniqueness: {exc}") from None
        return self._record(rec)

    def delete_task(self, task_id: str) -> None:
        try:
            self._rest("tasks", "delete", id=self._check_id(task_id))
        except AlyxNotFound:
            raise NotFound(f"no task with id {task_id} on Alyx ({self.base_url})") from None

    # ------------------------------------------------------------------ datasets
    def _catalog(self, refresh: bool = False) -> tuple[list[dict], list[dict]]:
        """/dataset-types and /data-formats, cached for ``CATALOG_TTL`` seconds per server.

        Cached in memory and in ``<home>/alyx/<url key>/catalog.json``, so the many short job
        processes of a cluster do not each fetch it; a file that is not found in the cache
        triggers one refresh (types created since are then seen).
        """
        now = time.time()
        cached = _CATALOGS.get(self.url_key)
        if cached is None and not refresh:
            disk = self._load_json("catalog.json")
            if disk.get("types") is not None and disk.get("formats") is not None:
                cached = (float(disk.get("time", 0)), disk["types"], disk["formats"])
                _CATALOGS[self.url_key] = cached
        if cached and not refresh and now - cached[0] < CATALOG_TTL:
            return cached[1], cached[2]
        keep = ("name", "filename_pattern", "file_extension")
        types = [{k: t.get(k) for k in keep if k in t} for t in self._rest("dataset-types", "list")]
        formats = [{k: f.get(k) for k in keep if k in f} for f in self._rest("data-formats", "list")]
        _CATALOGS[self.url_key] = (now, types, formats)
        self._catalog_fetches += 1
        try:
            self._save_json("catalog.json", {"time": now, "types": types, "formats": formats})
        except OSError as exc:  # a read-only home must not stop a registration
            _logger.debug("could not cache the Alyx catalogue: %s", exc)
        return types, formats

    def check_files(self, filenames: list[str]) -> dict[str, str]:
        """``{filename: reason}`` for files Alyx would not know the dataset type or format of."""
        def unknown(types: list[dict], formats: list[dict]) -> dict[str, str]:
            out = {}
            for fname in filenames:
                base = fname.rsplit("/", 1)[-1]
                _, why = reg.match_dataset_type(base, types)
                if why is None:
                    _, why = reg.match_data_format(base, formats)
                if why:
                    out[fname] = why
            return out

        fetches = self._catalog_fetches
        failed = unknown(*self._catalog())
        if failed and self._catalog_fetches == fetches:  # maybe created since it was cached: look again
            failed = unknown(*self._catalog(refresh=True))
        return failed

    def register_files(self, session_path: Path | str, filenames: list[str],
                       hashes: list[str | None] | None = None,
                       filesizes: list[int] | None = None,
                       versions: list[str | None] | str | None = None,
                       repository: str | None = None, server_only: bool = False) -> list[dict]:
        filenames = list(filenames)
        n = len(filenames)
        for label, values in (("hashes", hashes), ("filesizes", filesizes),
                              ("versions", None if isinstance(versions, str) else versions)):
            if values is not None and len(values) != n:
                raise BadInput(f"register_files: {n} filenames but {len(values)} {label} "
                               "(Alyx would silently drop the extra files)")
        ref = parse_session_path(session_path, must_exist=False)
        names = [reg.relative_name(ref.path, f) for f in filenames]
        if len(set(names)) != n:
            raise BadInput("register_files: the same file is listed twice")
        if n == 0:
            return []
        repository = repository if repository is not None else self.repository
        failed = self.check_files(names)
        todo = [i for i in range(n) if names[i] not in failed]
        records: dict[int, dict] = {}
        while todo:
            try:
                out = self._register(ref.short, todo, names, hashes, filesizes, versions,
                                     repository, server_only)
            except AlyxServerError as exc:
                # register-file is not atomic: files before the bad one are registered. Drop the
                # culprit and send the rest again (re-registration returns the same datasets).
                m = re.search(r'No dataset type found for filename "([^"]+)"', exc.detail or "")
                culprit = [i for i in todo if m and names[i].rsplit("/", 1)[-1] == m.group(1)]
                if not culprit and len(todo) > 1:
                    # the server does not say which file: isolate it, one request per file
                    for i in todo:
                        try:
                            out = self._register(ref.short, [i], names, hashes, filesizes, versions,
                                                 repository, server_only)
                            records[i] = out[0]
                        except AlyxServerError as one_exc:
                            failed[names[i]] = f"Alyx refused it: {one_exc.detail}"
                    todo = []
                    break
                for i in culprit or todo[:1]:
                    failed[names[i]] = f"Alyx refused it: {exc.detail}"
                todo = [i for i in todo if i not in (culprit or todo[:1])]
                continue
            if len(out) != len(todo):
                raise StoreError(f"register-file answered {len(out)} records for {len(todo)} files")
            records.update(zip(todo, out))
            break
        self._fill_from_server(records, hashes, versions)
        registered = [records[i] for i in sorted(records)]
        if failed and not registered:
            self.session_id(ref.path)  # an unknown session is the clearer error (NotFound)
        if failed:
            lines = "; ".join(f"{name}: {why}" for name, why in failed.items())
            raise RegistrationError(f"{len(failed)} of {n} file(s) of {ref.short} could not be "
                                    f"registered on Alyx ({len(registered)} registered): {lines}",
                                    registered, failed)
        return registered

    def _register(self, short: str, idx: list[int], names: list[str], hashes, filesizes, versions,
                  repository, server_only) -> list[dict]:
        body: dict[str, Any] = {"path": short, "filenames": [names[i] for i in idx]}
        if hashes is not None:
            body["hashes"] = [hashes[i] for i in idx]
        if filesizes is not None:
            body["filesizes"] = [filesizes[i] for i in idx]
        if isinstance(versions, str):
            body["versions"] = [versions] * len(idx)
        elif versions is not None:
            body["versions"] = [versions[i] for i in idx]
        if repository:
            body["name"] = repository
        if server_only:
            body["server_only"] = True
        username = getattr(self.alyx, "username", None) or getattr(self.alyx, "user", None)
        if isinstance(username, str) and username:
            body["created_by"] = username
        try:
            out = self._rest("register-file", "create", data=body)
        except AlyxError as exc:
            if isinstance(exc, (AlyxServerError, AlyxUnreachable)):
                raise
            body = exc.body if isinstance(exc.body, dict) else {}
            if exc.status_code == 400 and "does not exist" in str(body.get("error", "")):
                raise NotFound(f"cannot register files of {short} on Alyx ({self.base_url}): "
                               f"{body['error']}; hpcpipe never creates Alyx sessions") from None
            raise type(exc)(f"register-file for {short}: {exc.detail or exc}",
                            status_code=exc.status_code, detail=exc.detail, body=exc.body) from None
        out = out if isinstance(out, list) else [out]
        for k, i in enumerate(idx[:len(out)]):
            out[k] = self._dataset(out[k], hash_=hashes[i] if hashes else None,
                                   version=versions if isinstance(versions, str)
                                   else (versions[i] if versions else None))
        return out

    def _fill_from_server(self, records: dict[int, dict], hashes, versions) -> None:
        """register-file's answer has no ``hash``/``version``: when the request did not carry
        them (Alyx keeps the previous ones), read them back in one /datasets query."""
        missing_version = versions is None or (not isinstance(versions, str) and None in versions)
        if not records or not (missing_version or hashes is None):
            return
        session = next(iter(records.values())).get("session")
        if not session:
            return
        try:
            stored = {d["id"]: d for d in self.list_datasets(session)}
        except Unreachable:
            return
        for rec in records.values():
            server = stored.get(rec["id"])
            if server:
                rec["version"] = server["version"] if rec["version"] is None else rec["version"]
                rec["hash"] = server["hash"] if hashes is None else rec["hash"]

    @staticmethod
    def _id_from_url(value: Any) -> Any:
        if isinstance(value, str) and "/" in value:
            return value.rstrip("/").rsplit("/", 1)[-1]
        return value

    def _dataset(self, rec: dict, hash_: str | None = None, version: str | None = None) -> dict:
        """Alyx's register-file or /datasets record → the store's dataset dict."""
        did = rec.get("id") or self._id_from_url(rec.get("url"))
        records = rec.get("file_records") or []
        present = [fr.get("data_repository") for fr in records if fr.get("exists")]
        return {"id": did, "name": rec.get("name"), "collection": rec.get("collection") or "",
                "revision": rec.get("revision") or "", "file_size": rec.get("file_size"),
                "hash": rec.get("hash", hash_), "version": rec.get("version", version),
                "session": self._id_from_url(rec.get("session")),
                "data_repository": present[0] if present else None,
                "created_datetime": rec.get("created_datetime"),
                "dataset_type": rec.get("dataset_type"), "data_format": rec.get("data_format"),
                "default_dataset": rec.get("default_dataset", rec.get("default")),
                "qc": rec.get("qc"), "file_records": records}

    def list_datasets(self, session: str) -> list[dict]:
        rows = self._rest("datasets", "list", session=session)
        out = [self._dataset(r) for r in rows]
        return sorted(out, key=lambda d: (d["collection"], d["name"]))
