"""The backends behind one interface, for the CLI: which one to open, what they return, and the
operations that span all of them (refresh every backend this machine submitted to, cancel
wherever a job runs).

Every backend (``engines.local.LocalEngine``, ``slurm.backend.SlurmBackend`` over this machine's
SLURM or a login node over SSH) is a ``Backend``: ``check`` before anything is recorded,
``submit`` (a ``SubmitReport``), ``refresh`` (fold results + one batched query + sweep: a
``RefreshReport``) and ``cancel``. They differ by attributes, not by the caller's branches: the
local engine runs in the foreground (its report carries each task's final status), SLURM
returns once the jobs are queued. The CLI parses and prints; what changes the store or the
ledger happens here and below.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

from .errors import BadInput
from .ledger import JobRecord, Ledger
from .settings import Settings

BACKENDS = ("local", "slurm")


@dataclass
class SubmitReport:
    """What a submission did (printed as the end-of-run summary), the same for every backend."""

    run_id: str
    run_dir: str
    jobs: int = 0          # sbatch calls
    arrays: int = 0
    elements: int = 0      # tasks submitted (array elements or single jobs) or run
    chunks: int = 0
    seconds: float = 0.0
    sbatch_seconds: float = 0.0
    #: what a dry run would do, one line each (sbatch commands, or the tasks the engine would run)
    commands: list[str] = field(default_factory=list)
    not_submitted: list[str] = field(default_factory=list)
    #: the backend's name, so the CLI prints any backend's report the same way
    backend: str = "slurm"
    #: ``{task id: final status}`` when the backend ran the tasks in the foreground (local engine)
    final: dict[str, str] | None = None

    def summary(self) -> str:
        if self.final is not None:
            return f"run {self.run_id}: {len(self.final)} task(s) run here in {self.seconds:.2f} s"
        client = self.seconds - self.sbatch_seconds
        text = (f"run {self.run_id}: {self.elements} task(s) in {self.jobs} sbatch call(s)"
                + (f", {self.arrays} array(s) over {self.chunks} chunk(s)" if self.arrays else "")
                + f" in {self.seconds:.2f} s (sbatch {self.sbatch_seconds:.2f} s, client {client:.2f} s)")
        if self.not_submitted:
            text += f"\n{len(self.not_submitted)} session(s) not submitted: {self.not_submitted[0]}..."
        return text

    def dry_note(self) -> str:
        """The last line of a dry run: what was (not) written."""
        if self.backend == "local":
            return "dry run: nothing recorded, nothing run"
        return f"dry run: scripts written to {self.run_dir}/scripts; nothing submitted"


@dataclass
class RefreshReport:
    """What one refresh did: results folded, scheduler queries, tasks recorded, and what the
    scheduler said."""

    folded: int = 0
    queries: int = 0
    swept: int = 0
    #: intents found in SLURM (adopted) and intents SLURM never got
    adopted: int = 0
    unsubmitted: int = 0
    lost: int = 0
    #: live jobs the scheduler was asked about
    checked: int = 0
    #: the scheduler's state of live task ids (``slurm.status.JobState``), for the status table;
    #: not of the elements of an array SLURM shows in the one state the ledger has for all of
    #: them: the table shows those from the ledger
    states: dict = field(default_factory=dict)
    #: one line each, for the user: accounting down, controller unreachable...
    notes: list[str] = field(default_factory=list)

    def merge(self, other: "RefreshReport") -> None:
        for key in ("folded", "queries", "swept", "adopted", "unsubmitted", "lost", "checked"):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        self.states.update(other.states)
        self.notes += other.notes


class Backend(Protocol):
    """What the CLI and planning may ask of any backend."""

    #: the ledger's name for it ("local", "slurm")
    name: str
    #: what it does with a plan, for "nothing to ..." ("run" here, "submit" to a scheduler)
    verb: str
    #: the ``--remote`` target it submits through (recorded with every job); None: this machine
    remote: str | None

    def check(self, tasks: list[dict], dry_run: bool = False) -> None:
        """Refuse, before anything is recorded, a task this backend cannot run."""

    def submit(self, plans: list, run_id: str, dry_run: bool = False,
               recorded: Callable[[SubmitReport], None] | None = None) -> SubmitReport:
        """Submit (or run) the plans. ``recorded`` is called by a backend that runs in the
        foreground once its intents are in the ledger (the caller may release the lock then)."""

    def refresh(self) -> RefreshReport:
        """Fold results, ask the scheduler once, sweep what ended without reporting."""

    def cancel(self, jobs: list[JobRecord], runs: Iterable[str] = ()) -> int:
        """Stop ``jobs`` (and every job of ``runs``); returns how many were cancelled."""


def open_backend(name: str | None, store, ledger: Ledger, profile: str | None = None, remote: str | None = None,
                 accept_new_host_key: bool = False, sessions: Iterable = (), settings: Settings | None = None):
    """The backend named by ``--backend``/``--remote``, checked before anything is recorded or sent.

    With ``remote``, every session path must map to a cluster path (``[clusters.NAME] path_map``)
    before the first connection is made. ``settings`` are handed to the backend (None: it takes
    ``settings.current()``).
    """
    name = "slurm" if remote else (name or "local")
    if name not in BACKENDS:
        raise BadInput(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}")
    if name == "local":
        from .engines.local import LocalEngine

        return LocalEngine(store, ledger, settings=settings)
    from .slurm.backend import SlurmBackend

    if not remote:
        return SlurmBackend(store, ledger, profile=profile, settings=settings)
    return remote_backend(remote, store, ledger, profile, accept_new_host_key, sessions, settings)


def remote_backend(remote: str, store, ledger: Ledger, profile: str | None = None,
                   accept_new_host_key: bool = False, sessions: Iterable = (), settings: Settings | None = None):
    """The SLURM backend of a ``[clusters.NAME]`` target, over one SSH connection."""
    from .slurm.backend import SlurmBackend
    from .ssh import resolve_remote

    target = resolve_remote(remote, settings)
    for path in sessions:
        target.path_map.to_remote(str(path))
    transport = target.transport(accept_new_host_key=accept_new_host_key)
    return SlurmBackend(store, ledger, transport=transport, profile=profile or target.profile,
                        run_root=target.remote_run_dir(transport), python=target.python,
                        map_path=target.path_map.to_remote, remote=remote, settings=settings)


def refresh_all(store, ledger: Ledger, backend=None, remotes: dict | None = None,
                settings: Settings | None = None) -> RefreshReport:
    """The local engine's refresh, then one per SLURM cluster this machine submitted to (one
    backend, one transport, one batched query each). ``backend``: one already open, reused for
    its cluster; ``remotes``: the SLURM backends kept by the caller across polls, by ``--remote``
    target (None: this machine's): ``status --watch`` keeps one backend per cluster, so one
    watcher and, remotely, one SSH connection for all its polls. Returns a merged ``RefreshReport``."""
    from .engines.local import LocalEngine

    report = LocalEngine(store, ledger, settings=settings).refresh()
    for remote in sorted(ledger.remotes("slurm"), key=lambda r: r or ""):
        report.merge(_slurm_for(remote, store, ledger, backend, remotes, settings).refresh())
    return report


def _slurm_for(remote: str | None, store, ledger: Ledger, backend=None, remotes: dict | None = None,
               settings: Settings | None = None):
    """The SLURM backend of ``remote`` (None: this machine): ``backend`` if it is that one, else
    one from ``remotes`` (opened and kept there, this machine's too), else a new one."""
    from .slurm.backend import SlurmBackend

    if getattr(backend, "name", None) == "slurm" and backend.remote == remote:
        return backend
    def opened():
        if remote is None:
            return SlurmBackend(store, ledger, settings=settings)
        return remote_backend(remote, store, ledger, settings=settings)

    if remotes is None:
        return opened()
    if remote not in remotes:
        remotes[remote] = opened()
    return remotes[remote]


def cancel(store, ledger: Ledger, session: str | None = None, run: str | None = None,
           tasks: Iterable[str] | None = None, settings: Settings | None = None) -> int:
    """Cancel the live jobs (local processes, SLURM jobs) of a session (store id), a run, or task
    names; with ``run``, also every job SLURM has for that run that the ledger never recorded.
    Returns jobs cancelled."""
    from .engines.local import LocalEngine

    jobs = ledger.live()
    if session:
        jobs = [j for j in jobs if j.session == session]
    if run:
        jobs = [j for j in jobs if j.run_id == run]
    if tasks:
        jobs = [j for j in jobs if j.task_name in set(tasks)]
    runs = [run] if run else []
    count = LocalEngine(store, ledger, settings=settings).cancel([j for j in jobs if j.backend == "local"], runs)
    slurm = [j for j in jobs if j.backend == "slurm"]
    remotes = {j.remote for j in slurm} | ({j.remote for j in ledger.run(run) if j.backend == "slurm"} if run else set())
    if run and not remotes and not ledger.run(run):
        remotes = {None}  # a run the ledger never recorded: ask this machine's SLURM
    for remote in remotes:
        backend = _slurm_for(remote, store, ledger, settings=settings)
        try:
            count += backend.cancel([j for j in slurm if j.remote == remote], runs)
        finally:
            if remote is not None:
                backend.transport.close()
    return count
