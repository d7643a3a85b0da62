"""Pure rules, on sacct output recorded on the test cluster (tests/slurm/fixtures/sacct_usage.txt:
``sacct --parsable2 --noheader --format=<USAGE_FIELDS>`` for jobs that completed, exited 3, were
memory-killed (FAILED 0:9, no cgroups), were cancelled, ran as a sparse array, hit TIMEOUT, were
held then cancelled, and lost their node (NODE_FAIL, ``scontrol update state=down``)."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from hpcpipe.jobside import escalate, outcome, reasons
from hpcpipe.report.collect import failure_reason, parse_when
from hpcpipe.resources import Suggestion, percentile, round_ram_mb, round_time_secs, suggest
from hpcpipe.session import short_names
from hpcpipe.slurm.accounting import parse_duration, parse_size_mb, parse_usage, usage_argv
from hpcpipe.slurm.status import JobState
from hpcpipe.usage import Usage

FIX = Path(__file__).resolve().parents[1] / "slurm" / "fixtures"


def recorded() -> dict[str, Usage]:
    return parse_usage((FIX / "sacct_usage.txt").read_text())


# ---------------------------------------------------------------------- sacct usage
def test_usage_from_recorded_sacct_folds_steps_into_jobs():
    u = recorded()
    assert sorted(u) == ["1", "10", "2", "3", "4_0", "4_2", "4_5", "5", "8", "9"]
    ok = u["1"]
    assert (ok.state, ok.exit_code, ok.req_cpus, ok.req_mem_mb, ok.timelimit_secs) == ("COMPLETED", 0, 2, 300, 120)
    assert ok.elapsed_secs == 5 and ok.total_cpu_secs == pytest.approx(3.562)
    assert ok.max_rss_mb == pytest.approx(219852 / 1024)  # from the .batch step
    assert ok.cpu_efficiency == pytest.approx(3.562 / (5 * 2))
    assert ok.mem_efficiency == pytest.approx(219852 / 1024 / 300)
    assert ok.queue_wait_secs == 1
    assert (u["2"].state, u["2"].exit_code, u["2"].signal) == ("FAILED", 3, 0)  # not 0, as --json says
    killed = u["3"]
    assert (killed.state, killed.exit_code, killed.signal) == ("FAILED", 0, 9)
    assert killed.max_rss_mb > killed.req_mem_mb  # the memory kill shows in the figures
    assert u["5"].state == "CANCELLED"
    assert {k: v.state for k, v in u.items() if k.startswith("4_")} == dict.fromkeys(("4_0", "4_2", "4_5"), "COMPLETED")
    assert u["8"].state == "TIMEOUT" and u["8"].elapsed_secs == 84
    assert u["9"].start is None and u["9"].elapsed_secs is None  # held, cancelled before it ran
    assert u["10"].state == "NODE_FAIL"


def test_pending_job_has_no_start_and_no_figures():
    u = parse_usage((FIX / "sacct_usage_pending.txt").read_text())["9"]
    assert (u.state, u.reason, u.start, u.elapsed_secs, u.nodes) == ("PENDING", "JobHeldUser", None, None, "")


def test_field_parsers():
    assert parse_duration("00:03.562") == pytest.approx(3.562)
    assert parse_duration("01:02:03") == 3723 and parse_duration("2-00:00:01") == 2 * 86400 + 1
    assert parse_size_mb("219852K") == pytest.approx(214.699, abs=1e-3)
    assert parse_size_mb("1.5G") == 1536 and parse_size_mb("300M") == 300 and parse_size_mb("") is None
    assert parse_size_mb("1Gc", cpus=4) == 4096 and parse_size_mb("2Gn") == 2048  # older ReqMem suffixes
    argv = usage_argv(["12", "13"])
    assert "-X" not in argv and "--parsable2" in argv and "--json" not in " ".join(argv)


# ---------------------------------------------------------------------- names and reasons
def test_short_session_names_tell_labs_and_roots_apart():
    a = "/data/labA/Subjects/KS1/2026-11-20/001"
    b = "/data/labB/Subjects/KS1/2026-11-20/001"
    c = "/data/labB/Subjects/KS2/2026-11-20/001"
    d = "/other/labA/Subjects/KS1/2026-11-20/001"
    names = short_names([a, b, c])
    assert names == {a: "labA/Subjects/KS1/2026-11-20/001", b: "labB/Subjects/KS1/2026-11-20/001",
                     c: "KS2/2026-11-20/001"}
    assert short_names([a, d]) == {a: "data/labA/Subjects/KS1/2026-11-20/001",
                                   d: "other/labA/Subjects/KS1/2026-11-20/001"}
    assert len(set(short_names([a, b, c, d]).values())) == 4


TRACE = ("2026 ERROR [task.py:169] Traceback (most recent call last):\n  File \"x.py\", line 1\n"
         "RuntimeError: DemoTrials: failure requested\n2026 INFO Job errored\n")


def test_failure_reason_is_the_last_ending():
    assert failure_reason({"status": "Errored", "log": TRACE}) == "Python error: RuntimeError: DemoTrials: failure requested"
    later = TRACE + "\n[hpcpipe:MEMORY] SLURM job 3 ended FAILED (exit code 0:9)\n"
    assert failure_reason({"status": "Errored", "log": later}).startswith("MEMORY: SLURM job 3")
    rerun_raised = "[hpcpipe:TIMEOUT] x\n[hpcpipe:ESCALATE] attempt 1: escalated\n" + TRACE
    assert reasons.last_cause(rerun_raised)[0] == reasons.PYTHON
    assert reasons.last_cause("[hpcpipe:TIMEOUT] x\n[hpcpipe:ESCALATE] y\n") == ("TIMEOUT", "x")
    assert failure_reason({"status": "Complete", "log": TRACE}) == ""


def test_parse_when():
    now = dt.datetime(2026, 12, 1, 12, 0)
    assert parse_when("6h", now) == dt.datetime(2026, 12, 1, 6, 0)
    assert parse_when("2026-11-30T08:00") == dt.datetime(2026, 11, 30, 8, 0)
    from hpcpipe.errors import BadInput

    with pytest.raises(BadInput, match="cannot read time"):
        parse_when("yesterday")


# ---------------------------------------------------------------------- cause-aware escalation
def _swept_log(usage: Usage, output: str | None = None, state: str | None = None) -> str:
    """What the sweep writes into the task's log for this recorded ending."""
    st = JobState(usage.job_id, usage.job_id.split("_")[0], None, "run", state or usage.state, usage.exit_code,
                  usage.signal)
    result = json.dumps({"ops": [{"op": "update_task", "payload": {"status": "Started"}}],
                         "job": {"output": "/job.out"}})
    return outcome.swept(st, "Started", result, {"/job.out": output}.get)[1]


def _task(tid: str, log: str, **kw) -> dict:
    return {"id": tid, "name": tid, "ram": 0.1, "time_out_secs": 60, "cpu": 1, "log": log, **kw}


def test_each_cause_gets_its_own_treatment(monkeypatch, tmp_path):
    u = recorded()
    memkill = _swept_log(u["3"], (FIX / "memkill.out").read_text())
    plain_kill = _swept_log(u["3"], "nothing about memory\n")
    tasks = [_task("oom", memkill), _task("timeout", _swept_log(u["8"])), _task("nodefail", _swept_log(u["10"])),
             # no preemption on the test cluster: the NODE_FAIL record, its state read as PREEMPTED
             _task("preempted", _swept_log(u["10"], state="PREEMPTED")),
             _task("python", TRACE), _task("killed", plain_kill), _task("unknown", "")]
    plans = escalate.plan(tasks)
    assert (plans["oom"].kind, plans["oom"].field, plans["oom"].new) == ("MEMORY", "ram", 0.2)
    assert (plans["timeout"].kind, plans["timeout"].field, plans["timeout"].new) == ("TIMEOUT", "time_out_secs", 120)
    for tid, kind in (("nodefail", "NODE_FAIL"), ("preempted", "PREEMPTED"), ("killed", "KILLED")):
        assert (plans[tid].kind, plans[tid].raised) == (kind, False)
        assert "resources were not the problem" in plans[tid].line()
    assert plans["python"].kind == "PYTHON" and not plans["python"].raised
    assert "RuntimeError" in plans["python"].line() and "will not fix" in plans["python"].line()
    assert not plans["unknown"].raised and "no cause recorded" in plans["unknown"].line()
    assert plans["oom"].line().startswith("[hpcpipe:ESCALATE] attempt 1: escalated after MEMORY: ram 0.1 GB -> 0.2 GB")


def test_escalation_is_bounded_by_suggestions_partition_and_attempts(monkeypatch):
    oom = "[hpcpipe:MEMORY] killed"

    class Limits:
        def caps(self, partition):
            assert partition == "small"
            return 2000 / 1024, 1800

    class Backend:
        limits = Limits()

        def partition_of(self, task):
            return "small"

    floors = {"a": {"ram": 0.75, "time_out_secs": 600}}
    p = escalate.plan([_task("a", oom), _task("b", oom, ram=1.5),
                       _task("c", "[hpcpipe:TIMEOUT] x", time_out_secs=1200)], Backend(), floors=floors)
    assert p["a"].new == 0.75 and not p["a"].capped        # the suggestion is the floor
    assert p["b"].capped and p["b"].new == pytest.approx(1.953)  # MaxMemPerNode 2000 MB
    assert p["c"].capped and p["c"].new == 1800             # MaxTime 30 min
    monkeypatch.setenv("HPCPIPE_ESCALATE_MAX_ATTEMPTS", "2")
    raised_twice = oom + "\n[hpcpipe:ESCALATE] attempt 1: escalated after MEMORY: ram\n" \
        "[hpcpipe:ESCALATE] attempt 2: escalated after MEMORY: ram\n" + oom
    again = escalate.plan([_task("d", raised_twice)])["d"]
    assert not again.raised and again.attempt == 3 and "max_attempts = 2" in again.line()


# ---------------------------------------------------------------------- the suggestion rule
def _run(rss: float, elapsed: float, cpu: float = 0.0, state: str = "COMPLETED", req_mem: float = 2048) -> Usage:
    return Usage("1", state=state, exit_code=0 if state == "COMPLETED" else 1, signal=0, elapsed_secs=elapsed,
                 total_cpu_secs=cpu, max_rss_mb=rss, req_mem_mb=req_mem, req_cpus=4, timelimit_secs=3600)


def test_suggestion_rule():
    assert percentile([1, 2, 3, 4, 100], 95) == 100 and percentile([5, 1, 3], 50) == 3
    assert round_ram_mb(1, 256) == 256 and round_ram_mb(257, 256) == 512
    assert round_time_secs(1) == 60 and round_time_secs(61) == 120
    runs = [_run(100, 30, cpu=30), _run(150, 40, cpu=80), _run(120, 50, cpu=50),
            _run(900, 500, state="FAILED")]  # the failed run teaches nothing
    s = suggest("m.Task", "slurm:cpu", runs)
    assert isinstance(s, Suggestion) and s.runs == 3
    assert s.ram == 0.25           # 150 MB x 1.2 = 180 -> 256 MB
    assert s.time_out_secs == 120  # 50 s x 1.5 = 75 -> 2 min
    assert s.cpu == 3              # 2 CPUs busy at most x 1.1 -> 3, of 4 asked
    assert (s.req_ram, s.req_cpu, s.req_time_out_secs) == (2.0, 4, 3600)
    # never below what a successful run used, even with no margin
    import os

    os.environ["HPCPIPE_RESOURCES_RAM_MARGIN"] = "0"
    try:
        assert suggest("m.Task", "x", [_run(256.5, 10)]).ram * 1024 >= 256.5
    finally:
        del os.environ["HPCPIPE_RESOURCES_RAM_MARGIN"]
    capped = suggest("m.Task", "slurm:small", [_run(3000, 4000)], caps=(2000 / 1024, 1800))
    assert capped.ram * 1024 <= 2000 and capped.time_out_secs == 1800
    assert suggest("m.Task", "x", [_run(1, 1, state="FAILED")]) is None
