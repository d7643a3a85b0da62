"""Parsing SLURM's output, from text recorded on the test cluster (SLURM 22.05; no cluster needed)."""
from __future__ import annotations

from pathlib import Path

import pytest

from hpcpipe.errors import BackendError, BadInput
from hpcpipe.jobstate import normalise as normalise_state
from hpcpipe.slurm.cancel import by_array, scancel_argv
from hpcpipe.slurm.limits import (
    ClusterLimits,
    parse_assoc_limits,
    parse_config,
    parse_gres_gpus,
    parse_licenses,
    parse_nodes,
    parse_oneliner,
    parse_partitions,
    parse_time_minutes,
)
from hpcpipe.slurm.render import JobSpec
from hpcpipe.slurm.status import JobWatcher, parse_sacct, parse_squeue, sacct_argv
from hpcpipe.slurm.submit import format_command, parse_job_id, sbatch_argv
from hpcpipe.transport import Result, Transport

FIX = Path(__file__).parent / "fixtures"


def fixture(name: str) -> str:
    return (FIX / name).read_text()


# ------------------------------------------------------------------ sacct / squeue
def by_id(states):
    return {s.job_id: s for s in states}


def test_parse_sacct():
    s = by_id(parse_sacct(fixture("sacct.txt")))
    assert s["198"].state == "COMPLETED" and s["198"].exit_code == 0 and s["198"].name == "fx_ok"
    assert s["198"].partition == "cpu" and s["198"].nodes == "vm"
    assert (s["199"].state, s["199"].exit_code, s["199"].signal) == ("FAILED", 3, 0)
    assert s["201"].state == "CANCELLED"  # "CANCELLED by 0"
    assert (s["202"].state, s["202"].reason) == ("PENDING", "DependencyNeverSatisfied")
    assert s["202"].nodes == ""  # "None assigned"
    assert (s["205"].exit_code, s["205"].signal) == (0, 9)
    # array: finished and running elements, the pending row 200_[4-5,9%2] one state for its elements
    assert s["200_0"].state == "COMPLETED" and s["200_0"].array_job_id == "200" and s["200_0"].array_index == 0
    assert s["200_2"].state == "RUNNING" and s["200_2"].reason == ""  # stale reasons dropped
    assert s["200_0"].name == "fx|arr"  # a '|' in the name does not shift columns
    pending = [v for v in s.values() if v.array_job_id == "200" and v.state == "PENDING"]
    assert [(v.job_id, v.indices, v.array_index) for v in pending] == [("200_[4-5,9%2]", (4, 5, 9), None)]
    assert pending[0].reason == "JobArrayTaskLimit"
    assert sorted(k for k in s if k.startswith("207")) == ["207_1", "207_4"]
    assert s["199"].display() == "FAILED 3:0" and s["202"].display() == "PENDING (DependencyNeverSatisfied)"
    assert s["198"].display() == "COMPLETED" and s["201"].display() == "CANCELLED"


def test_provisional_sacct_records_are_ignored():
    """Under load slurmdbd may get a job's end before its start: the row then has no partition,
    the name 'allocation', and an array shows as one plain job. Such rows are skipped."""
    text = fixture("sacct_provisional.txt")
    assert "allocation" in text
    assert parse_sacct(text) == []


def test_parse_squeue():
    s = by_id(parse_squeue(fixture("squeue.txt")))
    assert (s["199"].state, s["199"].exit_code, s["199"].signal) == ("FAILED", 3, 0)  # raw status 768
    assert (s["205"].exit_code, s["205"].signal) == (0, 9)
    assert s["201"].state == "CANCELLED"
    assert s["200_[4-5,9%2]"].state == "PENDING" and s["200_[4-5,9%2]"].reason == "JobArrayTaskLimit"
    assert s["200_[4-5,9%2]"].elements == {4, 5, 9}
    assert s["200_3"].state == "RUNNING" and s["200_3"].name == "fx|arr" and s["200_3"].nodes == "vm"
    assert s["200_3"].partition == "cpu"
    assert s["198"].reason == ""  # reasons kept for PENDING only


@pytest.mark.parametrize("raw,state", [("CANCELLED by 0", "CANCELLED"), ("RUNNING", "RUNNING"),
                                       ("CANCELLED+", "CANCELLED"), ("OUT_OF_MEMORY", "OUT_OF_MEMORY"),
                                       ("", "UNKNOWN")])
def test_normalise_state(raw, state):
    assert normalise_state(raw) == state


def test_sacct_argv_never_json():
    argv = sacct_argv(["1", "2"])
    assert "--parsable2" in argv and "-X" in argv and "--jobs=1,2" in argv
    assert not any("json" in a for a in argv)


class Recorded(Transport):
    """Answers commands with recorded text (to test the watcher's bookkeeping, not SLURM)."""

    def __init__(self, answers):
        self.answers = answers  # list of (prefix, Result-ish tuple)
        self.calls: list[list[str]] = []

    def run(self, argv, input=None, timeout=120.0, *, repeatable=False):
        assert repeatable, argv  # every command the watcher sends is a query
        self.calls.append(argv)
        for prog, (rc, out, err) in self.answers:
            if argv[0] == prog:
                return Result(argv, rc, out, err)
        raise AssertionError(argv)

    def write_file(self, path, content, mode=0o644):
        raise AssertionError

    def read_file(self, path):
        raise AssertionError

    def makedirs(self, path):
        raise AssertionError

    def list_dir(self, path):
        raise AssertionError


def _only(text: str, ids: tuple[str, ...]) -> str:
    """The lines of recorded output about these job ids (an answer as SLURM gives it for them)."""
    return "".join(line + "\n" for line in text.splitlines() if line.split("|")[0].split("_")[0] in ids)


def test_watcher_asks_the_controller_first_and_caches_final_jobs():
    """squeue lists every watched job: one query, reasons as the controller has them; final
    jobs are never asked again."""
    t = Recorded([("squeue", (0, fixture("squeue.txt"), "")), ("sacct", (0, fixture("sacct.txt"), ""))])
    w = JobWatcher(t)
    w.watch(["198", "199", "201", "202"])
    states = w.poll()
    assert w.live == ["202"] and w.last_poll_by_command == {"squeue": 1}
    assert states["202"].reason == "DependencyNeverSatisfied" and states["199"].exit_code == 3
    w.poll()
    assert t.calls[-1][-1] == "--jobs=202" and w.last_poll_by_command == {"squeue": 1}  # finished ids are not asked


def test_ids_the_controller_no_longer_lists_are_asked_of_accounting_in_the_same_poll():
    """Ended longer than MinJobAge ago: squeue has no row, sacct has the final state. An array
    squeue lists only in part goes to sacct too, and squeue's rows win for what they list."""
    squeue = _only(fixture("squeue.txt"), ("198", "200")).replace("200_1|212|200|COMPLETED", "200_1|212|200|RUNNING")
    t = Recorded([("squeue", (0, squeue, "")), ("sacct", (0, fixture("sacct.txt"), ""))])
    w = JobWatcher(t)
    w.watch(["198", "199"])
    w.watch("200", indices=[0, 1, 2, 3, 4, 5, 9, 11])
    states = w.poll()
    assert w.last_poll_by_command == {"squeue": 1, "sacct": 1}
    assert t.calls[-1][0] == "sacct" and t.calls[-1][-1] == "--jobs=199,200"  # 198 was listed whole
    assert states["199"].state == "FAILED" and states["198"].state == "COMPLETED"
    assert states["200_1"].state == "RUNNING"  # the controller's row, over accounting's COMPLETED
    assert states["200_11"].state == "UNKNOWN"  # listed by neither
    assert "199" not in w.live and "200" in w.live


def test_a_cluster_without_accounting_is_found_out_once():
    t = Recorded([("squeue", (0, _only(fixture("squeue.txt"), ("199",)), "")),
                  ("sacct", (1, "", "sacct: error: Slurm accounting storage is disabled"))])
    w = JobWatcher(t)
    w.watch(["199", "300"])
    states = w.poll()
    assert w.use_sacct is False and states["199"].exit_code == 3 and states["300"].state == "UNKNOWN"
    assert w.last_poll_queries == 2 and w.fallback == ""
    w.poll()
    assert [c[0] for c in t.calls] == ["squeue", "sacct", "squeue"]
    # a job squeue no longer lists (MinJobAge passed, or the cluster forgot it) is UNKNOWN, not
    # final: the ledger declares it LOST after its grace period
    t3 = Recorded([("squeue", (1, "", "slurm_load_jobs error: Invalid job id specified"))])
    w3 = JobWatcher(t3, use_sacct=False)
    w3.watch("5")
    assert w3.poll()["5"].state == "UNKNOWN" and not w3.done() and w3.live == ["5"]


def test_watcher_backs_off_accounting_that_does_not_answer():
    """slurmdbd down: squeue answers at every poll, sacct is asked again (about what squeue does
    not list) only after a doubling back-off (one watcher serving every poll of ``status
    --watch``), and says so."""
    now = [0.0]
    down = (1, "", "sacct: error: Problem talking to the database: Connection refused")
    t = Recorded([("squeue", (0, fixture("squeue.txt"), "")), ("sacct", down)])
    w = JobWatcher(t, clock=lambda: now[0])
    w.watch(["200", "300"])  # 300: squeue does not list it
    w.poll()
    assert w.last_poll_by_command == {"squeue": 1, "sacct": 1} and "did not answer" in w.fallback
    assert w.use_sacct is None and w.sacct_backoff == 10
    now[0] = 9
    w.poll()
    assert w.last_poll_by_command == {"squeue": 1} and "asked again in 1 s" in w.fallback
    now[0] = 10
    w.poll()
    assert w.last_poll_by_command == {"squeue": 1, "sacct": 1} and w.sacct_backoff == 20
    now[0] = 29
    w.poll()
    assert w.last_poll_by_command == {"squeue": 1}
    t.answers[1] = ("sacct", (0, fixture("sacct.txt"), ""))  # accounting is back
    now[0] = 30
    w.poll()
    assert w.fallback == "" and w.sacct_backoff == 0 and w.last_poll_by_command["sacct"] == 1


def test_a_kept_watcher_asks_only_about_what_it_is_told_to_retain():
    t = Recorded([("sacct", (0, "", "")), ("squeue", (0, "", ""))])
    w = JobWatcher(t)
    w.watch(["1", "2"])
    w.poll()
    assert set(w.states()) == {"1", "2"}  # UNKNOWN to both: followed
    w.retain(["2"])
    w.poll()
    assert w.watched == ["2"] and t.calls[-2][-1] == "--jobs=2" and set(w.states()) == {"2"}


def test_unknown_to_both_sources_and_recycled_ids_are_unknown():
    """sacct and squeue both silent about an id, or an id now naming another job (a wiped cluster
    hands old ids to new jobs): UNKNOWN; array elements the controller does not list likewise."""
    t = Recorded([("sacct", (0, "", "")), ("squeue", (0, fixture("squeue.txt"), ""))])
    w = JobWatcher(t)
    w.watch("198", name="fx_ok")
    w.watch("201", name="hp-my-run")    # 201 is fx_cancel now: not ours
    w.watch("77")                       # listed by nobody
    w.watch("200", indices=[0, 1, 42], name="fx|arr")
    states = w.poll()
    assert states["198"].state == "COMPLETED" and "198" not in w.live
    assert states["201"].state == "UNKNOWN" and states["77"].state == "UNKNOWN"
    assert states["200_0"].state == "COMPLETED" and states["200_42"].state == "UNKNOWN"
    assert set(w.live) == {"201", "77", "200"}
    assert w.last_poll_by_command == {"sacct": 1, "squeue": 1}


def test_watcher_expected_indices_filter():
    t = Recorded([("sacct", (0, fixture("sacct.txt"), "")), ("squeue", (0, fixture("squeue.txt"), ""))])
    w = JobWatcher(t)
    w.watch("200", indices=[0, 9])
    states = w.poll()
    assert sorted(k for k in states) == ["200_0", "200_9"]


def test_a_pending_range_is_one_state_for_all_its_elements():
    """10,000 pending elements are one row: every element id maps to it, ``uniform`` names it
    while it covers the whole array, and an element the controller stops listing becomes
    UNKNOWN alone (the shared row is not changed)."""
    pending = "|".join(["300_[0-9999]", "300", "300", "PENDING", "0", "JobHeldUser", "0:00", "", "cpu", "(null)",
                        "run-a"]) + "|\n"
    t = Recorded([("squeue", (0, pending, ""))])
    w = JobWatcher(t, use_sacct=False)
    w.watch("300", indices=range(10000), name="run-a")
    states = w.poll()
    assert len(states) == 10000 and len({id(v) for v in states.values()}) == 1
    assert states["300_9999"].display() == "PENDING (JobHeldUser)" and w.uniform("300") is states["300_0"]
    t.answers = [("squeue", (0, pending.replace("300_[0-9999]", "300_[0-9998]"), ""))]
    states = w.poll()
    assert states["300_9999"].state == "UNKNOWN" and states["300_0"].state == "PENDING"
    assert w.uniform("300") is None  # the range no longer covers the whole array


def test_watcher_splits_huge_id_lists():
    t = Recorded([("sacct", (0, "", "")), ("squeue", (0, "", ""))])
    w = JobWatcher(t, max_ids_per_query=1000)
    w.watch([str(i) for i in range(1, 2501)])
    w.poll()
    assert w.last_poll_by_command["sacct"] == 3
    assert max(len(a[-1]) for a in t.calls) < 128 * 1024


# ------------------------------------------------------------------ scontrol / sacctmgr
def test_parse_oneliner_values_with_spaces_and_equals():
    kv = parse_oneliner(fixture("scontrol_show_node.txt"))
    assert kv["NodeName"] == "vm" and kv["Gres"] == "gpu:2" and kv["RealMemory"] == "8000"
    assert kv["OS"].startswith("Linux ") and kv["CfgTRES"] == "cpu=8,mem=8000M,billing=8,gres/gpu=2"
    assert kv["Partitions"] == "cpu,gpu,small"


def test_parse_config():
    conf = parse_config(fixture("scontrol_show_config.txt"))
    assert conf["MaxArraySize"] == "100001" and conf["MaxJobCount"] == "300000"
    assert conf["EnforcePartLimits"] == "NO"


def test_parse_partitions_and_nodes():
    parts = parse_partitions(fixture("scontrol_show_partition.txt"))
    assert set(parts) == {"cpu", "gpu", "small"}
    assert parts["cpu"].default and parts["cpu"].max_time_min is None and parts["cpu"].max_mem_per_node_mb is None
    assert parts["small"].max_time_min == 30 and parts["small"].max_mem_per_node_mb == 2000
    assert parts["small"].total_cpus == 8
    nodes = parse_nodes(fixture("scontrol_show_node.txt"))
    assert (nodes["vm"].cpus, nodes["vm"].real_memory_mb, nodes["vm"].gpus) == (8, 8000, 2)


@pytest.mark.parametrize("text,minutes", [("UNLIMITED", None), ("INFINITE", None), ("30", 30),
                                          ("00:30:00", 30), ("30:00", 30), ("1:00:00", 60),
                                          ("2-12", 3600), ("1-00:00:00", 1440), ("1-02:03:04", 1564)])
def test_parse_time(text, minutes):
    assert parse_time_minutes(text) == minutes


@pytest.mark.parametrize("gres,n", [("gpu:2", 2), ("gpu:a100:4(S:0-1)", 4), ("gpu:a100:2,gpu:v100:2", 4),
                                    ("(null)", 0), ("", 0), ("shard:8,gpu:1", 1)])
def test_parse_gres(gres, n):
    assert parse_gres_gpus(gres) == n


def test_parse_assoc_and_licenses():
    assert parse_assoc_limits("|\n") == (None, None)
    assert parse_assoc_limits("") == (None, None)
    assert parse_assoc_limits("500|100\n200|\n") == (200, 100)
    assert parse_licenses(fixture("scontrol_show_license.txt")) == {"io": 100}


def limits_from_fixtures(**kw) -> ClusterLimits:
    parts = parse_partitions(fixture("scontrol_show_partition.txt"))
    nodes = parse_nodes(fixture("scontrol_show_node.txt"))
    for n in nodes.values():
        for p in n.partitions:
            parts[p].nodes.append(n.name)
    return ClusterLimits(partitions=parts, nodes=nodes, licenses={"io": 100}, **kw)


@pytest.mark.parametrize("res,partition,words", [
    ({"ram": 3}, "small", ["ram", "3072 MB", "small", "MaxMemPerNode 2000 MB"]),
    ({"time_out_secs": 1801}, "small", ["time_out_secs", "31 min", "MaxTime 30 min"]),
    ({"cpu": 9}, None, ["cpu 9", "8 CPUs", "cpu"]),
    ({"gpu": 3}, "gpu", ["gpu 3", "2 GPUs"]),
    ({"ram": 9}, "cpu", ["ram", "8000 MB RealMemory"]),
])
def test_limits_check_names_resource_value_and_limit(res, partition, words):
    limits = limits_from_fixtures()
    with pytest.raises(BadInput) as err:
        limits.check(res, partition)
    for w in words:
        assert w in str(err.value)


def test_limits_check_accepts_and_arrays():
    limits = limits_from_fixtures(max_array_size=1001, max_submit_jobs=50)
    limits.check({"ram": 1.9, "time_out_secs": 1800, "cpu": 8, "gpu": 2}, "small")
    with pytest.raises(BadInput, match="MaxArraySize 1001"):
        limits.check(JobSpec(name="j", command=["true"], array=[0, 1001]))
    with pytest.raises(BadInput, match="MaxSubmitJobs 50"):
        limits.check(JobSpec(name="j", command=["true"], array=list(range(51))))
    with pytest.raises(BadInput, match="unknown partition 'nope'; partitions: cpu, gpu, small"):
        limits.check({}, "nope")
    with pytest.raises(BadInput, match="io_charge 101"):
        limits.check({"io_charge": 101}, None, io_license="io")
    assert limits.max_array_elements() == 50


# ------------------------------------------------------------------ submit / cancel commands
@pytest.mark.parametrize("out,jid", [("123\n", "123"), ("123;hpcpipe\n", "123"),
                                     ("sbatch: warning: x\n456\n", "456")])
def test_parse_job_id(out, jid):
    assert parse_job_id(out) == jid


def test_parse_job_id_refuses_garbage():
    with pytest.raises(BackendError):
        parse_job_id("Submitted batch job 12")


def test_dry_run_command_line():
    argv = sbatch_argv("/runs/r 1/scripts/job.sh")
    assert argv == ["sbatch", "--parsable", "/runs/r 1/scripts/job.sh"]
    assert format_command(argv) == "sbatch --parsable '/runs/r 1/scripts/job.sh'"


def test_scancel_argv():
    assert scancel_argv(["1", "2_3"]) == ["scancel", "1", "2_3"]
    assert scancel_argv(name="tag", user="me") == ["scancel", "--name=tag", "--user=me"]


def test_elements_of_one_array_go_to_scancel_as_one_index_expression():
    """scancel sends one RPC per argument: a backfill's 60,000 elements are six arguments."""
    ids = [f"30_{i}" for i in range(10000)] + ["7", "31_5", "31_2", "31_3", "7", "30_4", "8_[1-2]"]
    assert by_array(ids) == ["7", "8_[1-2]", "30_[0-9999]", "31_[2-3,5]"]


def test_failed_with_the_requeue_exit_is_final_only_once_the_controller_confirms_it():
    """After a node failure accounting may show the first attempt's record (FAILED, the job
    side's requeue exit 75) while SLURM queues the job again: the controller's answer wins.
    Where the controller no longer has the job, the FAILED stands."""
    sacct = "42|42|FAILED|75:0||00:00:09|vm|cpu|run-a\n43|43|FAILED|1:0||00:00:09|vm|cpu|run-a\n"
    requeued = "42|42|42|PENDING|19200|BeginTime|0:00||cpu|(null)|run-a|\n"
    t = Recorded([("sacct", (0, sacct, "")), ("squeue", (0, requeued, ""))])
    w = JobWatcher(t)
    w.watch(["42", "43"], name="run-a")
    states = w.poll()
    assert t.calls[-1][0] == "sacct" and t.calls[-1][-1] == "--jobs=43"  # the controller has 42
    assert states["42"].state == "PENDING" and states["43"].state == "FAILED"
    assert w.live == ["42"]
    # the requeued attempt is accounted for later: followed as any job
    t.answers = [("sacct", (0, "42|42|COMPLETED|0:0||00:00:09|vm|cpu|run-a\n", "")), ("squeue", (0, "", ""))]
    assert w.poll()["42"].state == "COMPLETED" and w.done()
    # not requeued (the controller no longer lists it): the FAILED is final
    t.answers = [("sacct", (0, sacct, "")), ("squeue", (0, "", ""))]
    w = JobWatcher(t)
    w.watch(["42"], name="run-a")
    assert w.poll()["42"].state == "FAILED" and w.done()


def test_an_array_accounted_as_one_plain_job_ends_every_element_it_does_not_list():
    """An array cancelled while pending before slurmdbd learnt its range is accounted as one
    plain job (seen on the test cluster, one time in three: ``sbatch --array=0-99 --hold`` and
    ``scancel`` in the same second give ``3232 CANCELLED``, no element, and squeue no longer has
    it). That record ends every element no other row lists; the elements it does list keep theirs."""
    whole = "3232|3232|CANCELLED by 0|0:0||00:00:00|None assigned|cpu|bf-1\n"
    t = Recorded([("sacct", (0, whole, "")), ("squeue", (0, "", ""))])
    w = JobWatcher(t)
    w.watch("3232", indices=range(100), name="bf-1")
    states = w.poll()
    assert w.done() and {s.state for s in w.state_of("3232")} == {"CANCELLED"}
    assert all(states[f"3232_{i}"].state == "CANCELLED" for i in range(100))
    # elements split out before the cancel keep their own records
    split = "3240_0|3241|COMPLETED|0:0||00:00:03|vm|cpu|bf-1\n" + whole.replace("3232", "3240")
    t.answers = [("sacct", (0, split, "")), ("squeue", (0, "", ""))]
    w = JobWatcher(t)
    w.watch("3240", indices=range(3), name="bf-1")
    states = w.poll()
    assert w.done() and states["3240_0"].state == "COMPLETED"
    assert states["3240_1"].state == states["3240_2"].state == "CANCELLED"
    # a plain job's record is no array's: a watched plain job is followed as before
    t.answers = [("sacct", (0, "77|77|RUNNING|0:0||00:00:03|vm|cpu|bf-1\n", "")), ("squeue", (0, "", ""))]
    w = JobWatcher(t)
    w.watch("77", name="bf-1")
    assert w.poll()["77"].state == "RUNNING" and not w.done()
