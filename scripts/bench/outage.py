#!/usr/bin/env python
"""Benchmark an Alyx outage: does it cost time, and does `hpcpipe sync` heal it exactly?

    python scripts/bench/outage.py [--task-secs 4] [--client hpcpipe|one]

Two sessions on the Alyx test server (tests/alyx_server), the same 5-task pipeline
(``tests.sample_pipelines.OutageBench``: tasks of ``--task-secs`` seconds shaped like the
demo), each run as a user runs it: ``hpcpipe submit`` as a whole process from the shell, with
hpcpipe's default retry settings.

* undisturbed: Alyx up all along;
* outage: Alyx is stopped as soon as the first task has reported Started, and stays down until
  the run ends; then it is started again and ``hpcpipe sync`` replays the queued reports.

Prints both wall times and their ratio (target: at most 1.2), the exit codes, and the server
state of the two sessions after the sync side by side: task statuses, versions, logs (digits
blanked: times and pids differ; the outage run's logs also hold the client's "Alyx unreachable"
warnings, counted apart), datasets (name, collection, hash, size, version) and file
records (repository, path inside the session, exists) -- nothing lost, nothing doubled.
In-process figures beside them: the task work as the tasks measured it (``time_elapsed_secs``).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
PIPELINE = "tests.sample_pipelines.OutageBench"
#: lines the store's client writes into a task's log while Alyx is down (kept: they say what happened)
OUTAGE_LINE = re.compile(r"\[(client|health)\.py:\d+\]")


def submit(env: dict, session: Path, stop_when_started=None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "hpcpipe.cli", "submit", "--session", str(session),
                             "--pipeline", PIPELINE], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    watcher = None
    if stop_when_started is not None:
        watcher = threading.Thread(target=stop_when_started, daemon=True)
        watcher.start()
    out, err = proc.communicate(timeout=1800)
    wall = time.monotonic() - t0
    if watcher is not None:
        watcher.join()
    return wall, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def state(client, eid: str) -> dict:
    """What Alyx holds for a session, comparable across sessions."""
    tasks = client.get("tasks", session=eid)
    names = {t["id"]: t["name"] for t in tasks}
    datasets = client.get("datasets", session=eid)
    prefix = re.compile(r"^[^/]+/\d{4}-\d{2}-\d{2}/\d{3}/")
    return {
        "tasks": sorted((t["name"], t["status"], t["version"], tuple(sorted(names[p] for p in t["parents"])))
                        for t in tasks),
        "logs": sorted((t["name"], re.sub(r"\d+", "0", "".join(ln for ln in (t["log"] or "").splitlines(True)
                                                            if not OUTAGE_LINE.search(ln)))) for t in tasks),
        "outage_lines": sum(1 for t in tasks for ln in (t["log"] or "").splitlines() if OUTAGE_LINE.search(ln)),
        "datasets": sorted((d["collection"], d["name"], d["hash"], d["file_size"], d["version"], d["default_dataset"])
                           for d in datasets),
        "file_records": sorted((d["collection"], fr["data_repository"], prefix.sub("", fr["relative_path"]), fr["exists"])
                               for d in datasets for fr in d["file_records"]),
        "task_work_s": sum(t["time_elapsed_secs"] or 0 for t in tasks),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task-secs", type=float, default=4.0)
    parser.add_argument("--client", choices=("hpcpipe", "one"), default="hpcpipe")
    args = parser.parse_args()

    from tests.alyx_server import PASSWORD, USERNAME, AlyxServerProcess
    from tests.alyx_server.fixtures import _setup_world, admin_client, make_session

    with tempfile.TemporaryDirectory(prefix="hpcpipe-outage-") as tmp:
        tmp = Path(tmp)
        server = AlyxServerProcess(tmp / "alyx.sqlite", throttle="100000/min").start()
        try:
            _setup_world(server)
            client = admin_client(server)
            calm, calm_eid = make_session(client, tmp / "data", "CALM01", "2026-11-20")
            hit, hit_eid = make_session(client, tmp / "data", "HIT001", "2026-11-20")
            config = tmp / "config.toml"
            config.write_text(f'[store]\nbackend = "alyx"\n\n[alyx]\nurl = "{server.url}"\nusername = "{USERNAME}"\n'
                              f'password = "{PASSWORD}"\nrepository = "hpc_server"\nclient = "{args.client}"\n')
            (tmp / "home-user").mkdir()
            env = dict(os.environ, HPCPIPE_CONFIG=str(config), HPCPIPE_HOME=str(tmp / "home"),
                       HPCPIPE_GPU_LOCK_DIR=str(tmp / "locks"), PYTHONPATH=str(REPO), HOME=str(tmp / "home-user"),
                       HPCPIPE_BENCH_TASK_SECS=str(args.task_secs))
            for key in [k for k in env if k.startswith(("HPCPIPE_ALYX_", "HPCPIPE_STORE_"))]:
                env.pop(key)

            calm_wall, calm_proc = submit(env, calm)
            stopped = {}

            def stop_when_started() -> None:
                while not server.sql("SELECT id FROM tasks WHERE session=? AND status=30", hit_eid):
                    time.sleep(0.05)
                stopped["at"] = time.monotonic()
                server.stop()

            t_submit = time.monotonic()
            hit_wall, hit_proc = submit(env, hit, stop_when_started)
            down_after = stopped.get("at", t_submit) - t_submit
            server.start()
            client = admin_client(server)
            t0 = time.monotonic()
            sync = subprocess.run([sys.executable, "-m", "hpcpipe.cli", "sync"], env=env, capture_output=True, text=True)
            sync_wall = time.monotonic() - t0
            calm_state, hit_state = state(client, calm_eid), state(client, hit_eid)
        finally:
            server.stop()

    ratio = hit_wall / calm_wall
    print(f"5 tasks of {args.task_secs:g} s, client {args.client}; Alyx stopped {down_after:.1f} s into the "
          "outage run (first Started), down until the run ended")
    print(f"{'run':<12}{'wall s (whole process)':>24}{'exit':>6}{'task work s (in-process)':>27}")
    print(f"{'undisturbed':<12}{calm_wall:>24.2f}{calm_proc.returncode:>6}{calm_state['task_work_s']:>27.2f}")
    print(f"{'outage':<12}{hit_wall:>24.2f}{hit_proc.returncode:>6}{hit_state['task_work_s']:>27.2f}")
    print(f"ratio outage / undisturbed: {ratio:.2f} (target <= 1.2)")
    print(f"hpcpipe sync afterwards: {sync_wall:.2f} s, exit {sync.returncode}: {sync.stdout.strip()}")
    same = True
    for key in ("tasks", "logs", "datasets", "file_records"):
        equal = calm_state[key] == hit_state[key]
        same &= equal
        print(f"  {key:<13} {'identical' if equal else 'DIFFERENT'} ({len(hit_state[key])} vs {len(calm_state[key])})")
        if not equal:
            print(f"    undisturbed: {calm_state[key]}\n    outage:      {hit_state[key]}")
    print(f"  outage warnings in task logs: {hit_state['outage_lines']} (undisturbed: {calm_state['outage_lines']})")
    print(f"server state after sync: {'identical to the undisturbed run' if same else 'DIFFERENT'}")
    if calm_proc.returncode != 0 or hit_proc.returncode not in (0, 3):
        print(calm_proc.stdout, calm_proc.stderr, hit_proc.stdout, hit_proc.stderr, sep="\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
