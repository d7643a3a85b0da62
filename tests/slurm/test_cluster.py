"""Real jobs on the test cluster (scripts/slurm-up), waiting for real states.

Jobs are tiny (``true``, ``exit 3``, ``sleep 1``); waits poll with a deadline. No TIMEOUT test
here: a TIMEOUT takes 65 s on this cluster and the job-side tests own the single one.
"""
from __future__ import annotations

import os
import time

import pytest

from hpcpipe.errors import BadInput
from hpcpipe.slurm import cancel as slurm_cancel
from hpcpipe.slurm.limits import ClusterLimits
from hpcpipe.slurm.render import JobSpec, job_script
from hpcpipe.slurm.status import JobWatcher
from hpcpipe.slurm.submit import submit

pytestmark = pytest.mark.slurm

BASH = ["bash", "-c"]


def test_completed_failed_cancelled(jobs, transport, wait_until):
    ok = jobs.submit(jobs.spec("ok", ["true"]))
    bad = jobs.submit(jobs.spec("bad", BASH + ["exit 3"]))
    slow = jobs.submit(jobs.spec("slow", ["sleep", "60"]))
    w = JobWatcher(transport)
    w.watch([ok, bad, slow])
    wait_until(lambda: w.poll().get(slow) and w.states()[slow].state == "RUNNING", what="slow job running")
    assert slurm_cancel.cancel(transport, [slow]) == 1
    states = w.wait(timeout=30, interval=0.3)
    assert states[ok].state == "COMPLETED" and states[ok].exit_code == 0
    assert (states[bad].state, states[bad].exit_code, states[bad].signal) == ("FAILED", 3, 0)
    assert states[bad].display() == "FAILED 3:0"
    assert states[slow].state == "CANCELLED"  # sacct says "CANCELLED by 0"


def test_dependency_never_satisfied(jobs, transport, wait_until):
    parent = jobs.submit(jobs.spec("parent", BASH + ["exit 1"]))
    killed = jobs.submit(jobs.spec("child", ["true"], dependencies=[parent]))
    stuck = jobs.submit(jobs.spec("stuck", ["true"], dependencies=[parent], kill_on_invalid_dep=False))
    w = JobWatcher(transport)
    w.watch([parent, killed, stuck])
    w.wait([parent, killed], timeout=30, interval=0.3)
    assert w.states()[parent].state == "FAILED"
    assert w.states()[killed].state == "CANCELLED"  # --kill-on-invalid-dep=yes
    # sacct lists a dependency-pending job a moment after submission: poll until it does
    wait_until(lambda: getattr(w.poll().get(stuck), "reason", "") == "DependencyNeverSatisfied",
               what="pending reason")
    assert w.states()[stuck].display() == "PENDING (DependencyNeverSatisfied)"


def test_sparse_array_elements(jobs, transport, tmp_path):
    out = tmp_path / "elements"
    out.mkdir()
    spec = jobs.spec("arr", BASH + ['touch "$1/$SLURM_ARRAY_TASK_ID"', "_", str(out)],
                     array=[0, 3, 7], array_throttle=2)
    job_id = jobs.submit(spec)
    w = JobWatcher(transport)
    w.watch(job_id, indices=[0, 3, 7])
    states = w.wait(timeout=30, interval=0.3)
    assert sorted(states) == [f"{job_id}_0", f"{job_id}_3", f"{job_id}_7"]
    assert all(s.state == "COMPLETED" for s in states.values())
    assert sorted(p.name for p in out.iterdir()) == ["0", "3", "7"]


def test_aftercorr_waits_only_for_own_parent_element(jobs, transport, tmp_path):
    """Child element i starts after parent element i, not after the whole parent array;
    a failed parent element blocks (cancels) only its own child element."""
    t = tmp_path / "times"
    t.mkdir()
    # parent: element 0 ends at once, element 1 fails, element 2 sleeps 4 s
    parent_cmd = ('i=$SLURM_ARRAY_TASK_ID; [ "$i" = 2 ] && sleep 4; date +%s.%N > "$1/parent_end_$i"; '
                  '[ "$i" != 1 ]')
    parent = jobs.submit(jobs.spec("pa", BASH + [parent_cmd, "_", str(t)], array=[0, 1, 2]))
    child_cmd = 'date +%s.%N > "$1/child_start_$SLURM_ARRAY_TASK_ID"'
    child = jobs.submit(jobs.spec("ch", BASH + [child_cmd, "_", str(t)], array=[0, 1, 2], aftercorr=[parent]))
    w = JobWatcher(transport)
    w.watch(parent, indices=[0, 1, 2])
    w.watch(child, indices=[0, 1, 2])
    states = w.wait(timeout=45, interval=0.3)
    assert [states[f"{parent}_{i}"].state for i in range(3)] == ["COMPLETED", "FAILED", "COMPLETED"]
    assert [states[f"{child}_{i}"].state for i in range(3)] == ["COMPLETED", "CANCELLED", "COMPLETED"]
    times = {p.name: float(p.read_text()) for p in t.iterdir()}
    assert "child_start_1" not in times
    assert times["child_start_0"] >= times["parent_end_0"]
    assert times["child_start_2"] >= times["parent_end_2"]
    # element 0 did not wait for parent element 2 (which slept 4 s)
    assert times["child_start_0"] < times["parent_end_2"]


def test_gres_sets_cuda_visible_devices(jobs, transport, slurm_cluster, tmp_path):
    if slurm_cluster["gpus"] < 1:
        pytest.skip("the test cluster was started with HPCPIPE_SLURM_GPUS=0")
    out = tmp_path / "cuda.txt"
    spec = jobs.spec("gpu", BASH + ['printf %s "${CUDA_VISIBLE_DEVICES-unset}" > "$1"', "_", str(out)],
                     resources={"gpu": 1})
    assert "#SBATCH --partition=gpu" in job_script(spec, jobs.profile)
    assert "#SBATCH --gres=gpu:1" in job_script(spec, jobs.profile)
    job_id = jobs.submit(spec)
    w = JobWatcher(transport)
    w.watch(job_id)
    assert w.wait(timeout=30, interval=0.3)[job_id].state == "COMPLETED"
    assert out.read_text() in ("0", "1")


def test_limits_refuse_ram_above_small_partition(transport):
    limits = ClusterLimits.read(transport)
    assert limits.max_array_size >= 1001 and limits.partitions["small"].max_mem_per_node_mb == 2000
    assert limits.default_partition == "cpu"
    with pytest.raises(BadInput, match=r"ram 3 GB \(3072 MB\) is above partition small's MaxMemPerNode 2000 MB"):
        limits.check(JobSpec(name="j", command=["true"], resources={"ram": 3}, partition="small"))
    with pytest.raises(BadInput, match="MaxTime 30 min"):
        limits.check({"time_out_secs": 3600}, "small")
    limits.check({"ram": 1, "time_out_secs": 600}, "small")
    limits.check({"ram": 3}, "cpu")


INJECTIONS = [
    "$(touch {m}/dollar)",
    "`touch {m}/backtick`",
    "'; touch {m}/squote; '",
    '"; touch {m}/dquote; "',
    "x; touch {m}/semicolon",
    "x && touch {m}/and | touch {m}/pipe",
    "$HOME ${{HOME}} * ?",
    "line\ntouch {m}/newline",
]


def test_injection_is_inert_on_the_real_cluster(jobs, transport, tmp_path):
    """A session path with spaces, quotes, $(...), backticks... reaches the job as one argument
    and runs nothing; the same text in the job name and an environment variable is inert too."""
    markers = tmp_path / "markers"
    markers.mkdir()
    evil = " ".join(i.format(m=markers) for i in INJECTIONS)
    session = str(tmp_path / f"lab/Subjects/KS 022/{evil}/001")
    got = tmp_path / "received.txt"
    env_got = tmp_path / "env.txt"
    logs = tmp_path / "it's $(touch x) logs"
    logs.mkdir()
    spec = JobSpec(
        name=f"{jobs.tag}_$(touch {markers}/name)`touch {markers}/name2`",
        command=BASH + ['printf %s "$1" > "$2"; printf %s "$EVIL" > "$3"', "_", session, str(got), str(env_got)],
        output=str(logs / "%j.out"),
        env={"EVIL": evil},
        workdir=str(tmp_path),
    )
    job_id = jobs.submit(spec)
    w = JobWatcher(transport)
    w.watch(job_id)
    state = w.wait(timeout=30, interval=0.3)[job_id]
    assert state.state == "COMPLETED", state
    assert state.name == spec.name
    assert got.read_text() == session
    assert env_got.read_text() == evil
    assert list(markers.iterdir()) == [], "an injected command ran"
    assert not (tmp_path / "x").exists()
    assert (logs / f"{job_id}.out").exists()


def test_line_break_in_a_directive_is_refused():
    with pytest.raises(BadInput):
        JobSpec(name="ok\ntouch /tmp/x", command=["true"])


def test_one_query_per_poll_for_many_jobs(jobs, transport):
    """The controller first, for all of them at once; accounting only about what it no longer
    lists, in the same poll."""
    ids = [jobs.submit(jobs.spec(f"b{i}", ["true"])) for i in range(8)]
    ids.append(jobs.submit(jobs.spec("barr", ["true"], array=list(range(0, 40, 3)))))
    w = JobWatcher(transport)
    w.watch(ids)
    per_poll = []
    states = {}
    deadline = time.monotonic() + 60
    while not w.done() and time.monotonic() < deadline:
        states = w.poll()
        per_poll.append(w.last_poll_by_command)
        time.sleep(0.3)
    assert w.done(), states
    # one squeue for 8 jobs + a 14-element array, every poll, which lists them all (ended ones
    # too, for MinJobAge): accounting is not asked
    assert all(p == {"squeue": 1} for p in per_poll), per_poll
    assert len(states) == 8 + 14
    assert all(s.state == "COMPLETED" for s in states.values())
    w.poll()
    assert w.last_poll_queries == 0  # everything final: nothing asked again
    # a watcher that learns of them later than MinJobAge (here: a job id the controller no
    # longer has) asks accounting about those alone
    late = JobWatcher(transport)
    late.watch(ids[:2] + ["1"])
    late.poll()
    assert late.last_poll_by_command == {"squeue": 1, "sacct": 1} or late.use_sacct is False


def test_squeue_fallback_reads_states(jobs, transport):
    ok = jobs.submit(jobs.spec("sq_ok", ["true"]))
    bad = jobs.submit(jobs.spec("sq_bad", BASH + ["exit 3"]))
    arr = jobs.submit(jobs.spec("sq_arr", ["true"], array=[1, 4]))
    w = JobWatcher(transport, use_sacct=False)
    w.watch([ok, bad, arr])
    states = w.wait(timeout=30, interval=0.3)
    assert states[ok].state == "COMPLETED"
    assert (states[bad].state, states[bad].exit_code) == ("FAILED", 3)
    assert {states[f"{arr}_1"].state, states[f"{arr}_4"].state} == {"COMPLETED"}
    assert w.queries == w.polls  # one squeue per poll


def test_cancel_in_one_call_and_by_name(jobs, transport, wait_until):
    ids = [jobs.submit(jobs.spec("c", ["sleep", "60"], resources={"priority": 0})) for _ in range(4)]
    ids.append(jobs.submit(jobs.spec("c", ["sleep", "60"], array=[0, 1, 2])))
    calls = slurm_cancel.cancel(transport, ids + ["1"])  # an old, finished id is not an error
    assert calls == 1
    w = JobWatcher(transport)
    w.watch(ids)
    states = w.wait(timeout=30, interval=0.3)
    assert {s.state for s in states.values()} == {"CANCELLED"} and len(states) == 4 + 3
    # some elements of an array, as one expression: only those end. Elements cancelled before
    # SLURM split them out leave no accounting record (sacct lists only the rest, ``123_[3,5]``,
    # whether they were named one by one or as an expression): they are gone from squeue, and
    # the watcher has them UNKNOWN. ``hpcpipe cancel`` records them itself for that reason.
    arr = jobs.submit(jobs.spec("c", ["sleep", "60"], array=list(range(6)), resources={"priority": 0}))
    assert slurm_cancel.cancel(transport, [f"{arr}_{i}" for i in (4, 0, 1, 2)]) == 1
    picked = [f"{arr}_{i}" for i in range(6)]
    w.watch(arr, indices=range(6))
    gone = lambda states: {i for i, jid in enumerate(picked) if states[jid].state != "PENDING"}  # noqa: E731
    after = wait_until(lambda: (lambda s: s if gone(s) == {0, 1, 2, 4} else None)(w.poll()), what="4 cancelled")
    assert {after[picked[3]].state, after[picked[5]].state} == {"PENDING"}
    # by name: the run tag
    more = [jobs.submit(jobs.spec("byname", ["sleep", "60"])) for _ in range(2)]
    assert slurm_cancel.cancel_by_name(transport, f"{jobs.tag}_byname") == 1
    w.watch(more)
    assert all(w.wait(more, timeout=30, interval=0.3)[m].state == "CANCELLED" for m in more)


def test_discover_by_name_finds_dependency_pending_jobs(jobs, transport, wait_until):
    """sacct --name misses a job pending on a dependency (no eligible time); discover() does not."""
    blocker = jobs.submit(jobs.spec("blocker", ["sleep", "2"]))
    tag = f"{jobs.tag}_run"
    first = jobs.submit(JobSpec(name=tag, command=["true"], output=os.devnull))
    waiting = jobs.submit(JobSpec(name=tag, command=["true"], output=os.devnull, dependencies=[blocker]))
    w = JobWatcher(transport)
    found = wait_until(lambda: (lambda f: f if set(f) >= {first, waiting} else None)(w.discover(tag)),
                       what="discover")
    assert set(found) == {first, waiting}
    states = w.wait(timeout=30, interval=0.3)
    assert states[first].state == "COMPLETED" and states[waiting].state == "COMPLETED"


def test_submit_writes_the_script_it_submits(transport, tmp_path, test_profile):
    path = tmp_path / "nested" / "job.sh"
    spec = JobSpec(name="hpt_submit", command=["true"], output=os.devnull)
    text = job_script(spec, test_profile)
    job_id = submit(transport, text, str(path))
    assert job_id.isdigit() and path.read_text() == text and os.access(path, os.X_OK)
    w = JobWatcher(transport)
    w.watch(job_id)
    assert w.wait(timeout=30, interval=0.3)[job_id].state == "COMPLETED"
