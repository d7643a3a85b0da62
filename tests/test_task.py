"""Task.run(): every status code, signatures, log capture, the GPU lock, store reporting."""
from __future__ import annotations

import json
import logging
import os
import time

import pytest

from hpcpipe.errors import BadInput
from hpcpipe.store import SQLiteStore
from hpcpipe.task import RERUN_SEPARATOR, Task, gpu_lock_path

_logger = logging.getLogger("tests.task")


@pytest.fixture
def session(tmp_path):
    path = tmp_path / "data" / "SW001" / "2024-05-01" / "001"
    (path / "raw").mkdir(parents=True)
    (path / "raw" / "_x_raw.data.npy").write_bytes(b"raw")
    return path


class Recording(Task):
    """Records what run() called; subclasses choose what _run does."""

    signature = {"input_files": [("_x_raw.data.npy", "raw", True)],
                 "output_files": [("out.result.npy", "alf", True), ("out.extra.csv", "alf", False)]}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []
        self.run_kwargs: dict | None = None

    def write_output(self, name="out.result.npy"):
        out = self.session_path / "alf" / name
        out.parent.mkdir(exist_ok=True)
        out.write_bytes(b"result")
        return out

    def _run(self, overwrite=False):
        self.calls.append("_run")
        self.run_kwargs = {"overwrite": overwrite}
        _logger.info("doing the work of %s", self.name)
        return [self.write_output()]

    def tearDown(self):
        self.calls.append("tearDown")
        super().tearDown()


class CompleteTask(Recording):
    pass


class CompleteNoFiles(Recording):
    signature = {"input_files": [], "output_files": []}

    def _run(self, overwrite=False):
        self.calls.append("_run")
        return []


class EmptyTask(Recording):
    def _run(self, overwrite=False):
        self.calls.append("_run")
        return None


class ErroredTask(Recording):
    def _run(self, overwrite=False):
        self.calls.append("_run")
        raise ValueError("the recording is corrupt: bad sample 1234")


class IncompleteTask(Recording):
    def _run(self, overwrite=False):
        self.calls.append("_run")
        self.status = -3
        return []  # and the required output is missing: Incomplete, not Errored


class NoOutputTask(Recording):
    def _run(self, overwrite=False):
        self.calls.append("_run")
        return [self.write_output("out.extra.csv")]  # only the optional one


class NeedsMissingInput(Recording):
    signature = {"input_files": [("_x_raw.data.npy", "raw", True), ("*.ap.meta", "raw_ephys_data", True),
                                 ("optional.thing.npy", "raw", False)],
                 "output_files": []}


class GpuTask(Recording):
    gpu = 1
    time_out_secs = 60

    def _run(self, overwrite=False):
        self.calls.append("_run")
        self.lock_seen = json.loads(gpu_lock_path().read_text())
        return [self.write_output()]


def held_lock(start: float | None = None, time_out_secs: int = 3600, name: str = "OtherTask",
              pid: int | None = None) -> dict:
    """A lock record written by another task (a live process: pytest's parent, unless ``pid``)."""
    path = gpu_lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"start": time.time() if start is None else start, "name": name,
              "time_out_secs": time_out_secs, "pid": os.getppid() if pid is None else pid}
    path.write_text(json.dumps(record))
    return record


# --------------------------------------------------------------------------- status codes
def test_complete_returns_outputs_and_calls_teardown(session):
    task = CompleteTask(session)
    assert task.run() == 0
    assert task.status == 0
    assert task.outputs == [session / "alf" / "out.result.npy"]
    assert task.calls == ["_run", "tearDown"]
    assert task.time_elapsed_secs is not None and task.time_elapsed_secs >= 0


def test_complete_with_an_empty_list(session):
    task = CompleteNoFiles(session)
    assert task.run() == 0
    assert task.outputs == []  # a list, even empty: Complete (not Empty)


def test_none_means_empty(session):
    task = EmptyTask(session)
    assert task.run() == 0
    assert task.outputs is None


def test_exception_means_errored_with_traceback_in_log(session):
    task = ErroredTask(session)
    assert task.run() == -1
    assert task.status == -1
    assert "Traceback (most recent call last)" in task.log
    assert "ValueError: the recording is corrupt: bad sample 1234" in task.log
    assert task.calls == ["_run", "tearDown"]  # tearDown runs after an error (only -2 skips it)


def test_task_may_declare_itself_incomplete(session):
    task = IncompleteTask(session)
    assert task.run() == -3
    assert task.outputs == []


def test_missing_required_input_errors_before_run(session):
    task = NeedsMissingInput(session)
    assert task.run() == -1
    assert task.calls == ["tearDown"]  # _run never called
    error = next(line for line in task.log.splitlines() if "missing required input" in line)
    assert "*.ap.meta" in error and "raw_ephys_data" in error
    assert "_x_raw.data.npy" not in error and "optional.thing.npy" not in error


def test_missing_required_output_errors(session):
    task = NoOutputTask(session)
    assert task.run() == -1
    assert "required output files missing" in task.log


def test_optional_output_may_be_missing(session):
    task = CompleteTask(session)  # writes only the required output; out.extra.csv is optional
    assert task.run() == 0
    assert not (session / "alf" / "out.extra.csv").exists()


def test_rerun_passes_overwrite(session):
    task = CompleteTask(session)
    assert task.rerun() == 0
    assert task.run_kwargs == {"overwrite": True}


# --------------------------------------------------------------------------- log
def test_log_captures_the_run(session):
    task = CompleteTask(session)
    task.run()
    assert "doing the work of CompleteTask" in task.log
    assert "Job <class" in task.log and "complete" in task.log


def test_clobber_replaces_the_log_of_a_previous_run(session):
    task = ErroredTask(session)
    task.run()
    task.run()
    assert task.log.count("Starting job") == 1
    assert task.log.count("ValueError: the recording is corrupt") == 1


def _store_with_task(tmp_path, session, log):
    store = SQLiteStore(tmp_path / "tasks.sqlite")
    eid = store.session_id(session, create=True)
    rec = store.create_task({"name": "CompleteTask", "session": eid, "status": "Errored", "log": log,
                             "arguments": {}})
    return store, rec


def test_no_clobber_appends_to_the_stored_log_with_the_rerun_separator(tmp_path, session):
    store, rec = _store_with_task(tmp_path, session, "PREVIOUS RUN LOG")
    task = CompleteTask(session, one=store, taskid=rec["id"], clobber=False)
    assert task.run() == 0
    assert task.log.startswith("PREVIOUS RUN LOG" + RERUN_SEPARATOR)
    assert "doing the work of CompleteTask" in task.log.split(RERUN_SEPARATOR, 1)[1]


def test_clobber_with_a_store_drops_the_stored_log(tmp_path, session):
    store, rec = _store_with_task(tmp_path, session, "PREVIOUS RUN LOG")
    task = CompleteTask(session, one=store, taskid=rec["id"], clobber=True)
    task.run()
    assert "PREVIOUS RUN LOG" not in task.log
    assert RERUN_SEPARATOR not in task.log


def test_run_with_a_store_marks_started(tmp_path, session):
    store, rec = _store_with_task(tmp_path, session, None)
    seen = {}

    class SeesStore(CompleteTask):
        def _run(self, overwrite=False):
            seen["status"] = store.get_task(self.taskid)["status"]
            return super()._run(overwrite)

    task = SeesStore(session, one=store, taskid=rec["id"])
    assert task.run() == 0
    assert seen["status"] == "Started"


# --------------------------------------------------------------------------- resources
@pytest.mark.parametrize("attr, value", [("cpu", 0), ("cpu", -1), ("ram", 0), ("time_out_secs", 0),
                                         ("gpu", -1), ("io_charge", -1), ("priority", 101),
                                         ("priority", -1), ("cpu", "2")])
def test_bad_resources_are_refused_at_construction(session, attr, value):
    bad = type("BadTask", (CompleteTask,), {attr: value})
    with pytest.raises(BadInput, match=attr):
        bad(session)


@pytest.mark.parametrize("attr, value", [("gpu", 0), ("io_charge", 0), ("priority", 0), ("priority", 100)])
def test_boundary_resources_are_accepted(session, attr, value):
    ok = type("OkTask", (CompleteTask,), {attr: value})
    assert getattr(ok(session), attr) == value


def test_level_follows_parents(session):
    a, b = CompleteTask(session), EmptyTask(session)
    c = ErroredTask(session, parents=[a])
    d = IncompleteTask(session, parents=[b, c])
    assert (a.level, b.level, c.level, d.level) == (0, 0, 1, 2)


# --------------------------------------------------------------------------- GPU lock
def test_lock_path_honours_the_lock_dir_and_visible_devices(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURMD_NODENAME", raising=False)
    assert gpu_lock_path() == tmp_path / "gpu-lock" / "hpcpipe-gpu.lock"
    monkeypatch.setenv("HPCPIPE_GPU_LOCK_DIR", str(tmp_path / "elsewhere"))
    assert gpu_lock_path() == tmp_path / "elsewhere" / "hpcpipe-gpu.lock"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert gpu_lock_path() == tmp_path / "elsewhere" / "hpcpipe-gpu0-1.lock"
    monkeypatch.setenv("SLURMD_NODENAME", "node2")  # a lock folder shared by nodes: GPU 0 of each its own
    assert gpu_lock_path() == tmp_path / "elsewhere" / "hpcpipe-gpu0-1.node2.lock"


def test_gpu_task_takes_and_releases_the_lock(session):
    task = GpuTask(session)
    assert task.run() == 0
    assert task.lock_seen["name"] == "GpuTask"
    assert task.lock_seen["time_out_secs"] == 60
    assert task.lock_seen["pid"] == os.getpid()
    assert not gpu_lock_path().exists()
    assert not task.is_locked()


def test_gpu_lock_held_means_did_not_run(session):
    record = held_lock()
    task = GpuTask(session)
    assert task.is_locked()
    assert task.run() == -2
    assert task.calls == []  # neither _run nor tearDown
    assert json.loads(gpu_lock_path().read_text()) == record  # the other task's lock is untouched
    assert "lock" in task.log


def test_stale_lock_is_ignored(session):
    held_lock(start=time.time() - 7200, time_out_secs=3600)
    task = GpuTask(session)
    assert not task.is_locked()
    assert task.run() == 0
    assert task.calls == ["_run", "tearDown"]
    assert task.lock_seen["name"] == "GpuTask"


def test_lock_of_a_dead_holder_is_ignored(session):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    held_lock(pid=dead.pid)  # killed holders cannot release: the node-local lock goes stale at once
    task = GpuTask(session)
    assert not task.is_locked()
    assert task.run() == 0


def test_lock_on_other_gpus_does_not_block(session, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    held_lock()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    task = GpuTask(session)
    assert task.run() == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert GpuTask(session).run() == -2


def test_cpu_task_ignores_the_gpu_lock(session):
    held_lock()
    assert CompleteTask(session).run() == 0


def test_errored_gpu_task_releases_its_lock(session):
    class GpuError(ErroredTask):
        gpu = 1

    assert GpuError(session).run() == -1
    assert not gpu_lock_path().exists()


class WildcardInputs(CompleteTask):
    signature = {"input_files": [(["*.ap.meta", "*.ap.cbin"], "raw_ephys_data/probe*", True)],
                 "output_files": [("out.result.npy", "alf", True)]}


def test_signature_pattern_lists_and_wildcard_collections(session):
    probe = session / "raw_ephys_data" / "probe00"
    probe.mkdir(parents=True)
    (probe / "_spikeglx_ephysData_g0_t0.imec0.ap.meta").write_text("meta")
    task = WildcardInputs(session)
    assert task.run() == -1  # the .ap.cbin of the pattern list is missing
    error = next(line for line in task.log.splitlines() if "missing required input" in line)
    assert "*.ap.cbin" in error and "*.ap.meta" not in error
    assert "_run" not in task.calls
    (probe / "_spikeglx_ephysData_g0_t0.imec0.ap.cbin").write_bytes(b"\0")
    task = WildcardInputs(session)
    assert task.run() == 0
    ok, found = task.assert_expected_inputs(raise_error=False)
    assert ok and sorted(p.name for p in found) == ["_spikeglx_ephysData_g0_t0.imec0.ap.cbin",
                                                    "_spikeglx_ephysData_g0_t0.imec0.ap.meta"]
