"""Task: one processing step of a session, with ibllib's ``pipes.tasks.Task`` public API.

An existing ibllib task class moves over unchanged: subclasses set resources and a
``signature`` and implement ``_run()``; ``run()`` wraps it with error handling, log capture, the
GPU lock, timing and a status code (0 Complete, -1 Errored, -2 lock held, -3 Incomplete).
``_run`` returning None means Empty; a list (even empty) means Complete.
"""
from __future__ import annotations

import abc
import io
import json
import logging
import os
import time
import traceback
from pathlib import Path

from . import __version__
from . import signature as sig
from .errors import BadInput
from .files import atomic_write
from .settings import Settings, current
from .status import CODE_COMPLETE, CODE_ERRORED, CODE_LOCKED

_logger = logging.getLogger(__name__)

RERUN_SEPARATOR = "\n\n=============================RERUN=============================\n"
#: Resource attributes that must be positive (gpu, io_charge may be 0).
POSITIVE_RESOURCES = ("cpu", "ram", "time_out_secs")
NON_NEGATIVE_RESOURCES = ("gpu", "io_charge")


def gpu_lock_path(settings: Settings | None = None) -> Path:
    """Where the GPU lock of this machine lives.

    Node-local by default (the temp folder), so there is one lock per machine rather than one
    per home directory shared by a whole cluster; one per GPU set when SLURM (or the user) has
    set ``CUDA_VISIBLE_DEVICES``, so two jobs on two GPUs of a node do not block each other.
    Configurable with ``[gpu] lock_dir`` / ``$HPCPIPE_GPU_LOCK_DIR``. Inside a SLURM job the
    node's name is part of it (``hpcpipe-gpu0.node2.lock``): in a lock folder shared by several
    nodes, GPU 0 of one node is not GPU 0 of another (a pack over two nodes ran into that).
    ``settings``: a task's own (a job's come from its ``run.json``), default ``settings.current()``.
    """
    folder = (settings or current()).gpu_lock_dir
    devices = os.environ.get("CUDA_VISIBLE_DEVICES", "").replace(",", "-").strip()
    node = os.environ.get("SLURMD_NODENAME", "").strip()
    return folder / (f"hpcpipe-gpu{devices}" + (f".{node}" if node else "") + ".lock")


class Task(abc.ABC):
    """Base class of every task; see the module docstring and ibllib's documentation."""

    log = ""
    cpu = 1
    gpu = 0
    io_charge = 5
    priority = 30
    ram = 4
    outputs = None
    time_elapsed_secs = None
    time_out_secs = 7200
    version = __version__
    signature: dict = {"input_files": [], "output_files": []}
    force = False
    job_size = "small"
    one = None
    level = 0

    def __init__(self, session_path, parents=None, taskid=None, one=None, machine=None,
                 clobber=True, location="server", **kwargs) -> None:
        self.taskid = taskid
        self.one = one
        self.session_path = session_path if session_path is None or isinstance(session_path, Path) \
            else Path(session_path)
        self.register_kwargs: dict = {}
        if parents:
            self.parents = list(parents)
            self.level = max(p.level for p in self.parents) + 1
        else:
            self.parents = []
        self.machine = machine
        self.clobber = clobber
        self.location = location
        self.plot_tasks: list = []
        self.kwargs = kwargs
        self.status: int | None = None
        self.data_handler = None
        self.input_files: list = []
        self.output_files: list = []
        self.check_resources()

    @property
    def name(self) -> str:
        """The task's name in the pipeline and the store: its class name."""
        return self.__class__.__name__

    @classmethod
    def check_resources(cls) -> None:
        """Refuse resources SLURM or the local engine could not honour, naming the bad one."""
        for attr in POSITIVE_RESOURCES:
            value = getattr(cls, attr)
            if not isinstance(value, (int, float)) or value <= 0:
                raise BadInput(f"task {cls.__name__}: {attr}={value!r} must be a positive number")
        for attr in NON_NEGATIVE_RESOURCES:
            value = getattr(cls, attr)
            if not isinstance(value, (int, float)) or value < 0:
                raise BadInput(f"task {cls.__name__}: {attr}={value!r} must be zero or more")
        if not isinstance(cls.priority, (int, float)) or not 0 <= cls.priority <= 100:
            raise BadInput(f"task {cls.__name__}: priority={cls.priority!r} must be within 0..100")

    # ------------------------------------------------------------------ running
    #: the settings the task runs with (GPU lock folder, data handler settings): a job's, given
    #: by ``run_alyx_task``; else, for an ibllib user calling ``run()`` directly, the active
    #: ones (``settings.current()``), taken once when first needed
    settings: Settings | None = None

    def _settings(self) -> Settings:
        if self.settings is None:
            self.settings = current()
        return self.settings

    def run(self, **kwargs) -> int:
        """Run the task: do not overload; implement ``_run``. Returns and sets ``self.status``."""
        store = self._store() if (self.one is not None and self.taskid is not None) else None
        if store is not None:
            from .errors import Unreachable

            try:
                tdict = store.update_task(self.taskid, status="Started")
                self.log = "" if not tdict.get("log") else tdict["log"] + RERUN_SEPARATOR
            except Unreachable as exc:
                # run anyway: the final report is what matters, and it goes to the outbox
                _logger.warning("task store unreachable, Started not recorded: %s", exc)
        capture = io.StringIO()
        handler = logging.StreamHandler(capture)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)-8s [%(filename)s:%(lineno)d] %(message)s"))
        handler.setLevel(logging.INFO)
        root = logging.getLogger()
        old_level = root.level
        root.addHandler(handler)
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)
        try:
            self._run_wrapped(**kwargs)
        finally:
            new_log = capture.getvalue()
            self.log = new_log if self.clobber else self.log + new_log
            root.removeHandler(handler)
            root.setLevel(old_level)
            handler.close()
        if self.status != CODE_LOCKED:
            self.tearDown()
        return self.status

    def _run_wrapped(self, **kwargs) -> None:
        _logger.info("Starting job %s", self.__class__)
        if self.machine:
            _logger.info("Running on machine: %s", self.machine)
        _logger.info("running hpcpipe version %s", __version__)
        start = time.time()
        try:
            setup = self.setUp(**kwargs)
            _logger.info("Setup value is: %s", setup)
            self.status = CODE_COMPLETE
            if not setup:
                # outputs already there but inputs missing: nothing to rerun, count as done
                _, self.outputs = self.assert_expected_outputs(raise_error=False)
            else:
                if self.gpu >= 1 and not self._creates_lock():
                    self.status = CODE_LOCKED
                    _logger.info("Job %s exited as a lock was found at %s", self.__class__,
                                 gpu_lock_path(self._settings()))
                    return
                outputs = self._run(**kwargs)
                _logger.info("Job %s complete", self.__class__)
                self.outputs = None if outputs is None else (
                    list(outputs) if isinstance(outputs, (list, tuple)) else [outputs])
                if self.outputs is not None:
                    ok, _ = self.assert_expected_outputs(raise_error=False)
                    if not ok and self.status == CODE_COMPLETE:
                        raise FileNotFoundError(f"{self.name}: required output files missing after _run")
        except Exception:
            _logger.error(traceback.format_exc())
            _logger.info("Job %s errored", self.__class__)
            self.status = CODE_ERRORED
        finally:
            self.time_elapsed_secs = time.time() - start
            nout = 0 if self.outputs is None else len(self.outputs)
            _logger.info("N outputs: %d", nout)
            _logger.info("--- %s seconds run-time ---", self.time_elapsed_secs)

    @abc.abstractmethod
    def _run(self, overwrite: bool = False):
        """The work. Return a list of output files (Complete) or None (Empty)."""

    def rerun(self) -> int:
        """Run again with ``overwrite=True``."""
        return self.run(overwrite=True)

    def setUp(self, **kwargs) -> bool:
        """Get the data handler, make the inputs available, and check them.

        Raises when a required input is missing (the task fails before ``_run``).
        """
        self.get_signatures(**kwargs)
        self.data_handler = self.get_data_handler()
        self.data_handler.setUp(task_id=self.taskid)  # SDSC names its scratch folder after it
        working = getattr(self.data_handler, "session_path", None)
        if working is not None:
            self.session_path = Path(working)
        self.assert_expected_inputs(raise_error=True)
        return True

    def tearDown(self) -> None:
        """After ``run()`` (not after status -2): release the GPU lock."""
        if self.gpu >= 1:
            from filelock import FileLock  # only GPU tasks need it (start-up time)

            path = gpu_lock_path(self._settings())
            with FileLock(str(path) + ".flock"):
                record = self._read_lock(path)
                if record and record.get("pid") == os.getpid():
                    path.unlink(missing_ok=True)

    def cleanUp(self) -> None:
        """Optional clean-up after registration (the data handler's scratch data)."""
        if self.data_handler is not None:
            self.data_handler.cleanUp()

    # ------------------------------------------------------------------ signatures
    def get_signatures(self, **kwargs) -> None:
        """Expand ``signature`` into ``input_files`` / ``output_files`` (lists of patterns allowed)."""
        def expand(entries):
            out = []
            for entry in entries or []:
                if isinstance(entry[0], (list, tuple)):
                    out.extend((pattern, *entry[1:]) for pattern in entry[0])
                else:
                    out.append(tuple(entry))
            return out
        self.input_files = expand(self.signature.get("input_files"))
        self.output_files = expand(self.signature.get("output_files"))

    def assert_expected(self, expected_files, silent: bool = False) -> tuple[bool, list[Path]]:
        """Are all required ``(pattern, collection, required)`` files in the session?"""
        ok, found, missing = sig.check(self.session_path, expected_files)
        if not silent:
            for spec in missing:
                _logger.error("Signature file expected %s not found", spec.glob)
        return ok, found

    def assert_expected_outputs(self, raise_error: bool = True) -> tuple[bool, list[Path]]:
        """After a run: every required output present at least once."""
        if not self.output_files:
            self.get_signatures()
        ok, files = self.assert_expected(self.output_files)
        if not ok and raise_error:
            raise FileNotFoundError("Missing outputs after task completion")
        return ok, files

    def assert_expected_inputs(self, raise_error: bool = True) -> tuple[bool, list[Path]]:
        """Before a run: every required input present locally."""
        if not self.input_files:
            self.get_signatures()
        ok, files = self.assert_expected(self.input_files)
        if not ok and raise_error:
            missing = [s.glob for s in sig.check(self.session_path, self.input_files)[2]]
            raise FileNotFoundError(f"Missing required inputs: {', '.join(missing)}")
        return ok, files

    # ------------------------------------------------------------------ data and registration
    def get_data_handler(self, location: str | None = None):
        """The data handler for ``location`` (default: the task's ``location``)."""
        from .handlers import get_data_handler

        location = location or self.location
        datasets = None
        if location == "remote" and self.one is not None:
            store = self._store()
            datasets = store.list_datasets(store.session_id(self.session_path))
        return get_data_handler(location, self.session_path, self.signature, one=self.one, datasets=datasets,
                                settings=self._settings())

    def dataset_payload(self, max_md5_size: int | None = None, **kwargs) -> dict:
        """The ``register_files`` arguments for this task's outputs (sizes, md5s, version).

        Kept separate from the request so an unreachable store can queue it in the outbox.
        """
        from .files import md5

        files = self.outputs or []
        if self.data_handler is not None:
            files = self.data_handler.uploadData(files, self.version, **kwargs) or files
        root = Path(self.session_path).resolve()
        names, hashes, sizes = [], [], []
        for f in files:
            path = Path(f) if Path(f).is_absolute() else Path(self.session_path) / f
            # resolve the folder only, as handler.relative() does: an output may be a symlink
            # (SDSC scratch sessions) whose target lies outside the session
            path = path.parent.resolve() / path.name
            names.append(path.relative_to(root).as_posix())
            hashes.append(md5(path, max_md5_size))
            sizes.append(path.stat().st_size)
        return {"session_path": str(self.registration_session_path), "filenames": names,
                "hashes": hashes, "filesizes": sizes, "versions": self.version,
                "server_only": self.location == "server"}

    @property
    def registration_session_path(self) -> Path:
        """The session as the store knows it (a handler may run the task in a scratch copy)."""
        original = getattr(self.data_handler, "original_session_path", None)
        return Path(original) if original is not None else Path(self.session_path)

    def register_datasets(self, one=None, **kwargs) -> list[dict]:
        """Register the outputs in the task store (Alyx or embedded) in one request."""
        self.register_images()
        payload = self.dataset_payload(**kwargs)
        if not payload["filenames"]:
            return []
        return self._store(one).register_files(**payload)

    def register_images(self, **kwargs) -> list:
        """No-op: figures are registered as ordinary output datasets (see docs/ALYX.md)."""
        return []

    def _store(self, one=None):
        from .store import open_store

        return open_store(one if one is not None else self.one)

    # ------------------------------------------------------------------ GPU lock
    @staticmethod
    def make_lock_file(taskname: str = "", time_out_secs: int = 7200, settings: Settings | None = None) -> Path:
        """Write the GPU lock record ``{start, name, time_out_secs}`` (stale after the timeout)."""
        path = gpu_lock_path(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"start": time.time(), "name": taskname, "time_out_secs": time_out_secs,
                  "pid": os.getpid()}
        atomic_write(path, json.dumps(record))
        return path

    @staticmethod
    def _read_lock(path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def is_locked(self) -> bool:
        """Is the GPU lock held by a task whose time-out has not passed?"""
        record = self._read_lock(gpu_lock_path(self._settings()))
        if record is None:
            return False
        pid = record.get("pid")
        if pid and pid != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            return False  # the lock is node-local: its holder died (e.g. SIGKILL) without releasing it
        return time.time() - record.get("start", 0) < record.get("time_out_secs", self.time_out_secs)

    def _creates_lock(self) -> bool:
        path = gpu_lock_path(self._settings())
        path.parent.mkdir(parents=True, exist_ok=True)
        from filelock import FileLock

        with FileLock(str(path) + ".flock"):
            if self.is_locked():
                return False
            self.make_lock_file(self.name, self.time_out_secs, self._settings())
            _logger.info("GPU lock taken at %s", path)
            return True
