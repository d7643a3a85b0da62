"""The fault matrix on the real test cluster: concurrency, crashes, refusals, forgotten jobs.

Each test drives the ``hpcpipe`` command as a user does and then checks SLURM itself (squeue),
the store and the ledger. Many-job tests submit with a profile that adds ``--hold`` (jobs pend
held, nothing runs on the 2-core machine) and cancel at the end. Waits are bounded polls.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from hpcpipe.jobside.runfolder import load_session_entry
from hpcpipe.ledger import Ledger
from hpcpipe.slurm.status import JobWatcher
from hpcpipe.store.sqlite import SQLiteStore
from hpcpipe.transport import LocalTransport
from tests.cliutil import cancel_left_jobs, concurrent_cancels
from tests.cliutil import run_hpcpipe as hp

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path, slurm_cluster):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "held.toml").write_text('extra_directives = ["--hold"]\n')
    (tmp_path / "profiles" / "tiny.toml").write_text('partition = "small"\n')
    config = tmp_path / "config.toml"
    config.write_text(f'[slurm]\nprofile_dirs = ["{tmp_path / "profiles"}"]\n')
    e = dict(os.environ, HPCPIPE_HOME=str(tmp_path / "home"), HPCPIPE_GPU_LOCK_DIR=str(tmp_path / "locks"),
             PYTHONPATH=str(REPO), HPCPIPE_CONFIG=str(config))
    for key in list(e):
        if key.startswith("HPCPIPE_SLURM_") and key not in ("HPCPIPE_SLURM_BASE", "HPCPIPE_SLURM_SACCT"):
            e.pop(key)
    yield e
    cancel_left_jobs(e["HPCPIPE_HOME"])
    runs = _runs(e)
    if runs:  # jobs SLURM has for the test's runs that the ledger may not know (killed submitters)
        subprocess.run(["scancel", f"--name={','.join(sorted(runs))}"], capture_output=True)


def ledger(env) -> Ledger:
    Path(env["HPCPIPE_HOME"]).mkdir(parents=True, exist_ok=True)
    return Ledger(Path(env["HPCPIPE_HOME"]) / "jobs.sqlite")


def _runs(env) -> set[str]:
    runs = Path(env["HPCPIPE_HOME"]) / "runs"
    return {p.name for p in runs.iterdir()} if runs.exists() else set()


def session_dirs(root: Path, n: int) -> list[Path]:
    out = []
    for i in range(n):
        p = root / "lab" / "Subjects" / f"S{i:03d}" / "2026-11-20" / "001"
        p.mkdir(parents=True)
        out.append(p)
    return out


def squeue_live(names) -> list[dict]:
    """Every pending/running job element SLURM has with one of these job names (array elements
    one row each), with its comment."""
    names = sorted(set(names))
    if not names:
        return []
    out = subprocess.run(["squeue", "--noheader", "--array", "--states=PENDING,RUNNING,REQUEUED,SUSPENDED",
                          f"--name={','.join(names)}", "-O", "JobArrayID:|,ArrayJobID:|,Name:|,Comment:|,State:|"],
                         capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        job_id, array_job, name, comment, state = line.split("|")[:5]
        rows.append({"job_id": job_id, "array_job": array_job, "name": name, "comment": comment, "state": state})
    return rows


def live_elements_by_task(env) -> Counter:
    """Live SLURM elements per task id: a job element is mapped to its task through the run folder's
    chunk files (index -> session) and the element's task name (its comment names the call)."""
    counts: Counter = Counter()
    rows = squeue_live(_runs(env))
    home = Path(env["HPCPIPE_HOME"])
    chunks: dict[tuple[str, str], dict] = {}
    for row in rows:
        script = row["comment"].removeprefix("hpcpipe:")
        task_name, _, rest = script.partition(".")
        if "_" in row["job_id"]:  # array element: <task>.<chunk>.<group>, index = element
            chunk = rest.split(".")[0]
            index = row["job_id"].split("_")[1]
        else:  # single job: <task>.<index>, chunk c0
            chunk, index = "c0", rest
        key = (row["name"], chunk, index)
        if key not in chunks:
            chunks[key] = load_session_entry(home / "runs" / row["name"], chunk, int(index))
        task = next(t for t in chunks[key]["tasks"] if t["name"] == task_name)
        counts[task["id"]] += 1
    return counts


def wait_for(predicate, timeout=120, interval=1.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# ------------------------------------------------------------------ 1. concurrent submissions
@pytest.mark.parametrize("n", [2, 4])
def test_concurrent_submits_of_one_session_queue_each_task_once(env, tmp_path, n):
    session = session_dirs(tmp_path / "data", 1)[0]
    argv = [sys.executable, "-m", "hpcpipe.cli", "submit", "--session", str(session), "--pipeline",
            "tests.sample_pipelines.LongPipeline", "--backend", "slurm"]
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(n)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * n, outs
    assert sum("3 task(s) in 3 sbatch call(s)" in o for o, _ in outs) == 1, outs
    counts = live_elements_by_task(env)
    tasks = SQLiteStore(Path(env["HPCPIPE_HOME"]) / "tasks.sqlite").list_tasks()
    assert len(tasks) == 3 and {t["id"]: counts[t["id"]] for t in tasks} == {t["id"]: 1 for t in tasks}
    assert len(ledger(env).live("slurm")) == 3
    hp(env, "cancel", "--session", str(session))


def test_a_held_lock_gives_one_clear_line_after_a_bounded_wait(env, tmp_path):
    session = session_dirs(tmp_path / "data", 1)[0]
    ld = ledger(env)
    with ld.lock("a test holding it"):
        proc = hp(dict(env, HPCPIPE_SUBMIT_LOCK_WAIT_SECS="1"), "submit", "--session", str(session), "--pipeline",
                  "tests.sample_pipelines.LongPipeline", "--backend", "slurm", check=False)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("hpcpipe: error:")]
    assert len(lines) == 1 and "a test holding it" in lines[0] and "waited 1 s" in lines[0], proc.stderr
    assert ld.live() == []


def test_two_concurrent_cancels_of_a_run_cancel_each_job_once(env, tmp_path):
    """Two ``hpcpipe cancel --run`` at once while the run's jobs run: the lock orders them, the
    second finds the ledger's jobs cancelled (even those squeue still shows completing) and
    cancels nothing again; no task is left Started."""
    session = session_dirs(tmp_path / "data", 1)[0]
    hp(env, "submit", "--session", str(session), "--pipeline", "tests.sample_pipelines.LongPipeline",
       "--backend", "slurm")
    (run,) = _runs(env)
    end = time.monotonic() + 120
    while not any(r["state"] == "RUNNING" for r in squeue_live({run})) and time.monotonic() < end:
        time.sleep(0.5)
    assert any(r["state"] == "RUNNING" for r in squeue_live({run})), squeue_live({run})
    assert concurrent_cancels(env, run) == ["cancelled 3 job(s)", "no live job matches"]
    assert squeue_live({run}) == []
    hp(env, "status")
    tasks = SQLiteStore(Path(env["HPCPIPE_HOME"]) / "tasks.sqlite").list_tasks()
    assert len(tasks) == 3 and "Started" not in {t["status"] for t in tasks}, tasks
    assert ledger(env).live() == []


# ------------------------------------------------------------------ 4. refusals change nothing
def snapshot(env) -> dict:
    home = Path(env["HPCPIPE_HOME"])
    files = {}
    for path in sorted(home.rglob("*")):
        if path.is_file() and not path.name.endswith(".lock"):
            files[str(path.relative_to(home))] = path.read_bytes()
    return files


def _unreachable_cluster(env, tmp_path) -> dict:
    """``env`` with a slurm.conf naming a controller port nobody listens on: the real SLURM
    client tools, a cluster that does not answer."""
    conf = Path(env["SLURM_CONF"])
    copy = tmp_path / "gone" / "slurm.conf"
    copy.parent.mkdir()
    text = re.sub(r"(?m)^SlurmctldPort=\d+", "SlurmctldPort=1", conf.read_text())
    assert text != conf.read_text()
    copy.write_text(text)
    for other in conf.parent.glob("*.conf"):
        if other.name != "slurm.conf":
            (copy.parent / other.name).write_text(other.read_text())
    return dict(env, SLURM_CONF=str(copy))


@pytest.mark.parametrize("case", ["ram", "time", "profile", "path", "pipeline", "status", "cluster"])
def test_refused_submission_changes_no_byte(env, tmp_path, case):
    first, second = session_dirs(tmp_path / "data", 2)
    # held: no job of the first session runs and writes its files while the two snapshots are taken
    hp(env, "submit", "--session", str(first), "--pipeline", "tests.sample_pipelines.LongPipeline",
       "--backend", "slurm", "--profile", "held")
    hp(env, "status")  # settle what a refresh may write, so only the refused command is compared
    before = snapshot(env)
    args = {"ram": ["--session", str(second), "--pipeline", "tests.sample_pipelines.BigRam", "--profile", "tiny"],
            "time": ["--session", str(second), "--pipeline", "tests.sample_pipelines.DayLongPipeline",
                     "--profile", "tiny"],
            "profile": ["--session", str(second), "--pipeline", "tests.sample_pipelines.LongPipeline",
                        "--profile", "no-such-profile"],
            "path": ["--session", str(tmp_path / "nowhere" / "S9" / "2026-11-20" / "001"),
                     "--pipeline", "tests.sample_pipelines.LongPipeline"],
            "pipeline": ["--session", str(second), "--pipeline", "tests.sample_pipelines.NoSuchPipeline"],
            "status": ["--session", str(second), "--pipeline", "tests.sample_pipelines.LongPipeline",
                       "--status", "Finished"],
            "cluster": ["--session", str(second), "--pipeline", "tests.sample_pipelines.LongPipeline"]}[case]
    proc = hp(_unreachable_cluster(env, tmp_path) if case == "cluster" else env, "submit", *args, "--backend", "slurm",
              check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert case != "cluster" or "unable to contact slurm controller" in proc.stderr.lower(), proc.stderr
    assert len([ln for ln in proc.stderr.splitlines() if ln.strip()]) == 1, proc.stderr
    after = snapshot(env)
    assert after.keys() == before.keys()
    changed = [k for k in after if after[k] != before[k]]
    assert changed == [], changed
    hp(env, "cancel", "--session", str(first))


# ------------------------------------------------------------------ 2. SIGKILL during backfill
SBATCH_KILLER = """#!/bin/bash
# test-only: the real sbatch, but the submitting process is SIGKILLed around the Nth call
n=$(( $(cat "$KILL_COUNT" 2>/dev/null || echo 0) + 1 )); echo $n > "$KILL_COUNT"
if [ "$KILL_WHEN" = before ] && [ $n -eq "$KILL_AT" ]; then kill -9 $PPID; sleep 5; exit 1; fi
"$REAL_SBATCH" "$@"; rc=$?
if [ "$KILL_WHEN" = after ] && [ $n -eq "$KILL_AT" ]; then kill -9 $PPID; sleep 5; fi
exit $rc
"""


def _backfill_with_sbatch(env, tmp_path, n: int, wrapper: str) -> tuple[list[str], dict]:
    """``n`` sessions of TinyChain to backfill (held), and an environment whose ``sbatch`` is the
    test-only ``wrapper`` script around the real one (``$REAL_SBATCH``)."""
    listing = tmp_path / "sessions.txt"
    listing.write_text("\n".join(map(str, session_dirs(tmp_path / "data", n))) + "\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sbatch").write_text(wrapper)
    (bindir / "sbatch").chmod(0o755)
    real = subprocess.run(["which", "sbatch"], capture_output=True, text=True, check=True).stdout.strip()
    args = ["backfill", "--sessions-file", str(listing), "--pipeline", "tests.sample_pipelines.TinyChain",
            "--profile", "held"]
    return args, dict(env, PATH=f"{bindir}:{env['PATH']}", REAL_SBATCH=real)


def _assert_one_live_job_per_task(env, n_tasks: int) -> None:
    """SLURM has exactly one live element per task; the ledger names exactly those, no intent left."""
    counts = live_elements_by_task(env)
    tasks = SQLiteStore(Path(env["HPCPIPE_HOME"]) / "tasks.sqlite").list_tasks()
    assert len(tasks) == n_tasks
    assert Counter(counts[t["id"]] for t in tasks) == Counter({1: n_tasks})
    live = ledger(env).live("slurm")
    assert len(live) == n_tasks and not [j for j in live if not j.job_id]  # nothing orphaned
    assert {j.backend_id for j in live} == {r["job_id"] for r in squeue_live(_runs(env))}


@pytest.mark.parametrize("when,at,resubmitted", [("before", 1, 3), ("after", 1, 2), ("after", 3, 0)],
                         ids=["before-first", "between", "after-last"])
def test_sigkill_of_backfill_then_status_and_backfill_leave_one_job_per_task(env, tmp_path, when, at,
                                                                              resubmitted):
    n = int(os.environ.get("HPCPIPE_TEST_KILL_SESSIONS", "300"))
    args, wrapped = _backfill_with_sbatch(env, tmp_path, n, SBATCH_KILLER)
    killer = dict(wrapped, KILL_WHEN=when, KILL_AT=str(at), KILL_COUNT=str(tmp_path / "count"))
    proc = hp(killer, *args, check=False)
    assert proc.returncode == -9, proc.stdout + proc.stderr
    first_run = sorted(_runs(env))[0]
    hp(env, "status", "--json")
    out = hp(env, *args).stdout
    if resubmitted:
        assert f"{n * resubmitted} task(s) in {resubmitted} sbatch call(s), {resubmitted} array(s)" in out, out
    else:
        assert "nothing to submit" in out, out
    _assert_one_live_job_per_task(env, 3 * n)
    # cancel --run reaches every job SLURM has for the killed run
    hp(env, "cancel", "--run", first_run)
    wait_for(lambda: not squeue_live([first_run]), timeout=60, what=f"no live job of {first_run}")


# ------------------------------------------------------------------ 5. forgotten job ids
@pytest.fixture
def own_cluster():
    """A cluster of the test's own, to restart with its state wiped (which the shared one must
    never be): its own base, ports and munge key, no accounting, stopped and wiped afterwards.
    ``own_cluster(*flags)`` runs scripts/slurm-up with ``flags`` and returns what it exports."""
    base = Path(tempfile.mkdtemp(prefix="hps-r5-", dir="/tmp"))  # short: socket paths have a limit
    e = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "HPCPIPE_SLURM_"))}
    e.update(HPCPIPE_SLURM_PORT_BASE=os.environ.get("HPCPIPE_TEST_OWN_CLUSTER_PORT", "7817"),
             HPCPIPE_SLURM_GPUS="0", HPCPIPE_SLURM_NO_INSTALL="1")

    def up(*flags: str) -> dict:
        res = subprocess.run(["bash", str(REPO / "scripts" / "slurm-up"), *flags, "--no-accounting", str(base)],
                             env=e, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, f"scripts/slurm-up {' '.join(flags)} failed: {res.stderr[-1500:]}"
        return dict(line.removeprefix("export ").split("=", 1) for line in res.stdout.splitlines()
                    if line.startswith("export "))
    try:
        yield up
    finally:
        subprocess.run(["bash", str(REPO / "scripts" / "slurm-down"), "--wipe", str(base)], env=e,
                       capture_output=True, timeout=120)


def test_a_job_slurm_forgot_is_lost_after_the_grace_period_and_resubmittable(env, tmp_path, own_cluster):
    """A cluster restarted with its state wiped (``slurm-up --fresh``: every job gone, ids
    counted from 1 again) forgets the jobs the ledger has: within the grace period their tasks
    still count as queued, after it they are LOST, their tasks Waiting and submitted again, and
    the child waits on its new parents, not on a forgotten (or recycled) id."""
    cluster = {k: v for k, v in own_cluster().items() if k in ("SLURM_CONF", "HPCPIPE_SLURM_BASE")}
    env = dict(env, **cluster, HPCPIPE_SLURM_LOST_AFTER_SECS="600")  # its passing is simulated: no timing
    slurm = dict(os.environ, **cluster)  # the test's own sbatch/scontrol go to that cluster too
    session = session_dirs(tmp_path / "data", 1)[0]
    submit = ["submit", "--session", str(session), "--pipeline", "tests.sample_pipelines.LongPipeline",
              "--backend", "slurm", "--profile", "held"]
    hp(env, *submit)
    ld = ledger(env)
    jobs = ld.live("slurm")
    assert len(jobs) == 3
    own_cluster("--fresh")
    # someone else's job takes the first id again: a recycled id, another job's name
    other = subprocess.run(["sbatch", "--parsable", "--hold", "--job-name=someone-else", "--wrap", "true"],
                           capture_output=True, text=True, check=True, env=slurm).stdout.strip()
    assert other in {j.job_id for j in jobs}, (other, jobs)
    hp(env, "status", "--json")
    states = {j.task_name: j.state for j in ledger(env).live("slurm")}
    assert states == {"A": "UNKNOWN", "B": "UNKNOWN", "Child": "UNKNOWN"}, states
    # within the grace period the tasks count as queued: nothing is submitted twice
    assert "nothing to submit" in hp(env, *submit).stdout
    # the grace period passes: the jobs were first seen unknown 601 s ago
    past = (dt.datetime.now() - dt.timedelta(seconds=601)).isoformat(timespec="seconds")
    ld.update(doubts=[(j.task_id, j.run_id, past) for j in jobs])
    hp(env, "status")
    assert ledger(env).live("slurm") == []
    lost = {j.task_name: (j.state, j.reason) for j in ledger(env).run(jobs[0].run_id)}
    assert {s for s, _ in lost.values()} == {"LOST"}, lost
    tasks = {t["name"]: t["status"] for t in SQLiteStore(Path(env["HPCPIPE_HOME"]) / "tasks.sqlite").list_tasks()}
    assert tasks == {"A": "Waiting", "B": "Waiting", "Child": "Waiting"}  # nothing ran: resubmittable
    assert "3 task(s) in 3 sbatch call(s)" in hp(env, *submit).stdout
    # the child waits on its new parents' jobs, not on a forgotten id
    live = ledger(env).live("slurm")
    child = next(j for j in live if j.task_name == "Child")
    shown = subprocess.run(["scontrol", "show", "job", child.job_id], capture_output=True, text=True,
                           env=slurm).stdout
    deps = set(re.findall(r"(?:afterok|aftercorr):(\d+)", shown.split("Dependency=")[1].split()[0]))
    assert deps == {j.job_id for j in live if j.task_name != "Child"} and other not in deps, shown
    hp(env, "cancel", "--session", str(session))  # nothing of this test left for the shared cluster's teardown


# ------------------------------------------------------------------ 3. parents across runs
def test_child_submitted_while_its_parent_runs_in_an_earlier_run_waits_and_completes(env, tmp_path):
    session = session_dirs(tmp_path / "data", 1)[0]
    pipeline = "tests.sample_pipelines.ParentChild"
    hp(env, "submit", "--session", str(session), "--pipeline", pipeline, "--backend", "slurm", "--task", "Parent")
    # a second process, later, submits the child while the parent's job (20 s) is still live
    out = hp(env, "submit", "--session", str(session), "--pipeline", pipeline, "--backend", "slurm",
             "--task", "Child").stdout
    assert "1 task(s) in 1 sbatch call(s)" in out, out
    jobs = {j.task_name: j for j in ledger(env).live("slurm")}
    assert jobs["Parent"].run_id != jobs["Child"].run_id
    shown = subprocess.run(["scontrol", "show", "job", jobs["Child"].job_id], capture_output=True, text=True).stdout
    assert f"afterok:{jobs['Parent'].job_id}" in shown, shown

    def settled():
        rows = json.loads(hp(env, "status", "--json").stdout)
        return rows if all(r["status"] not in ("Waiting", "Started") for r in rows) else None

    rows = wait_for(settled, timeout=240, interval=2, what="both tasks settled")
    assert {r["name"]: r["status"] for r in rows} == {"Parent": "Complete", "Child": "Complete"}, rows
    order = (session / "order.txt").read_text().split("\n")
    assert order.index("end Parent") < next(i for i, ln in enumerate(order) if ln.startswith("Child "))


# ------------------------------------------------------------------ 6. preemption, node failure
def _hog_running(env, session):
    hp(env, "submit", "--session", str(session), "--pipeline", "tests.sample_pipelines.HogPipeline",
       "--backend", "slurm")
    job = ledger(env).live("slurm")[0]
    wait_for(lambda: (session / "order.txt").exists(), timeout=180, what="the Hog task started")
    return job


def _squeue_state(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id, "-O", "State:|,Reason:|"], capture_output=True,
                          text=True).stdout.strip()


def _settle(env, session, job_id):
    """Release a requeued job early (SLURM would wait ~2 min) and wait until its task is done.

    Not within the second its last attempt was killed: slurmd refuses a credential issued in the
    second it revoked the job's (``Killing non-startable batch job: Job credential revoked``, exit
    1), so a release at once makes the next attempt fail for a reason no cluster user meets."""
    seen_pending: list[float] = []
    last: list = []

    def done():
        if _squeue_state(job_id).startswith("PENDING"):
            seen_pending.append(time.monotonic())
            if seen_pending[-1] - seen_pending[0] >= 2:
                subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)
        out = hp(env, "status", "--json")
        rows = json.loads(out.stdout)
        last[:] = [rows, out.stderr]
        return rows if rows and rows[0]["status"] not in ("Waiting", "Started") else None
    try:
        return wait_for(done, timeout=300, interval=3, what="the requeued task to end")
    except AssertionError as exc:  # say what status, SLURM and the ledger last showed, and the log
        sacct = subprocess.run(["sacct", "-D", "-n", "-P", "-j", job_id, "-o", "JobID,State,ExitCode,Restarts"],
                               capture_output=True, text=True).stdout
        jobs = [(j.backend_id, j.state, j.reason, j.folded, j.folded_ops) for j in ledger(env).history()]
        raise AssertionError(f"{exc}; status: {last}; sacct: {sacct!r}; ledger: {jobs}; log: {_log(env)}") from None


def _log(env) -> str:
    """The (only) task's log, for a failing assertion to show why."""
    return SQLiteStore(Path(env["HPCPIPE_HOME"]) / "tasks.sqlite").list_tasks()[0]["log"] or ""


def test_preempted_job_is_requeued_not_failed_and_its_task_completes(env, tmp_path):
    parts = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True).stdout.split()
    if "urgent" not in parts:
        pytest.skip("the test cluster has no preempting partition (restart it with this scripts/slurm-up)")
    session = session_dirs(tmp_path / "data", 1)[0]
    job = _hog_running(env, session)
    urgent = subprocess.run(["sbatch", "--parsable", "-p", "urgent", "-c", "8", "--mem=100", "--job-name=hpt-urgent",
                             "--wrap", "sleep 2"], capture_output=True, text=True, check=True).stdout.strip()
    try:
        wait_for(lambda: _squeue_state(job.job_id).startswith("PENDING"), timeout=120,
                 what="the Hog job requeued by preemption")
        rows = json.loads(hp(env, "status", "--json").stdout)
        assert rows[0]["status"] == "Waiting", rows  # requeued work is no failure
        assert ledger(env).live("slurm"), "the requeued job must stay live in the ledger"
        rows = _settle(env, session, job.job_id)
        log = _log(env)
        assert rows[0]["status"] == "Complete", (rows, log)
        assert "[hpcpipe:REQUEUED]" in log, log
    finally:
        subprocess.run(["scancel", urgent], capture_output=True)


def test_node_failure_requeues_the_job_and_its_task_completes(env, tmp_path):
    node = os.environ.get("HPCPIPE_SLURM_NODE") or subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True).stdout.split()[0]
    session = session_dirs(tmp_path / "data", 1)[0]
    job = _hog_running(env, session)
    subprocess.run(["scontrol", "update", f"nodename={node}", "state=down", "reason=hpcpipe-test"], check=True)
    try:
        wait_for(lambda: not _squeue_state(job.job_id).startswith("RUNNING"), timeout=120,
                 what="the Hog job off its failed node")
        rows = json.loads(hp(env, "status", "--json").stdout)
        assert rows[0]["status"] in ("Waiting", "Started"), (rows, _log(env))  # never Errored for a node failure
    finally:
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)
    rows = _settle(env, session, job.job_id)
    assert rows[0]["status"] == "Complete", (rows, _log(env))
    assert "Started" not in {r["status"] for r in rows}


def test_a_job_requeued_after_its_final_report_is_followed_to_its_new_outcome(env, tmp_path):
    """``scontrol requeue`` of a job that had reported Errored (as SLURM does after a node
    failure the job side took for a cancel): the task goes back to Waiting and ends with what
    the job's next attempt reports, not with the first attempt's outcome for good."""
    session = session_dirs(tmp_path / "data", 1)[0]
    hp(env, "submit", "--session", str(session), "--pipeline", "tests.sample_pipelines.FailFirstPipeline",
       "--backend", "slurm")
    job = ledger(env).live("slurm")[0]
    result = Path(job.run_dir) / "results" / f"{job.task_id}.json"
    wait_for(lambda: result.exists() and json.loads(result.read_text()).get("final"), timeout=180,
             what="the first attempt's final report")
    wait_for(lambda: not _squeue_state(job.job_id), timeout=60, what="the first attempt to end")
    subprocess.run(["scontrol", "requeue", job.job_id], check=True)
    rows = json.loads(hp(env, "status", "--json").stdout)
    assert rows[0]["status"] == "Waiting", rows  # it runs again: the Errored report is not the end
    rows = _settle(env, session, job.job_id)
    assert rows[0]["status"] == "Complete", (rows, _log(env))
    attempts = json.loads(result.read_text())["attempts"]
    assert [a["restart"] for a in attempts] == [0, 1], attempts


# ------------------------------------------------------------------ 6c, 6d. controller and accounting down
def _daemon(name: str) -> int | None:
    """The pid of one of the test cluster's daemons (from its pid file), if it runs."""
    path = Path(os.environ.get("HPCPIPE_SLURM_BASE", "/tmp/hpcpipe-slurm")) / "run" / f"{name}.pid"
    try:
        pid = int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def _stop_daemon(name: str) -> None:
    pid = _daemon(name)
    if pid:
        os.kill(pid, 15)
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=60, interval=0.2, what=f"{name} to stop")


def _start_daemon(name: str, ready: list[str]) -> None:
    """Start a daemon of the test cluster again (it reads SLURM_CONF) and wait until ``ready`` works."""
    if _daemon(name) is None:
        subprocess.run([name], check=True)
    wait_for(lambda: subprocess.run(ready, capture_output=True).returncode == 0, timeout=90,
             what=f"{name} to answer")


def _all_ended(job_ids) -> bool:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%T"],
                         capture_output=True, text=True).stdout.split()
    return len(out) == len(job_ids) and set(out) <= {"COMPLETED"}


def test_accounting_down_status_reads_squeue_says_so_and_tasks_complete(env, tmp_path, slurm_cluster):
    """slurmdbd stopped: the jobs run and end; status reads squeue, which lists them (ended
    within MinJobAge), folds their results (every task Complete), and declares nothing lost
    (unknown time needs accounting). An id the controller no longer lists is asked of sacct,
    which does not answer: the watcher says so."""
    if not slurm_cluster["sacct"] or _daemon("slurmdbd") is None:
        pytest.skip("the test cluster runs without accounting (slurmdbd)")
    session = session_dirs(tmp_path / "data", 1)[0]
    env = dict(env, HPCPIPE_SLURM_LOST_AFTER_SECS="1")
    hp(env, "submit", "--session", str(session), "--pipeline", "tests.sample_pipelines.TinyChain",
       "--backend", "slurm", "--profile", "held")
    jobs = ledger(env).live("slurm")
    assert len(jobs) == 3
    _stop_daemon("slurmdbd")
    try:
        assert subprocess.run(["sacct", "-n", "-X", "-j", jobs[0].job_id], capture_output=True).returncode != 0
        subprocess.run(["scontrol", "release", *[j.job_id for j in jobs]], check=True)
        wait_for(lambda: _all_ended([j.job_id for j in jobs]), timeout=240, what="the three jobs to end")
        time.sleep(1.5)  # past the (shortened) grace period: nothing may be declared lost for want of sacct
        proc = hp(env, "status", "--json")
        assert "accounting" not in proc.stderr, proc.stderr  # the controller had every job
        assert {r["status"] for r in json.loads(proc.stdout)} == {"Complete"}, proc.stdout
        assert not [j for j in ledger(env).run(jobs[0].run_id) if j.state in ("LOST", "UNKNOWN")]
        old = JobWatcher(LocalTransport())
        old.watch("1")  # long gone from the controller
        assert old.poll()["1"].state == "UNKNOWN" and "accounting (sacct) did not answer" in old.fallback
    finally:
        _start_daemon("slurmdbd", ["sacctmgr", "-n", "show", "cluster"])
    hp(env, "status")
    assert ledger(env).live("slurm") == []
    assert {t["status"] for t in SQLiteStore(Path(env["HPCPIPE_HOME"]) / "tasks.sqlite").list_tasks()} == {"Complete"}


SBATCH_RESTARTS_CONTROLLER = """#!/bin/bash
# test-only: before the Nth call, slurmctld is stopped and started again 3 s later, in the background
n=$(( $(cat "$CALL_COUNT" 2>/dev/null || echo 0) + 1 )); echo $n > "$CALL_COUNT"
if [ $n -eq "$RESTART_AT" ]; then
  kill "$(cat "$CTLD_PID")"; while kill -0 "$(cat "$CTLD_PID")" 2>/dev/null; do sleep 0.1; done
  ( sleep 3; slurmctld ) >/dev/null 2>&1 &
fi
exec "$REAL_SBATCH" "$@"
"""


def test_slurmctld_restarted_mid_backfill_leaves_one_job_per_task(env, tmp_path):
    """The controller goes away before the second sbatch call of a backfill and comes back: the
    backfill either rides it out or stops with one line; one ``status`` and one ``backfill``
    afterwards leave exactly one live job per task, the ledger naming exactly SLURM's jobs."""
    if _daemon("slurmctld") is None:
        pytest.skip("no pid file for the test cluster's slurmctld")
    n = 30
    args, wrapped = _backfill_with_sbatch(env, tmp_path, n, SBATCH_RESTARTS_CONTROLLER)
    pidfile = Path(os.environ.get("HPCPIPE_SLURM_BASE", "/tmp/hpcpipe-slurm")) / "run" / "slurmctld.pid"
    restarting = dict(wrapped, RESTART_AT="2", CALL_COUNT=str(tmp_path / "count"), CTLD_PID=str(pidfile))
    try:
        first = hp(restarting, *args, check=False)
    finally:
        _start_daemon("slurmctld", ["scontrol", "ping"])
        wait_for(lambda: "is UP" in subprocess.run(["scontrol", "ping"], capture_output=True, text=True).stdout,
                 timeout=90, what="slurmctld to answer")
    if first.returncode != 0:  # stopped: one line naming what failed, no traceback
        assert first.returncode == 2 and "Traceback" not in first.stderr, first.stderr
    hp(env, "status", "--json")
    again = hp(env, *args)
    assert again.returncode == 0, again.stderr
    _assert_one_live_job_per_task(env, 3 * n)
