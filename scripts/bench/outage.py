#!/usr/bin/env python
"""Benchmark an Alyx outage: does it cost time, and does `hpcpipe sync` heal it exactly?

    python scripts/bench/outage.py [--task-secs 4] [--client both|hpcpipe|one] [--repeat 1]
                                   [--outage refused|hanging] [--keep DIR]

Two sessions on the Alyx test server (tests/alyx_server), the same 5-task pipeline
(``tests.sample_pipelines.OutageBench``: tasks of ``--task-secs`` seconds shaped like the
demo), each run as a user runs it: ``hpcpipe submit`` as a whole process from the shell, with
hpcpipe's default retry settings.

* undisturbed: Alyx up all along;
* outage: Alyx is stopped as soon as the first task has reported Started, and stays down until
  the run ends (``--outage hanging``: its port then accepts connections and never answers);
  then it is started again and ``hpcpipe sync`` replays the queued reports.

Both clients (hpcpipe's own and the user's ``one.api`` client, ``[alyx] client``) run in the
same invocation by default, each on a fresh server, so their figures share the machine's load.
``--repeat N`` runs N pairs per client (each pair back to back on its own sessions) and prints
the median ratio: on a shared machine one pair's ratio moves with the load of the moment.

Prints both wall times, the CPU time of each run's whole process tree (the load-independent
part: a run that only waits more costs wall time, not CPU), their ratio (target: at most 1.2),
the exit codes, and the server state of the two sessions after the sync side by side: task statuses, versions, logs (digits
blanked: times and pids differ; the outage run's logs also hold the client's "Alyx unreachable"
warnings, counted apart), datasets (name, collection, hash, size, version) and file
records (repository, path inside the session, exists) -- nothing lost, nothing doubled.
In-process figures beside them: the task work as the tasks measured it (``time_elapsed_secs``).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
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


def submit(env: dict, session: Path, stop_when_started=None,
           verbose: bool = False) -> tuple[float, float, subprocess.CompletedProcess]:
    """One ``hpcpipe submit`` from the shell: wall seconds, CPU seconds of its whole process tree
    (the submitter and the task processes it waited for), and the finished process (with
    ``verbose``, its ``--verbose`` log, each line stamped with the seconds since the start)."""
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "hpcpipe.cli"] + (["--verbose"] if verbose else [])
                            + ["submit", "--session", str(session), "--pipeline", PIPELINE], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watcher = None
    if stop_when_started is not None:
        watcher = threading.Thread(target=stop_when_started, daemon=True)
        watcher.start()
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(f"{time.monotonic() - t0:7.2f} {line}"
                                                              for line in proc.stderr), daemon=True)
    reader.start()
    out = proc.stdout.read()
    # this process's own rusage: the submitter and the task processes it waited for (not the
    # Alyx server, which the outage run's stop reaps meanwhile)
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    err = "".join(err_lines)
    wall, cpu = time.monotonic() - t0, ru.ru_utime + ru.ru_stime
    if watcher is not None:
        watcher.join()
    return wall, cpu, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


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


def run_client(kind: str, outage: str, task_secs: float, repeat: int, keep: Path | None) -> list[dict]:
    """``repeat`` pairs (undisturbed run, outage run, sync) through one client, on one fresh
    server: each pair on its own two sessions, back to back, so a pair shares the load."""
    from tests.alyx_server import PASSWORD, USERNAME, AlyxServerProcess, HangingServer
    from tests.alyx_server.fixtures import _setup_world, admin_client, make_session

    pairs = []
    with tempfile.TemporaryDirectory(prefix=f"hpcpipe-outage-{kind}-") as tmp:
        tmp = Path(tmp)
        server = AlyxServerProcess(tmp / "alyx.sqlite", throttle="100000/min").start()
        hanging = None
        try:
            _setup_world(server)
            config = tmp / "config.toml"
            config.write_text(f'[store]\nbackend = "alyx"\n\n[alyx]\nurl = "{server.url}"\nusername = "{USERNAME}"\n'
                              f'password = "{PASSWORD}"\nrepository = "hpc_server"\nclient = "{kind}"\n')
            (tmp / "home-user").mkdir()
            env = dict(os.environ, HPCPIPE_CONFIG=str(config), HPCPIPE_HOME=str(tmp / "home"),
                       HPCPIPE_GPU_LOCK_DIR=str(tmp / "locks"), PYTHONPATH=str(REPO), HOME=str(tmp / "home-user"),
                       HPCPIPE_BENCH_TASK_SECS=str(task_secs))
            for key in [k for k in env if k.startswith(("HPCPIPE_ALYX_", "HPCPIPE_STORE_"))]:
                env.pop(key)
            verbose = keep is not None
            for rep in range(repeat):
                client = admin_client(server)
                calm, calm_eid = make_session(client, tmp / "data", f"CALM{rep:02d}", "2026-11-20")
                hit, hit_eid = make_session(client, tmp / "data", f"HIT{rep:03d}", "2026-11-20")
                calm_wall, calm_cpu, calm_proc = submit(env, calm, verbose=verbose)
                stopped = {}

                def stop_when_started(hit_eid: str = hit_eid, stopped: dict = stopped) -> None:
                    nonlocal hanging
                    while not server.sql("SELECT id FROM tasks WHERE session=? AND status=30", hit_eid):
                        time.sleep(0.05)
                    stopped["at"] = time.monotonic()
                    server.stop()
                    stopped["stop_s"] = time.monotonic() - stopped["at"]
                    if outage == "hanging":  # the port accepts again, and never answers
                        hanging = HangingServer(server.port)

                t_submit = time.monotonic()
                hit_wall, hit_cpu, hit_proc = submit(env, hit, stop_when_started, verbose=verbose)
                down_after = stopped.get("at", t_submit) - t_submit
                if hanging is not None:
                    hanging.close()
                    hanging = None
                server.start()
                client = admin_client(server)
                t0 = time.monotonic()
                sync = subprocess.run([sys.executable, "-m", "hpcpipe.cli", "sync"], env=env, capture_output=True,
                                      text=True)
                sync_wall = time.monotonic() - t0
                pairs.append({"kind": kind, "down_after": down_after, "stop_s": stopped.get("stop_s", 0.0),
                              "calm": (calm_wall, calm_cpu, calm_proc, state(client, calm_eid)),
                              "hit": (hit_wall, hit_cpu, hit_proc, state(client, hit_eid)), "sync": (sync_wall, sync)})
                if keep is not None:
                    for name, proc in (("undisturbed", calm_proc), ("outage", hit_proc)):
                        (keep / kind).mkdir(parents=True, exist_ok=True)
                        (keep / kind / f"submit-{rep}-{name}.log").write_text(proc.stdout + proc.stderr)
            if keep is not None:
                shutil.copytree(tmp, keep / kind, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.sqlite*"))
        finally:
            if hanging is not None:
                hanging.close()
            server.stop()
    return pairs


def report(pairs: list[dict], outage: str, task_secs: float) -> bool:
    """Print one client's figures; True when the server state after every sync is identical."""
    how = "stopped (connections refused)" if outage == "refused" else "hung (accepts, never answers)"
    print(f"\n== client {pairs[0]['kind']}: 5 tasks of {task_secs:g} s; Alyx {how} at the outage run's "
          "first Started, until the run ended; then restarted and `hpcpipe sync`")
    print(f"{'pair':<5}{'undisturbed wall s':>19}{'CPU s':>7}{'outage wall s':>14}{'CPU s':>7}{'ratio':>7}"
          f"{'exits':>7}{'down at s':>10}{'task work s':>12}{'sync s':>8}  server state after sync")
    same = True
    for k, fig in enumerate(pairs):
        calm_wall, calm_cpu, calm_proc, calm_state = fig["calm"]
        hit_wall, hit_cpu, hit_proc, hit_state = fig["hit"]
        sync_wall, sync = fig["sync"]
        diff = [key for key in ("tasks", "logs", "datasets", "file_records") if calm_state[key] != hit_state[key]]
        same &= not diff and sync.returncode == 0
        print(f"{k:<5}{calm_wall:>19.2f}{calm_cpu:>7.2f}{hit_wall:>14.2f}{hit_cpu:>7.2f}{hit_wall / calm_wall:>7.2f}"
              f"{f'{calm_proc.returncode},{hit_proc.returncode}':>7}{fig['down_after']:>10.1f}"
              f"{hit_state['task_work_s']:>12.2f}{sync_wall:>8.2f}  "
              + ("identical" if not diff else "DIFFERENT: " + ", ".join(diff))
              + f" ({sync.stdout.strip()}; {hit_state['outage_lines']} outage warning(s) in task logs)")
        for key in diff:
            print(f"    {key} undisturbed: {calm_state[key]}\n    {key} outage:      {hit_state[key]}")
        if calm_proc.returncode != 0 or hit_proc.returncode not in (0, 3):
            print(calm_proc.stdout, calm_proc.stderr, hit_proc.stdout, hit_proc.stderr, sep="\n")
    ratios = sorted(f["hit"][0] / f["calm"][0] for f in pairs)
    print(f"median ratio outage / undisturbed: {statistics.median(ratios):.2f} (target <= 1.2; "
          f"range {ratios[0]:.2f}-{ratios[-1]:.2f} over {len(ratios)} pair(s))")
    return same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task-secs", type=float, default=4.0)
    parser.add_argument("--client", choices=("hpcpipe", "one", "both"), default="both")
    parser.add_argument("--outage", choices=("refused", "hanging"), default="refused")
    parser.add_argument("--repeat", type=int, default=1, help="pairs of runs per client (the median ratio is printed)")
    parser.add_argument("--keep", type=Path, help="copy each client's home, run folders and timed logs here")
    args = parser.parse_args()
    kinds = ("hpcpipe", "one") if args.client == "both" else (args.client,)
    figures = [run_client(kind, args.outage, args.task_secs, args.repeat, args.keep) for kind in kinds]
    same = [report(pairs, args.outage, args.task_secs) for pairs in figures]
    if len(figures) > 1:
        print("\nsummary (median ratio): " + "; ".join(
            f"{pairs[0]['kind']} {statistics.median(p['hit'][0] / p['calm'][0] for p in pairs):.2f}" for pairs in figures))
    return 0 if all(same) else 1


if __name__ == "__main__":
    sys.exit(main())
