"""Packed execution, hand-submit mode and environments without a cluster: the rules, the pinned
scripts, and the allocation-side engine running on this machine (no ``SLURM_JOB_ID``: plain
processes instead of job steps)."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hpcpipe.demo.session import make_session
from hpcpipe.engines import pack as engine
from hpcpipe.errors import BadInput
from hpcpipe.jobside import runfolder
from hpcpipe.ledger import JobRecord, Ledger
from hpcpipe.report.collect import NOT_RUN, Row
from hpcpipe.slurm.accounting import parse_usage
from hpcpipe.slurm.pack import PackShape, lane_rule, size, step_argv, step_names
from hpcpipe.slurm.profiles import Profile
from hpcpipe.slurm.render import JobSpec, job_script
from hpcpipe.store.sqlite import SQLiteStore
from tests.cliutil import run_hpcpipe as hp

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "slurm" / "golden"


@pytest.fixture
def env(tmp_path):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "HPCPIPE_"))}
    e.update(HPCPIPE_HOME=str(tmp_path / "home"), HPCPIPE_GPU_LOCK_DIR=str(tmp_path / "locks"),
             PYTHONPATH=str(REPO), HPCPIPE_CONFIG=str(tmp_path / "config.toml"),
             PATH=f"{tmp_path / 'nobin'}:{os.environ['PATH']}")
    # no SLURM here, even where the machine has one: sbatch and scontrol fail
    (tmp_path / "nobin").mkdir()
    for tool in ("sbatch", "scontrol", "squeue", "sacct", "sacctmgr", "srun"):
        (tmp_path / "nobin" / tool).write_text("#!/bin/sh\necho 'not here' >&2\nexit 1\n")
        (tmp_path / "nobin" / tool).chmod(0o755)
    return e


WRAPPED = Profile(name="site", setup=("module load apptainer",), scratch="/scratch/$USER/job_$SLURM_JOB_ID",
                  wrapper=("apptainer", "exec", "--nv", "--bind", "{binds}", "/images/ibl env.sif"),
                  task_env={"SpikeSorting": {"wrapper": ["apptainer", "exec", "--nv", "--bind={binds}",
                                                         "/images/kilosort.sif"],
                                             "setup": ["export KS_THREADS=$SLURM_CPUS_PER_TASK"]}})


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("HPCPIPE_REGEN_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), "rendering changed; HPCPIPE_REGEN_GOLDEN=1 rewrites the golden file"


def test_wrapped_job_scripts_are_pinned():
    """Apptainer is not installed here: the scripts a site would run are pinned instead."""
    spec = JobSpec(name="hp-run", command=["/env/bin/python", "-m", "hpcpipe.jobside", "--run-dir", "/runs/hp-run"],
                   resources={"cpu": 2, "gpu": 1, "ram": 4}, binds=["/data/lab/Subjects", "/runs/hp-run"])
    spec.task_env = "SpikeSorting"
    _golden("wrapped_spikesorting.sh", job_script(spec, WRAPPED))
    spec.task_env = "Trials"
    text = job_script(spec, WRAPPED)
    assert "module load apptainer\n" in text and "KS_THREADS" not in text
    assert ("exec \\\napptainer exec --nv --bind \"$HPCPIPE_BINDS\" '/images/ibl env.sif' /env/bin/python -m"
            in text)
    assert 'export HPCPIPE_BINDS=/data/lab/Subjects,/runs/hp-run"${HPCPIPE_SCRATCH:+,$HPCPIPE_SCRATCH}"' in text


def test_wrapper_values_are_quoted_and_binds_expand_only_at_run_time(tmp_path):
    marker = tmp_path / "owned"
    profile = Profile(name="evil", wrapper=(f"$(touch {marker})", "--bind={binds};rm -rf /", "x'y"))
    lines = job_script(JobSpec(name="j", command=["prog", "`id`"], binds=["/a b", "/c"]), profile).splitlines()
    exports = [ln for ln in lines if ln.startswith(("export HPCPIPE_SCRATCH=", "export HPCPIPE_BINDS="))]
    words = subprocess.run(["bash", "-c", "\n".join(exports + [f"set -- {lines[-1]}", 'for a; do echo "[$a]"; done'])],
                           capture_output=True, text=True, env={"PATH": os.environ["PATH"]}).stdout.splitlines()
    assert not marker.exists()
    assert words == [f"[$(touch {marker})]", "[--bind=/a b,/c,/tmp;rm -rf /]", "[x'y]", "[prog]", "[`id`]"]


@pytest.mark.parametrize("directive", ["--mem=4G", "--time=10", "-p", "--job-name=x", "--array=1-3",
                                       "--dependency=afterok:1", "--gres=gpu:2", "--output=/tmp/x"])
def test_options_hpcpipe_sets_are_refused_from_profiles(directive):
    with pytest.raises(BadInput, match="sets an option hpcpipe writes itself"):
        Profile(name="p", extra_directives=(directive,) if directive.startswith("--") else ("--partition=x",))


def test_task_env_checked_and_setup_adds_up():
    with pytest.raises(BadInput, match="may hold only setup and wrapper"):
        Profile(name="p", task_env={"A": {"image": "x"}})
    with pytest.raises(BadInput, match="list of strings"):
        Profile(name="p", wrapper="apptainer exec img")  # type: ignore[arg-type]
    env = WRAPPED.environment("SpikeSorting")
    assert env.setup == ("module load apptainer", "export KS_THREADS=$SLURM_CPUS_PER_TASK")
    assert env.wrapper[-1] == "/images/kilosort.sif"
    assert WRAPPED.environment("Other").wrapper[-1] == "/images/ibl env.sif"
    assert Profile().environment("X").wrapped(["python"], "/a") == ["python"]


def test_lane_rules_and_shape_checks():
    shape = PackShape(split="gpu")
    assert shape.lane({"name": "S", "gpu": 1}) == "gpu" and shape.lane({"name": "T", "gpu": 0}) == "cpu"
    assert PackShape(split="long:600").lane({"name": "A", "time_out_secs": 3600}) == "long"
    assert PackShape(split="long:600").lane({"name": "A", "time_out_secs": 60}) == "short"
    assert PackShape(split="tasks:A,B").lane({"name": "B"}) == "apart"
    assert lane_rule("none") == ("none", None)
    for bad in ("gpus", "long:", "long:x", "tasks:", ""):
        if bad:
            with pytest.raises(BadInput, match="pack split"):
                PackShape(split=bad)
    with pytest.raises(BadInput, match="pack cpus"):
        PackShape(cpus=0)


def test_allocation_sized_by_the_work_or_by_flags():
    tasks = [{"name": "A", "cpu": 1, "ram": 1, "time_out_secs": 600, "gpu": 0}] * 20 + \
            [{"name": "G", "cpu": 2, "ram": 4, "time_out_secs": 3600, "gpu": 1}] * 2
    got = size(tasks, PackShape(), None, None)
    assert got["cpu"] == 24 and got["gpu"] == 2 and got["ram"] == 48 and got["nodes"] == 1
    assert got["time_out_secs"] == 3600 + 60  # the longest task; the work spread over 24 CPUs is less
    got = size(tasks, PackShape(cpus=4, gpus=1, ram=16, time_secs=7200), None, None)
    assert (got["cpu"], got["gpu"], got["ram"], got["time_out_secs"]) == (4, 1, 16, 7200)
    assert size(tasks, PackShape(cpus=2), None, None, max_time_min=60)["time_out_secs"] == 3600


def test_step_is_an_srun_job_step_inside_an_allocation():
    item = {"index": 3, "name": "SpikeSorting"}
    env = {"wrapper": ["apptainer", "exec", "--bind", "{binds}", "img"], "setup": ["module load cuda"]}
    argv = step_argv(item, env, "/py", "/runs/r", "/runs/r/logs/S.3.log", {"cpu": 2, "ram": 1.5, "gpu": 1},
                     "/data,/runs/r", srun=True, gpus_allocated=True, mem_given=True)
    assert argv[:10] == ["srun", "--nodes=1", "--ntasks=1", "--cpus-per-task=2", "--exact", "--kill-on-bad-exit=1",
                         "--quiet", "--job-name=SpikeSorting.3", "--output=/runs/r/logs/S.3.log", "--open-mode=append"]
    assert "--mem=1536M" in argv and "--gres=gpu:1" in argv
    rest = argv[argv.index("bash"):]
    assert rest[:4] == ["bash", "-c", 'module load cuda\nexec "$@"', "hpcpipe-step"]
    assert rest[4:9] == ["apptainer", "exec", "--bind", "/data,/runs/r", "img"]
    assert rest[9:] == ["/py", "-m", "hpcpipe.jobside", "--run-dir", "/runs/r", "--chunk", "c0", "--index", "3",
                        "--task-name", "SpikeSorting"]
    cpu_step = step_argv({"index": 3, "name": "Sync"}, {}, "/py", "/runs/r", "log", {"cpu": 1, "ram": 1, "gpu": 0},
                         "", srun=True, gpus_allocated=True, mem_given=True)
    assert "--gres=none" in cpu_step  # else the step gets all the job's GPUs (srun's default)
    assert not any(a.startswith("--gres") for a in step_argv(
        {"index": 3, "name": "Sync"}, {}, "/py", "/runs/r", "log", {"cpu": 1, "ram": 1, "gpu": 0}, "", srun=True,
        gpus_allocated=False, mem_given=True))
    plain = step_argv(item, {}, "/py", "/runs/r", "log", {"cpu": 1, "ram": 1, "gpu": 1}, "", srun=False,
                      gpus_allocated=False, mem_given=False)
    assert plain[0] == "/py"


def test_allocation_budget_from_slurm_environment():
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_CPUS_PER_NODE": "8(x2)",
           "SLURM_MEM_PER_NODE": "4096", "SLURM_GPUS_ON_NODE": "1"}
    assert engine.allocation_budget(env) == {"cpu": 16.0, "ram": 8.0, "gpu": 2.0}
    assert engine.allocation_budget({}) is None


def _demo(tmp_path: Path, n: int, fail_at: int | None = None) -> list[Path]:
    return [make_session(tmp_path / "data" / "lab" / "Subjects" / f"S{i}" / "2026-11-20" / "001", duration=12,
                         fail=("DemoTrials",) if i == fail_at else ()) for i in range(n)]


def test_emit_then_run_the_engine_here_then_status(env, tmp_path):
    """Hand-submit mode end to end without SLURM: the emitted script's engine, run as plain
    processes, leaves result files that ``status`` folds; a failure holds only its session's children."""
    paths = _demo(tmp_path, 3, fail_at=1)
    emit = tmp_path / "emit"
    out = hp(env, "backfill", *[a for p in paths for a in ("--session", str(p))], "--pipeline", "demo",
             "--emit", str(emit)).stdout
    line = next(ln.strip() for ln in out.splitlines() if ln.strip().startswith("sbatch "))
    script = Path(shlex.split(line)[1])
    assert script.parent == emit and "#SBATCH --cpus-per-task=" in script.read_text()
    run_dir = emit / script.stem
    rows = json.loads(hp(env, "status", "--json").stdout)
    assert {r["status"] for r in rows} == {"Waiting"} and {r["job_id"] for r in rows} == {"emitted:main0"}
    # what the allocation runs (the script's last line), here without SLURM: plain processes
    command = shlex.split(script.read_text().rstrip().splitlines()[-1])
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=300)
    rows = json.loads(hp(env, "status", "--json").stdout)
    store = SQLiteStore(Path(env["HPCPIPE_HOME"]) / "tasks.sqlite")
    failed = store.session_id(paths[1])
    got = {(r["session"] == failed, r["name"]): r["status"] for r in rows}
    assert got[(True, "DemoTrials")] == "Errored"
    assert got[(True, "DemoBehaviourQC")] == got[(True, "DemoSummary")] == "Held"
    assert got[(True, "DemoSync")] == got[(True, "DemoSpikeSorting")] == "Complete"
    assert [s for (f, _), s in got.items() if not f] == ["Complete"] * 5
    assert sum(r["status"] == "Complete" for r in rows) == 12
    # each task's job step is named like its log (how a report finds the task's sacct row)
    names = step_names(lambda f: Path(f).read_text() if Path(f).exists() else None, str(run_dir))
    logs = {p.name[:-4] for p in (run_dir / "logs").glob("Demo*.log")}
    assert len(names) == len(set(names.values())) == 15 and len(logs) == 13 and logs <= set(names.values())
    assert step_names(lambda f: None, str(run_dir)) == {}
    # the script run again (a human submitting twice) runs nothing again
    before = {p: p.stat().st_mtime_ns for p in (run_dir / "results").iterdir()}
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=300)
    assert {p: p.stat().st_mtime_ns for p in (run_dir / "results").iterdir()} == before


def test_pack_engine_is_woken_by_its_tasks_ending(env, tmp_path, monkeypatch):
    """The engine gives a lane its next task when the last one ends (SIGCHLD wakes it), not at
    its next poll: with a poll of 10 minutes, a session's chain of 5 tasks still runs through
    (an alarm fails the test instead of letting it wait)."""
    paths = _demo(tmp_path, 1)
    emit = tmp_path / "emit"
    out = hp(env, "backfill", "--session", str(paths[0]), "--pipeline", "demo", "--emit", str(emit)).stdout
    script = Path(shlex.split(next(ln.strip() for ln in out.splitlines() if ln.strip().startswith("sbatch ")))[1])
    for key in [k for k in os.environ if k.startswith(("SLURM_", "HPCPIPE_"))]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(engine, "POLL_SECS", 600)
    old = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the engine slept through its tasks' ends"))
    signal.alarm(240)
    try:
        assert engine.main(["--run-dir", str(emit / script.stem), "--pack", "main0"]) == 0
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    rows = json.loads(hp(env, "status", "--json").stdout)
    assert [r["status"] for r in rows] == ["Complete"] * 5


def test_cancel_of_an_emitted_script_nobody_submitted(env, tmp_path):
    """``hpcpipe cancel`` of an emitted run before anyone submitted it: no SLURM job to scancel,
    so the tasks are withdrawn in the run folder. Withdrawn tasks are Errored at once; the
    script, run later, runs none of them (their children are Held) and refuses to run at all
    when every task of its pack was withdrawn; status keeps saying so after it ran."""
    paths = _demo(tmp_path, 2)
    emit = tmp_path / "emit"
    out = hp(env, "backfill", *[a for p in paths for a in ("--session", str(p))], "--pipeline", "demo",
             "--emit", str(emit)).stdout
    script = Path(shlex.split(next(ln.strip() for ln in out.splitlines() if ln.strip().startswith("sbatch ")))[1])
    run_dir = emit / script.stem
    command = shlex.split(script.read_text().rstrip().splitlines()[-1])
    # one task type of the run withdrawn: the script runs the rest, not it nor what needs it
    res = hp(env, "cancel", "--task", "DemoBehaviourQC")
    assert "cancelled 2 job(s)" in res.stdout and f"{script} was never submitted" in res.stderr
    rows = {(r["session"], r["name"]): r for r in json.loads(hp(env, "status", "--json").stdout)}
    assert {r["status"] for (_, name), r in rows.items() if name == "DemoBehaviourQC"} == {"Errored"}
    ledger = Ledger(Path(env["HPCPIPE_HOME"]) / "jobs.sqlite")
    states = {(j.task_name, j.state) for j in ledger.run(run_dir.name)}
    assert ("DemoBehaviourQC", "CANCELLED") in states and ("DemoSync", "EMITTED") in states
    store = SQLiteStore(Path(env["HPCPIPE_HOME"]) / "tasks.sqlite")
    assert "before its emitted script ran (nothing ran" in store.list_tasks(name="DemoBehaviourQC")[0]["log"]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = {(r["session"], r["name"]): r for r in json.loads(hp(env, "status", "--json").stdout)}
    got = {}
    for (_, name), r in rows.items():
        got.setdefault(name, set()).add(r["status"])
    assert got == {"DemoSync": {"Complete"}, "DemoTrials": {"Complete"}, "DemoSpikeSorting": {"Complete"},
                   "DemoBehaviourQC": {"Errored"}, "DemoSummary": {"Held"}}
    assert not list((run_dir / "logs").glob("DemoBehaviourQC.*"))  # never started
    assert "was cancelled by hpcpipe cancel" in store.list_tasks(name="DemoSummary")[0]["log"]

    # a whole emitted run withdrawn: the script refuses to run, and says why
    paths = _demo(tmp_path / "b", 1)
    out = hp(env, "backfill", "--session", str(paths[0]), "--pipeline", "demo", "--emit", str(emit)).stdout
    script = Path(shlex.split(next(ln.strip() for ln in out.splitlines() if ln.strip().startswith("sbatch ")))[1])
    hp(env, "cancel", "--session", str(paths[0]))
    session = store.session_id(paths[0])
    before = {r["name"]: r for r in json.loads(hp(env, "status", "--json").stdout) if r["session"] == session}
    assert {r["status"] for r in before.values()} == {"Errored"} and len(before) == 5
    proc = subprocess.run(shlex.split(script.read_text().rstrip().splitlines()[-1]), env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == engine.REFUSED and "was cancelled by `hpcpipe cancel` before this script ran" in proc.stderr
    assert not list((emit / script.stem / "results").iterdir())
    after = {r["name"]: r for r in json.loads(hp(env, "status", "--json").stdout) if r["session"] == session}
    assert after == before
    # the withdrawn rows stay cancelled when the others are adopted (no engine wrote a job id here)
    assert {j.state for j in ledger.run(run_dir.name) if j.task_name == "DemoBehaviourQC"} == {"CANCELLED"}
    ledger.adopt(run_dir.name, "emitted:main0", "77")
    assert {j.job_id for j in ledger.run(run_dir.name) if j.task_name == "DemoBehaviourQC"} == {"emitted:main0"}
    assert {j.job_id for j in ledger.run(run_dir.name) if j.task_name == "DemoSync"} == {"77"}


def test_each_task_of_a_pack_has_its_own_step_figures():
    """sacct recorded on the test cluster for a pack of 2 demo sessions (session 1's DemoTrials
    fails, its QC and Summary are Held and never start): each step is named after its task and
    log, and keeps its own figures beside the allocation's."""
    text = (REPO / "tests" / "slurm" / "fixtures" / "sacct_usage_pack.txt").read_text()
    steps: dict = {}
    jobs = parse_usage(text, steps)
    assert sorted(jobs) == ["272"] and sorted(parse_usage(text)) == ["272"]
    assert sorted(name for _, name in steps) == ["DemoBehaviourQC.0", "DemoSpikeSorting.0", "DemoSpikeSorting.1",
                                                 "DemoSummary.0", "DemoSync.0", "DemoSync.1", "DemoTrials.0",
                                                 "DemoTrials.1"]
    failed, alloc = steps[("272", "DemoTrials.1")], jobs["272"]
    assert (failed.job_id, failed.state, failed.exit_code, failed.req_cpus) == ("272.5", "FAILED", 1, 1)
    assert (failed.elapsed_secs, failed.total_cpu_secs) == (3, pytest.approx(0.464))
    assert failed.max_rss_mb == pytest.approx(28256 / 1024)
    assert failed.submit == alloc.submit and failed.partition == alloc.partition == "cpu"
    assert failed.queue_wait_secs == 6  # from the allocation's submission to the step's start
    assert failed.req_mem_mb is None and failed.timelimit_secs is None  # not in a step's row: the task's own apply
    assert (alloc.state, alloc.req_cpus, alloc.elapsed_secs) == ("COMPLETED", 8, 15)
    assert alloc.max_rss_mb == pytest.approx(57736 / 1024)  # the largest step (the engine's batch step)


def test_report_state_of_a_packed_task_that_never_started():
    """A Held task of an ended pack shows NOT RUN, not the allocation's COMPLETED; while the
    allocation is live it shows the allocation's state (it may still run); other jobs as before."""
    def row(state: str, packed: bool) -> Row:
        job = JobRecord("t1", "s", "DemoSummary", "bf-1", "slurm", "272", None, state, None, None, None)
        return Row({"id": "t1", "name": "DemoSummary", "status": "Held"}, job, None, "s", packed=packed)

    assert row("COMPLETED", True).state == NOT_RUN
    assert row("CANCELLED", True).state == NOT_RUN
    assert row("PENDING", True).state == "PENDING" and row("RUNNING", True).state == "RUNNING"
    assert row("COMPLETED", False).state == "COMPLETED"


def test_bad_pack_flags_are_refused_before_anything_is_recorded(env, tmp_path):
    path = _demo(tmp_path, 1)[0]
    for extra in (["--pack-split", "bogus"], ["--emit", str(tmp_path / "e"), "--pack-allocations", "2"],
                  ["--pack", "--pack-cpus", "0"]):
        proc = hp(env, "backfill", "--session", str(path), "--pipeline", "demo", *extra, check=False)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert not (Path(env["HPCPIPE_HOME"]) / "tasks.sqlite").exists() or \
        SQLiteStore(Path(env["HPCPIPE_HOME"]) / "tasks.sqlite").list_tasks() == []


def test_child_of_a_parent_in_an_ended_pack_is_held(tmp_path):
    """Lanes: a parent in another pack (which has ended: afterany) without a result holds the child."""
    run = tmp_path / "run"
    (run / "sessions").mkdir(parents=True)
    (run / "packs").mkdir()
    tasks = [{"id": "p1", "name": "Sort", "status": "Waiting", "parents": [], "executable": "x.Sort", "cpu": 1,
              "gpu": 1, "ram": 1, "time_out_secs": 60, "priority": 0, "level": 0, "graph": "g"},
             {"id": "c1", "name": "Summary", "status": "Waiting", "parents": ["p1"], "executable": "x.Summary",
              "cpu": 1, "gpu": 0, "ram": 1, "time_out_secs": 60, "priority": 0, "level": 1, "graph": "g"}]
    (run / "run.json").write_text(json.dumps({"run_id": "bf-x", "store": "sqlite", "location": "server",
                                              "upstream": False, "packs": ["gpu0", "cpu0"], "settings": {}}))
    (run / "sessions" / "c0.json").write_text(runfolder.sessions_json({0: {"eid": "e", "path": str(tmp_path),
                                                                          "tasks": tasks}}))
    (run / "packs" / "cpu0.json").write_text(json.dumps({
        "pack": "cpu0", "lane": "cpu", "python": sys.executable, "env": {},
        "items": [{"id": "c1", "name": "Summary", "index": 0, "parents": [],
                   "outside": [{"id": "p1", "run_dir": str(run), "pack": "gpu0"}]}]}))
    assert engine.main(["--run-dir", str(run), "--pack", "cpu0"]) == 0
    res = json.loads((run / "results" / "c1.json").read_text())
    assert res["final"] and res["status"] == "Held"
    assert not (run / "results" / "p1.json").exists()
