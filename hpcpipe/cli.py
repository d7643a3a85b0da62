"""The ``hpcpipe`` command line.

Thin: parses arguments, opens the store and ledger, calls ``submission``/backends, prints.
Every expected failure (``HpcpipeError``) becomes one line on stderr and exit code 2 (bad input),
or 3 when the task store cannot be reached; ``--verbose`` shows logs (and tracebacks of
unexpected errors).

Exit codes: 0 success; 1 some task did not complete; 2 bad input; 3 the task store could not
be reached (a run whose tasks all completed but whose reports wait in the outbox; ``status``
showing what this machine knows); 130 interrupted.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path

from . import __version__, jsonview
from .errors import BadInput, HpcpipeError, Unreachable
from .settings import Settings, active
from .status import DONE, STATUSES, check_statuses

_logger = logging.getLogger("hpcpipe")
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


# ---------------------------------------------------------------------- helpers
def _store(settings: Settings):
    from .store import open_store, outbox

    store = open_store(settings=settings)
    replayed = outbox.sync(store, force=False)
    if replayed:
        _logger.info("replayed %d queued report(s) from the outbox", replayed)
    return store


def _ledger(settings: Settings):
    from .ledger import Ledger

    return Ledger(settings=settings)


def _pipeline_name(args, store, session_path: Path) -> str:
    """--pipeline, else the session's own (``resolve.resolve_pipeline``: config rule, experiment
    description, recorded graph, the only registered pipeline)."""
    from .resolve import resolve_pipeline

    return resolve_pipeline(session_path, store, args.settings, getattr(args, "pipeline", None))


def _pipelines(args, store, sessions) -> dict[str, list[int]]:
    """Each session's pipeline (one submit or backfill may cover several): session indices by
    pipeline name, every session resolved before anything is recorded."""
    if getattr(args, "pipeline", None):  # named once for all: nothing to resolve per session
        return {args.pipeline: list(range(len(sessions)))}
    by_pipeline: dict[str, list[int]] = {}
    for k, path in enumerate(sessions):
        by_pipeline.setdefault(_pipeline_name(args, store, path), []).append(k)
    return by_pipeline


def _plan_each(pipelines: dict[str, list[int]], sessions, store, ledger, **kwargs) -> list:
    """``plan_sessions`` once per pipeline; the plans in the sessions' order."""
    from .submission import plan_sessions

    plans: list = [None] * len(sessions)
    for pipeline, ks in pipelines.items():
        for k, plan in zip(ks, plan_sessions([sessions[k] for k in ks], pipeline, store, ledger, **kwargs)):
            plans[k] = plan
    return plans


def _alyx_check(store, sessions: list[Path], pipeline: str, settings: Settings, create: bool | None = None) -> None:
    """With Alyx: everything the pipeline needs that the server lacks, in one message, before
    anything is recorded (``hpcpipe.alyx.check``). ``create`` (default ``[alyx] create_missing``)
    creates the missing sessions and dataset types."""
    if getattr(store, "kind", "") != "alyx" or not sessions:
        return
    from .alyx import check
    from .submission import load_pipeline

    tasks = list(load_pipeline(sessions[0], pipeline, store).tasks.values())
    create = settings.alyx.create_missing if create is None else create
    check.check(store, sessions, tasks, create=create)


def _backend(args, store, ledger, sessions=()):
    """The backend named by --backend/--remote (``backends.open_backend``)."""
    from .backends import open_backend

    return open_backend(getattr(args, "backend", None) or args.settings.submit.backend, store, ledger,
                        getattr(args, "profile", None), getattr(args, "remote", None),
                        getattr(args, "accept_new_host_key", False), sessions, settings=args.settings)


def _say(line: str) -> None:
    print(f"hpcpipe: {line}", file=sys.stderr, flush=True)


def _refresh(store, ledger, settings: Settings, backend=None, remotes=None):
    """Fold, query and sweep every backend (``backends.refresh_all``); notes go to stderr."""
    from .backends import refresh_all

    report = refresh_all(store, ledger, backend, remotes, settings=settings)
    for note in dict.fromkeys(report.notes):
        _say(note)
    return report


def _checked(args, store, ledger, sessions, pipelines: dict[str, list[int]], backend=None):
    """The backend (``backend``: one already made), every check done before anything is
    recorded (limits, profile, paths, each session's pipeline, resources): a refused submission
    changes nothing anywhere."""
    from .submission import check_sessions

    if backend is None:
        backend = _backend(args, store, ledger, [getattr(s, "path", s) for s in sessions])
    dry = args.dry_run or bool(getattr(args, "emit", None))
    for pipeline, ks in pipelines.items():
        check_sessions([sessions[k] for k in ks], pipeline, store, lambda tasks: backend.check(tasks, dry_run=dry))
    return backend


def _lock(ledger, purpose: str):
    """The submission lock (``Ledger.lock``): one submission at a time on this machine."""
    return ledger.lock(purpose, on_wait=_say)


def _remote_backend(remote: str, store, ledger, settings: Settings):
    from .backends import remote_backend

    return remote_backend(remote, store, ledger, settings=settings)


def _live_states(store, ledger, settings: Settings) -> dict:
    """Refresh every backend (under the lock unless a submission holds it); SLURM states by task id."""
    report = _refresh_unless_busy(store, ledger, settings)
    return report.states if report else {}


def _slurm(backend):
    """The backend if it is SLURM's, else None (resource suggestions and escalation caps)."""
    return backend if backend.name == "slurm" else None


#: the task fields a status row shows (``log`` only when the reason is asked for: a finished
#: backfill's logs are megabytes nobody reads in a status table)
_ROW_FIELDS = ("id", "session", "name", "status", "level", "cpu", "gpu", "ram", "time_elapsed_secs")


def _rows(store, ledger, session: str | None, statuses: list[str], live: dict | None = None,
          reasons: bool = True) -> list[dict]:
    from .jobstate import display
    from .report.collect import failure_reason

    tasks = store.list_tasks(session=session, status=statuses or None,
                             fields=_ROW_FIELDS + (("log",) if reasons else ()))
    jobs = ledger.shown(None if session is None and not statuses else [t["id"] for t in tasks])
    live = live or {}
    none = (None, None, None, None)
    # a store that returns more than the fields asked for (Alyx): those are not shown
    extra = [k for k in (tasks[0] if tasks else ()) if k not in _ROW_FIELDS and k != "log"]
    for t in tasks:  # each record becomes its row in place (60,000 of them are not copied)
        for k in extra:
            t.pop(k, None)
        tid = t.pop("id")
        backend, job_id, job_state, job_reason = jobs.get(tid, none)
        state = live.get(tid)
        t["backend"], t["job_id"] = backend, job_id
        t["job_state"] = state.display() if state is not None else job_state and display(job_state, job_reason)
        t["reason"] = None if not reasons or t["status"] in DONE else (failure_reason(t) or job_reason)
        t.pop("log", None)
    return tasks


def _json_rows(rows: list[dict], local: bool, reasons: bool) -> list[dict]:
    """Status rows as ``status --json`` prints them (changed in place: 60,000 rows are not copied)."""
    for r in rows:
        del r["job_state"]
        r["local"] = local
        if not reasons:
            del r["reason"]
    return rows


def _print_json(rows: list[dict]) -> None:
    """One JSON list on one line, through json's C encoder in one call (``indent`` makes json
    fall back to its pure-Python encoder: seconds for a backfill's 60,000 tasks). Pipe it to
    ``jq`` to read it."""
    sys.stdout.write(json.dumps(rows, separators=(",", ":")) + "\n")


def _print_local(rows: list[dict], store, why: str, reasons: bool = False) -> None:
    """The table from local knowledge, marked as such, and why (stderr)."""
    from .store import outbox

    _print_table(rows, store, reasons=reasons)
    print(f"(local: the task store cannot be reached ({why}); statuses from this machine's job results "
          f"and its outbox, {len(outbox.pending(store))} report(s) queued: run `hpcpipe sync` when it is back)",
          file=sys.stderr)


def _print_table(rows: list[dict], store, reasons: bool = False) -> None:
    """The status table; sessions in their shortest distinguishing form (``session.short_names``)."""
    from .session import short_names
    from .texttable import render

    paths = store.session_paths(s for s in {r["session"] for r in rows} if s)
    names = short_names([p for p in paths.values() if p])
    shown = {s: names[p] if p else str(s) for s, p in paths.items()}
    table = []
    for r in rows:
        elapsed = "" if r["time_elapsed_secs"] is None else f"{r['time_elapsed_secs']:.1f}s"
        table.append([shown.get(r["session"]) or str(r["session"]), r["name"], r["status"], r["level"], r["cpu"],
                      r["gpu"], r["ram"], elapsed, r["backend"] or "", r["job_id"] or "", r["job_state"] or ""]
                     + ([(r["reason"] or "")[:100]] if reasons else []))
    print(render(table, ["session", "task", "status", "level", "cpu", "gpu", "ram", "elapsed", "backend", "job id",
                         "job state"] + (["reason"] if reasons else []), right=("level", "cpu", "gpu", "ram")))


def _where_for(backend):
    """Where a task's job runs, as resource suggestions name it: ``local`` or ``slurm:<partition>``."""
    if backend is None:
        return lambda task: "local"
    return lambda task: f"slurm:{backend.partition_of(task)}"


def _apply_resources(args, plans, store, backend, keep=None) -> None:
    """Resource suggestions the user opted in to, applied to the planned records and printed."""
    from . import resources

    for line in resources.apply(plans, store, _where_for(backend), dry_run=args.dry_run, keep=keep,
                                settings=args.settings):
        print(line)


# ---------------------------------------------------------------------- commands
def cmd_demo_session(args) -> int:
    from .demo.session import make_session

    print(make_session(args.path, fail=tuple(args.fail or ()), duration=args.duration))
    return 0


def cmd_submit(args) -> int:
    from .session import parse_session_path

    check_statuses(args.status)
    check_statuses(args.rerun)
    sessions = [parse_session_path(s).path for s in args.session]
    if _packed(args):
        args.backend = "slurm"
        _pack_shape(args)
    store, ledger = _store(args.settings), _ledger(args.settings)
    pipelines = _pipelines(args, store, sessions)
    for pipeline, ks in pipelines.items():
        _alyx_check(store, [sessions[k] for k in ks], pipeline, args.settings)
    backend = _checked(args, store, ledger, sessions, pipelines)
    with contextlib.ExitStack() as held:
        held.enter_context(_lock(ledger, "hpcpipe submit"))
        _refresh(store, ledger, args.settings, backend)
        plans = _plan_each(pipelines, sessions, store, ledger, statuses=args.status or ["Waiting"],
                           names=args.task, dry_run=args.dry_run, rerun_statuses=args.rerun,
                           live_backend=backend.name)
        _apply_resources(args, plans, store, _slurm(backend))
        return _execute(args, plans, store, ledger, backend, held)


def _execute(args, plans, store, ledger, backend, held) -> int:
    """Submit through any backend inside the submission lock (``held``). A backend that runs in
    the foreground (the local engine) calls back once its intents are recorded: the lock is
    released there, so other submissions go on while the tasks run."""
    from .engines.local import run_root
    from .submission import Run

    for plan in plans:
        for task, reason in plan.skipped:
            print(f"skip {task['name']}: {reason}")
        for task, reason in plan.held:
            print(f"held {task['name']}: {reason}")
    if not any(plans):
        print(f"nothing to {backend.verb}")
        return EXIT_OK
    run = Run.new(run_root(args.settings), prefix="hp")
    if _packed(args):
        return _pack(args, backend, plans, run.id)

    def recorded(report) -> None:
        held.close()
        print(f"run {report.run_id}: logs in {report.run_dir}/logs", flush=True)

    report = backend.submit(plans, run.id, dry_run=args.dry_run, recorded=recorded)
    if args.dry_run:
        print("\n".join(report.commands))
        print(report.dry_note())
        return EXIT_OK
    if report.final is None:  # queued: the jobs report as they run
        print(report.summary())
        return EXIT_OK
    return _finished(report.final, plans, store, ledger)


def _finished(final: dict[str, str], plans, store, ledger) -> int:
    """After a run in the foreground: the table (from local results if the store cannot be
    reached or reports are still queued) and the exit code."""
    from .store import outbox

    done = EXIT_OK if all(s in DONE for s in final.values()) else EXIT_FAILED
    why = "reports could not be delivered"
    if not outbox.pending(store):
        try:
            _print_table([r for s in {p.session for p in plans} for r in _rows(store, ledger, s, [])], store)
            return done
        except Unreachable as exc:
            why = str(exc)
    from .localview import local_rows

    _print_local(local_rows(store, ledger, [it.task for p in plans for it in p.items], final), store, why)
    return EXIT_UNREACHABLE if done == EXIT_OK else done


def _packed(args) -> bool:
    return bool(getattr(args, "pack", False) or getattr(args, "emit", None))


def _pack_shape(args):
    """The allocation shape from the flags; checked before anything is recorded."""
    from .slurm.pack import PackShape

    if not _packed(args):
        return None
    if args.emit and (args.pack_allocations != 1 or args.pack_split != "none"):
        raise BadInput("--emit writes one script for one allocation: drop --pack-allocations and --pack-split")
    return PackShape(nodes=args.pack_nodes, cpus=args.pack_cpus, gpus=args.pack_gpus, ram=args.pack_mem,
                     time_secs=args.pack_time * 60 if args.pack_time is not None else None,
                     allocations=args.pack_allocations, split=args.pack_split)


def _pack(args, backend, plans, run_id: str) -> int:
    """``--pack`` / ``--emit DIR``: the plans as a few allocations (``slurm.pack``)."""
    emit = str(Path(args.emit).expanduser().resolve()) if args.emit else None
    report = backend.pack(plans, run_id, _pack_shape(args), dry_run=args.dry_run, emit_dir=emit)
    if emit:
        print(f"run {run_id}: {report.elements} task(s) in one script; nothing submitted. Submit it with:")
        print(f"  {report.commands[0]}")
        print("\n".join(report.commands[1:]))
        return 0
    if args.dry_run:
        print("\n".join(report.commands))
        print(f"dry run: scripts written to {report.run_dir}/scripts; nothing submitted")
        return 0
    print(report.summary())
    return 0


def cmd_rerun(args) -> int:
    from .session import parse_session_path
    from .submission import plan_sessions

    session = parse_session_path(args.session).path
    store, ledger = _store(args.settings), _ledger(args.settings)
    pipeline = _pipeline_name(args, store, session)
    rerun = check_statuses((args.status or []) + (["Errored"] if args.failed else []) or ["Errored"])
    backend = _checked(args, store, ledger, [session], {pipeline: [0]})
    with contextlib.ExitStack() as held:
        held.enter_context(_lock(ledger, "hpcpipe rerun"))
        _refresh(store, ledger, args.settings, backend)
        escalations = {}
        if args.escalate:  # read before planning: a rerun resets the records to the class's values
            from .jobside import escalate

            failed = [t for t in store.list_tasks(session=store.session_id(session), status=rerun)
                      if not args.task or t["name"] in args.task]
            escalations = escalate.plan(failed, _slurm(backend), floors=_suggested(failed, _slurm(backend), args.settings),
                                        settings=args.settings)
        plans = plan_sessions([session], pipeline, store, ledger, statuses=["Waiting"] + rerun,
                              names=args.task, dry_run=args.dry_run, rerun_statuses=rerun,
                              live_backend=backend.name)
        _apply_resources(args, plans, store, _slurm(backend),
                         keep={tid: {e.field} for tid, e in escalations.items() if e.raised})
        if escalations:
            for esc in (escalate.apply(store, plans, escalations) if not args.dry_run else escalations.values()):
                print(f"{esc.name}: {esc.line()}")
        return _execute(args, plans, store, ledger, backend, held)


def _suggested(tasks: list[dict], backend, settings: Settings) -> dict[str, dict]:
    """The suggestion for each task's class and place, when the user applies suggestions."""
    from . import resources

    if not resources.opted_in(settings):
        return {}
    table, where = resources.load(settings=settings), _where_for(backend)
    return {t["id"]: table[(t.get("executable") or "", where(t))] for t in tasks
            if (t.get("executable") or "", where(t)) in table}


def _refresh_unless_busy(store, ledger, settings: Settings, remotes=None):
    """A refresh under the lock if no submission holds it; else nothing changes (and it says so)."""
    from .ledger import Busy

    try:
        with ledger.lock("hpcpipe status", wait=settings.status.lock_wait_secs):
            return _refresh(store, ledger, settings, remotes=remotes)
    except Busy as exc:
        _say(f"{exc}; job states not refreshed")
        return None


def cmd_status(args) -> int:
    statuses = check_statuses(args.status)
    store, ledger = _store(args.settings), _ledger(args.settings)
    from .store import health

    health.brief(store)  # an unreachable store: local knowledge at once, not the retry budget per read
    remotes: dict = {}  # one SLURM backend per cluster (one watcher, one SSH connection) for every poll
    try:
        while True:
            why = None
            try:
                session = None
                if args.session:
                    from .session import parse_session_path

                    session = store.session_id(parse_session_path(args.session).path)
                report = _refresh_unless_busy(store, ledger, args.settings, remotes)
                if args.json and not args.reason and jsonview.can_render(store):  # the rows joined by SQLite
                    sys.stdout.write(jsonview.status_json(store, ledger, _ROW_FIELDS, session, statuses) + "\n")
                else:
                    rows = _rows(store, ledger, session, statuses, report.states if report else None,
                                 reasons=args.reason)
                    _print_status(args, rows, store, None)
            except Unreachable as exc:  # show what this machine knows, marked as such
                why = str(exc)
                _print_status(args, _local_status(store, ledger, args.session, statuses), store, why)
            if not args.watch:
                return EXIT_OK if why is None else EXIT_UNREACHABLE
            try:
                time.sleep(args.watch)
            except KeyboardInterrupt:  # Ctrl-C ends --watch; nothing runs here to stop
                return EXIT_OK
            print()
    finally:
        for backend in remotes.values():
            backend.transport.close()


def _print_status(args, rows: list[dict], store, why: str | None) -> None:
    """Status rows as asked (``--json`` or the table); ``why``: the store is unreachable, so the
    rows are this machine's knowledge, marked as such."""
    if args.json:
        _print_json(_json_rows(rows, local=why is not None, reasons=args.reason))
    elif why is None:
        _print_table(rows, store, reasons=args.reason)
    else:
        _print_local(rows, store, why, reasons=args.reason)


def _local_status(store, ledger, session_arg: str | None, statuses: list[str]) -> list[dict]:
    from .localview import local_rows

    rows = local_rows(store, ledger)
    if session_arg:
        from .session import parse_session_path

        want = parse_session_path(session_arg, must_exist=False).path
        rows = [r for r in rows if r["session"] and store.session_path(r["session"]) == want]
    return [r for r in rows if not statuses or r["status"] in statuses]


def cmd_sweep(args) -> int:
    """What ``status`` does before printing, alone and quiet (for cron): fold job results and
    record the tasks of jobs that ended without reporting (Errored, Held, or Waiting if requeued)."""
    store, ledger = _store(args.settings), _ledger(args.settings)
    report = _refresh_unless_busy(store, ledger, args.settings)
    if report is None:
        return 0
    print(f"sweep: {report.swept} task(s) recorded; {report.checked} SLURM job(s) checked; "
          f"{report.lost} lost, {report.adopted} adopted, {report.unsubmitted} never submitted; "
          f"{len(ledger.live())} job(s) still queued or running")
    return 0


def cmd_graph(args) -> int:
    from .session import parse_session_path
    from .submission import load_pipeline

    store = _store(args.settings)
    session = parse_session_path(args.session).path
    pipe = load_pipeline(session, _pipeline_name(args, store, session), store)
    print(pipe.make_graph(out_dir=args.out or session))
    return 0


def cmd_sync(args) -> int:
    from .store import open_store, outbox

    store, ledger = open_store(settings=args.settings), _ledger(args.settings)
    replayed = outbox.sync(store, force=True)
    _refresh_unless_busy(store, ledger, args.settings)
    from . import recorder

    for run_dir, missing in recorder.resume(store, ledger.run_dirs(), args.settings).items():
        print(f"records of {Path(run_dir).name}: " + ("a recorder is at work on them" if missing is None else
                                                       f"{missing} still missing" if missing else "all made"))
    _refresh_unless_busy(store, ledger, args.settings)  # the records just made: the ledger takes their ids
    print(f"replayed {replayed} report(s); {len(outbox.pending(store))} still queued")
    return 0


def cmd_alyx_check(args) -> int:
    from .session import parse_session_path

    store = _store(args.settings)
    if getattr(store, "kind", "") != "alyx":
        raise BadInput("the task store is not Alyx: set [store] backend = \"alyx\" (README, With Alyx)")
    sessions = [parse_session_path(s, must_exist=False).path for s in args.session]
    pipeline = _pipeline_name(args, store, None)
    _alyx_check(store, sessions, pipeline, args.settings, create=args.create)
    print(f"Alyx at {store.base_url} has everything pipeline {pipeline} needs for {len(sessions)} session(s)")
    return 0


def _read_sessions_file(path: str) -> list[str]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise BadInput(f"cannot read sessions file {path}: {exc.strerror}") from None
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def cmd_backfill(args) -> int:
    import gc

    from .engines.local import run_root
    from .session import parse_session_paths
    from .submission import Run

    # a backfill makes hundreds of thousands of records that all stay alive until it ends: the
    # default collector thresholds would walk them again and again for no garbage
    gc.set_threshold(200_000, 50, 1000)

    store, ledger = _store(args.settings), _ledger(args.settings)
    ahead = _slurm_ahead(args, store, ledger)
    sessions = list(args.session or [])
    if args.sessions_file:
        sessions += _read_sessions_file(args.sessions_file)
    if args.query:
        for s in check_statuses(args.query):
            for eid in {t["session"] for t in store.list_tasks(status=s, name=None)}:
                path = store.session_path(eid)
                if path is not None:
                    sessions.append(str(path))
    if not sessions:
        raise BadInput("no sessions: give --session, --sessions-file or --query STATUS")
    refs = parse_session_paths(sessions)  # all checked first, in one pass
    paths = [r.path for r in refs]
    if args.throttle is not None and args.throttle < 1:
        raise BadInput(f"--throttle {args.throttle} must be at least 1")
    _pack_shape(args)
    pipelines = _pipelines(args, store, paths)
    for pipeline, ks in pipelines.items():
        _alyx_check(store, [paths[k] for k in ks], pipeline, args.settings)
    args.backend = "slurm"
    statuses = ["Waiting"] + check_statuses(args.rerun)
    backend = _checked(args, store, ledger, refs, pipelines, ahead)
    defer = _defer_records(args, store, backend)
    with _lock(ledger, "hpcpipe backfill"):
        _refresh(store, ledger, args.settings, backend)
        plans = _plan_each(pipelines, refs, store, ledger, statuses=statuses, names=args.task,
                           dry_run=args.dry_run, rerun_statuses=args.rerun, live_backend="slurm",
                           defer_records=defer)
        _apply_resources(args, plans, store, backend)
        if not any(plans):
            if defer:  # no job to queue first: the new records (Held, or not asked for) are made now
                from . import recorder

                recorder.record_now(store, [p.deck for p in plans if p is not None])
            print("nothing to submit")
            return 0
        run = Run.new(run_root(args.settings), prefix="bf")
        if _packed(args):
            return _pack(args, backend, plans, run.id)

        def progress(done: int, total: int) -> None:
            bar = "#" * (30 * done // total)
            print(f"\rsubmitting [{bar:<30}] chunk {done}/{total}", end="\n" if done == total else "",
                  file=sys.stderr, flush=True)

        report = backend.backfill(plans, run.id, throttle=args.throttle, dry_run=args.dry_run, progress=progress,
                                  deferred=defer)
    if args.dry_run:
        print("\n".join(report.commands))
        print(f"dry run: scripts written to {report.run_dir}/scripts; nothing submitted")
    print(f"{len(paths)} session(s): " + report.summary())
    if defer:
        from . import recorder

        todo = sum(recorder.is_provisional(t["id"]) for p in plans if p is not None for t in p.deck)
        if args.settings.alyx.background_recorder:
            pid = recorder.spawn(report.run_dir)
            print(f"recording {todo} task(s) on Alyx in the background (pid {pid}, log {report.run_dir}/logs/"
                  f"recorder.log); jobs that start first make their own; `hpcpipe sync` resumes it if it stops")
        else:
            print(f"{todo} task record(s) to make on Alyx: each job makes its own as it starts; "
                  "`hpcpipe sync` makes the others")
    return 0


def _slurm_ahead(args, store, ledger):
    """This machine's SLURM backend with its limits being read on a thread
    (``SlurmBackend.read_limits_ahead``) while the session paths are read and checked; None
    with ``--remote`` (the paths are mapped before connecting) or when the backend cannot be
    made yet (``_checked`` then says why, after the path checks, as before)."""
    if getattr(args, "remote", None):
        return None
    from .slurm.backend import SlurmBackend

    try:
        backend = SlurmBackend(store, ledger, profile=getattr(args, "profile", None), settings=args.settings)
    except HpcpipeError:  # a bad profile: refused by ``_checked``, after the path checks
        return None
    backend.read_limits_ahead()
    return backend


def _defer_records(args, store, backend) -> bool:
    """Whether a backfill queues first and makes its records afterwards (``hpcpipe.recorder``):
    on Alyx (no bulk create, a throttle), submitting from this machine (the recorder and the jobs
    share the run folder), unless ``[alyx] defer_records = false``."""
    return (getattr(store, "kind", "") == "alyx" and not args.dry_run and not _packed(args)
            and backend.remote is None and args.settings.alyx.defer_records)


def cmd_cancel(args) -> int:
    from .backends import cancel
    from .session import parse_session_path

    if not (args.session or args.run or args.task):
        raise BadInput("say what to cancel: --session PATH, --run ID or --task NAME")
    store, ledger = _store(args.settings), _ledger(args.settings)
    session = store.session_id(parse_session_path(args.session).path) if args.session else None
    with _lock(ledger, "hpcpipe cancel"):
        _refresh(store, ledger, args.settings)
        count = cancel(store, ledger, session=session, run=args.run, tasks=args.task, settings=args.settings)
    print(f"cancelled {count} job(s)" if count else "no live job matches")
    return 0


class _Transports:
    """sacct's way to each cluster, opened on first use: this machine, or the ``--remote``
    target's connection (one per target); closed when the command ends."""

    def __init__(self, store, ledger, settings: Settings) -> None:
        self.store, self.ledger, self.settings, self.opened = store, ledger, settings, {}

    def __call__(self, remote):
        if remote not in self.opened:
            if remote is None:
                from .transport import LocalTransport

                self.opened[remote] = LocalTransport()
            else:
                self.opened[remote] = _remote_backend(remote, self.store, self.ledger, self.settings).transport
        return self.opened[remote]

    def __enter__(self) -> "_Transports":
        return self

    def __exit__(self, *exc) -> None:
        for transport in self.opened.values():
            transport.close()


def _selection(args, store) -> dict:
    from .report.collect import parse_when

    selection = {"run": getattr(args, "run", None), "pipeline": args.pipeline,
                 "since": parse_when(args.since) if args.since else None,
                 "until": parse_when(args.until) if args.until else None, "session": None}
    if args.session:
        from .session import parse_session_path

        selection["session"] = store.session_id(parse_session_path(args.session).path)
    return selection


def cmd_report(args) -> int:
    from .report import table
    from .report.collect import collect
    if args.html:
        from .report.html import require_extra

        require_extra()  # before any work: a missing extra is one line
    store, ledger = _store(args.settings), _ledger(args.settings)
    selection = _selection(args, store)
    _live_states(store, ledger, args.settings)
    with _Transports(store, ledger, args.settings) as transports:
        report = collect(store, ledger, transport_for=transports, history=args.all_attempts, **selection)
    report.title = "hpcpipe report: " + ", ".join(f"{k} {v}" for k, v in
                                                  (("run", args.run), ("session", args.session),
                                                   ("pipeline", args.pipeline), ("since", args.since),
                                                   ("until", args.until)) if v) if any(
        (args.run, args.session, args.pipeline, args.since, args.until)) else "hpcpipe report: every task"
    if not report.rows:
        print("no task matches")
        return 0
    print(table.render(report))
    if args.html:
        from .report import html

        print(f"report written to {html.write(report, args.html, group_by=args.group_by)}")
    return 0


def cmd_resources(args) -> int:
    from . import resources
    from .report.collect import collect
    from .texttable import render

    store, ledger = _store(args.settings), _ledger(args.settings)
    selection = _selection(args, store)
    _live_states(store, ledger, args.settings)
    with _Transports(store, ledger, args.settings) as transports:
        report = collect(store, ledger, transport_for=transports, history=True, **selection)
    limits: dict = {}

    def caps_for(where: str):
        if not where.startswith("slurm:"):
            return None, None
        if "limits" not in limits:
            from .errors import BackendError
            from .slurm.limits import ClusterLimits
            from .transport import LocalTransport

            try:
                limits["limits"] = ClusterLimits.read(LocalTransport())
            except BackendError:
                limits["limits"] = None
        return limits["limits"].caps(where.split(":", 1)[1]) if limits["limits"] else (None, None)

    found = resources.from_rows(report.rows, caps_for, settings=args.settings)
    for note in report.notes:
        print(f"note: {note}")
    if not found:
        print("no successful measured run to learn from")
        return 0
    print(render([[s.name, s.where, s.runs, f"{s.req_cpu} -> {s.cpu}", f"{s.req_ram:g} -> {s.ram:g}",
                   f"{s.req_time_out_secs:g} -> {s.time_out_secs}", f"{s.max_rss_mb:.1f}", f"{s.max_elapsed_secs:.0f}"]
                  for s in found],
                 ["task class", "where", "runs", "cpu", "ram GB", "time s", "max rss MB", "max elapsed s"]))
    if args.write is not None:
        path = resources.write(found, args.write or None, settings=args.settings)
        print(f"suggestions written to {path}; submissions apply them with [resources] apply = true")
    return 0


def cmd_log(args) -> int:
    from .report.tasklog import find_tasks, task_log

    if not args.id and not (args.session and args.task):
        raise BadInput("say which task: --id TASK_ID, or --session PATH --task NAME")
    store, ledger = _store(args.settings), _ledger(args.settings)
    session = None
    if args.session:
        from .session import parse_session_path

        session = store.session_id(parse_session_path(args.session).path)
    _live_states(store, ledger, args.settings)
    with _Transports(store, ledger, args.settings) as transports:
        logs = [task_log(task, ledger, transports) for task in find_tasks(store, args.id, session, args.task)]
    for tl in logs:
        task = tl.task
        print(f"task {task['name']} ({task['id']}): {task['status']}")
        if tl.job is not None:
            print(f"job: {tl.job.backend} {tl.step or tl.job.backend_id}, run {tl.job.run_id}")
            u = tl.usage
            if u is not None and u.state:
                code = "" if u.exit_code is None else f", exit code {u.exit_code}:{u.signal or 0}"
                print(f"ended: {u.state}{code}" + (f", reason {u.reason}" if u.reason else ""))
            elif tl.job.state:
                print(f"state: {tl.job.state}" + (f" ({tl.job.reason})" if tl.job.reason else ""))
            print(f"stdout/stderr: {tl.output or 'unknown (the job did not start or saved no result)'}")
        lines = tl.lines(args.tail)
        what = "log" if task.get("log") else "job output (the task recorded no log)"
        print(f"----- {what}" + (f", last {args.tail} lines" if args.tail else "") + " -----")
        print("\n".join(lines))
    return 0


# ---------------------------------------------------------------------- parser
def _add_remote_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--remote", metavar="CLUSTER", help="submit through a login node over SSH: a [clusters.NAME] "
                   "from the config, or [user@]host[:port] (implies --backend slurm)")
    p.add_argument("--accept-new-host-key", action="store_true",
                   help="accept and record the host key of a host seen for the first time")


def _add_pack_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("packed execution (many tasks in a few allocations; docs/PACK.md)")
    g.add_argument("--pack", action="store_true", help="run the tasks as job steps inside a few allocations")
    g.add_argument("--emit", metavar="DIR", help="hand-submit mode: write one sbatch script and the run folder "
                   "into DIR, submit nothing, print the command to type (implies --pack)")
    g.add_argument("--pack-nodes", type=int, metavar="N", help="nodes per allocation (default 1)")
    g.add_argument("--pack-cpus", type=int, metavar="N", help="CPUs per node (default: sized by the work)")
    g.add_argument("--pack-gpus", type=int, metavar="N", help="GPUs per node (default: what GPU tasks ask)")
    g.add_argument("--pack-mem", type=float, metavar="GB", help="memory per node (default: sized by the work)")
    g.add_argument("--pack-time", type=int, metavar="MIN", help="time limit of each allocation, minutes")
    g.add_argument("--pack-allocations", type=int, default=1, metavar="K",
                   help="spread the sessions over K allocations per lane (default 1)")
    g.add_argument("--pack-split", default="none", metavar="RULE",
                   help="lanes with their own allocation: none (default), gpu, long:SECS (time_out_secs above), "
                        "tasks:A,B (these task types)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpcpipe", description="Run session pipelines on this machine or SLURM.")
    parser.add_argument("--version", action="version", version=f"hpcpipe {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show logs and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("submit", help="record a session's pipeline and run its Waiting tasks")
    p.add_argument("--session", action="append", required=True, metavar="PATH", help="session folder (repeatable)")
    p.add_argument("--pipeline", help="entry-point name or package.module.Class")
    p.add_argument("--backend", help="local or slurm (default: [submit] backend, local)")
    p.add_argument("--profile", help="SLURM site profile (default: [slurm] profile, or generic)")
    p.add_argument("--status", action="append", metavar="S", help="run tasks in this status (default Waiting)")
    p.add_argument("--rerun", action="append", metavar="S", help="reset tasks in this status to Waiting first")
    p.add_argument("--task", action="append", metavar="NAME", help="only these task names")
    _add_remote_args(p)
    _add_pack_args(p)
    p.add_argument("--dry-run", action="store_true", help="say what would run; change nothing")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("rerun", help="run again a session's tasks in some statuses (default Errored)")
    p.add_argument("--session", required=True, metavar="PATH")
    p.add_argument("--pipeline")
    p.add_argument("--status", action="append", metavar="S", help=f"one of {', '.join(STATUSES)}")
    p.add_argument("--task", action="append", metavar="NAME")
    p.add_argument("--backend", help="local or slurm (default: [submit] backend, local)")
    p.add_argument("--profile")
    _add_remote_args(p)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--failed", action="store_true", help="rerun Errored tasks (same as --status Errored)")
    p.add_argument("--escalate", action="store_true",
                   help="by the cause of each ending: more RAM after a memory kill, more time after a timeout "
                        "([escalate] ram_factor, time_factor; capped by the partition's limits), the same after "
                        "preemption or a node failure, no escalation after a Python error")
    p.set_defaults(func=cmd_rerun)

    p = sub.add_parser("backfill", help="submit many sessions to SLURM as job arrays")
    p.add_argument("--session", action="append", metavar="PATH")
    p.add_argument("--sessions-file", metavar="FILE", help="one session path a line")
    p.add_argument("--query", action="append", metavar="STATUS",
                   help="sessions with a task in this status in the store")
    p.add_argument("--pipeline")
    p.add_argument("--task", action="append", metavar="NAME", help="only these task names")
    p.add_argument("--rerun", action="append", metavar="S", help="reset tasks in this status to Waiting first")
    p.add_argument("--throttle", type=int, metavar="N", help="at most N elements of an array at once (%%N)")
    p.add_argument("--profile")
    _add_remote_args(p)
    _add_pack_args(p)
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(func=cmd_backfill)

    p = sub.add_parser("cancel", help="scancel the live SLURM jobs of a session, run or task")
    p.add_argument("--session", metavar="PATH")
    p.add_argument("--run", metavar="ID")
    p.add_argument("--task", action="append", metavar="NAME")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("status", help="table of task status, resources and jobs")
    p.add_argument("--session", metavar="PATH")
    p.add_argument("--status", action="append", metavar="S")
    p.add_argument("--json", action="store_true", help="JSON list of task records, for scripts")
    p.add_argument("--watch", type=float, metavar="SECS", help="refresh every SECS seconds")
    p.add_argument("--reason", action="store_true", help="show why each task that did not complete ended")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("sweep", help="fold job results; record tasks whose job died (for cron)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("graph", help="write the pipeline picture (Graphviz)")
    p.add_argument("--session", required=True, metavar="PATH")
    p.add_argument("--pipeline")
    p.add_argument("--out", metavar="DIR")
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("demo-session", help="generate a synthetic session for the demo pipeline")
    p.add_argument("path", help="a session path, or a root to create one under")
    p.add_argument("--fail", action="append", metavar="TASK", help="make this demo task fail in the session")
    p.add_argument("--duration", type=float, default=120.0, metavar="SECS", help="recording length (size)")
    p.set_defaults(func=cmd_demo_session)

    p = sub.add_parser("alyx", help="Alyx set-up: `hpcpipe alyx check` lists what the server lacks")
    alyx_sub = p.add_subparsers(dest="alyx_command", required=True, metavar="ACTION")
    p = alyx_sub.add_parser("check", help="everything a pipeline needs that the Alyx server lacks, in one message")
    p.add_argument("--session", action="append", required=True, metavar="PATH", help="session folder (repeatable)")
    p.add_argument("--pipeline")
    p.add_argument("--create", action="store_true",
                   help="create the missing sessions (and subjects) and dataset types, where you have the rights")
    p.set_defaults(func=cmd_alyx_check)

    p = sub.add_parser("sync", help="replay reports queued while the store was unreachable")
    p.set_defaults(func=cmd_sync)

    def _select_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--session", metavar="PATH")
        p.add_argument("--pipeline", metavar="NAME", help="tasks of this graph only")
        p.add_argument("--since", metavar="WHEN", help="jobs submitted since: YYYY-MM-DD[THH:MM] or an age (6h, 2d)")
        p.add_argument("--until", metavar="WHEN")

    p = sub.add_parser("report", help="what the jobs used: requested vs measured, efficiency, failures")
    p.add_argument("--run", metavar="ID", help="the tasks of one run")
    _select_args(p)
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page (timeline, graph)")
    p.add_argument("--group-by", choices=("session", "task"), default="session", help="timeline grouping")
    p.add_argument("--all-attempts", action="store_true", help="one row per job, not per task")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("resources", help="suggest cpu/ram/time per task class from past runs")
    _select_args(p)
    p.add_argument("--write", nargs="?", const="", metavar="FILE",
                   help="save the suggestions (default [resources] file, <home>/resources.toml)")
    p.set_defaults(func=cmd_resources)

    p = sub.add_parser("log", help="a task's log, its job's output file and how the job ended")
    p.add_argument("--id", metavar="TASK_ID")
    p.add_argument("--session", metavar="PATH")
    p.add_argument("--task", metavar="NAME")
    p.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    p.set_defaults(func=cmd_log)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        # the edge: the configuration is read here, once; jobs get theirs through run.json
        args.settings = Settings.load()
        with active(args.settings):
            return args.func(args)
    except HpcpipeError as exc:
        if args.verbose:
            _logger.exception("failed")
        one_line = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"hpcpipe: error: {one_line}", file=sys.stderr)
        return EXIT_UNREACHABLE if isinstance(exc, Unreachable) else EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        print(f"hpcpipe: interrupted ({exc or 'Ctrl-C'}); running tasks stopped and set back to Waiting",
              file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
