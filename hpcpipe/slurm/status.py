"""Job states from SLURM: one batched query per poll, finished states cached (submitit's habit).

SchedMD discourages polling in a loop per job; sites rate-limit RPCs. A ``JobWatcher``
asks once per poll for every job it still considers live:

* ``squeue --noheader --states=all -j <ids> -O ...``: the controller, authoritative for what it
  lists (a pending job's reason too, which accounting keeps as of its last update); it knows
  jobs for ``MinJobAge`` after they end. A backfill's live jobs are one squeue per poll.
* ``sacct --parsable2 --noheader -X -j <ids> --format=...`` for the ids the controller no
  longer lists whole, when accounting works. ``-X`` keeps allocations only (no
  ``.batch``/``.extern`` steps). ``--json`` is not used: on 22.05 it reports exit code 0 for a
  job that exited 3.

A watched id that neither lists (or that now names another job: a cluster restarted with its
state wiped gives old ids to new jobs, so each id is watched with the run name it must carry) is
``UNKNOWN`` -- not final (``hpcpipe.jobstate``): the ledger declares it ``LOST`` once it has
stayed unknown for the grace period. States are spelled as ``hpcpipe.jobstate`` says.

Array jobs are watched by their array job id; sacct/squeue return one row per started
element (``123_4``) and one row for all pending ones (``123_[5-9%2]``). That row stays one
state (``indices`` lists its elements) which every element's id maps to: a backfill's 60,000
pending elements are a few objects, and ``uniform(id)`` tells a refresh that an array is in
one state throughout. ``CANCELLED by 0`` becomes ``CANCELLED``. Once every row of a watched id
is final it is never asked for again. ``queries`` counts SLURM commands run.

Very long id lists are split (``max_ids_per_query``, default 5000) because one argv element
may not exceed 128 KiB on Linux; with job arrays a run has few ids, so one query per poll.
"""
from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from ..errors import BackendError
from ..jobstate import UNKNOWN, display, is_final, may_be_requeued, normalise
from ..transport import Transport
from .render import expand_indices

SACCT_FIELDS = ("JobID", "JobIDRaw", "State", "ExitCode", "Reason", "Elapsed", "NodeList", "Partition",
                "JobName")
# squeue -O: a ':|' suffix makes the field unpadded and untruncated, followed by '|'
SQUEUE_FIELDS = ("JobArrayID", "JobID", "ArrayJobID", "State", "exit_code", "Reason", "TimeUsed",
                 "NodeList", "Partition", "Comment", "Name")
_ELEMENT = re.compile(r"^(\d+)_(\d+)$")
_PENDING_ARRAY = re.compile(r"^(\d+)_\[(.+)\]$")
_NO_ACCOUNTING = ("accounting storage is disabled", "slurm accounting storage is disabled",
                  "accounting_storage/none")


@dataclass(slots=True)
class JobState:
    """One job or array element as SLURM last reported it (or all pending elements of an
    array: ``indices``)."""

    #: ``123``, ``123_4`` for an array element, ``123_[5-9]`` for pending elements
    job_id: str
    #: ``123`` (same as job_id for a plain job)
    array_job_id: str
    array_index: int | None
    name: str
    state: str
    exit_code: int | None = None
    signal: int | None = None
    #: why it pends (``Dependency``, ``Resources``, ``DependencyNeverSatisfied``...); "" if none
    reason: str = ""
    elapsed: str = ""
    nodes: str = ""
    partition: str = ""
    #: ``--comment`` (squeue only): ``hpcpipe:<script>`` names the sbatch call of a run
    comment: str = ""
    #: the elements a pending-array row stands for (None: one job or one element)
    indices: tuple[int, ...] | None = None

    @property
    def elements(self) -> set:
        """The array indices this row covers (``{None}`` for a plain job)."""
        return set(self.indices) if self.indices is not None else {self.array_index}

    @property
    def final(self) -> bool:
        """True once the state can no longer change."""
        return is_final(self.state)

    @property
    def unconfirmed(self) -> bool:
        """A final state only the controller can confirm (``jobstate.may_be_requeued``)."""
        return may_be_requeued(self.state, self.exit_code)

    def display(self) -> str:
        """``PENDING (Dependency)``, ``FAILED 3:0``, ``COMPLETED`` for status tables."""
        return display(self.state, self.reason, self.exit_code, self.signal)


# ------------------------------------------------------------------ parsers (pure)
def _split_id(job_id: str) -> tuple[str, int | None]:
    m = _ELEMENT.match(job_id)
    if m:
        return m.group(1), int(m.group(2))
    return job_id, None


def _rows(job_id: str, **kw) -> list[JobState]:
    """One row; a pending-array row ``123_[4-9%2]`` keeps its elements in ``indices``."""
    m = _PENDING_ARRAY.match(job_id)
    if m:
        return [JobState(job_id=job_id, array_job_id=m.group(1), array_index=None,
                         indices=tuple(expand_indices(m.group(2))), **kw)]
    base, index = _split_id(job_id)
    return [JobState(job_id=job_id, array_job_id=base, array_index=index, **kw)]


def _covered(rows: Iterable[JobState]) -> set:
    """Every array index the rows cover."""
    out: set = set()
    for r in rows:
        out |= r.elements
    return out


def _whole_array(key: str, rows: list[JobState], expected: set[int]) -> list[JobState]:
    """``rows`` of watched array ``key``, its final record without an index (``123``) standing
    for every element no other row lists.

    An array cancelled while pending before slurmdbd learnt its range is accounted as one plain
    job (on the test cluster: ``scancel`` in the second of the ``sbatch --array``, one time in
    three): sacct lists ``123 CANCELLED`` and no element, and squeue no longer has the array.
    Read as a plain job, it covered no element, and all of them stayed UNKNOWN until the lost
    grace period (a 10,000-element backfill cancelled at once made each ``status`` take 2 s)."""
    whole = next((r for r in rows if r.job_id == key and r.array_index is None and r.indices is None
                  and r.final), None)
    if whole is None:
        return rows
    others = [r for r in rows if r is not whole]
    rest = expected - _covered(others)
    return others + ([dataclasses.replace(whole, indices=tuple(sorted(rest)))] if rest else [])


def _reason(raw: str) -> str:
    raw = raw.strip()
    return "" if raw in ("None", "(null)", "") else raw


def parse_sacct(text: str) -> list[JobState]:
    """``sacct --parsable2 --noheader -X --format=<SACCT_FIELDS>`` output -> states."""
    out: list[JobState] = []
    n = len(SACCT_FIELDS)
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", n - 1)  # JobName is last: it may hold '|'
        if len(parts) < n:
            continue
        job_id, _raw, state, exit_code, reason, elapsed, nodes, partition, name = parts
        if "." in job_id or "+" in job_id:  # steps or het-job components
            continue
        if not partition:
            # a provisional record: slurmdbd got the job's end before its start record, so
            # the name reads "allocation" and an array shows as one plain job. Not usable.
            continue
        code, sig = None, None
        if ":" in exit_code:
            a, b = exit_code.split(":", 1)
            code, sig = (int(a) if a.isdigit() else None), (int(b) if b.isdigit() else None)
        st = normalise(state)
        out += _rows(job_id, name=name, state=st, exit_code=code, signal=sig,
                     reason=_reason(reason) if st == "PENDING" else "",
                     elapsed=elapsed, nodes="" if nodes == "None assigned" else nodes,
                     partition=partition)
    return out


def parse_squeue(text: str) -> list[JobState]:
    """``squeue --noheader -O <SQUEUE_FIELDS with :| suffix>`` output -> states.

    squeue's exit code is the raw wait status (exit 3 shows as 768): decoded here.
    """
    out: list[JobState] = []
    n = len(SQUEUE_FIELDS)
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.endswith("|"):
            line = line[:-1]
        parts = line.split("|", n - 1)
        if len(parts) < n:
            continue
        job_id, _raw, _array_job, state, status, reason, elapsed, nodes, partition, comment, name = parts
        code = sig = None
        if status.strip().isdigit():
            raw = int(status)
            code, sig = (raw >> 8) & 0xFF, raw & 0x7F
        st = normalise(state)
        out += _rows(job_id.strip(), name=name, state=st, exit_code=code, signal=sig,
                     reason=_reason(reason) if st == "PENDING" else "",
                     elapsed=elapsed.strip(), nodes=nodes.strip(), partition=partition.strip(),
                     comment=_reason(comment))
    return out


def squeue_format() -> str:
    """The ``-O`` argument: every field unpadded, ``|``-separated."""
    return ",".join(f"{f}:|" for f in SQUEUE_FIELDS)


def sacct_argv(ids: Iterable[str] = (), name: str | None = None, since: str | None = None) -> list[str]:
    """The sacct command for ids (or a job name, with a start time since ``since``)."""
    argv = ["sacct", "--parsable2", "--noheader", "-X", f"--format={','.join(SACCT_FIELDS)}"]
    ids = list(ids)
    if ids:
        argv.append(f"--jobs={','.join(ids)}")
    if name is not None:
        argv.append(f"--name={name}")
        if since:
            argv.append(f"--starttime={since}")
    return argv


def squeue_argv(ids: Iterable[str] = (), name: str | None = None, mine: bool = False) -> list[str]:
    """The squeue command: all states (finished ones for MinJobAge), unpadded fields.

    ``name`` may list several job names, comma-separated; ``mine``: only this user's jobs.
    """
    argv = ["squeue", "--noheader", "--states=all", "-O", squeue_format()]
    ids = list(ids)
    if ids:
        argv.append(f"--jobs={','.join(ids)}")
    if name is not None:
        argv.append(f"--name={name}")
    if mine:
        argv.append("--me")
    return argv


def _no_accounting(message: str) -> bool:
    msg = message.lower()
    return any(s in msg for s in _NO_ACCOUNTING)


def _unknown_ids(message: str) -> bool:
    return "invalid job id" in message.lower()


# ------------------------------------------------------------------ the watcher
#: the first wait before sacct is asked again after it did not answer, and the longest
SACCT_BACKOFF_SECS, SACCT_BACKOFF_MAX_SECS = 10.0, 300.0


class JobWatcher:
    """Follows many jobs with one SLURM query per poll.

    ``watch(ids)`` adds submitted job ids (plain jobs or array job ids); ``poll()`` asks SLURM
    about the ones not yet final and returns every known state by job id (array elements as
    ``123_4``). ``discover(name)`` finds the jobs of a run by job name. One watcher is meant to
    serve every poll of a command (submitit's habit): final states are never asked again, a
    cluster without accounting is found out once, and accounting that does not answer is asked
    again after a back-off rather than at every poll.
    """

    def __init__(self, transport: Transport, use_sacct: bool | None = None,
                 max_ids_per_query: int = 5000, clock: Callable[[], float] = time.monotonic) -> None:
        self.transport = transport
        self.clock = clock
        #: accounting that did not answer is asked again only after this many seconds (doubling
        #: from ``SACCT_BACKOFF_SECS`` to ``SACCT_BACKOFF_MAX_SECS``); squeue answers meanwhile
        self.sacct_backoff = 0.0
        self._sacct_again_at = 0.0
        #: None = try sacct, fall back to squeue when accounting is absent
        self.use_sacct = use_sacct
        self.max_ids_per_query = max_ids_per_query
        #: SLURM commands issued so far, and in the last poll
        self.queries = 0
        self.last_poll_queries = 0
        #: the same, per command (``{"sacct": 3, "squeue": 1}``)
        self.queries_by_command: dict[str, int] = {}
        self.last_poll_by_command: dict[str, int] = {}
        self.polls = 0
        #: why the last poll read states from squeue only although accounting exists ("" if it did not)
        self.fallback = ""
        self._keys: dict[str, set[int] | None] = {}  # watched id -> expected array indices
        self._names: dict[str, str] = {}  # watched id -> the job name it must carry
        self._done: set[str] = set()
        self._states: dict[str, JobState] = {}
        self._uniform: dict[str, JobState | None] = {}
        #: watched array id -> {index: element id}, made once per watched set of indices: a
        #: backfill's arrays have 10,000 elements each, asked about at every poll
        self._element_ids: dict[str, dict[int, str]] = {}

    # -- what to watch
    def watch(self, job_ids: Iterable[str] | str, indices: Iterable[int] | None = None,
              name: str | None = None) -> None:
        """Follow these job ids; for one array id, ``indices`` says which elements exist.

        ``name``: the job name the ids must carry; a row with another name is another job that
        got a recycled id, and the watched one counts as unknown.
        """
        if isinstance(job_ids, str):
            job_ids = [job_ids]
        for jid in job_ids:
            jid = str(jid)
            if not re.match(r"^\d+(_\d+)?$", jid):
                raise BackendError(f"not a SLURM job id: {jid!r}")
            self._keys.setdefault(jid, None)
            if indices is not None:
                indices = set(map(int, indices))
                if indices != self._keys[jid]:
                    self._done.discard(jid)  # elements it did not follow yet: asked at the next poll
                    self._element_ids.pop(jid, None)
                    self._uniform.pop(jid, None)
                self._keys[jid] = indices
            if name is not None:
                self._names[jid] = name

    def retain(self, job_ids: Iterable[str]) -> None:
        """Follow only ``job_ids`` from now on (a refresh's live jobs): the others are dropped
        with their states, so a kept watcher asks about nothing the ledger has closed."""
        keep = set(job_ids)
        gone = [k for k in self._keys if k not in keep]
        if not gone:
            return
        for jid in gone:
            del self._keys[jid]
            self._names.pop(jid, None)
            self._uniform.pop(jid, None)
            self._element_ids.pop(jid, None)
            self._done.discard(jid)
        self._states = {k: st for k, st in self._states.items() if st.job_id in keep or st.array_job_id in keep}

    @property
    def watched(self) -> list[str]:
        """Every id given to ``watch`` or found by ``discover``."""
        return list(self._keys)

    @property
    def live(self) -> list[str]:
        """Watched ids with an element that may still change (asked about at the next poll)."""
        return [k for k in self._keys if k not in self._done]

    def find(self, names: list[str]) -> list[JobState]:
        """Every job of this user named one of ``names`` (run ids) that the controller has, in any
        state (ended ones for MinJobAge): one ``squeue --me --name=a,b`` query, comments included."""
        rows: list[JobState] = []
        for start in range(0, len(names), 500):
            chunk = names[start:start + 500]
            self._count("squeue")
            res = self.transport.run(squeue_argv(name=",".join(chunk), mine=True), repeatable=True)
            if res.returncode != 0:
                raise BackendError(f"squeue failed: {(res.stderr or res.stdout).strip() or res.returncode}")
            rows += parse_squeue(res.stdout)
        return rows

    def discover(self, name: str, since: str = "now-7days") -> list[str]:
        """Find the jobs named ``name`` (a run tag) and watch them; returns their ids.

        squeue finds the ones the controller knows (pending, running, ended within
        MinJobAge) and sacct the older ones. sacct alone is not enough: a job pending on a
        dependency has no eligible time and sacct --name does not list it.
        """
        found: list[JobState] = []
        found += self._run_squeue(name=name)
        if self.use_sacct is not False:
            try:
                found += self._run_sacct(name=name, since=since)
            except _FallBack:
                pass
        ids = sorted({s.array_job_id for s in found}, key=int)
        self.watch(ids)
        return ids

    # -- asking SLURM
    def poll(self) -> dict[str, JobState]:
        """One batched query for every live id; returns all known states by job id.

        The controller (squeue) first: it is authoritative for every job it lists, reason and
        all, and a backfill's pending and running jobs are all listed, so a poll of them is one
        query. Accounting (sacct) is asked in the same poll only about the ids the controller
        does not list whole (ended longer than ``MinJobAge`` ago, or forgotten), and the
        controller's rows are applied again over its answer. What neither lists is UNKNOWN.
        Without accounting, or while it is backed off, the controller's answer is the poll's.
        """
        before = self.queries
        before_cmd = dict(self.queries_by_command)
        self.fallback = ""
        live = self.live
        for start in range(0, len(live), self.max_ids_per_query):
            chunk = live[start:start + self.max_ids_per_query]
            rows = self._run_squeue(ids=chunk)
            covered = self._update(chunk, rows, authoritative=True, known=set(chunk))
            rest = [k for k in chunk if k not in covered and k not in self._done]
            if not rest:
                continue
            known = self._update(rest, self._accounting(rest), authoritative=False)
            self._update(rest, rows, authoritative=True, known=known)
        self.polls += 1
        self.last_poll_queries = self.queries - before
        self.last_poll_by_command = {k: v - before_cmd.get(k, 0) for k, v in self.queries_by_command.items()
                                     if v - before_cmd.get(k, 0)}
        return dict(self._states)

    def _accounting(self, ids: list[str]) -> list[JobState]:
        """sacct's rows for ``ids`` the controller does not list whole; [] without accounting or
        while it is backed off after not answering (``fallback`` says so)."""
        if self.use_sacct is False:
            return []
        wait = self._sacct_again_at - self.clock()
        if wait > 0:
            self.fallback = f"accounting (sacct) did not answer; states from squeue only (sacct asked again in {wait:.0f} s)"
            return []
        try:
            rows = self._run_sacct(ids=ids)
        except _FallBack as exc:
            if self.use_sacct is not False:  # accounting exists but did not answer now
                self.sacct_backoff = min(max(2 * self.sacct_backoff, SACCT_BACKOFF_SECS), SACCT_BACKOFF_MAX_SECS)
                self._sacct_again_at = self.clock() + self.sacct_backoff
                self.fallback = f"accounting (sacct) did not answer: {exc}; states from squeue only"
            return []
        self.sacct_backoff = 0.0
        return rows

    def states(self) -> dict[str, JobState]:
        """The states known after the last poll (no query)."""
        return dict(self._states)

    def state_of(self, job_id: str) -> list[JobState]:
        """States of one watched id: the job itself, or every element of an array (a pending
        range once)."""
        one = self._uniform.get(job_id)
        if one is not None and self._keys.get(job_id) is not None and job_id not in self._states:
            return [one]  # the last answer's one row for all its elements (``_update`` keeps them so)
        ids = self._elements_of(job_id)
        if ids is None:  # no known elements: every state naming it
            seen: dict[int, JobState] = {}
            for s in self._states.values():
                if (s.job_id == job_id or s.array_job_id == job_id) and id(s) not in seen:
                    seen[id(s)] = s
            return list(seen.values())
        got = [self._states.get(job_id), *map(self._states.get, ids.values())]  # stored by element id
        distinct = dict(zip(map(id, got), got))  # in C: 10,000 elements share a few rows
        distinct.pop(id(None), None)
        return list(distinct.values())

    def _elements_of(self, key: str) -> dict[int, str] | None:
        """``{index: element id}`` of a watched array id whose elements are known, else None."""
        expected = self._keys.get(key)
        if expected is None or _split_id(key)[1] is not None:
            return None
        ids = self._element_ids.get(key)
        if ids is None:
            ids = self._element_ids[key] = {i: f"{key}_{i}" for i in sorted(expected)}
        return ids

    def done(self) -> bool:
        """True when every watched id is final."""
        return not self.live

    def wait(self, job_ids: Iterable[str] | None = None, timeout: float = 60.0,
             interval: float = 1.0) -> dict[str, JobState]:
        """Poll until every id in ``job_ids`` (default: all watched) is final, or raise TimeoutError."""
        wanted = set(job_ids) if job_ids is not None else None
        deadline = time.monotonic() + timeout
        while True:
            states = self.poll()
            pending = [k for k in self.live if wanted is None or k in wanted]
            if not pending:
                return states
            if time.monotonic() >= deadline:
                summary = ", ".join(f"{s.job_id}={s.state}" for k in pending for s in self.state_of(k)) or \
                    ", ".join(pending)
                raise TimeoutError(f"jobs not finished after {timeout:.0f} s: {summary}")
            time.sleep(interval)

    # -- internals
    def _run_sacct(self, ids: list[str] | None = None, name: str | None = None,
                   since: str | None = None) -> list[JobState]:
        self._count("sacct")
        res = self.transport.run(sacct_argv(ids or (), name=name, since=since), repeatable=True)
        if res.returncode != 0:
            message = (res.stderr or res.stdout).strip()
            if _no_accounting(message):
                self.use_sacct = False  # for good: this cluster has no accounting
            raise _FallBack(message)
        if self.use_sacct is None:
            self.use_sacct = True
        return parse_sacct(res.stdout)

    def _run_squeue(self, ids: list[str] | None = None, name: str | None = None) -> list[JobState]:
        self._count("squeue")
        res = self.transport.run(squeue_argv(ids or (), name=name), repeatable=True)
        if res.returncode != 0:
            message = (res.stderr or res.stdout).strip()
            if _unknown_ids(message):  # every id asked is unknown to the controller
                return []
            raise BackendError(f"squeue failed: {message or res.returncode}")
        return parse_squeue(res.stdout)

    def _count(self, command: str) -> None:
        self.queries += 1
        self.queries_by_command[command] = self.queries_by_command.get(command, 0) + 1

    def _update(self, asked: list[str], rows: list[JobState], authoritative: bool,
                known: set[str] = frozenset()) -> set[str]:
        """Record rows; retire ids whose every element is final; return the ids the rows cover.

        ``authoritative``: the rows come from the controller (squeue), so an asked id or element
        they do not list (and that is not in ``known``: listed by sacct in this poll) is UNKNOWN
        now. Rows naming another job than the one watched (recycled ids) are dropped.
        """
        by_key: dict[str, list[JobState]] = {k: [] for k in asked}
        for row in rows:
            for key in (row.job_id, row.array_job_id):
                if key in by_key:
                    by_key[key].append(row)
                    break
        covered: set[str] = set()
        for key, key_rows in by_key.items():
            expected = self._keys.get(key)
            name = self._names.get(key)
            key_rows = [r for r in key_rows if (name is None or r.name == name)
                        and (expected is None or r.indices is not None or r.array_index is None
                             or r.array_index in expected)]
            if expected is not None:  # elements that do not exist are not reported
                key_rows = _whole_array(key, key_rows, expected)
                if expected <= _covered(key_rows):
                    covered.add(key)
            elif key_rows:
                covered.add(key)
            listed: set[str] = set()
            for row in key_rows:
                if row.indices is None:
                    self._states[row.job_id] = row
                    listed.add(row.job_id)
                    continue
                ids = self._elements_of(key) if row.array_job_id == key else None
                if ids is not None:  # every pending element's id names the one row
                    hit = list(ids.values()) if ids.keys() <= set(row.indices) else [
                        ids[i] for i in row.indices if i in ids]
                    self._states.update(dict.fromkeys(hit, row))
                    listed.update(hit)
                    continue
                for i in row.indices:
                    if expected is None or i in expected:
                        self._states[f"{row.array_job_id}_{i}"] = row
                        listed.add(f"{row.array_job_id}_{i}")
            one = key_rows[0] if len(key_rows) == 1 else None
            self._uniform[key] = one if one is not None and one.indices is not None and (
                expected is None or expected <= set(one.indices)) else None
            if authoritative and key not in known:
                self._mark_unknown(key, expected, listed)
            states = self.state_of(key)
            if not states:
                continue  # not in accounting yet (sacct lags sbatch slightly)
            if expected is not None and not expected <= _covered(states):
                continue
            if all(s.final and (authoritative or not s.unconfirmed) for s in states):
                self._done.add(key)
        return covered

    def size(self, key: str) -> int:
        """How many jobs a watched id stands for: its array elements, or 1."""
        return len(self._keys.get(key) or ()) or 1

    def uniform(self, key: str) -> JobState | None:
        """The one pending-array row that covers every element of array ``key`` in the last
        answer (all elements in one state), or None."""
        return self._uniform.get(key)

    def _mark_unknown(self, key: str, expected: set[int] | None, listed: set[str]) -> None:
        """Elements of ``key`` the controller does not list and no final state covers: UNKNOWN."""
        index = _split_id(key)[1]
        ids = self._elements_of(key) if expected else None
        if ids is not None and len(listed) == len(ids) and all(map(listed.__contains__, ids.values())):
            return  # every element listed: nothing is unknown
        wanted = list(ids.values()) if ids is not None else [key]
        if expected is None and index is None:
            wanted = [jid for s in self.state_of(key) for jid in (
                [f"{s.array_job_id}_{i}" for i in s.indices] if s.indices is not None else [s.job_id])] or [key]
        for jid in wanted:
            if jid in listed:
                continue
            st = self._states.get(jid)
            if st is None or (st.indices is not None and not st.final):  # a shared row is not changed
                b, i = _split_id(jid)
                self._states[jid] = JobState(job_id=jid, array_job_id=b, array_index=i,
                                             name=self._names.get(key, ""), state=UNKNOWN)
            elif not st.final:
                st.state, st.reason = UNKNOWN, ""


class _FallBack(Exception):
    """sacct failed; use squeue for this query."""
