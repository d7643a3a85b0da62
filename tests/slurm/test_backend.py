"""The SLURM backend end to end on the real test cluster, driven through the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from hpcpipe.demo.session import make_session
from hpcpipe.store.sqlite import SQLiteStore
from tests.cliutil import run_hpcpipe as hp

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[2]


def store(env) -> SQLiteStore:
    return SQLiteStore(Path(env["HPCPIPE_HOME"]) / "tasks.sqlite")


def wait_until_settled(env, n_tasks, timeout=240, session=None, names=None):
    """Poll `hpcpipe status --json` (as a user would) until no task (of ``names``) is Waiting or Started."""
    deadline = time.monotonic() + timeout
    args = ["status", "--json"] + (["--session", str(session)] if session else [])
    while True:
        rows = json.loads(hp(env, *args).stdout)
        busy = [r for r in rows if r["status"] in ("Waiting", "Started") and (not names or r["name"] in names)]
        if len(rows) == n_tasks and not busy:
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"not settled after {timeout} s: {busy[:5]}")
        time.sleep(2)


def sacct_states(job_ids) -> dict[str, str]:
    out = subprocess.run(["sacct", "-X", "--parsable2", "--noheader", "--format=JobID,State", "-j",
                          ",".join(sorted(set(job_ids)))], capture_output=True, text=True).stdout
    return dict(line.split("|")[:2] for line in out.splitlines() if line)


def test_demo_pipeline_on_slurm(env, tmp_path, slurm_cluster):
    session = make_session(tmp_path / "data" / "lab" / "Subjects" / "S1" / "2026-11-20" / "001", duration=15)
    out = hp(env, "submit", "--session", str(session), "--pipeline", "demo", "--backend", "slurm").stdout
    assert "5 task(s) in 5 sbatch call(s)" in out
    rows = wait_until_settled(env, 5)
    assert {r["status"] for r in rows} == {"Complete"}
    assert {r["backend"] for r in rows} == {"slurm"}
    if slurm_cluster["sacct"]:
        deadline = time.monotonic() + 10
        while set(sacct_states(r["job_id"] for r in rows).values()) != {"COMPLETED"}:
            assert time.monotonic() < deadline, sacct_states(r["job_id"] for r in rows)
            time.sleep(0.5)
    assert (session / "alf" / "_demo_summary.table.csv").exists()
    datasets = store(env).list_datasets(store(env).session_id(session))
    assert {d["name"] for d in datasets} >= {"spikes.times.npy", "trials.intervals.npy", "_demo_qc.metrics.json"}
    # the job scripts name the run, ask for the task's resources, chain parents with afterok
    run_dir = next((Path(env["HPCPIPE_HOME"]) / "runs").iterdir())
    summary = (run_dir / "scripts" / "DemoSummary.0.sh").read_text()
    assert f"#SBATCH --job-name={run_dir.name}" in summary
    assert "--dependency=afterok:" in summary and "--kill-on-invalid-dep=yes" in summary
    assert "#SBATCH --gres=gpu:1" in (run_dir / "scripts" / "DemoSpikeSorting.0.sh").read_text()


def test_session_path_with_shell_metacharacters_is_inert(env, tmp_path):
    marker = tmp_path / "pwned"
    root = tmp_path / f"we ird $(touch {marker}) `touch {marker}` 'q\" ;touch {marker}"
    session = make_session(root / "lab" / "Subjects" / "S1" / "2026-11-20" / "001", duration=15)
    hp(env, "submit", "--session", str(session), "--pipeline", "demo", "--backend", "slurm",
       "--task", "DemoSync")
    rows = wait_until_settled(env, 5, names={"DemoSync"})
    assert {r["name"]: r["status"] for r in rows}["DemoSync"] == "Complete"
    assert (session / "alf" / "_demo_sync.times.npy").exists()
    assert not marker.exists()


def test_resubmitting_a_queued_session_submits_nothing_twice_then_cancel(env, tmp_path):
    session = make_session(tmp_path / "data" / "S2" / "2026-11-20" / "001", duration=15)
    pipeline = "tests.sample_pipelines.LongPipeline"
    first = hp(env, "submit", "--session", str(session), "--pipeline", pipeline, "--backend", "slurm").stdout
    assert "3 task(s) in 3 sbatch call(s)" in first
    second = hp(env, "submit", "--session", str(session), "--pipeline", pipeline, "--backend", "slurm").stdout
    # each task is either still queued (skipped, named) or already Started (not Waiting any more)
    assert "nothing to submit" in second and "already queued as slurm job" in second
    from hpcpipe.ledger import Ledger

    assert len(Ledger(Path(env["HPCPIPE_HOME"]) / "jobs.sqlite").live()) == 3  # still one job per task
    cancelled = hp(env, "cancel", "--session", str(session)).stdout
    assert "cancelled 3 job(s)" in cancelled
    rows = json.loads(hp(env, "status", "--json").stdout)
    assert "Started" not in {r["status"] for r in rows} and "Waiting" not in {r["status"] for r in rows}
    deadline = time.monotonic() + 20
    while True:
        q = subprocess.run(["squeue", "--noheader", "--states=PENDING,RUNNING", "-j",
                            ",".join(r["job_id"] for r in rows)], capture_output=True, text=True).stdout
        if not q.strip():
            break
        assert time.monotonic() < deadline, q
        time.sleep(0.5)


def test_dry_run_writes_scripts_and_submits_nothing(env, tmp_path):
    session = make_session(tmp_path / "data" / "S3" / "2026-11-20" / "001", duration=15)
    out = hp(env, "submit", "--session", str(session), "--pipeline", "demo", "--backend", "slurm", "--dry-run").stdout
    assert out.count("sbatch --parsable") == 5 and "nothing submitted" in out
    assert not (Path(env["HPCPIPE_HOME"]) / "tasks.sqlite").exists() or store(env).list_tasks() == []
    scripts = list((Path(env["HPCPIPE_HOME"]) / "runs").glob("*/scripts/*.sh"))
    assert len(scripts) == 5


def test_resource_above_the_partition_limit_is_refused_before_submission(env, tmp_path):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "tiny.toml").write_text('partition = "small"\n')
    Path(env["HPCPIPE_CONFIG"]).write_text(f'[slurm]\nprofile_dirs = ["{tmp_path / "profiles"}"]\n')
    session = make_session(tmp_path / "data" / "S4" / "2026-11-20" / "001", duration=15)
    proc = hp(env, "submit", "--session", str(session), "--pipeline", "tests.sample_pipelines.BigRam",
              "--backend", "slurm", "--profile", "tiny", check=False)
    assert proc.returncode == 2
    assert "small" in proc.stderr and "2000" in proc.stderr, proc.stderr
    assert not list((Path(env["HPCPIPE_HOME"]) / "runs").glob("*/scripts/*.sh"))
    from hpcpipe.ledger import Ledger

    assert Ledger(Path(env["HPCPIPE_HOME"]) / "jobs.sqlite").live() == []


def test_backfill_200_sessions_arrays_aftercorr_and_one_failure(env, tmp_path):
    n = int(os.environ.get("HPCPIPE_TEST_BACKFILL_SESSIONS", "200"))
    paths = []
    for i in range(n):
        fail = ("DemoTrials",) if i == 7 else ()
        paths.append(make_session(tmp_path / "data" / "lab" / "Subjects" / f"S{i:03d}" / "2026-11-20" / "001",
                                  fail=fail, duration=15))
    listing = tmp_path / "sessions.txt"
    listing.write_text("\n".join(map(str, paths)) + "\n")
    out = hp(env, "backfill", "--sessions-file", str(listing), "--pipeline", "demo").stdout
    assert f"{5 * n} task(s) in 5 sbatch call(s), 5 array(s) over 1 chunk(s)" in out
    run_dir = next((Path(env["HPCPIPE_HOME"]) / "runs").iterdir())
    trials = (run_dir / "scripts" / "DemoTrials.c0.0.sh").read_text()
    assert "--array=" in trials and "--dependency=aftercorr:" in trials
    rows = wait_until_settled(env, 5 * n, timeout=900)
    s = store(env)
    failed = s.session_id(paths[7])
    by = {(r["session"], r["name"]): r["status"] for r in rows}
    assert by[(failed, "DemoTrials")] == "Errored"
    assert by[(failed, "DemoBehaviourQC")] == "Held" and by[(failed, "DemoSummary")] == "Held"
    assert by[(failed, "DemoSync")] == "Complete" and by[(failed, "DemoSpikeSorting")] == "Complete"
    others = [st for (sess, _), st in by.items() if sess != failed]
    assert set(others) == {"Complete"} and len(others) == 5 * (n - 1)
    # each element processed its own session
    for i in (0, n - 1):
        assert (paths[i] / "alf" / "_demo_summary.table.csv").exists()
    assert not (paths[7] / "alf" / "_demo_summary.table.csv").exists()


def test_status_watch_keeps_one_watcher_for_all_its_polls(env, tmp_path, monkeypatch):
    """``status --watch`` polls through one SLURM backend per cluster, so through one watcher:
    each poll is one batched squeue (the controller lists every held job), made by that watcher."""
    from hpcpipe import cli
    from hpcpipe.slurm import backend as slurm_backend

    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "held.toml").write_text('extra_directives = ["--hold"]\n')
    Path(env["HPCPIPE_CONFIG"]).write_text(f'[slurm]\nprofile_dirs = ["{tmp_path / "profiles"}"]\n')
    session = make_session(tmp_path / "data" / "lab" / "Subjects" / "S1" / "2026-11-20" / "001", duration=15)
    hp(env, "submit", "--session", str(session), "--pipeline", "demo", "--backend", "slurm", "--profile", "held")
    for key in ("HPCPIPE_HOME", "HPCPIPE_CONFIG", "HPCPIPE_GPU_LOCK_DIR"):
        monkeypatch.setenv(key, env[key])
    made = []

    class Counted(slurm_backend.JobWatcher):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    polls, real_sleep = [], time.sleep

    def sleep(secs):  # time.sleep everywhere: only --watch's own pause (5 s) is counted and skipped
        if secs != 5:
            return real_sleep(secs)
        polls.append(secs)
        if len(polls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(slurm_backend, "JobWatcher", Counted)
    monkeypatch.setattr(time, "sleep", sleep)
    try:
        assert cli.main(["status", "--watch", "5"]) == 0
    finally:
        hp(env, "cancel", "--session", str(session))
    assert len(made) == 1 and made[0].polls == 3
    # every held job pending, listed by the controller: one batched squeue per poll, no sacct
    assert made[0].last_poll_by_command == {"squeue": 1} and made[0].queries == 3
