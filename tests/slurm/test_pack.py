"""Packed execution, hand-submit mode and job environments on the real test cluster, via the CLI.

Each test waits with sacct until SLURM has ended the allocation, then runs ``hpcpipe status``
once (as a user would) and reads the store.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from hpcpipe.demo.session import make_session
from hpcpipe.store.sqlite import SQLiteStore
from tests.cliutil import run_hpcpipe as hp

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[2]
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}


def sessions(root: Path, n: int, fail_at: int | None = None) -> list[Path]:
    return [make_session(root / "data" / "lab" / "Subjects" / f"S{i:02d}" / "2026-11-20" / "001", duration=12,
                         fail=("DemoTrials",) if i == fail_at else ()) for i in range(n)]


def jobs_named(name: str) -> dict[str, str]:
    """Every SLURM job (allocation) with this name, and its state, from the controller and sacct."""
    out = subprocess.run(["squeue", "--noheader", "--states=all", f"--name={name}", "-o", "%i|%T"],
                         capture_output=True, text=True).stdout
    found = dict(line.split("|") for line in out.split())
    acct = subprocess.run(["sacct", "-X", "--parsable2", "--noheader", f"--name={name}", "--format=JobID,State",
                           "--starttime=now-1days"], capture_output=True, text=True).stdout
    for line in acct.splitlines():
        jid, state = line.split("|")[:2]
        found.setdefault(jid, state.split()[0])
    return found


def wait_final(name: str, timeout: float = 420) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        states = jobs_named(name)
        if states and all(s.split()[0] in FINAL for s in states.values()):
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs of {name} not final after {timeout} s: {states}")
        time.sleep(2)


def run_id(out: str) -> str:
    return next(w for w in out.split() if w.startswith(("bf-", "hp-"))).rstrip(":")


def report_table(text: str) -> list[dict[str, str]]:
    """The rows of ``hpcpipe report``'s table, by column (spans from its line of dashes)."""
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("----"))
    spans, pos = [], 0
    for dashes in lines[rule].split("  "):
        if dashes:
            spans.append((pos, pos + len(dashes)))
        pos += len(dashes) + 2
    head = [lines[rule - 1][a:b].strip() for a, b in spans]
    rows = []
    for line in lines[rule + 1:]:
        if not line.strip():
            break
        rows.append({h: line[a:b + 1].strip() for h, (a, b) in zip(head, spans)})
    return rows


def by_task(env) -> dict[tuple[str, str], dict]:
    rows = json.loads(hp(env, "status", "--json").stdout)
    return {(r["session"], r["name"]): r for r in rows}


def test_packed_backfill_one_allocation_failure_blocks_only_its_session(env, tmp_path):
    paths = sessions(tmp_path, 12, fail_at=3)
    listing = tmp_path / "sessions.txt"
    listing.write_text("\n".join(map(str, paths)))
    out = hp(env, "backfill", "--sessions-file", str(listing), "--pipeline", "demo", "--pack").stdout
    assert "60 task(s) in 1 sbatch call(s)" in out
    name = run_id(out)
    states = wait_final(name)
    assert len(states) == 1, states  # one SLURM job for 60 tasks
    rows = by_task(env)  # one status: fold + sweep
    store = SQLiteStore(Path(env["HPCPIPE_HOME"]) / "tasks.sqlite")
    failed = store.session_id(paths[3])
    assert rows[(failed, "DemoTrials")]["status"] == "Errored"
    assert rows[(failed, "DemoBehaviourQC")]["status"] == "Held"
    assert rows[(failed, "DemoSummary")]["status"] == "Held"
    assert rows[(failed, "DemoSync")]["status"] == rows[(failed, "DemoSpikeSorting")]["status"] == "Complete"
    others = [r["status"] for (s, _), r in rows.items() if s != failed]
    assert others == ["Complete"] * 55
    assert {r["job_id"] for r in rows.values()} == set(states)
    run_dir = Path(env["HPCPIPE_HOME"]) / "runs" / name
    # every task its own log, written by its own job step
    assert len(list((run_dir / "logs").glob("Demo*.log"))) == 58  # the two Held ones never started
    assert (paths[11] / "alf" / "_demo_summary.table.csv").exists()
    # the allocation holds GPUs (for the spike sorter): a CPU step holds none of them, else
    # every step would take all of the job's GPUs and the steps would run one at a time
    acct = subprocess.run(["sacct", "-j", next(iter(states)), "--parsable2", "--noheader",
                           "--format=JobID,JobName,AllocTRES"], capture_output=True, text=True).stdout
    tres = {jid: (jname, alloc) for jid, jname, alloc in (line.split("|") for line in acct.splitlines())}
    task_steps = [(jname, alloc) for jid, (jname, alloc) in tres.items() if jname.startswith("Demo")]
    assert len(task_steps) == 58 and "gres/gpu=2" in tres[next(iter(states))][1]
    for jname, alloc in task_steps:
        assert ("gres/gpu=1" in alloc) if jname.startswith("DemoSpikeSorting.") else ("gres/gpu" not in alloc), \
            (jname, alloc)
    # the report shows each task's own step (its sacct row, number for number), not the allocation
    acct = subprocess.run(["sacct", "-j", next(iter(states)), "--parsable2", "--noheader",
                           "--format=JobID,ElapsedRaw,State"], capture_output=True, text=True).stdout
    sacct_steps = {jid: (elapsed, state.split()[0]) for jid, elapsed, state in
                   (line.split("|") for line in acct.splitlines()) if jid.partition(".")[2].isdigit()}
    table = report_table(hp(env, "report", "--run", name).stdout)
    shown = {r["job"].split()[1]: (r["elapsed s"], r["state"]) for r in table if "." in r["job"]}
    assert len(table) == 60 and len(shown) == 58 and shown == sacct_steps
    unstarted = [(r["status"], r["state"]) for r in table if "." not in r["job"]]  # never started: no step
    assert unstarted == [("Held", "NOT RUN")] * 2  # not the allocation's COMPLETED: no job ran for them


def test_scancel_of_a_pack_leaves_no_task_started(env, tmp_path):
    paths = [tmp_path / "data" / "lab" / "Subjects" / f"S{i}" / "2026-11-20" / "001" for i in range(2)]
    for p in paths:
        p.mkdir(parents=True)
    args = ["backfill", "--pipeline", "tests.slurm.pack_tasks.SleepPipeline", "--pack", "--pack-cpus", "2"]
    out = hp(env, *args, *[a for p in paths for a in ("--session", str(p))]).stdout
    name = run_id(out)
    run_dir = Path(env["HPCPIPE_HOME"]) / "runs" / name
    deadline = time.monotonic() + 180

    def sleeping() -> int:
        n = 0
        for f in (run_dir / "results").glob("*.json"):
            res = json.loads(f.read_text() or "{}")
            n += any(op["payload"].get("status") == "Started" for op in res.get("ops", [])) and not res.get("final")
        return n

    while sleeping() < 2:  # both Sleep tasks Started (the Quick ones are Complete by then)
        assert time.monotonic() < deadline, "the Sleep tasks did not start"
        time.sleep(1)
    subprocess.run(["scancel", f"--name={name}"], check=True)
    wait_final(name)
    rows = by_task(env)  # exactly one status
    statuses = sorted((r["name"], r["status"]) for r in rows.values())
    assert statuses == [("After", "Waiting"), ("After", "Waiting"), ("Quick", "Complete"), ("Quick", "Complete"),
                        ("Sleep", "Errored"), ("Sleep", "Errored")]
    store = SQLiteStore(Path(env["HPCPIPE_HOME"]) / "tasks.sqlite")
    for task in store.list_tasks(name="Sleep"):
        assert "[hpcpipe:CANCELLED]" in task["log"]
    for task in store.list_tasks(name="After"):
        assert "before this task ran" in task["log"]


def test_time_out_inside_a_pack(env, tmp_path):
    path = tmp_path / "data" / "lab" / "Subjects" / "S0" / "2026-11-20" / "001"
    path.mkdir(parents=True)
    out = hp(env, "submit", "--session", str(path), "--pipeline", "tests.slurm.pack_tasks.TimeoutPipeline",
             "--pack").stdout
    wait_final(run_id(out), timeout=180)
    rows = sorted((r["name"], r["status"]) for r in by_task(env).values())
    assert rows == [("After", "Held"), ("ShortTimeout", "Errored")]
    store = SQLiteStore(Path(env["HPCPIPE_HOME"]) / "tasks.sqlite")
    log = store.list_tasks(name="ShortTimeout")[0]["log"]
    assert "time_out_secs=4" in log


def test_emitted_script_submitted_by_hand(env, tmp_path):
    paths = sessions(tmp_path, 2)
    emit = tmp_path / "emit"
    out = hp(env, "backfill", "--session", str(paths[0]), "--session", str(paths[1]), "--pipeline", "demo",
             "--emit", str(emit)).stdout
    name = run_id(out)
    command = next(line.strip() for line in out.splitlines() if line.strip().startswith("sbatch "))
    assert jobs_named(name) == {}  # nothing submitted
    assert (emit / f"{name}.sbatch").exists() and (emit / name / "packs" / "main0.json").exists()
    rows = by_task(env)
    assert {r["status"] for r in rows.values()} == {"Waiting"}
    # a second backfill does not plan them again: they wait for the emitted script
    again = hp(env, "backfill", "--session", str(paths[0]), "--pipeline", "demo", "--pack").stdout
    assert "nothing to submit" in again
    subprocess.run(shlex.split(command), check=True, capture_output=True, cwd=tmp_path)  # the human's line
    states = wait_final(name)
    rows = by_task(env)
    assert {r["status"] for r in rows.values()} == {"Complete"} and len(rows) == 10
    assert {r["job_id"] for r in rows.values()} == set(states)
    report = hp(env, "report", "--run", name).stdout  # the adopted job, as any run's
    assert report.count("Complete") == 10 and f"slurm {next(iter(states))}" in report


def test_cancelled_emitted_script_submitted_by_hand_refuses_to_run(env, tmp_path):
    """Cancelled before anyone submitted it, then submitted by hand anyway: the job runs nothing,
    says why, and leaves the run as the cancel did (tasks Errored, rows cancelled, not adopted)."""
    paths = sessions(tmp_path, 1)
    emit = tmp_path / "emit"
    out = hp(env, "backfill", "--session", str(paths[0]), "--pipeline", "demo", "--emit", str(emit)).stdout
    name = run_id(out)
    command = next(line.strip() for line in out.splitlines() if line.strip().startswith("sbatch "))
    res = hp(env, "cancel", "--run", name)
    assert "cancelled 5 job(s)" in res.stdout and "was never submitted" in res.stderr
    before = by_task(env)
    assert {r["status"] for r in before.values()} == {"Errored"} and {r["job_id"] for r in before.values()} == {
        "emitted:main0"}
    subprocess.run(shlex.split(command), check=True, capture_output=True, cwd=tmp_path)  # the human's line
    states = wait_final(name)
    (job, state), = states.items()
    assert state == "FAILED"  # exit code 3: refused
    log = next((emit / name / "logs").glob("pack.main0.*.out")).read_text()
    assert "was cancelled by `hpcpipe cancel` before this script ran: nothing runs" in log
    assert not list((emit / name / "results").iterdir()) and not list((emit / name / "logs").glob("Demo*"))
    assert by_task(env) == before  # not adopted: the cancel stands
    store = SQLiteStore(Path(env["HPCPIPE_HOME"]) / "tasks.sqlite")
    assert "before its emitted script ran (nothing ran" in store.list_tasks(name="DemoSync")[0]["log"]


RECORDER = """#!/bin/bash
# a stand-in for `apptainer exec --bind B IMAGE CMD...`: records its argv and environment, then runs CMD
echo "$(basename "$0") setup=${HPCPIPE_TEST_SETUP:-none} step=${HPCPIPE_TEST_STEP:-none} argv=$*" >> "$WRAP_LOG"
while [ "$1" != "--" ]; do shift; done
shift
exec "$@"
"""


def test_profile_with_wrapper_and_setup_runs_the_demo_through_it(env, tmp_path):
    log = tmp_path / "wrap.log"
    for name in ("image-a", "image-b"):
        (tmp_path / name).write_text(RECORDER)
        (tmp_path / name).chmod(0o755)
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "wrapped.toml").write_text(f"""
setup = ["export HPCPIPE_TEST_SETUP=ran", "export WRAP_LOG={log}"]
wrapper = ["{tmp_path}/image-a", "--bind", "{{binds}}", "--"]
[task_env.DemoSpikeSorting]
wrapper = ["{tmp_path}/image-b", "--nv", "--bind={{binds}}", "--"]
setup = ["export HPCPIPE_TEST_STEP=own"]
""")
    env["HPCPIPE_SLURM_PROFILE_DIRS"] = str(profiles)
    paths = sessions(tmp_path, 2)
    out = hp(env, "submit", "--session", str(paths[0]), "--pipeline", "demo", "--profile", "wrapped",
             "--backend", "slurm").stdout
    jobs = run_id(out)
    out = hp(env, "backfill", "--session", str(paths[1]), "--pipeline", "demo", "--profile", "wrapped",
             "--pack").stdout
    packed = run_id(out)
    wait_final(jobs)
    wait_final(packed)
    rows = by_task(env)
    assert {r["status"] for r in rows.values()} == {"Complete"} and len(rows) == 10
    lines = log.read_text().splitlines()
    assert len(lines) == 10  # every task, both ways, ran through a wrapper
    root = str(paths[0].parents[2])
    a = [ln for ln in lines if ln.startswith("image-a")]
    b = [ln for ln in lines if ln.startswith("image-b")]
    assert len(a) == 8 and len(b) == 2  # the spike sorter in its own image
    assert all("setup=ran" in ln and "-m hpcpipe.jobside" in ln for ln in lines)
    assert all(f"--bind {root}," in ln for ln in a) and all(f"--nv --bind={root}," in ln for ln in b)
    for rid in (jobs, packed):  # its run folder is bound, then the scratch folder
        assert sum(f"{root},{env['HPCPIPE_HOME']}/runs/{rid}," in ln for ln in lines) == 5
    assert sum("step=own" in ln for ln in b) == 2  # the class's own setup


def test_gpu_tasks_in_their_own_allocation(env, tmp_path):
    """``--pack-split gpu``: the spike sorter runs in a GPU allocation, the rest in CPU ones;
    DemoSummary (CPU, child of the GPU task) goes to a second CPU stage that waits (afterany) for
    the GPU allocation, so no allocation idles waiting for another to start."""
    paths = sessions(tmp_path, 2)
    out = hp(env, "backfill", "--session", str(paths[0]), "--session", str(paths[1]), "--pipeline", "demo",
             "--pack", "--pack-split", "gpu").stdout
    assert "10 task(s) in 3 sbatch call(s)" in out
    name = run_id(out)
    run_dir = Path(env["HPCPIPE_HOME"]) / "runs" / name
    assert "--gres=gpu:2" in (run_dir / "scripts" / "pack.gpu0.sh").read_text()
    assert "--gres" not in (run_dir / "scripts" / "pack.cpu0.sh").read_text()
    assert "--dependency=afterany:" in (run_dir / "scripts" / "pack.cpu0s1.sh").read_text()
    states = wait_final(name)
    assert len(states) == 3
    rows = by_task(env)
    assert {r["status"] for r in rows.values()} == {"Complete"} and len(rows) == 10
    job = {name: {r["job_id"] for r in rows.values() if r["name"] == name} for name in ("DemoSpikeSorting",
                                                                                        "DemoSummary", "DemoSync")}
    assert all(len(ids) == 1 for ids in job.values()) and len(set.union(*job.values())) == 3


@pytest.mark.skipif(os.environ.get("HPCPIPE_SLURM_NODES", "1") != "2",
                    reason="needs the two-node test cluster: HPCPIPE_SLURM_NODES=2 scripts/slurm-up")
def test_pack_over_two_nodes_spreads_its_steps(env, tmp_path):
    """``--pack-nodes 2`` with 2 CPUs per node: one allocation over both nodes, whose engine
    counts 4 CPUs and whose steps SLURM places on either node (sacct's NodeList per step, and
    the node each job side saw)."""
    paths = sessions(tmp_path, 4)
    out = hp(env, "backfill", *[a for p in paths for a in ("--session", str(p))], "--pipeline", "demo",
             "--pack", "--pack-nodes", "2", "--pack-cpus", "2").stdout
    name = run_id(out)
    states = wait_final(name)
    assert len(states) == 1
    rows = by_task(env)
    assert {r["status"] for r in rows.values()} == {"Complete"} and len(rows) == 20
    (job,) = states
    acct = subprocess.run(["sacct", "-j", job, "--parsable2", "--noheader", "--format=JobID,JobName,NodeList"],
                          capture_output=True, text=True).stdout
    nodes = {jname: nodelist for _, jname, nodelist in (line.split("|") for line in acct.splitlines())}
    node = os.environ["HPCPIPE_SLURM_NODE"]
    assert nodes[name] in (f"{node},{node}2", f"{node}[,2]")  # the allocation: both nodes
    task_nodes = {n for jname, n in nodes.items() if jname.startswith("Demo")}
    assert task_nodes == {node, f"{node}2"}, nodes  # both nodes ran steps
    run_dir = Path(env["HPCPIPE_HOME"]) / "runs" / name
    seen = {line.split("SLURMD_NODENAME=")[1].split()[0] for f in (run_dir / "logs").glob("Demo*.log")
            for line in f.read_text().splitlines() if "SLURMD_NODENAME=" in line}
    assert seen == {node, f"{node}2"}
    engine_log = next((run_dir / "logs").glob("pack.main0.*.out")).read_text()
    assert "budget {'cpu': 4.0" in engine_log
