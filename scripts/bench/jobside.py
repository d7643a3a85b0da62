#!/usr/bin/env python
"""Benchmark the job side: how long from process start to the task's ``_run``, from ``_run``'s end
to process exit, and how many store round trips one task costs.

    python scripts/bench/jobside.py [--runs 15] [--no-alyx]
    "$HPCPIPE_IBLLIB_PYTHON" scripts/bench/jobside.py    # with the ibllib task too (scripts/ibllib-env)

The job side runs as SLURM would start it (``python -m hpcpipe.jobside --run-dir ... --chunk c0
--index 0 --task-name Stamp``), but as a local subprocess, so the figures hold the job side's
own cost, not the scheduler's. The task (``tests.jobside.sample_tasks.Stamp``) writes the time
``_run`` started and ended; the process start is taken just before ``Popen`` (so it includes the
interpreter's own start-up, printed separately as ``python -c pass``).

Start-up is measured twice for each task kind (an hpcpipe ``Stamp``, and, where ibllib is
installed, the ibllib twin ``tests.ibllib.ibl_tasks.Stamp``): process start to ``_run``, which
*includes* the task's own module imports, and ``python -c "import <task module>"`` as a process,
the same imports without hpcpipe's job side; the difference is what hpcpipe adds. The modules a
task loads are listed (an hpcpipe task must load none of ibllib, pandas, ONE).

Store round trips:

* SQLite (embedded) store: the job never opens the database; it writes its result file, and
  the login node folds it (``hpcpipe status``): counted as the store calls the fold makes, and
  the result-file writes the job makes.
* Alyx test server (``tests/alyx_server``): HTTP requests the server received during one job,
  from its own request counter.

Prints figures; asserts nothing about time.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
PIPELINE = "tests.jobside.sample_tasks.Bench"


def median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:7.1f} ms (min {min(values) * 1000:.1f}, max {max(values) * 1000:.1f})"


def python_startup(env: dict, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.time()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
        out.append(time.time() - t0)
    return out


def write_run(run_dir: Path, store, session: Path, kind: str) -> str:
    from hpcpipe.jobside import runfolder
    from hpcpipe.settings import Settings

    eid = store.session_id(session)
    deck = store.list_tasks(session=eid)
    (run_dir / "sessions").mkdir(parents=True, exist_ok=True)
    (run_dir / "results").mkdir(exist_ok=True)
    (run_dir / "run.json").write_text(runfolder.run_json("bench", kind, "server", settings=Settings.load().for_job()))
    (run_dir / "sessions" / "c0.json").write_text(runfolder.sessions_json({0: runfolder.session_entry(eid, str(session), deck)}))
    return next(t["id"] for t in deck if t["name"] == "Stamp")


def one_job(env: dict, run_dir: Path, session: Path) -> tuple[float, float, list[str], int]:
    """(start -> _run, _run end -> exit, heavy modules loaded, exit code)."""
    for f in (run_dir / "results").glob("*.json"):
        f.unlink()
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "hpcpipe.jobside", "--run-dir", str(run_dir), "--chunk", "c0",
                           "--index", "0", "--task-name", "Stamp"], env=env, capture_output=True, text=True)
    t_exit = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"job side failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    stamp = json.loads((session / "alf" / "_bench_qc.metrics.json").read_text())
    return stamp["start"] - t0, t_exit - stamp["end"], stamp["modules"], proc.returncode


def import_time(env: dict, module: str, runs: int) -> list[float]:
    """``python -c "import MODULE"`` as a process: the task's own imports, no job side."""
    out = []
    for _ in range(runs):
        t0 = time.time()
        subprocess.run([sys.executable, "-c", f"import {module}"], env=env, check=True, capture_output=True)
        out.append(time.time() - t0)
    return out


def record(pipeline: str, session: Path, store) -> None:
    """The pipeline's records, the way submit makes them (ibllib classes get the ONE face)."""
    from hpcpipe.ibl import face_of, is_ibllib_pipeline
    from hpcpipe.pipelines import find_pipeline

    cls = find_pipeline(pipeline)
    cls(session, one=face_of(store) if is_ibllib_pipeline(cls) else store).create_alyx_tasks()


def bench_sqlite(root: Path, runs: int, pipeline: str = PIPELINE, tag: str = "hpcpipe") -> dict:
    env = dict(os.environ, HPCPIPE_HOME=str(root / f"home-{tag}"), HPCPIPE_CONFIG=str(root / "none.toml"),
               PYTHONPATH=str(REPO))
    os.environ.update(HPCPIPE_HOME=env["HPCPIPE_HOME"], HPCPIPE_CONFIG=env["HPCPIPE_CONFIG"])
    from hpcpipe.jobside import runfolder
    from hpcpipe.store.sqlite import SQLiteStore

    class Counting(SQLiteStore):
        calls = 0

        def __getattribute__(self, name):
            attr = super().__getattribute__(name)
            if name in ("update_task", "register_files", "get_task", "list_tasks", "session_path",
                        "session_id", "create_task", "list_datasets"):
                type(self).calls += 1
            return attr

    session = root / f"data-{tag}" / "lab" / "Subjects" / "B1" / "2026-01-01" / "001"
    session.mkdir(parents=True)
    store = SQLiteStore(Path(env["HPCPIPE_HOME"]) / "tasks.sqlite")
    record(pipeline, session, store)
    run_dir = root / f"run-sqlite-{tag}"
    task_id = write_run(run_dir, store, session, "sqlite")
    to_run, to_exit, modules = [], [], set()
    writes = folds = 0
    for _ in range(runs):
        a, b, mods, _ = one_job(env, run_dir, session)
        to_run.append(a)
        to_exit.append(b)
        modules.update(mods)
        text = (run_dir / "results" / f"{task_id}.json").read_text()
        writes = len(json.loads(text)["ops"])
        counting = Counting(Path(env["HPCPIPE_HOME"]) / "tasks.sqlite")
        Counting.calls = 0
        runfolder.fold(counting, [(task_id, text, 0)])
        folds = Counting.calls
    imports = import_time(env, pipeline.rpartition(".")[0], runs)
    return {"to_run": to_run, "to_exit": to_exit, "modules": sorted(modules), "job_store_calls": 0,
            "result_ops": writes, "fold_calls": folds, "env": env, "imports": imports}


def bench_alyx(root: Path, runs: int) -> dict | str:
    try:
        from tests.alyx_server import PASSWORD, USERNAME, AlyxServerProcess
        from tests.alyx_server.fixtures import _setup_world, admin_client, make_session
    except Exception as exc:  # noqa: BLE001
        return f"tests/alyx_server not importable ({exc})"
    server = AlyxServerProcess(root / "alyx.sqlite", throttle="100000/min")
    try:
        server.start()
    except Exception as exc:  # noqa: BLE001
        return f"the Alyx test server did not start ({exc})"
    try:
        _setup_world(server)
        config = root / "alyx.toml"
        config.write_text(f'[store]\nbackend = "alyx"\n\n[alyx]\nurl = "{server.url}"\nusername = "{USERNAME}"\n'
                          f'password = "{PASSWORD}"\nrepository = "hpc_server"\n')
        env = dict(os.environ, HPCPIPE_HOME=str(root / "home-alyx"), HPCPIPE_CONFIG=str(config),
                   PYTHONPATH=str(REPO))
        for key in [k for k in env if k.startswith(("HPCPIPE_ALYX_", "HPCPIPE_STORE_"))]:
            env.pop(key)
        os.environ.update(HPCPIPE_HOME=env["HPCPIPE_HOME"], HPCPIPE_CONFIG=env["HPCPIPE_CONFIG"])
        client = admin_client(server)
        session, eid = make_session(client, root / "data-alyx", "BENCH01", date="2026-01-01")
        from hpcpipe.store import open_store

        store = open_store()
        record(PIPELINE, session, store)
        run_dir = root / "run-alyx"
        task_id = write_run(run_dir, store, session, "alyx")
        # a first job logs in and caches the token (as the first job of a user does); not counted
        one_job(env, run_dir, session)
        to_run, to_exit, requests = [], [], []
        for _ in range(runs):
            client.patch(f"tasks/{task_id}", {"status": "Waiting"})
            server.stats(reset=True)
            a, b, _, _ = one_job(env, run_dir, session)
            stats = server.stats()
            requests.append(stats.get("total", sum(v for v in stats.values() if isinstance(v, int))))
            to_run.append(a)
            to_exit.append(b)
        client.close()
        return {"to_run": to_run, "to_exit": to_exit, "requests": requests, "last_stats": stats}
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--no-alyx", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hpcpipe-bench-") as tmp:
        root = Path(tmp)
        sq = bench_sqlite(root, args.runs)
        base = python_startup(sq["env"], args.runs)
        print(f"job side benchmark, {args.runs} runs each, python {sys.version.split()[0]}, "
              f"{os.cpu_count()} CPUs (load {os.getloadavg()[0]:.1f})")
        print(f"  python -c pass (interpreter alone):      {median_ms(base)}")
        print("SQLite store (job writes its result file; the login node folds it)")
        print(f"  process start -> _run start:             {median_ms(sq['to_run'])}")
        print(f"  _run end -> process exit:                {median_ms(sq['to_exit'])}")
        print(f"  store round trips from the job:          {sq['job_store_calls']} "
              f"(result-file operations recorded: {sq['result_ops']})")
        print(f"  store calls to fold one result:          {sq['fold_calls']}")
        print(f"  heavy modules loaded by the job side:    {', '.join(sq['modules']) or 'none'}")
        kinds = [("hpcpipe task (tests.jobside.sample_tasks.Stamp)", sq)]
        if importlib.util.find_spec("ibllib") is not None:
            kinds.append(("ibllib task (tests.ibllib.ibl_tasks.Stamp)",
                          bench_sqlite(root, args.runs, "tests.ibllib.ibl_tasks.Bench", "ibllib")))
        else:
            print("ibllib task: skipped (ibllib not installed here; run with the python of scripts/ibllib-env)")
        for label, res in kinds:
            share = statistics.median(res["to_run"]) - statistics.median(res["imports"])
            print(f"{label}, SQLite store")
            print(f"  process start -> _run start (with the task's imports): {median_ms(res['to_run'])}")
            print(f"  python -c 'import <task module>' (the task's imports): {median_ms(res['imports'])}")
            print(f"  hpcpipe's own share (difference of medians):         {share * 1000:7.1f} ms")
            print(f"  heavy modules loaded:                                {', '.join(res['modules']) or 'none'}")
        if args.no_alyx:
            print("Alyx test server: skipped (--no-alyx)")
            return 0
        al = bench_alyx(root, args.runs)
        if isinstance(al, str):
            print(f"Alyx test server: skipped: {al}")
            return 0
        print("Alyx test server (job reports directly over HTTP)")
        print(f"  process start -> _run start:             {median_ms(al['to_run'])}")
        print(f"  _run end -> process exit:                {median_ms(al['to_exit'])}")
        print(f"  HTTP requests per task (median):         {statistics.median(al['requests']):g} "
              f"(last run: {json.dumps(al['last_stats'], sort_keys=True)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
