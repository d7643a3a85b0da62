"""Small pipelines for engine and CLI tests (imported by dotted path in task processes)."""
from __future__ import annotations

import os
import time
from collections import OrderedDict
from pathlib import Path

from hpcpipe.pipeline import Pipeline
from hpcpipe.task import Task


class Sleep(Task):
    """Sleeps ``seconds`` (argument); appends ``<name> <pid>`` to ``order.txt`` when it starts and
    ``end <name>`` when it is done."""

    cpu = 1
    ram = 1
    time_out_secs = 600

    def _run(self, overwrite=False):
        order = Path(self.session_path) / "order.txt"
        with open(order, "a") as fh:
            fh.write(f"{self.kwargs.get('label', self.name)} {os.getpid()}\n")
        together = int(self.kwargs.get("together", 0))
        if together:  # wait (at most ``seconds``) until that many tasks have started: no timing
            end = time.monotonic() + float(self.kwargs.get("seconds", 0))
            while time.monotonic() < end and sum(not ln.startswith("end ")
                                                  for ln in order.read_text().splitlines()) < together:
                time.sleep(0.05)
        else:
            time.sleep(float(self.kwargs.get("seconds", 0)))
        with open(Path(self.session_path) / "order.txt", "a") as fh:
            fh.write(f"end {self.kwargs.get('label', self.name)}\n")
        if self.kwargs.get("fail"):
            raise RuntimeError("failing on purpose")
        return []


def _sleep_class(name: str, **attrs) -> type:
    return type(name, (Sleep,), dict(attrs, __module__=__name__))


A = _sleep_class("A", priority=10)
B = _sleep_class("B", priority=90)
C = _sleep_class("C", priority=50)
Slow = _sleep_class("Slow", time_out_secs=2)
Child = _sleep_class("Child")


class ThreeIndependent(Pipeline):
    """A, B, C with no parents: with one CPU they run one by one, by priority (B, C, A)."""

    _name = "three"

    def __init__(self, session_path=None, **kwargs):
        super().__init__(session_path, **kwargs)
        self.tasks = OrderedDict((t.name, t) for t in (A(self.session_path, seconds=0.2),
                                                        B(self.session_path, seconds=0.2),
                                                        C(self.session_path, seconds=0.2)))


class ThreeTogether(Pipeline):
    """A, B, C with no parents, each waiting (at most 60 s) until all three have started: they
    end at once if the engine runs them side by side, one by one after 60 s each if it does not."""

    _name = "three-together"

    def __init__(self, session_path=None, **kwargs):
        super().__init__(session_path, **kwargs)
        self.tasks = OrderedDict((t.name, t) for t in (A(self.session_path, seconds=60, together=3),
                                                        B(self.session_path, seconds=60, together=3),
                                                        C(self.session_path, seconds=60, together=3)))


class TimeoutPipeline(Pipeline):
    """Slow (times out after 2 s) -> Child, which must end Held, never run."""

    _name = "timeout"

    def __init__(self, session_path=None, **kwargs):
        super().__init__(session_path, **kwargs)
        slow = Slow(self.session_path, seconds=120)
        self.tasks = OrderedDict([("Slow", slow), ("Child", Child(self.session_path, parents=[slow]))])


class LongPipeline(Pipeline):
    """Two long tasks side by side and a child: for interruption tests."""

    _name = "long"

    def __init__(self, session_path=None, **kwargs):
        super().__init__(session_path, **kwargs)
        a = A(self.session_path, seconds=120)
        b = B(self.session_path, seconds=120)
        self.tasks = OrderedDict([("A", a), ("B", b), ("Child", Child(self.session_path, parents=[a, b]))])


class FailingParent(Pipeline):
    """A fails; C depends on A; B is independent."""

    _name = "failing"

    def __init__(self, session_path=None, **kwargs):
        super().__init__(session_path, **kwargs)
        a = A(self.session_path, fail=True)
        self.tasks = OrderedDict([("A", a), ("B", B(self.session_path)), ("C", C(self.session_path, parents=[a]))])


class Cyclic(Pipeline):
    """A -> B -> A: refused at construction."""

    _name = "cyclic"

    def __init__(self, session_path=None, **kwargs):
        super().__init__(session_path, **kwargs)
        a = A(self.session_path)
        b = B(self.session_path, parents=[a])
        a.parents = [b]
        self.tasks = OrderedDict([("A", a), ("B", b)])


BadRam = _sleep_class("BadRam", ram=0)


class NonPositiveResource(Pipeline):
    """A task asking ram=0: refused at construction."""

    _name = "badram"

    def __init__(self, session_path=None, **kwargs):
        super().__init__(session_path, **kwargs)
        self.tasks = OrderedDict([("BadRam", BadRam(self.session_path))])


BigRamTask = _sleep_class("BigRamTask", ram=3)


class BigRam(Pipeline):
    """One task asking 3 GB: above the test cluster's `small` partition (MaxMemPerNode 2000 MB)."""

    _name = "bigram"

    def __init__(self, session_path=None, **kwargs):
        super().__init__(session_path, **kwargs)
        self.tasks = OrderedDict([("BigRamTask", BigRamTask(self.session_path))])


class StopServer(Task):
    """Stops the server whose pid is in ``$HPCPIPE_TEST_STOP_PID`` (unset: no-op): an outage.
    ``$HPCPIPE_TEST_STOP_SIGNAL=SIGSTOP`` freezes it instead: a hung Alyx, whose socket still
    accepts connections and never answers."""

    cpu = 1
    ram = 1
    time_out_secs = 600

    def _run(self, overwrite=False):
        import signal

        pid = int(os.environ.get("HPCPIPE_TEST_STOP_PID", "0"))
        if pid and os.environ.get("HPCPIPE_TEST_STOP_SIGNAL") == "SIGSTOP":
            os.kill(pid, signal.SIGSTOP)
        elif pid:
            os.kill(pid, signal.SIGINT)
            for _ in range(100):  # wait until it is really gone
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
        return []


class WriteOutput(Task):
    """Writes one ALF dataset (a type the Alyx test server knows) and returns it."""

    cpu = 1
    ram = 1
    time_out_secs = 600
    signature = {"input_files": [], "output_files": [("_demo_summary.table.csv", "alf", True)]}

    def _run(self, overwrite=False):
        out = Path(self.session_path) / "alf" / "_demo_summary.table.csv"
        out.parent.mkdir(exist_ok=True)
        out.write_text("a,b\n1,2\n")
        return [out]


class Outage(Pipeline):
    """StopServer -> WriteOutput: the store goes away between the two."""

    _name = "outage"

    def __init__(self, session_path=None, **kwargs):
        super().__init__(session_path, **kwargs)
        stop = StopServer(self.session_path)
        self.tasks = OrderedDict([("StopServer", stop), ("WriteOutput", WriteOutput(self.session_path, parents=[stop]))])


DayLong = _sleep_class("DayLong", time_out_secs=86400)


class DayLongPipeline(Pipeline):
    """One task allowed a day: above Alyx's 32767 s cap for time_out_secs."""

    _name = "daylong"

    def __init__(self, session_path=None, **kwargs):
        super().__init__(session_path, **kwargs)
        self.tasks = OrderedDict([("DayLong", DayLong(self.session_path))])


class Hungry(Task):
    """Asks for 2 GB (over-sized on purpose) and touches only ``mb`` MB (argument, default 60)
    for about ``seconds`` (default 1) while keeping one CPU busy: for reports and right-sizing."""

    cpu = 1
    ram = 2
    time_out_secs = 600

    def _run(self, overwrite=False):
        buf = bytearray(int(self.kwargs.get("mb", 60)) * 2**20)
        buf[::4096] = b"x" * len(buf[::4096])
        end = time.time() + float(self.kwargs.get("seconds", 1))
        while time.time() < end:
            pass
        return []


class OversizedDemo(Pipeline):
    """The demo pipeline plus Hungry, an over-sized task with no parents."""

    _name = "oversized"

    def __init__(self, session_path=None, **kwargs):
        from hpcpipe.demo.pipeline import DemoPipeline

        super().__init__(session_path, **kwargs)
        tasks = DemoPipeline(session_path, **kwargs).tasks
        tasks["Hungry"] = Hungry(self.session_path)
        self.tasks = tasks


class BenchWork(Task):
    """A few seconds of work (``$HPCPIPE_BENCH_TASK_SECS``, default 4), then one ALF dataset of
    fixed content in its own collection, for scripts/bench/outage.py."""

    cpu = 1
    ram = 1
    time_out_secs = 600
    signature = {"input_files": [], "output_files": [("_bench_hpcpipe.output.npy", "alf/*", True)]}

    def _run(self, overwrite=False):
        time.sleep(float(os.environ.get("HPCPIPE_BENCH_TASK_SECS", "4")))
        out = Path(self.session_path) / "alf" / self.name.lower() / "_bench_hpcpipe.output.npy"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(f"output of {self.name}\n".encode())
        return [out]


Work1, Work2, Work3, Work4, Work5 = (type(f"Work{i}", (BenchWork,), {"__module__": __name__}) for i in range(1, 6))


class OutageBench(Pipeline):
    """Five tasks shaped like the demo: 1 and 2 first, 3 after 1, 4 after 3, 5 after 4 and 2."""

    _name = "outagebench"

    def __init__(self, session_path=None, **kwargs):
        super().__init__(session_path, **kwargs)
        t1, t2 = Work1(self.session_path), Work2(self.session_path)
        t3 = Work3(self.session_path, parents=[t1])
        t4 = Work4(self.session_path, parents=[t3])
        t5 = Work5(self.session_path, parents=[t4, t2])
        self.tasks = OrderedDict((t.name, t) for t in (t1, t2, t3, t4, t5))


T1 = _sleep_class("T1")
T2 = _sleep_class("T2")
T3 = _sleep_class("T3")


class TinyChain(Pipeline):
    """T1 -> T2 -> T3, each returning at once: for fault tests of many sessions."""

    _name = "tinychain"

    def __init__(self, session_path=None, **kwargs):
        super().__init__(session_path, **kwargs)
        t1 = T1(self.session_path)
        t2 = T2(self.session_path, parents=[t1])
        self.tasks = OrderedDict([("T1", t1), ("T2", t2), ("T3", T3(self.session_path, parents=[t2]))])


Parent = _sleep_class("Parent")


class ParentChild(Pipeline):
    """Parent (sleeps 20 s) -> Child: a child submitted while its parent runs in an earlier run."""

    _name = "parentchild"

    def __init__(self, session_path=None, **kwargs):
        super().__init__(session_path, **kwargs)
        parent = Parent(self.session_path, seconds=20)
        self.tasks = OrderedDict([("Parent", parent), ("Child", Child(self.session_path, parents=[parent]))])


Hog = _sleep_class("Hog", cpu=8, ram=1)


class HogPipeline(Pipeline):
    """One task taking the test node's 8 CPUs for 30 s: preemption and node-failure tests."""

    _name = "hog"

    def __init__(self, session_path=None, **kwargs):
        super().__init__(session_path, **kwargs)
        self.tasks = OrderedDict([("Hog", Hog(self.session_path, seconds=30))])


class FailFirst(Task):
    """Fails on a job's first attempt, completes when SLURM runs the job again (a requeue)."""

    cpu = 1
    ram = 1
    time_out_secs = 600

    def _run(self, overwrite=False):
        if int(os.environ.get("SLURM_RESTART_COUNT") or 0) < 1:
            raise RuntimeError("failing on the first attempt")
        return []


class FailFirstPipeline(Pipeline):
    """One task failing until SLURM requeues its job: a requeue after a final report."""

    _name = "failfirst"

    def __init__(self, session_path=None, **kwargs):
        super().__init__(session_path, **kwargs)
        self.tasks = OrderedDict([("FailFirst", FailFirst(self.session_path))])
