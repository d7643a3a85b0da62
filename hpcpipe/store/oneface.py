"""The ONE face of a task store: what ibllib's ``pipes.tasks`` calls on ``one``, over any store.

An unmodified ``ibllib.pipes.tasks.Task`` or ``Pipeline`` talks to Alyx through a ONE instance
(``one.alyx.rest(...)``, ``one.path2eid``, ``one.alyx.post('/register-file', ...)``). hpcpipe
hands those classes a ``OneFace`` over its own task store instead, so the same code records into
the embedded SQLite store, into Alyx, or, inside a job, into the run folder (whose operations the
login node folds), and the job side's result file sees every write.

The surface is the one ibllib 4.1's ``Task.run``, ``setUp``/``get_data_handler`` (locations
``server`` and ``local``), ``register_datasets`` (ONE's ``RegistrationClient``),
``Pipeline.__init__``/``create_alyx_tasks``/``run`` and ``run_alyx_task`` touch, with Alyx's
semantics:

* ``tasks``: list (filters ``session``, ``graph``, ``name``, ``status``; always fresh: a store
  read is never cached), read, create, partial_update, update, delete; unknown record fields are
  dropped, as Alyx's serializer drops them (ibllib sends ``module``);
* ``subjects`` list by nickname, ``dataset-types``, ``data-formats``, ``data-repository``,
  ``sessions`` read: passed to Alyx when the store is (or reports upstream to) Alyx; answered
  here for the embedded store (one catch-all dataset type, the data formats of
  ``DATA_FORMATS`` plus ``[store] data_formats``, the lab of ``[store] lab``);
* ``json_field_update`` (the experiment description's sign-off dict): Alyx's own; the embedded
  store keeps no session JSON and says so in the task's log;
* ``/check-protected``: hpcpipe keeps no protection tags, so nothing is protected;
* ``/register-file``: the store's ``register_files`` (one request on Alyx), so the dataset
  records come back as Alyx returns them.

Anything else raises ``NotImplementedError`` naming the endpoint: better than a silent answer.
"""
from __future__ import annotations

import datetime as _dt
import getpass
import logging
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import BadInput
from ..settings import current
from .base import TASK_FIELDS, TaskStore

#: file extensions the embedded store accepts for registration (Alyx's ``data-formats``)
DATA_FORMATS = (".npy", ".npz", ".pqt", ".parquet", ".csv", ".tsv", ".ssv", ".json", ".yaml", ".yml",
                ".txt", ".log", ".html", ".h5", ".hdf5", ".mat", ".bin", ".cbin", ".ch", ".meta", ".avi",
                ".mp4", ".png", ".jpg", ".jpeg", ".svg", ".pdf", ".tif", ".tiff", ".zip", ".nrrd", ".nii",
                ".pt", ".pkl", ".sqlite", ".raw", ".wav", ".flac", ".flag")
_TASK_KEYS = frozenset(TASK_FIELDS)
_logger = logging.getLogger(__name__)


def _alyx_behind(store: TaskStore) -> Any:
    """The Alyx client of a store that is Alyx, or that reports upstream to Alyx; else None."""
    for candidate in (store, getattr(store, "upstream", None)):
        if getattr(candidate, "kind", None) == "alyx":
            return candidate.alyx
    return None


class AlyxFace:
    """``one.alyx``: ONE's ``AlyxClient`` surface, answered by a task store."""

    #: the store reads fresh every time: ibllib warns about an active REST cache otherwise
    cache_mode = None
    default_expiry = _dt.timedelta(0)
    is_logged_in = True

    def __init__(self, store: TaskStore, face: "OneFace") -> None:
        self.store = store
        self._face = face
        self._alyx = _alyx_behind(store)
        base = getattr(self._alyx, "base_url", None) if self._alyx is not None else None
        self.base_url = str(base or f"hpcpipe+{store.kind}://local").rstrip("/")
        self.user = (getattr(self._alyx, "user", None) if self._alyx is not None else None) or getpass.getuser()

    @property
    def cache_dir(self) -> Path:
        return self._face.cache_dir

    def authenticate(self, *args: Any, **kwargs: Any) -> None:
        """The store holds its own credentials (``hpcpipe alyx login``): nothing to do."""

    # ------------------------------------------------------------------ REST
    def rest(self, url: str | None = None, action: str | None = None, id: str | None = None,
             data: dict | None = None, files: Any = None, no_cache: bool = False, **filters: Any) -> Any:
        """ONE's ``AlyxClient.rest`` for the endpoints ibllib's task machinery uses."""
        endpoint = (url or "").strip("/").split("/")[0]
        action = action or "list"
        if endpoint == "tasks":
            return self._tasks(action, id, data, filters)
        if self._alyx is not None and endpoint in ("subjects", "dataset-types", "data-formats",
                                                   "data-repository", "sessions", "labs"):
            kwargs = dict(filters, **({"id": id} if id is not None else {}), **({"data": data} if data else {}))
            return self._alyx.rest(endpoint, action, **kwargs)
        if endpoint == "subjects" and action == "list" and "nickname" in filters:
            return [{"nickname": filters["nickname"], "lab": self._face.settings.store.lab}]
        if endpoint == "dataset-types" and action == "list":
            return [{"name": "any", "filename_pattern": "*", "description": "embedded store: every file"}]
        if endpoint == "data-formats" and action == "list":
            extra = self._face.settings.store.data_formats
            return [{"name": ext.lstrip("."), "file_extension": ext} for ext in (*DATA_FORMATS, *extra)]
        if endpoint == "data-repository" and action == "list":
            return []
        if endpoint == "datasets" and action == "list" and "session" in filters:
            return self.store.list_datasets(filters["session"])
        if endpoint == "sessions" and action == "read" and id is not None:
            path = self.store.session_path(id)
            return {"id": id, "local_path": str(path) if path else None}
        raise NotImplementedError(f"the {self.store.kind} store's ONE face has no endpoint {endpoint!r} action {action!r}")

    def _tasks(self, action: str, task_id: str | None, data: dict | None, filters: dict) -> Any:
        store = self.store
        if action == "list":
            unknown = set(filters) - {"session", "graph", "name", "status"}
            if unknown:
                raise NotImplementedError(f"tasks list filter(s) {sorted(unknown)} are not supported by the ONE face")
            records = store.list_tasks(session=filters.get("session"), status=filters.get("status"),
                                       name=filters.get("name"), graph=filters.get("graph"))
            return [self._face.saw_record(rec) for rec in records]
        if action == "read":
            return self._face.saw_record(store.get_task(task_id))
        if action == "create":
            record = {k: v for k, v in (data or {}).items() if k in _TASK_KEYS and k != "id"}
            return self._face.saw_record(store.create_task(record))
        if action in ("partial_update", "update"):
            fields = {k: v for k, v in (data or {}).items() if k in _TASK_KEYS and k not in ("id", "datetime")}
            return self._face.saw_record(store.update_task(task_id, **fields))
        if action == "delete":
            store.delete_task(task_id)
            return None
        raise NotImplementedError(f"tasks action {action!r} is not supported by the ONE face")

    def json_field_update(self, endpoint: str, uuid: str, field_name: str = "json", data: dict | None = None) -> dict:
        """Merge ``data`` into a record's JSON field (ibllib's experiment description sign-off).

        On Alyx: Alyx's own (ONE's method, or read + PATCH). The embedded store keeps no session
        JSON (sign-off is an Alyx session feature): the merged dict is returned, nothing kept.
        """
        data = dict(data or {})
        if self._alyx is None:
            _logger.info("%s %s: the embedded store keeps no %s field; %s not kept", endpoint, uuid, field_name,
                         sorted(data))
            return data
        if callable(getattr(self._alyx, "json_field_update", None)):
            return self._alyx.json_field_update(endpoint, uuid, field_name=field_name, data=data)
        current = self._alyx.rest(endpoint, "read", id=uuid).get(field_name) or {}
        merged = {**current, **data}
        self._alyx.rest(endpoint, "partial_update", id=uuid, data={field_name: merged})
        return merged

    def get(self, url: str, data: dict | None = None, **kwargs: Any) -> Any:
        """``/check-protected``: hpcpipe's stores keep no protection tags, so nothing is protected."""
        if url.strip("/").startswith("check-protected"):
            return {"status_code": 200, "details": "None of the datasets are protected"}
        raise NotImplementedError(f"the ONE face has no GET {url!r}")

    def post(self, url: str, data: dict | None = None, **kwargs: Any) -> Any:
        """``/register-file``: one ``register_files`` call on the store, dataset records back."""
        if not url.strip("/").startswith("register-file"):
            raise NotImplementedError(f"the ONE face has no POST {url!r}")
        data = dict(data or {})
        session = self._face.session_folder(data["path"])
        versions = data.get("versions")
        return self.store.register_files(session, list(data["filenames"]), hashes=data.get("hashes"),
                                         filesizes=data.get("filesizes"), versions=versions,
                                         repository=data.get("name"), server_only=bool(data.get("server_only")))


class OneFace:
    """``one``: the parts of ``one.api.OneAlyx`` ibllib's tasks and pipelines use, over a store.

    ``create_sessions``: the embedded store registers a session folder the first time
    ``path2eid`` sees it (its sessions come from folders, not from a rig's Alyx); a dry run
    says False, and an unknown session is then None, as ONE answers.

    Made by ibllib's classes' callers deep inside a pipeline or a job, it takes the active
    settings (``settings.current()``: the CLI's, or the job's from its ``run.json``).
    """

    offline = False

    def __init__(self, store: TaskStore, create_sessions: bool = True) -> None:
        self.settings = current()
        self.store = store
        self.create_sessions = create_sessions
        self._sessions: dict[str, Path] = {}  # eid -> session folder, as the store told us
        self.alyx = AlyxFace(store, self)

    def __repr__(self) -> str:
        return f"OneFace({self.store!r})"

    @property
    def cache_dir(self) -> Path:
        return self.settings.path(self.settings.store.cache_dir, "one-cache")

    def path2eid(self, path_obj: str | Path, query_type: str | None = None) -> str | None:
        """The session id of a session folder (None when the store does not know it)."""
        from ..errors import NotFound

        create = self.create_sessions and self.store.kind == "sqlite"
        try:
            eid = self.store.session_id(path_obj, create=create)
        except (NotFound, BadInput):
            return None
        self._sessions[eid] = Path(path_obj)
        return eid

    def eid2path(self, eid: str, query_type: str | None = None) -> Path | None:
        """The local folder of a session id, when the store knows it."""
        path = self._sessions.get(eid) or self.store.session_path(eid)
        return Path(path) if path is not None else None

    def saw(self, eid: str | None) -> None:
        """Remember a session a task record named (``/register-file`` names it by path only)."""
        if eid and eid not in self._sessions:
            path = self.store.session_path(eid)
            if path is not None:
                self._sessions[eid] = Path(path)

    def saw_record(self, record: dict) -> dict:
        """A task record as Alyx returns it: every field (a job's session entry keeps fewer)."""
        self.saw(record.get("session"))
        return {**dict.fromkeys(TASK_FIELDS), **record}

    def session_folder(self, relative: str) -> Path:
        """The session folder whose ``subject/date/number`` is ``relative``."""
        rel = PurePosixPath(relative).parts[-3:]
        for path in self._sessions.values():
            if Path(path).parts[-3:] == rel:
                return Path(path)
        raise BadInput(f"register-file: session {relative!r} is not one this task's store has named")
