"""The job side and the SLURM sweep, for real.

Cluster tests (``@pytest.mark.slurm``) drive the CLI in subprocesses (``hpcpipe submit
--backend slurm``, ``hpcpipe status``) against the test cluster, wait with sacct until SLURM
has finished the jobs, then run ``hpcpipe status`` exactly once and read the store: every task
must have its final status and reason, none Started. The one TIMEOUT job (about 65 s) is
submitted at the start of the module and checked by the last test, so it runs meanwhile.

Signal handling is also tested without SLURM: the job side runs as a local subprocess on a
hand-made run folder and is signalled.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from functools import partial
from pathlib import Path

import pytest

from hpcpipe.settings import Settings
from tests.cliutil import run_hpcpipe

REPO = Path(__file__).resolve().parents[2]
PKG = "tests.jobside.sample_tasks"
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED"}


def _slurm_up() -> str | None:
    conf = Path("/tmp/hpcpipe-slurm/env.sh")
    if not os.environ.get("SLURM_CONF") and conf.exists():
        for line in conf.read_text().splitlines():
            if line.startswith("export ") and "=" in line:
                k, v = line[7:].split("=", 1)
                os.environ.setdefault(k, v.strip("'\""))
    try:
        r = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"scontrol ping failed: {exc}"
    return None if r.returncode == 0 and "UP" in r.stdout else f"scontrol ping: {r.stdout or r.stderr}"


_WHY = _slurm_up()
_skip = pytest.mark.skipif(_WHY is not None, reason=f"no SLURM test cluster ({_WHY})")


def cluster(fn):
    """A real-cluster test: marked ``slurm``, skipped with the reason when ``scontrol ping`` fails."""
    return pytest.mark.slurm(_skip(fn))


# ---------------------------------------------------------------------- helpers
def make_env(home: Path) -> dict:
    env = dict(os.environ, HPCPIPE_HOME=str(home), PYTHONPATH=str(REPO),
               HPCPIPE_CONFIG=str(home / "none.toml"), HPCPIPE_GPU_LOCK_DIR=str(home / "locks"))
    return env


def session(root: Path, n: int = 1) -> Path:
    path = root / "data" / "lab" / "Subjects" / "S1" / "2026-01-01" / f"{n:03d}"
    path.mkdir(parents=True)
    return path


hp = partial(run_hpcpipe, timeout=120)


def jobs(env) -> list[dict]:
    """Every job the ledger has (an array's elements too, however it stores them)."""
    from dataclasses import asdict

    from hpcpipe.ledger import Ledger

    ledger = Ledger(Path(env["HPCPIPE_HOME"]) / "jobs.sqlite")
    try:
        return [asdict(j) for j in ledger.history()]
    finally:
        ledger.close()


def tasks(env) -> dict[str, dict]:
    from hpcpipe.store.sqlite import SQLiteStore

    store = SQLiteStore(Path(env["HPCPIPE_HOME"]) / "tasks.sqlite")
    return {(t["name"], str(store.session_path(t["session"]))): t for t in store.list_tasks()}


def by_name(env) -> dict[str, dict]:
    return {name: t for (name, _), t in tasks(env).items()}


def sacct_states(ids) -> dict[str, tuple[str, str]]:
    out = subprocess.run(["sacct", "-X", "-n", "--parsable2", f"--jobs={','.join(ids)}",
                          "--format=JobID,State,ExitCode,Partition"], capture_output=True, text=True).stdout
    states = {}
    for line in out.splitlines():
        jid, state, code, part = line.split("|")
        if part:  # a provisional record has no partition yet
            states[jid] = (state.split()[0], code)
    return states


def wait_final(env, timeout=120, ids=None) -> dict[str, tuple[str, str]]:
    """Until sacct shows every job of this home final (squeue agrees: nothing of ours queued)."""
    ids = ids or sorted({j["job_id"] for j in jobs(env)})
    deadline = time.monotonic() + timeout
    while True:
        states = sacct_states(ids)
        mine = {k: v for k, v in states.items() if k.split("_")[0] in ids}
        if mine and all(v[0] in FINAL for v in mine.values()) and \
                all(any(k == i or k.startswith(i + "_") for k in mine) for i in ids):
            return mine
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs not final after {timeout} s: {mine}")
        time.sleep(1)


def result_file(env, task_id: str, timeout=90, started=True) -> dict:
    """The job side's result file once it recorded Started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in (Path(env["HPCPIPE_HOME"]) / "runs").glob(f"*/results/{task_id}.json"):
            try:
                data = json.loads(path.read_text())
            except ValueError:
                continue
            if not started or any(op["payload"].get("status") == "Started" for op in data["ops"]):
                return data
        time.sleep(0.5)
    raise AssertionError(f"no result file with Started for {task_id} after {timeout} s")


def assert_none_started(env):
    left = [n for n, t in tasks(env).items() if t["status"] == "Started"]
    assert not left, f"tasks left Started: {left}"


# ---------------------------------------------------------------------- the TIMEOUT job (runs meanwhile)
@pytest.fixture(scope="module")
def timeout_run(tmp_path_factory):
    if _WHY is not None:
        pytest.skip(_WHY)
    home = tmp_path_factory.mktemp("timeout")
    env = make_env(home)
    s = session(home)
    hp(env, "submit", "--session", str(s), "--pipeline", f"{PKG}.Slow", "--backend", "slurm")
    return env, time.monotonic()


@cluster
def test_timeout_job_submitted(timeout_run):
    env, _ = timeout_run
    script = next((Path(env["HPCPIPE_HOME"]) / "runs").glob("*/scripts/*.sh")).read_text()
    assert "#SBATCH --time=00:01:00" in script
    assert "#SBATCH --signal" not in script  # too short a limit for an early warning: SIGTERM at the limit
    assert "exec \\\n" in script


# ---------------------------------------------------------------------- memory, Held child, escalation
@cluster
def test_memory_kill_errored_child_held_and_escalation_doubles_ram(tmp_path):
    env = make_env(tmp_path / "home")
    s = session(tmp_path)
    hp(env, "submit", "--session", str(s), "--pipeline", f"{PKG}.Hog", "--backend", "slurm")
    script = next((Path(env["HPCPIPE_HOME"]) / "runs").glob("*/scripts/MemoryHog.*.sh")).read_text()
    assert "#SBATCH --mem=103M" in script
    states = wait_final(env)
    assert sorted(v for v in states.values()) == [("CANCELLED", "0:0"), ("FAILED", "0:9")], states
    hp(env, "status")
    t = by_name(env)
    assert t["MemoryHog"]["status"] == "Errored"
    assert "[hpcpipe:MEMORY]" in t["MemoryHog"]["log"] and "FAILED (exit code 0:9)" in t["MemoryHog"]["log"]
    assert "exceeded memory limit" in t["MemoryHog"]["log"]  # the job's output, quoted
    assert t["AfterHog"]["status"] == "Held"
    assert_none_started(env)

    before = {p.name for p in (Path(env["HPCPIPE_HOME"]) / "runs").iterdir()}
    out = hp(env, "rerun", "--session", str(s), "--pipeline", f"{PKG}.Hog", "--backend", "slurm",
             "--failed", "--escalate").stdout
    assert "ram 0.1 GB -> 0.2 GB" in out
    run = next(p for p in (Path(env["HPCPIPE_HOME"]) / "runs").iterdir() if p.name not in before)
    script = next(run.glob("scripts/MemoryHog.*.sh")).read_text()
    assert "#SBATCH --mem=205M" in script  # 0.2 GB, in MB rounded up
    from hpcpipe.jobside.runfolder import load_session_entry

    entry = load_session_entry(run, "c0", 0)
    assert next(x for x in entry["tasks"] if x["name"] == "MemoryHog")["ram"] == 0.2
    t = by_name(env)["MemoryHog"]
    assert t["ram"] == 0.2 and "[hpcpipe:ESCALATE]" in t["log"]
    subprocess.run(["scancel", "--name", run.name], check=False)  # it would be killed again


# ---------------------------------------------------------------------- scancel, kill -9
@cluster
def test_scancel_while_running_and_sigkill_end_errored_with_reasons(tmp_path):
    env = make_env(tmp_path / "home")
    s1, s2 = session(tmp_path, 1), session(tmp_path, 2)
    hp(env, "submit", "--session", str(s1), "--session", str(s2), "--pipeline", f"{PKG}.Sleepy",
       "--backend", "slurm")
    recs = {r["session"]: r for r in jobs(env)}
    ts = tasks(env)
    t1, t2 = ts[("LongSleep", str(s1))], ts[("LongSleep", str(s2))]
    job1 = next(r["job_id"] for r in recs.values() if r["task_id"] == t1["id"])
    res1 = result_file(env, t1["id"])
    res2 = result_file(env, t2["id"])
    assert res1["job"]["job_id"] == job1 and res1["job"]["output"].endswith(f".{job1}.out")
    subprocess.run(["scancel", job1], check=True)
    os.kill(res2["job"]["pid"], signal.SIGKILL)  # the job side itself (the batch step's process)
    states = wait_final(env)
    assert sorted(v[0] for v in states.values()) == ["CANCELLED", "FAILED"], states
    hp(env, "status")
    ts = tasks(env)
    a, b = ts[("LongSleep", str(s1))], ts[("LongSleep", str(s2))]
    assert a["status"] == "Errored" and "[hpcpipe:CANCELLED]" in a["log"] and f"job {job1}" in a["log"]
    assert "sleeping in pid" in a["log"]  # the job side recorded the task's own log, then the reason
    assert b["status"] == "Errored" and "[hpcpipe:KILLED]" in b["log"] and "(exit code 0:9)" in b["log"]
    assert "[hpcpipe:MEMORY]" not in b["log"]
    assert_none_started(env)
    # one more status changes nothing
    hp(env, "status")
    assert tasks(env) == ts


# ---------------------------------------------------------------------- arrays
@cluster
def test_backfill_array_element_picks_its_session(tmp_path):
    env = make_env(tmp_path / "home")
    paths = [session(tmp_path, n) for n in (1, 2, 3)]
    args = ["backfill", "--pipeline", f"{PKG}.Who"]
    for p in paths:
        args += ["--session", str(p)]
    hp(env, *args)
    recs = jobs(env)
    assert len({r["job_id"] for r in recs}) == 1 and sorted(r["array_index"] for r in recs) == [0, 1, 2]
    wait_final(env)
    hp(env, "status")
    run = next((Path(env["HPCPIPE_HOME"]) / "runs").iterdir())
    from hpcpipe.jobside.runfolder import load_session_entry

    for p in paths:
        who = json.loads((p / "whoami.json").read_text())
        index = int(who["array_task_id"])
        assert who["session"] == str(p) == load_session_entry(run, "c0", index)["path"]
    assert {t["status"] for t in tasks(env).values()} == {"Complete"}
    assert "#SBATCH --array=0-2" in next(run.glob("scripts/*.sh")).read_text()


# ---------------------------------------------------------------------- signals without SLURM
def _run_folder(tmp_path: Path, seconds: float) -> tuple[Path, str, Path]:
    from hpcpipe.jobside import runfolder

    s = session(tmp_path)
    tid, eid = str(uuid.uuid4()), str(uuid.uuid4())
    record = {"id": tid, "name": "LongSleep", "status": "Waiting", "parents": [], "session": eid,
              "executable": f"{PKG}.LongSleep", "arguments": {"seconds": seconds}, "level": 0,
              "priority": 100, "cpu": 1, "gpu": 0, "ram": 0.25, "io_charge": 0, "time_out_secs": 600,
              "graph": "Sleepy", "version": None, "log": None}
    run = tmp_path / "run"
    (run / "sessions").mkdir(parents=True)
    (run / "run.json").write_text(runfolder.run_json("r1", "sqlite", "server",
                                                     settings=Settings(home=tmp_path / "home").for_job()))
    (run / "sessions" / "c0.json").write_text(runfolder.sessions_json({0: runfolder.session_entry(eid, str(s), [record])}))
    return run, tid, s


def _start(run: Path, tmp_path: Path, extra_env=None, name="out") -> tuple[subprocess.Popen, Path]:
    env = make_env(tmp_path / "home")
    for k in [k for k in env if k.startswith("SLURM_") and k != "SLURM_CONF"]:
        env.pop(k)
    env.update(extra_env or {})
    out = tmp_path / f"{name}.txt"
    fh = open(out, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "hpcpipe.jobside", "--run-dir", str(run), "--chunk", "c0",
                             "--index", "0", "--task-name", "LongSleep"], env=env, stdout=fh, stderr=subprocess.STDOUT)
    fh.close()
    return proc, out


def _wait_started(run: Path, tid: str, n_started=1) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            data = json.loads((run / "results" / f"{tid}.json").read_text())
            if sum(op["payload"].get("status") == "Started" for op in data["ops"]) >= n_started:
                time.sleep(0.3)  # well inside _run
                return data
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError("job side never recorded Started")


@pytest.mark.parametrize("sig, kind, code", [(signal.SIGUSR2, "TIMEOUT", 128 + 12),
                                             (signal.SIGTERM, "KILLED", 128 + 15)])
def test_signal_records_errored_with_reason_and_exits_nonzero(tmp_path, sig, kind, code):
    run, tid, _ = _run_folder(tmp_path, 300)
    proc, out = _start(run, tmp_path)
    _wait_started(run, tid)
    t0 = time.monotonic()
    proc.send_signal(sig)
    assert proc.wait(20) == code
    assert time.monotonic() - t0 < 10
    res = json.loads((run / "results" / f"{tid}.json").read_text())
    assert res["final"] and res["status"] == "Errored" and res["exit_code"] == code
    last = res["ops"][-1]["payload"]
    assert last["status"] == "Errored" and f"[hpcpipe:{kind}]" in last["log"]
    assert "sleeping in pid" in last["log"]  # the task's log so far is kept
    assert last["time_elapsed_secs"] > 0


@pytest.mark.parametrize("due", ["JOB REQUEUE", "NODE FAILURE, SEE SLURMCTLD LOG FOR DETAILS", "PREEMPTION"])
def test_requeue_records_waiting_then_the_restart_continues_the_result(tmp_path, due):
    """SIGTERM with slurmstepd's requeue line in the job's output (or a node failure or
    preemption line while scontrol does not answer): Waiting, not final; the restarted job
    (SLURM_RESTART_COUNT=1) appends to the same result file and completes."""
    run, tid, _ = _run_folder(tmp_path, 300)
    fake = {"SLURM_JOB_ID": "999999999"}  # no such job: scontrol says nothing, the output says why
    proc, out = _start(run, tmp_path, fake)
    _wait_started(run, tid)
    with open(out, "a") as fh:
        fh.write(f"slurmstepd: error: *** JOB 999999999 ON vm CANCELLED AT 2026-01-01T00:00:00 DUE TO {due} ***\n")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 75
    res = json.loads((run / "results" / f"{tid}.json").read_text())
    assert not res["final"] and res["status"] == "Waiting"
    assert "[hpcpipe:REQUEUED]" in res["ops"][-1]["payload"]["log"]
    n_ops = len(res["ops"])
    # SLURM runs the job again: it carries on in the same result file
    chunk = run / "sessions" / "c0.json"
    data = json.loads(chunk.read_text())
    data["types"][0]["arguments"] = {"seconds": 0}
    chunk.write_text(json.dumps(data))
    proc, _ = _start(run, tmp_path, dict(fake, SLURM_RESTART_COUNT="1"), name="out2")
    assert proc.wait(60) == 0
    res = json.loads((run / "results" / f"{tid}.json").read_text())
    assert res["final"] and res["status"] == "Complete" and len(res["ops"]) > n_ops
    assert [a["restart"] for a in res["attempts"]] == [0, 1]
    # the final log is this attempt's (run_alyx_task clobbers, as ibllib); the history stays in the ops
    assert any("[hpcpipe:REQUEUED]" in (op["payload"].get("log") or "") for op in res["ops"][:n_ops])


def test_fold_sees_every_op_across_a_requeue(tmp_path):
    """The login node counts folded ops: a restarted job must not shrink its result file."""
    from hpcpipe.jobside.runfolder import RunFolderStore, fold, load_session_entry
    from hpcpipe.store.sqlite import SQLiteStore

    run, tid, s = _run_folder(tmp_path, 0)
    store = SQLiteStore(tmp_path / "t.sqlite")
    eid = store.session_id(s, create=True)
    entry = load_session_entry(run, "c0", 0)
    rec = dict(entry["tasks"][0], session=eid)
    rec.pop("id")
    created = store.create_task({k: v for k, v in rec.items() if k not in ("version",)})
    entry["tasks"][0]["id"] = created["id"]
    first = RunFolderStore(run, entry, created["id"], job={"restart": 0})
    first.update_task(created["id"], status="Started")
    first.update_task(created["id"], status="Waiting", log="requeued")
    first.finish("Waiting", 75, final=False)
    text = (run / "results" / f"{created['id']}.json").read_text()
    applied, final = fold(store, [(created["id"], text, 0)])[created["id"]]
    assert (applied, final) == (2, False) and store.get_task(created["id"])["status"] == "Waiting"
    second = RunFolderStore(run, entry, created["id"], job={"restart": 1})
    assert second.get_task(created["id"])["log"] == "requeued"
    second.update_task(created["id"], status="Started")
    second.update_task(created["id"], status="Complete")
    second.finish("Complete", 0)
    text = (run / "results" / f"{created['id']}.json").read_text()
    assert fold(store, [(created["id"], text, applied)])[created["id"]] == (4, True)
    task = store.get_task(created["id"])
    assert task["status"] == "Complete"
    # the last attempt's report replaced the log; the fold says the job was requeued, once
    assert (task["log"] or "").count("[hpcpipe:REQUEUED]") == 1, task["log"]
    fold(store, [(created["id"], text, 4)])
    assert store.get_task(created["id"])["log"] == task["log"]


@pytest.mark.parametrize("due, info, status, kind", [
    ("NODE FAILURE", {}, "Waiting", "REQUEUED"),  # scontrol silent: SLURM may requeue it
    ("NODE FAILURE", {"Restarts": "1", "JobState": "PENDING"}, "Waiting", "REQUEUED"),
    ("NODE FAILURE", {"Restarts": "0", "JobState": "NODE_FAIL"}, "Errored", "NODE_FAIL"),
    ("PREEMPTION", {}, "Waiting", "REQUEUED"),
    ("PREEMPTION", {"Restarts": "0", "JobState": "PREEMPTED"}, "Errored", "PREEMPTED"),
    ("JOB REQUEUE", {}, "Waiting", "REQUEUED"),
    ("TIME LIMIT", {}, "Errored", "TIMEOUT"),
])
def test_sigterm_is_classified_from_slurmstepds_line_and_scontrol(monkeypatch, due, info, status, kind):
    """Whether a SIGTERM ends the task: a node failure or preemption is final only when scontrol
    answers that the job was not requeued (under load it may not answer in time)."""
    from hpcpipe.jobside import reasons, signals

    line = f"slurmstepd: error: *** JOB 7 ON vm CANCELLED AT 2026-01-01T00:00:00 DUE TO {due} ***\n"
    monkeypatch.setattr(signals, "_tail", lambda path: line)
    monkeypatch.setattr(signals, "scontrol_job", lambda job: dict(info))
    got = signals.classify(signal.SIGTERM, {"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "0"})
    assert (got.status, reasons.last_kind(got.reason)) == (status, kind), got.text


def test_a_restart_after_a_final_report_continues_the_result_and_the_fold_follows(tmp_path):
    """An attempt that reported Errored and was requeued anyway (it took a node failure for a
    cancel): the next attempt appends, so the login node, which counts folded ops, sees it."""
    from hpcpipe.jobside.runfolder import RunFolderStore, fold, load_session_entry
    from hpcpipe.store.sqlite import SQLiteStore

    run, tid, s = _run_folder(tmp_path, 0)
    store = SQLiteStore(tmp_path / "t.sqlite")
    entry = load_session_entry(run, "c0", 0)
    rec = {k: v for k, v in entry["tasks"][0].items() if k not in ("id", "version")}
    created = store.create_task(dict(rec, session=store.session_id(s, create=True)))
    entry["tasks"][0]["id"] = tid = created["id"]
    first = RunFolderStore(run, entry, tid, job={"restart": 0})
    first.update_task(tid, status="Started")
    first.update_task(tid, status="Errored", log="cancelled")
    first.finish("Errored", 143)
    applied, final = fold(store, [(tid, (run / "results" / f"{tid}.json").read_text(), 0)])[tid]
    assert (applied, final) == (2, True) and store.get_task(tid)["status"] == "Errored"
    second = RunFolderStore(run, entry, tid, job={"restart": 1})
    second.update_task(tid, status="Started")
    second.update_task(tid, status="Complete")
    second.finish("Complete", 0)
    assert fold(store, [(tid, (run / "results" / f"{tid}.json").read_text(), applied)])[tid] == (4, True)
    assert store.get_task(tid)["status"] == "Complete"


def test_requeue_note_keeps_a_failure_the_last_tagged_reason():
    """After a failed last attempt the note is untagged: ``rerun --escalate`` reads the last tag."""
    from hpcpipe.jobside import reasons
    from hpcpipe.jobside.runfolder import requeue_note

    assert requeue_note({"final": True, "status": "Complete", "job": {"restart": 0}}) is None
    assert requeue_note({"final": False, "status": "Waiting", "job": {"restart": 2}}) is None
    done = requeue_note({"final": True, "status": "Complete", "job": {"restart": 2, "job_id": "7"}})
    assert reasons.last_kind(done) == reasons.REQUEUED and "job 7 2 time(s)" in done
    failed = requeue_note({"final": True, "status": "Errored", "job": {"restart": 1, "job_id": "7"}})
    log = reasons.line(reasons.MEMORY, "killed for memory") + "\n" + failed
    assert reasons.last_kind(log) == reasons.MEMORY


# ---------------------------------------------------------------------- pure rules
def test_sweep_reasons_and_warn_signal():
    from hpcpipe.jobside import outcome, reasons
    from hpcpipe.slurm.status import JobState

    def st(state, code=0, sig=0, reason=""):
        return JobState("12", "12", None, "r", state, code, sig, reason)

    out = "x\nslurmstepd: error: StepId=12.batch exceeded memory limit (608944128 > 104857600), being killed\n"
    res = json.dumps({"ops": [{"op": "update_task", "payload": {"status": "Started"}}], "job": {"output": "/o"}})
    read = {"/o": out}.get
    assert outcome.swept(st("FAILED", 0, 9), "Started", res, read)[1].startswith("[hpcpipe:MEMORY]")
    assert outcome.swept(st("FAILED", 0, 9), "Started", res, lambda p: "x")[1].startswith("[hpcpipe:KILLED]")
    assert outcome.swept(st("TIMEOUT", 0, 15), "Started", res, read)[1].startswith("[hpcpipe:MEMORY]")
    assert outcome.swept(st("TIMEOUT", 0, 0), "Started", None, read)[1].startswith("[hpcpipe:TIMEOUT]")
    assert outcome.swept(st("NODE_FAIL", 0, 0), "Started", None, read)[0] == "Errored"
    assert outcome.swept(st("OUT_OF_MEMORY", 0, 0), "Started", None, read)[1].startswith("[hpcpipe:MEMORY]")
    assert outcome.swept(st("CANCELLED"), "Waiting", None, read)[0] == "Held"
    assert outcome.pending(st("PENDING", reason="BeginTime"), "Started")[0] == "Waiting"
    assert outcome.pending(st("PENDING", reason="BeginTime"), "Waiting") is None
    assert outcome.pending(st("PENDING", reason="Priority"), "Started") is None
    assert outcome.pending(st("PENDING", reason="DependencyNeverSatisfied"), "Waiting")[0] == "Held"
    # a job never seen running (nothing folded) cannot have a Started task: no store read needed
    assert outcome.pending(st("PENDING", reason="JobHeldUser"), None, ran=False) is None
    assert outcome.pending(st("PENDING", reason="JobHeldUser"), None, ran=True) is not None
    assert outcome.pending(st("PENDING", reason="DependencyNeverSatisfied"), None, ran=False) is not None
    assert reasons.last_kind("a\n[hpcpipe:TIMEOUT] x\n[hpcpipe:MEMORY] y") == "MEMORY"
    assert outcome.warn_signal(60) is None and outcome.warn_signal(3600) == "B:USR2@60"
    assert outcome.warn_signal(3600, 0) is None and outcome.warn_signal(None) is None


def test_escalation_rules_and_caps(monkeypatch):
    from hpcpipe.jobside import escalate

    monkeypatch.setenv("HPCPIPE_ESCALATE_TIME_FACTOR", "3")
    rec = [{"id": "a", "name": "A", "ram": 1.5, "time_out_secs": 100, "log": "[hpcpipe:MEMORY] x"},
           {"id": "b", "name": "B", "ram": 1, "time_out_secs": 100, "log": "[hpcpipe:TIMEOUT] x"},
           {"id": "c", "name": "C", "ram": 1, "time_out_secs": 100, "log": "[hpcpipe:CANCELLED] x"}]
    plan = escalate.plan(rec)
    assert (plan["a"].field, plan["a"].new) == ("ram", 3.0)
    assert (plan["b"].field, plan["b"].new) == ("time_out_secs", 300)
    assert not plan["c"].raised and "same resources" in plan["c"].line()  # cancelled: not a resource problem


@cluster
def test_escalation_capped_by_the_partition():
    from hpcpipe.jobside import escalate
    from hpcpipe.ledger import Ledger
    from hpcpipe.slurm.backend import SlurmBackend

    backend = SlurmBackend(None, Ledger(), profile="generic")
    rec = {"id": "a", "name": "A", "ram": 1.5, "time_out_secs": 1200, "cpu": 1, "gpu": 0, "job_size": None,
           "log": "[hpcpipe:MEMORY] x"}
    part = backend.limits.partitions[backend.limits.default_partition]
    node_gb = max(backend.limits.nodes[n].real_memory_mb for n in part.nodes) / 1024
    rec["ram"] = node_gb * 0.75
    esc = escalate.plan([rec], backend)["a"]
    assert esc.capped and esc.new <= node_gb


def test_sdsc_symlinked_outputs_register_under_the_scratch_session(tmp_path):
    from tests.jobside.sample_tasks import WhoAmI

    store_file = tmp_path / "store" / "spikes.times.0a1b2c3d-0000-0000-0000-000000000000.npy"
    store_file.parent.mkdir()
    store_file.write_bytes(b"123")
    scratch = session(tmp_path / "scratch")
    (scratch / "alf").mkdir()
    link = scratch / "alf" / "spikes.times.npy"
    link.symlink_to(store_file)
    task = WhoAmI(scratch)
    task.outputs = [link]
    payload = task.dataset_payload()
    assert payload["filenames"] == ["alf/spikes.times.npy"] and payload["filesizes"] == [3]


# ---------------------------------------------------------------------- the TIMEOUT job, last
@cluster
def test_timeout_ends_errored_with_reason(timeout_run):
    env, t0 = timeout_run
    states = wait_final(env, timeout=max(30, 150 - (time.monotonic() - t0)))
    assert [v[0] for v in states.values()] == ["TIMEOUT"], states
    hp(env, "status")
    t = by_name(env)["TooSlow"]
    assert t["status"] == "Errored" and "[hpcpipe:TIMEOUT]" in t["log"], t["log"]
    # recorded by the job side itself on SLURM's SIGTERM at the limit (with the task's log), not by the sweep
    assert "reached its time limit" in t["log"] and "sleeping in pid" in t["log"], t["log"]
    assert_none_started(env)
