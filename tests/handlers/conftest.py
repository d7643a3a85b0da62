"""Fixtures for the data-handler tests: an isolated hpcpipe home, a real HTTP file server,
an S3-compatible server process (moto in server mode), and ALF session layouts."""
from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """hpcpipe writes (cache, scratch) under a temp home; no user config file is read."""
    home = tmp_path / "hpcpipe-home"
    monkeypatch.setenv("HPCPIPE_HOME", str(home))
    monkeypatch.setenv("HPCPIPE_CONFIG", str(tmp_path / "no-config.toml"))
    for name in list(os.environ):
        if name.startswith(("HPCPIPE_REMOTE_", "HPCPIPE_SDSC_", "HPCPIPE_AWS_")):
            monkeypatch.delenv(name)
    return home



class FileServer(ThreadingHTTPServer):
    """Serves ``root`` over HTTP, logging every request; optional Range support, basic auth,
    and connections cut after N bytes of a given file (to test retries and resume)."""

    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.requests: list[tuple[str, str | None]] = []
        self.ranges = True
        self.auth: tuple[str, str] | None = None
        self.cut: dict[str, int] = {}
        self.fail: dict[str, list[int]] = {}  # path -> status codes to answer first, in order
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _reply(self, code: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        srv: FileServer = self.server  # type: ignore[assignment]
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        with srv.lock:
            srv.requests.append((rel, self.headers.get("Range")))
        if srv.auth:
            want = "Basic " + base64.b64encode(":".join(srv.auth).encode()).decode()
            if self.headers.get("Authorization") != want:
                return self._reply(401, b"auth", {"WWW-Authenticate": 'Basic realm="data"'})
        if srv.fail.get(rel):
            return self._reply(srv.fail[rel].pop(0), b"try later")
        path = srv.root / rel
        if not path.is_file():
            return self._reply(404, b"not found")
        data = path.read_bytes()
        rng = self.headers.get("Range")
        start, code, headers = 0, 200, {}
        if rng and srv.ranges:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                return self._reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            code, headers = 206, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        body = data[start:]
        cut = srv.cut.pop(rel, None)
        if cut is None:
            return self._reply(code, body, headers)
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:cut])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server = FileServer(root)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server *process* on 127.0.0.1 (its URL); stopped at the end of the session."""
    pytest.importorskip("moto.server")
    pytest.importorskip("boto3")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto server did not start on {url}")
            time.sleep(0.1)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Fake credentials for moto, and no user AWS files."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-never-logged")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
