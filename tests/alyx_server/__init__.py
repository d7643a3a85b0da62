"""An Alyx stand-in for tests: a real HTTP server on loopback over a sqlite3 file.

``AlyxServerProcess`` runs ``python -m tests.alyx_server`` as a subprocess, so a test can stop
it mid-run and start it again on the same port and database (an Alyx outage). The pytest
fixture ``alyx_server`` (in ``tests/alyx_server/fixtures.py``) wraps it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
USERNAME, PASSWORD = "admin", "admin-password"


class AlyxServerProcess:
    """Start/stop/restart the test server; ``url``, ``username``, ``password``, ``db``."""

    def __init__(self, db: str | Path, throttle: str = "550/min", port: int = 0,
                 username: str = USERNAME, password: str = PASSWORD):
        self.db, self.throttle, self.port = str(db), throttle, port
        self.username, self.password = username, password
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None

    def start(self) -> "AlyxServerProcess":
        cmd = [sys.executable, "-m", "tests.alyx_server", "--port", str(self.port), "--db", self.db,
               "--throttle", self.throttle or "off", "--username", self.username,
               "--password", self.password]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        deadline = time.monotonic() + 20
        while True:
            self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True)
            line = self.proc.stdout.readline().strip()
            if line.startswith("http://"):
                break
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            self.proc.kill()
            self.proc.wait()
            # the old process may still hold the port for a moment after a stop
            if "Address already in use" in err and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            raise RuntimeError(f"Alyx test server did not start: {line!r} {err[-2000:]}")
        self.url = line
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream:
                    stream.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -------------------------------------------------------------- test hooks (no auth)
    def hook(self, name: str, data: dict | None = None, method: str = "POST") -> dict:
        body = json.dumps(data or {}).encode() if method == "POST" else None
        req = urllib.request.Request(f"{self.url}/_test/{name}", data=body, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def seed_tasks(self, session: str | None, count: int, **kw) -> int:
        return self.hook("seed-tasks", {"session": session, "count": count, **kw})["count"]

    def set_throttle(self, rate: str | None) -> None:
        self.hook("throttle", {"rate": rate})

    def stats(self, reset: bool = False) -> dict:
        return self.hook("stats", method="POST" if reset else "GET")

    def fault(self, **spec) -> None:
        self.hook("fault", spec)

    def reset(self) -> None:
        """Empty sessions/subjects/tasks/datasets; clear throttle history, faults and stats."""
        self.hook("reset")

    def sql(self, sql: str, *args) -> list[dict]:
        return self.hook("sql", {"sql": sql, "args": list(args)})["rows"]

    def __enter__(self) -> "AlyxServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class HangingServer:
    """A peer that accepts connections on ``port`` and never answers (a hung Alyx: the process
    is alive, its socket takes the request, no response ever comes). Unlike a stopped server, a
    request to it fails only on the client's read timeout, or never."""

    def __init__(self, port: int):
        import socket
        import threading

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 20
        while True:  # a stopped server's socket may hold the port for a moment
            try:
                self._sock.bind(("127.0.0.1", port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self._sock.listen(64)
        self._held: list = []  # accepted connections, kept open and unanswered
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed
                return
            self._held.append(conn)
            self.accepted += 1

    def close(self) -> None:
        import socket

        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        for conn in self._held:
            conn.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "HangingServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
