"""``python -m tests.alyx_server --port 0 --db PATH``: serve the Alyx stand-in, print its URL."""
from __future__ import annotations

import argparse
import logging
import sys

from werkzeug.serving import make_server

from .app import AlyxTestServer


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.alyx_server", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--db", required=True, help="sqlite3 file (created and seeded if new)")
    p.add_argument("--username", default="admin")
    p.add_argument("--password", default="admin-password")
    p.add_argument("--throttle", default="550/min", help="per-user rate, e.g. 550/min, 5/s; "
                                                         "'off' disables")
    args = p.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = AlyxTestServer(args.db, args.username, args.password,
                            None if args.throttle == "off" else args.throttle)
    httpd = make_server(args.host, args.port, server.app, threaded=True)
    print(f"http://{args.host}:{httpd.server_port}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
