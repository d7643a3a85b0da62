#!/usr/bin/env python3
"""Backfill benchmark, measured as the user runs it, against the real test cluster.

* ``hpcpipe backfill --sessions-file F`` as a whole process (start to exit, embedded store), for
  ``--small`` and ``--sessions`` sessions (the growth between them), with its peak memory (the
  child's ``ru_maxrss``);
* the same backfill in-process (``plan_sessions`` + ``SlurmBackend.backfill``), what the CLI adds
  being process start, imports, argument parsing and the session-file read;
* ``hpcpipe status --json`` over every task of the big backfill, and ``hpcpipe status`` (the table);
* a whole backfill ended at once: ``hpcpipe cancel --run`` of the big backfill, and the first
  ``hpcpipe status --json`` after ``scancel --name`` of the in-process one (its 60,000 jobs
  closed by the sweep);
* the per-job baseline in the same run: a plain shell loop of one ``sbatch`` per task with
  ``--dependency=afterok`` on its parents, over ``--baseline-sessions`` sessions.

The cluster's node is drained for the run (``scontrol update nodename=$HPCPIPE_SLURM_NODE
state=drain``) so nothing starts, and resumed at the end; every job is cancelled by name.

    eval "$(bash scripts/slurm-up)"
    python scripts/bench/backfill.py --sessions 10000 --small 1000 --baseline-sessions 500
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "scripts" / "bench"
PIPELINE = "pipelines.SixTasks"  # Raw -> (Sync -> Trials), Spikes; (Trials, Spikes) -> QC -> Summary
#: the same graph for the shell loop: task -> parents
GRAPH = {"Raw": [], "Sync": ["Raw"], "Spikes": ["Raw"], "Trials": ["Sync"], "QC": ["Trials", "Spikes"],
         "Summary": ["QC"]}


def make_sessions(root: Path, n: int) -> Path:
    """``n`` session folders and a sessions file listing them (one path a line)."""
    lines = []
    for i in range(n):
        p = root / "lab" / "Subjects" / f"S{i:05d}" / "2026-11-20" / "001"
        p.mkdir(parents=True)
        lines.append(str(p))
    listing = root / "sessions.txt"
    listing.write_text("\n".join(lines) + "\n")
    return listing


def env_for(home: Path) -> dict:
    env = dict(os.environ, HPCPIPE_HOME=str(home), HPCPIPE_CONFIG=str(home / "none.toml"))
    # as an installed hpcpipe runs: with its bytecode cached (the warm-up run writes it)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def timed(argv: list[str], env: dict) -> tuple[float, float, str, float]:
    """Run a command to its end: wall seconds, its own peak resident memory (MB), stdout, and its
    CPU seconds (user + system: what the wall time would be on an idle machine, about)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's rusage alone
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            sys.exit(f"bench: {' '.join(argv[2:5])}... failed ({proc.returncode}): {err.read().strip()[-500:]}")
        return wall, usage.ru_maxrss / 1024, out.read(), usage.ru_utime + usage.ru_stime


def cli_backfill(root: Path, n: int, runs: list[str]) -> dict:
    listing = make_sessions(root / "data", n)
    home = root / "home"
    argv = [sys.executable, "-m", "hpcpipe.cli", "backfill", "--sessions-file", str(listing), "--pipeline", PIPELINE]
    wall, peak, out, cpu = timed(argv, env_for(home))
    run_id = re.search(r"run (\S+):", out).group(1)
    runs.append(run_id)
    calls = int(re.search(r"in (\d+) sbatch call", out).group(1))
    return {"sessions": n, "tasks": 6 * n, "wall": wall, "peak": peak, "sbatch": calls, "home": home, "cpu": cpu}


def in_process(root: Path, n: int, runs: list[str]) -> dict:
    """plan_sessions + backend.backfill in this process (a fresh store), as the old figure did."""
    listing = make_sessions(root / "data", n)
    os.environ.update({k: v for k, v in env_for(root / "home").items() if k.startswith("HPCPIPE")})
    sys.path[:0] = [str(BENCH)]
    from hpcpipe.ledger import Ledger
    from hpcpipe.settings import Settings
    from hpcpipe.slurm.backend import SlurmBackend
    from hpcpipe.store import open_store
    from hpcpipe.submission import Run, plan_sessions

    settings = Settings.load()  # as the CLI does, once
    store, ledger = open_store(settings=settings), Ledger(settings=settings)
    backend = SlurmBackend(store, ledger, settings=settings)
    _ = backend.limits
    sessions = listing.read_text().split()
    t0, c0 = time.perf_counter(), time.process_time()
    plans = plan_sessions(sessions, PIPELINE, store, ledger, live_backend="slurm")
    run = Run.new(backend.run_root, prefix="bf")
    report = backend.backfill(plans, run.id)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    runs.append(run.id)
    return {"sessions": n, "tasks": report.elements, "wall": wall, "sbatch": report.jobs, "cpu": cpu}


def status_json(home: Path) -> dict:
    argv = [sys.executable, "-m", "hpcpipe.cli", "status", "--json"]
    wall, peak, out, cpu = timed(argv, env_for(home))
    return {"wall": wall, "tasks": len(json.loads(out)), "peak": peak, "cpu": cpu}


def status_table(home: Path) -> dict:
    """``hpcpipe status``, the table a user reads in the terminal (header and rule, a line a task)."""
    wall, peak, out, cpu = timed([sys.executable, "-m", "hpcpipe.cli", "status"], env_for(home))
    return {"wall": wall, "tasks": len(out.splitlines()) - 2, "peak": peak, "cpu": cpu}


def cli_cancel(home: Path, run_id: str) -> dict:
    argv = [sys.executable, "-m", "hpcpipe.cli", "cancel", "--run", run_id]
    wall, peak, out, cpu = timed(argv, env_for(home))
    return {"wall": wall, "peak": peak, "cpu": cpu, "tasks": int(re.search(r"cancelled (\d+)", out).group(1))}


def sbatch_loop(root: Path, n: int, name: str) -> dict:
    """One sbatch per task, afterok on its parents: a plain shell loop, timed as a whole."""
    lines = ["set -e"]
    for i in range(n):
        for task, parents in GRAPH.items():
            dep = ":".join(f"${p}_{i}" for p in parents)
            lines.append(f"{task}_{i}=$(sbatch --parsable --job-name={name} -o /dev/null "
                         + (f"--dependency=afterok:{dep} " if dep else "") + "--wrap=true)")
    script = root / "loop.sh"
    script.write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    subprocess.run(["bash", str(script)], check=True)
    return {"sessions": n, "tasks": 6 * n, "wall": time.perf_counter() - t0, "sbatch": 6 * n}


def scontrol_node(state: str) -> None:
    node = os.environ.get("HPCPIPE_SLURM_NODE")
    if node:
        subprocess.run(["scontrol", "update", f"nodename={node}", f"state={state}"]
                       + (["reason=bench"] if state == "drain" else []), check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=10000)
    parser.add_argument("--small", type=int, default=1000, help="the smaller backfill, for the growth")
    parser.add_argument("--baseline-sessions", type=int, default=500)
    args = parser.parse_args()
    if not os.environ.get("SLURM_CONF") or not os.environ.get("HPCPIPE_SLURM_NODE"):
        sys.exit('backfill bench: start the test cluster first: eval "$(bash scripts/slurm-up)"')
    runs: list[str] = []
    loop_name = f"bench-loop-{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix="hpcpipe-bench-"))
    scontrol_node("drain")  # nothing starts: the figures are submission only
    try:
        print(f"bench: {args.small} and {args.sessions} sessions, baseline {args.baseline_sessions}...",
              file=sys.stderr)
        cli_backfill(tmp / "warm-up", 1, runs)  # bytecode written, SLURM's caches warm
        small = cli_backfill(tmp / "small", args.small, runs)
        big = cli_backfill(tmp / "big", args.sessions, runs)
        status = status_json(big["home"])
        table = status_table(big["home"])
        inproc = in_process(tmp / "inproc", args.sessions, runs)  # with the big backfill queued, as the CLI's ran
        cancelled = cli_cancel(big["home"], runs[-2])
        status_json(tmp / "inproc" / "home")  # its first poll, as after any backfill
        subprocess.run(["scancel", "--name", runs[-1]], check=True)
        swept = status_json(tmp / "inproc" / "home")
        loop = sbatch_loop(tmp, args.baseline_sessions, loop_name)
    finally:
        for name in runs + [loop_name]:
            subprocess.run(["scancel", "--name", name], check=False)
        scontrol_node("resume")
        shutil.rmtree(tmp, ignore_errors=True)
    from hpcpipe.texttable import render

    ms = lambda r: 1000 * r["wall"] / r["sessions"]  # noqa: E731
    def row(what, r, tasks=None, per_session=True):
        return [what, r["sessions"], tasks or r["tasks"], r.get("sbatch", ""), f"{r['wall']:.2f}",
                f"{r['cpu']:.2f}" if "cpu" in r else "", f"{ms(r):.3f}" if per_session else "",
                f"{r['peak']:.0f}" if "peak" in r else ""]

    rows = [row("hpcpipe backfill (process)", small), row("hpcpipe backfill (process)", big),
            row("backfill in-process", inproc), row("sbatch loop, afterok (shell)", loop),
            row("hpcpipe status --json (process)", dict(status, sessions=big["sessions"]), per_session=False),
            row("hpcpipe status, the table (process)", dict(table, sessions=big["sessions"]), per_session=False),
            row("hpcpipe cancel --run (process)", dict(cancelled, sessions=big["sessions"]), per_session=False),
            row("status --json after scancel --name", dict(swept, sessions=args.sessions), per_session=False)]
    print(render(rows, ["what", "sessions", "tasks", "sbatch calls", "wall s", "cpu s", "per session ms", "peak MB"],
                 right=("sessions", "tasks", "sbatch calls", "wall s", "cpu s", "per session ms", "peak MB")))
    print(f"per-session ratio, sbatch loop / hpcpipe backfill of {big['sessions']}: {ms(loop) / ms(big):.0f}x")
    print(f"growth {small['sessions']} -> {big['sessions']} sessions: time x{big['wall'] / small['wall']:.1f}, "
          f"peak memory x{big['peak'] / small['peak']:.1f} (sessions x{big['sessions'] / small['sessions']:.0f})")
    print(f"process cost over in-process at {big['sessions']}: {big['wall'] - inproc['wall']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
