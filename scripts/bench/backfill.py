#!/usr/bin/env python3
"""Backfill benchmark against the real test cluster: job arrays versus one sbatch per task.

Both ways run in the same process, on the same cluster, with the same 6-task pipeline; jobs are
submitted held (``--hold``) so the cluster only queues them, and everything is cancelled at the
end. Prints sessions, tasks, sbatch calls, wall time of each way, the client's own share (store
writes, planning, rendering), the per-session ratio, and how many SLURM queries one status poll
of the whole backfill takes.

    eval "$(bash scripts/slurm-up)"
    python scripts/bench/backfill.py --sessions 10000 --baseline-sessions 1000

The per-job baseline is measured on ``--baseline-sessions`` sessions (all of them if you give the
same number as ``--sessions``; 10,000 sessions one job per task means 60,000 sbatch calls) and
its per-session time is what the ratio compares.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "scripts" / "bench")]


def make_sessions(root: Path, n: int, prefix: str) -> list[Path]:
    paths = []
    for i in range(n):
        p = root / "lab" / "Subjects" / f"{prefix}{i:05d}" / "2026-11-20" / "001"
        p.mkdir(parents=True)
        paths.append(p)
    return paths


def run_way(kind: str, sessions: list[Path], profile) -> dict:
    from hpcpipe.ledger import Ledger
    from hpcpipe.slurm.backend import SlurmBackend
    from hpcpipe.store import open_store
    from hpcpipe.submission import Run, plan_sessions

    store, ledger = open_store(), Ledger()
    backend = SlurmBackend(store, ledger, profile=profile)
    _ = backend.limits  # read once, outside the timing (both ways pay it once)
    t0 = time.perf_counter()
    plans = plan_sessions(sessions, "pipelines.SixTasks", store, ledger, live_backend="slurm")
    t_plan = time.perf_counter() - t0
    run = Run.new(prefix=f"bench-{kind}")
    report = (backend.backfill(plans, run.id) if kind == "arrays" else backend.submit(plans, run.id))
    wall = time.perf_counter() - t0
    out = {"sessions": len(sessions), "tasks": report.elements, "sbatch": report.jobs, "wall": wall,
           "plan": t_plan, "sbatch_time": report.sbatch_seconds, "run_id": run.id, "chunks": report.chunks}
    if kind == "arrays":
        t1 = time.perf_counter()
        refreshed = backend.refresh()
        out["status_queries"] = refreshed["queries"]
        out["status_time"] = time.perf_counter() - t1
        out["status_jobs"] = len(refreshed["states"])
    return out


def cancel(run_ids: list[str]) -> None:
    from hpcpipe.slurm.cancel import cancel_by_name
    from hpcpipe.slurm.transport import LocalTransport

    for run_id in run_ids:
        cancel_by_name(LocalTransport(), run_id)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=10000)
    parser.add_argument("--baseline-sessions", type=int, default=1000)
    args = parser.parse_args()
    if not os.environ.get("SLURM_CONF"):
        sys.exit('backfill bench: no SLURM_CONF; start the test cluster: eval "$(bash scripts/slurm-up)"')
    from hpcpipe.slurm.profiles import load_profile

    profile = load_profile("generic", overrides={"extra_directives": ["--hold"]})
    with tempfile.TemporaryDirectory(prefix="hpcpipe-bench-") as tmp:
        root = Path(tmp)
        os.environ["HPCPIPE_HOME"] = str(root / "home")
        os.environ["HPCPIPE_CONFIG"] = str(root / "none.toml")
        print(f"making {args.sessions} + {args.baseline_sessions} session folders...", file=sys.stderr)
        array_sessions = make_sessions(root / "data", args.sessions, "A")
        job_sessions = make_sessions(root / "data", args.baseline_sessions, "J")
        runs = []
        try:
            arrays = run_way("arrays", array_sessions, profile)
            runs.append(arrays["run_id"])
            perjob = run_way("per-job", job_sessions, profile)
            runs.append(perjob["run_id"])
        finally:
            cancel(runs)
    per_session_jobs = perjob["wall"] / perjob["sessions"]
    per_session_arrays = arrays["wall"] / arrays["sessions"]
    rows = [("way", "sessions", "tasks", "sbatch calls", "wall s", "sbatch s", "client s", "per session ms")]
    for name, r in (("arrays", arrays), ("per-job", perjob)):
        rows.append((name, r["sessions"], r["tasks"], r["sbatch"], f"{r['wall']:.2f}", f"{r['sbatch_time']:.2f}",
                     f"{r['wall'] - r['sbatch_time']:.2f}", f"{1000 * r['wall'] / r['sessions']:.3f}"))
    from tabulate import tabulate

    print(tabulate(rows, headers="firstrow"))
    print(f"arrays: {arrays['chunks']} chunk(s), {arrays['sbatch'] / max(1, arrays['chunks']):.1f} sbatch calls per chunk; "
          f"client share {100 * (1 - arrays['sbatch_time'] / arrays['wall']):.0f}% "
          f"(planning and store writes {arrays['plan']:.2f} s)")
    print(f"per-session ratio (per-job / arrays): {per_session_jobs / per_session_arrays:.1f}x")
    print(f"sbatch-time ratio per session: "
          f"{(perjob['sbatch_time'] / perjob['sessions']) / (arrays['sbatch_time'] / arrays['sessions']):.0f}x")
    print(f"status of all {arrays['status_jobs']} backfill tasks: {arrays['status_queries']} SLURM queries "
          f"in one poll ({arrays['status_time']:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
