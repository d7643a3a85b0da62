#!/usr/bin/env python3
"""Alyx-store backfill: HTTP requests per session and time to queue, against the Alyx test server
with its throttle on (550 requests/minute by default) and the real test cluster (node drained).

    eval "$(bash scripts/slurm-up)"
    python scripts/bench/alyx_backfill.py --sessions 30

Sessions are seeded with the throttle off (they come from the rig, not from hpcpipe); the
backfill then runs as the user runs it, ``hpcpipe backfill --sessions-file`` as a whole process,
and the server's own statistics give the requests it received, by endpoint, and whether any was
answered 429. The time a larger backfill would take at the throttle follows from requests per
session (printed); see docs/ALYX.md, "Backfills with Alyx".
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=30)
    parser.add_argument("--throttle", default="550/min")
    args = parser.parse_args()
    if not os.environ.get("SLURM_CONF") or not os.environ.get("HPCPIPE_SLURM_NODE"):
        sys.exit('alyx bench: start the test cluster first: eval "$(bash scripts/slurm-up)"')
    from tests.alyx_server import AlyxServerProcess
    from tests.alyx_server.fixtures import PASSWORD, USERNAME, _setup_world, admin_client, make_session

    tmp = Path(tempfile.mkdtemp(prefix="hpcpipe-alyx-bench-"))
    server = AlyxServerProcess(tmp / "alyx.sqlite", throttle=args.throttle).start()
    node = os.environ["HPCPIPE_SLURM_NODE"]
    run_name = None
    try:
        _setup_world(server)
        server.set_throttle(None)
        client = admin_client(server)
        paths = [make_session(client, tmp / "data", f"S{i:04d}")[0] for i in range(args.sessions)]
        listing = tmp / "sessions.txt"
        listing.write_text("\n".join(map(str, paths)) + "\n")
        server.set_throttle(args.throttle)
        server.stats(reset=True)
        env = dict(os.environ, HPCPIPE_HOME=str(tmp / "home"), HPCPIPE_CONFIG=str(tmp / "none.toml"),
                   HPCPIPE_STORE_BACKEND="alyx", HPCPIPE_ALYX_URL=server.url, HPCPIPE_ALYX_USERNAME=USERNAME,
                   HPCPIPE_ALYX_PASSWORD=PASSWORD,
                   PYTHONPATH=os.pathsep.join([str(REPO / "scripts" / "bench"), str(REPO)]))
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=drain", "reason=bench"], check=False)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "hpcpipe.cli", "backfill", "--sessions-file", str(listing),
                               "--pipeline", "pipelines.SixTasks"], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"alyx bench: backfill failed: {proc.stderr.strip()[-500:]}")
        run_name = proc.stdout.split("run ", 1)[1].split(":", 1)[0]
        stats = server.stats()
    finally:
        if run_name:
            subprocess.run(["scancel", "--name", run_name], check=False)
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], check=False)
        server.stop()
    total = stats.get("total", sum(v for k, v in stats.items() if isinstance(v, int)))
    print(f"alyx backfill of {args.sessions} sessions (6 tasks each), throttle {args.throttle}: "
          f"queued in {wall:.2f} s, {total} requests, {total / args.sessions:.1f} per session")
    print(f"server statistics: {stats}")
    rate = float(args.throttle.split("/")[0]) / 60 if args.throttle != "off" else None
    if rate:
        print(f"at {args.throttle}, 1,000 sessions would need {total / args.sessions * 1000:.0f} requests: "
              f"{total / args.sessions * 1000 / rate / 60:.1f} min before the last array is queued")
    return 0


if __name__ == "__main__":
    sys.exit(main())
