#!/usr/bin/env python3
"""Packed execution vs job arrays vs one job per task, run to the end on the real test cluster.

For each way, the same number of fresh demo sessions (5 tasks each: real numpy work of about
0.1 s, in a Python process of about 0.5 s), submitted as the user does and run to completion:

* ``hpcpipe backfill --pack`` (one allocation, tasks as ``srun`` job steps);
* ``hpcpipe backfill`` (one job array per task type, ``aftercorr``);
* ``hpcpipe submit --backend slurm`` over every session (one job per task, ``afterok``).

Measured per way: SLURM jobs created (``sacct``: an array element counts as a job), job steps,
makespan (from the submitting command's start to the end of the run's last job, as ``sacct``
has it, second-granular), the submitting command's own wall time (as a whole process), the
scheduler commands hpcpipe ran (every ``sbatch``/``squeue``/``sacct``/``scontrol``/``srun``
call, counted by shims on ``PATH``, inside the allocations too), split into submission,
one ``status`` after the end, and the job steps; and the share of the allocations' CPU time
spent in tasks: sum over tasks of ``_run`` time x cpu (the store's ``time_elapsed_secs``) over
sum over SLURM jobs of ``ElapsedRaw x AllocCPUS`` (what the site's accounting charges).

The user would poll ``hpcpipe status``; the benchmark waits with its own ``sacct`` loop
(not counted) so the figures do not depend on a polling interval.

    eval "$(bash scripts/slurm-up)"   # or: . /tmp/hps-14.env
    python scripts/bench/pack.py --sessions 200 [--ways packed,arrays,jobs] [--jobs-sessions N]

A way named twice runs twice (``--ways packed,arrays,arrays,packed``: on a shared machine whose
load drifts, alternating the order shows how much of a difference is the drift).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COUNTED = ("sbatch", "squeue", "sacct", "scontrol", "srun", "sacctmgr", "scancel")
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}


def shims(folder: Path, log: Path) -> str:
    """A PATH folder whose SLURM commands log their name, then run the real one."""
    folder.mkdir(parents=True)
    for name in COUNTED:
        real = shutil.which(name)
        if real:
            # inside a job (srun in an allocation) the phase is "job", whatever was exported at sbatch
            (folder / name).write_text(f'#!/bin/sh\nphase=${{SLURM_JOB_ID:+job}}\n'
                                       f'echo "{name} ${{phase:-$HPCPIPE_BENCH_PHASE}}" >> {log}\n'
                                       f'exec {real} "$@"\n')
            (folder / name).chmod(0o755)
    return str(folder)


def count(log: Path) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        name, _, phase = line.partition(" ")
        out.setdefault(phase or "job", {}).setdefault(name, 0)
        out[phase or "job"][name] += 1
    return out


def sacct_rows(name: str) -> list[dict]:
    out = subprocess.run(["sacct", "--parsable2", "--noheader", f"--name={name}", "--starttime=now-1days",
                          "--format=JobID,State,ElapsedRaw,AllocCPUS,Start,End"], capture_output=True, text=True).stdout
    keys = ("id", "state", "elapsed", "cpus", "start", "end")
    return [dict(zip(keys, line.split("|"))) for line in out.splitlines() if line]


def steps(job_ids: set[str]) -> int:
    """Job steps of the run's allocations other than the batch/extern steps."""
    if not job_ids:
        return 0
    out = subprocess.run(["sacct", "--parsable2", "--noheader", "-j", ",".join(sorted(job_ids)), "--format=JobID"],
                         capture_output=True, text=True).stdout
    return sum(1 for line in out.split() if "." in line and not line.endswith((".batch", ".extern")))


def wait_done(name: str, tasks: int, timeout: float) -> list[dict]:
    """Until sacct shows every job of the run final (array elements one by one), all tasks counted."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in sacct_rows(name) if "." not in r["id"]]
        pending = subprocess.run(["squeue", "--noheader", f"--name={name}", "-o", "%i"], capture_output=True,
                                 text=True).stdout.split()
        if rows and not pending and all(r["state"].split()[0] in FINAL for r in rows):
            return rows
        if time.monotonic() > deadline:
            sys.exit(f"bench: run {name} not done after {timeout:.0f} s ({len(pending)} job(s) queued)")
        time.sleep(3)


def _cpu_secs(text: str) -> float:
    """sacct's ``[D-]HH:MM:SS[.mmm]`` / ``MM:SS.mmm`` as seconds."""
    days, _, clock = text.rpartition("-")
    secs = 0.0
    for part in clock.split(":"):
        secs = secs * 60 + float(part or 0)
    return secs + 86400 * int(days or 0)


def step_cpu(job_ids: set[str]) -> dict[str, float]:
    """CPU seconds (sacct TotalCPU) of the tasks' processes and of the allocations' batch steps.

    Arrays: each element's batch step is the task (bash + Python). Packed: the task steps are the
    tasks, the batch step is the engine and its ``srun`` clients."""
    if not job_ids:
        return {}
    out = subprocess.run(["sacct", "--parsable2", "--noheader", "-j", ",".join(sorted(job_ids)),
                          "--format=JobID,TotalCPU"], capture_output=True, text=True).stdout
    cpu = {"tasks": 0.0, "batch": 0.0}
    packed = any("." in line.split("|")[0] and not line.split("|")[0].endswith((".batch", ".extern"))
                 for line in out.splitlines())
    for line in out.splitlines():
        jid, _, total = line.partition("|")
        if "." not in jid or jid.endswith(".extern"):
            continue
        key = "batch" if packed and jid.endswith(".batch") else "tasks"
        cpu[key] += _cpu_secs(total)
    return cpu


def _stamp(line: str) -> float:
    day, clock = line.split(" ")[:2]
    return time.mktime(time.strptime(f"{day} {clock[:8]}", "%Y-%m-%d %H:%M:%S")) + float("0." + clock[9:12])


def phases(run_dir: Path) -> dict[str, float]:
    """Per-task phases from the run folder's log files (means over tasks, seconds).

    ``startup``: job side's first line -> the task's ``Starting job`` (imports, store, checks);
    ``run``: the task's own ``_run`` time; ``report``: its end -> the job side's last line. Packed
    only: ``launch``: the engine's ``started`` line -> the job side's first line (srun step
    creation, slurmstepd, the Python interpreter and the job side's import), and ``reap``: the job
    side's last line -> the engine's ``ended`` line (srun teardown + the engine's poll). ``in
    flight``: the mean number of job-side processes alive at once over the run's span."""
    logs = run_dir / "logs"
    per: dict[str, dict[str, float]] = {}
    for f in logs.iterdir():
        if f.name.startswith("pack."):
            continue
        got: dict[str, float] = {}
        for line in f.read_text(errors="replace").splitlines():
            if "hpcpipe.jobside: job side: host" in line and "js" not in got:
                got["js"] = _stamp(line)
            elif "Starting job" in line:
                got["start"] = _stamp(line)
            elif "seconds run-time ---" in line:
                got["run_end"], got["run"] = _stamp(line), float(line.split("--- ")[1].split()[0])
            elif "hpcpipe.jobside: task " in line and " ended " in line:
                got["end"] = _stamp(line)
        if {"js", "start", "run", "end"} <= set(got):
            per[str(f)] = got
    launched: dict[str, float] = {}
    reaped: dict[str, float] = {}
    pid_log: dict[str, str] = {}
    for f in logs.glob("pack.*.out"):
        for line in f.read_text(errors="replace").splitlines():
            if "hpcpipe.engines.local: started " in line:
                pid, log = line.split("(pid ")[1].split(")")[0], line.rsplit("log ", 1)[1]
                pid_log[pid] = log
                launched[log] = _stamp(line)
            elif "hpcpipe.engines.local: " in line and ") ended " in line:
                reaped[pid_log.get(line.split("(pid ")[1].split(")")[0], "")] = _stamp(line)
    if not per:
        return {}
    n = len(per)
    out = {"startup": sum(g["start"] - g["js"] for g in per.values()) / n,
           "run": sum(g["run"] for g in per.values()) / n,
           "report": sum(g["end"] - g["run_end"] for g in per.values()) / n}
    if launched:
        out["launch"] = sum(g["js"] - launched[k] for k, g in per.items() if k in launched) / n
        out["reap"] = sum(reaped[k] - g["end"] for k, g in per.items() if k in reaped) / n
    span = max(g["end"] for g in per.values()) - min(g["js"] for g in per.values())
    out["in flight"] = sum(g["end"] - g["js"] for g in per.values()) / span if span > 0 else float("nan")
    return out


def daemon_cpu() -> dict[str, float]:
    """CPU seconds so far of this cluster's slurmctld and slurmd (their own threads)."""
    run = Path(os.environ.get("HPCPIPE_SLURM_BASE", "/nonexistent")) / "run"
    out = {}
    for name in ("slurmctld", "slurmd"):
        try:
            pid = (run / f"{name}.pid").read_text().strip()
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            out[name] = float("nan")
    return out


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (every process, the other sessions' too)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def epoch(stamp: str) -> float:
    return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))


def one_way(way: str, n: int, root: Path, timeout: float) -> dict:
    from hpcpipe.demo.session import make_session

    base = root / way
    paths = [make_session(base / "data" / "lab" / "Subjects" / f"S{i:04d}" / "2026-11-20" / "001", duration=12)
             for i in range(n)]
    listing = base / "sessions.txt"
    listing.write_text("\n".join(map(str, paths)) + "\n")
    log = base / "slurm-commands.log"
    env = dict(os.environ, HPCPIPE_HOME=str(base / "home"), HPCPIPE_CONFIG=str(base / "none.toml"),
               HPCPIPE_GPU_LOCK_DIR=str(base / "locks"), HPCPIPE_BENCH_PHASE="submit")
    env["PATH"] = shims(base / "bin", log) + os.pathsep + env["PATH"]
    cli = [sys.executable, "-m", "hpcpipe.cli"]
    if way == "jobs":
        argv = cli + ["submit", "--pipeline", "demo", "--backend", "slurm"] + [a for p in paths for a in ("--session", str(p))]
    else:
        argv = cli + ["backfill", "--sessions-file", str(listing), "--pipeline", "demo"] + (["--pack"] if way == "packed" else [])
    load0, daemons0, busy0 = os.getloadavg()[0], daemon_cpu(), machine_busy()
    t0 = time.time()
    proc = subprocess.run(argv, env=dict(env), capture_output=True, text=True)
    submit_wall = time.time() - t0
    if proc.returncode:
        sys.exit(f"bench: {way}: {proc.stderr.strip()[-400:]}")
    name = next(w for w in proc.stdout.split() if w.startswith(("bf-", "hp-"))).rstrip(":")
    rows = wait_done(name, 5 * n, timeout)
    daemons = {k: v - daemons0[k] for k, v in daemon_cpu().items()}
    busy, load1 = machine_busy() - busy0, os.getloadavg()[0]
    env["HPCPIPE_BENCH_PHASE"] = "status"
    status = subprocess.run(cli + ["status", "--json"], env=env, capture_output=True, text=True)
    tasks = json.loads(status.stdout)
    db = sqlite3.connect(base / "home" / "tasks.sqlite")
    in_tasks = sum((t or 0) * (c or 1) for t, c in db.execute("SELECT time_elapsed_secs, cpu FROM tasks"))
    db.close()
    charged = sum(int(r["elapsed"] or 0) * int(r["cpus"] or 0) for r in rows)
    ends = [epoch(r["end"]) for r in rows if r["end"] not in ("", "Unknown", "None")]
    queries = count(log)
    return {"way": way, "sessions": n, "tasks": len(tasks),
            "complete": sum(t["status"] == "Complete" for t in tasks), "jobs": len(rows),
            "steps": steps({r["id"].split("_")[0] for r in rows}) if way == "packed" else 0,
            "makespan": (max(ends) - t0) if ends else float("nan"), "submit_wall": submit_wall,
            "submit_queries": sum(queries.get("submit", {}).values()),
            "status_queries": sum(queries.get("status", {}).values()),
            "job_queries": queries.get("job", {}), "cpu_share": in_tasks / charged if charged else float("nan"),
            "in_tasks_cpu_s": in_tasks, "charged_cpu_s": charged, "run": name,
            "phases": phases(base / "home" / "runs" / name), "cpu": step_cpu({r["id"].split("_")[0] for r in rows}),
            "daemons": daemons, "machine_busy": busy, "load": (load0, load1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--jobs-sessions", type=int, help="sessions for one job per task (default --sessions)")
    parser.add_argument("--ways", default="packed,arrays,jobs")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--keep", metavar="DIR", help="keep each way's sessions, home and run folders under DIR")
    args = parser.parse_args()
    if not os.environ.get("SLURM_CONF"):
        sys.exit('bench: SLURM_CONF is not set (eval "$(bash scripts/slurm-up)")')
    sys.path.insert(0, str(REPO))
    load = os.getloadavg()[0]
    print(f"pack benchmark on {os.cpu_count()} CPUs (load {load:.1f}), SLURM node "
          f"{os.environ.get('HPCPIPE_SLURM_NODE', '?')}; demo pipeline, 5 tasks per session")
    results = []
    with tempfile.TemporaryDirectory(prefix="hpcpipe-bench-pack-") as scratch:
        tmp = args.keep or scratch
        if args.keep:
            Path(tmp).mkdir(parents=True, exist_ok=True)
        for i, way in enumerate(args.ways.split(",")):  # a way may repeat: "packed,arrays,arrays,packed"
            n = args.jobs_sessions or args.sessions if way == "jobs" else args.sessions
            res = one_way(way, n, Path(tmp) / str(i), args.timeout)
            results.append(res)
            print(f"  {way}: {res['complete']}/{res['tasks']} Complete, run {res['run']}", flush=True)
    print()
    head = ("way", "sessions", "tasks", "SLURM jobs", "job steps", "makespan s", "submit s",
            "queries: submit", "status", "in jobs", "CPU share in tasks")
    table = [(r["way"], r["sessions"], r["tasks"], r["jobs"], r["steps"], f"{r['makespan']:.0f}",
              f"{r['submit_wall']:.2f}", r["submit_queries"], r["status_queries"],
              " ".join(f"{k}:{v}" for k, v in sorted(r["job_queries"].items())) or "0",
              f"{100 * r['cpu_share']:.1f}% ({r['in_tasks_cpu_s']:.0f}/{r['charged_cpu_s']} s)") for r in results]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table)]
    for row in (head, *table):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
    print("\nper task, mean s (from the run folders' logs): launch = engine's start -> job side's first line,"
          " reap = job side's last line -> engine's reap (packed only); CPU s from sacct TotalCPU")
    head = ("way", "load", "launch", "startup", "run", "report", "reap", "in flight", "CPU: tasks",
            "batch/engine+srun", "slurmctld", "slurmd", "machine busy")
    table = [(r["way"], "%.1f-%.1f" % r["load"], *(f"{r['phases'].get(k, float('nan')):.3f}" for k in
                                                    ("launch", "startup", "run", "report", "reap")),
              f"{r['phases'].get('in flight', float('nan')):.1f}", f"{r['cpu'].get('tasks', 0):.1f}",
              f"{r['cpu'].get('batch', 0):.1f}", f"{r['daemons']['slurmctld']:.1f}", f"{r['daemons']['slurmd']:.1f}",
              f"{r['machine_busy']:.0f}") for r in results]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table)]
    for row in (head, *table):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
    spans = {w: [r["makespan"] for r in results if r["way"] == w] for w in ("packed", "arrays")}
    if spans["packed"] and spans["arrays"]:
        p, a = sum(spans["packed"]), sum(spans["arrays"])
        jobs = max(r["jobs"] for r in results if r["way"] == "packed")
        print(f"\npacked: at most {jobs} SLURM job(s) per run; makespan packed "
              f"{' + '.join(f'{x:.0f}' for x in spans['packed'])} s vs arrays "
              f"{' + '.join(f'{x:.0f}' for x in spans['arrays'])} s ({'no later' if p <= a else 'LATER'})")
    print(json.dumps(results), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
