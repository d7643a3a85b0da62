#!/usr/bin/env python3
"""Alyx-store backfill: time to queue, requests made by the backfill process, and the records
completing afterwards at the server's pace, against the Alyx test server with its throttle on
(550 requests/minute by default) and the real test cluster (node drained: no job starts, so
the background recorder alone makes the records).

    eval "$(bash scripts/slurm-up)"
    python scripts/bench/alyx_backfill.py --sessions 1000

Sessions are seeded with the throttle off (they come from the rig, not from hpcpipe). The
backfill then runs as the user runs it, ``hpcpipe backfill --sessions-file`` as a whole process
(client ``hpcpipe`` or ``one``); its wall time is the time to queue (the process exits once the
arrays are queued and its background recorder started). The server's own statistics give the
requests it received by endpoint and any 429; the records are counted on the server until
every one exists (``--no-wait``: only queue). See docs/ALYX.md, "Backfills with Alyx".
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO)]


def _count(server) -> tuple[int, int]:
    row = server.hook("sql", {"sql": "SELECT COUNT(*) AS n, COUNT(DISTINCT session || name) AS u FROM tasks"})
    return row["rows"][0]["n"], row["rows"][0]["u"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--throttle", default="550/min")
    parser.add_argument("--client", default="hpcpipe", choices=("hpcpipe", "one"))
    parser.add_argument("--no-wait", action="store_true", help="stop once queued (do not wait for the records)")
    args = parser.parse_args()
    if not os.environ.get("SLURM_CONF") or not os.environ.get("HPCPIPE_SLURM_NODE"):
        sys.exit('alyx bench: start the test cluster first: eval "$(bash scripts/slurm-up)"')
    from tests.alyx_server import AlyxServerProcess
    from tests.alyx_server.fixtures import PASSWORD, USERNAME, _setup_world, admin_client, make_session

    tmp = Path(tempfile.mkdtemp(prefix="hpcpipe-alyx-bench-"))
    server = AlyxServerProcess(tmp / "alyx.sqlite", throttle=args.throttle).start()
    node = os.environ["HPCPIPE_SLURM_NODE"]
    run_name = recorder_pid = None
    try:
        _setup_world(server)
        server.set_throttle(None)
        client = admin_client(server)
        paths = [make_session(client, tmp / "data", f"S{i:04d}", date=f"2026-{1 + i // 28 % 12:02d}-{1 + i % 28:02d}")[0]
                 for i in range(args.sessions)]
        listing = tmp / "sessions.txt"
        listing.write_text("\n".join(map(str, paths)) + "\n")
        (tmp / "config.toml").write_text(
            f'[store]\nbackend = "alyx"\n[alyx]\nurl = "{server.url}"\nusername = "{USERNAME}"\n'
            f'password = "{PASSWORD}"\nclient = "{args.client}"\n')
        env = dict(os.environ, HPCPIPE_HOME=str(tmp / "home"), HPCPIPE_CONFIG=str(tmp / "config.toml"),
                   HOME=str(tmp / "user-home"), PYTHONPATH=os.pathsep.join([str(REPO / "scripts" / "bench"), str(REPO)]))
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed hpcpipe has its bytecode cached
        (tmp / "user-home").mkdir()
        server.set_throttle(args.throttle)
        server.stats(reset=True)
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=drain", "reason=bench"], check=False)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "hpcpipe.cli", "backfill", "--sessions-file", str(listing),
                               "--pipeline", "pipelines.SixTasks"], env=env, capture_output=True, text=True)
        queued = time.perf_counter() - t0
        at_exit = server.stats()
        if proc.returncode != 0:
            sys.exit(f"alyx bench: backfill failed: {proc.stderr.strip()[-500:]}")
        run_name = proc.stdout.split("run ", 1)[1].split(":", 1)[0]
        found = re.search(r"in the background \(pid (\d+)", proc.stdout)
        recorder_pid = int(found.group(1)) if found else None
        total = 6 * args.sessions
        own = {k: v for k, v in at_exit.items() if k not in ("total", "POST tasks", "throttled 429")}
        print(f"alyx backfill of {args.sessions} sessions ({total} tasks), client {args.client}, "
              f"throttle {args.throttle}, node drained:")
        print(f"  queued in {queued:.2f} s (the whole `hpcpipe backfill` process, start to exit)")
        print(f"  requests at its exit: {at_exit.get('total', 0)}; the backfill's own (no task create): "
              f"{sum(own.values())} = {sum(own.values()) / args.sessions:.3f} per session {own}")
        if args.no_wait:
            return 0
        last, start = 0, time.perf_counter()
        while True:
            made, unique = _count(server)
            if made >= total:
                break
            if time.perf_counter() - start > 3600:
                sys.exit(f"alyx bench: only {made} of {total} records after an hour")
            if made != last and made // 1000 != last // 1000:
                print(f"  {made} records after {time.perf_counter() - t0:.0f} s", flush=True)
            last = made
            time.sleep(2)
        took = time.perf_counter() - t0
        stats = server.stats()
        done = (tmp / "home" / "runs" / run_name / "records" / ".done").exists()
        print(f"  every record present after {took:.0f} s ({made} records, {unique} distinct (session, name); "
              f"{made / took * 60:.0f} created a minute; recorder finished: {done})")
        print(f"  429 answers: {stats.get('throttled 429', 0)} (waited out); server statistics: {stats}")
    finally:
        if recorder_pid:  # a recorder still at work (--no-wait) stops with the server it writes to
            with contextlib.suppress(ProcessLookupError):
                os.kill(recorder_pid, signal.SIGTERM)
        if run_name:
            subprocess.run(["scancel", "--name", run_name], check=False)
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], check=False)
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
