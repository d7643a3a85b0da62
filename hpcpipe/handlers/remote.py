"""``remote``: inputs downloaded over HTTP(S) from the data server named in the dataset records.

Any machine can run a task this way; the price is the transfer, so the handler works hard not
to repeat it and not to keep a bad file:

* only the datasets matching the signature's input patterns/collections are fetched, and a file
  already in the session with the expected size is kept;
* a download is written to ``<file>.part`` and renamed only after its size and md5 (Alyx's
  ``file_size`` and ``hash``) match; a wrong hash removes the partial file and raises;
* an interrupted download resumes from the ``.part`` with a ``Range`` request (a server that
  ignores ranges answers 200 and the file restarts from zero); connection errors, timeouts and
  5xx answers are retried with backoff, 4xx answers are not;
* verified files go into a content cache keyed by md5 (``[remote] cache_dir``, default
  ``<hpcpipe home>/cache``), hard-linked (else copied) into each session that needs them, so a
  second session or ``setUp`` does not download again. Cache files are made read-only: being
  hard links, an input changed in place by a task would otherwise corrupt the cache.

Local names never carry the dataset UUID that Flatiron puts in its URLs
(``spikes.times.<uuid>.npy`` is saved as ``spikes.times.npy``).

Options (constructor keyword, else ``[remote]`` in the config file): ``cache_dir``,
``http_user``, ``http_password`` (else ONE's ``HTTP_DATA_SERVER_LOGIN/PWD`` when ``one`` is
given), ``data_server`` (base URL for records without a ``data_url``; else ONE's
``HTTP_DATA_SERVER``), ``timeout`` (seconds, default 60), ``retries`` (default 3), ``backoff``
(seconds, default 1), ``use_cache`` (default true), ``data_repository`` (prefer file records of
that repository). Passwords are never logged, and URLs are logged without user info or query string.
"""
from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import requests
import urllib3

from .base import (
    DataHandler,
    DataHandlerError,
    DownloadError,
    MissingInputs,
    link_or_copy,
    log,
    md5sum,
    session_parts,
    spec_matches,
    strip_uuid,
)

_RETRYABLE = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
              urllib3.exceptions.HTTPError)  # raised by the raw reads of the body


class _RetryableStatus(Exception):
    """A 5xx/429 answer: worth another try."""


def safe_url(url: str) -> str:
    """The URL without credentials or query string, fit for logs and error messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def dataset_relative_path(record: dict) -> str:
    """Where a dataset record's file goes inside the session (``collection/[#rev#/]name``)."""
    name = record.get("name")
    if not name:
        urls = [fr.get("data_url") for fr in record.get("file_records") or [] if fr.get("data_url")]
        if not urls:
            raise DataHandlerError(f"dataset record {record.get('id', '?')} has neither a name nor a data URL")
        name = urlsplit(urls[0]).path.rsplit("/", 1)[-1]
    name = strip_uuid(name)
    parts = [p for p in (record.get("collection") or "").strip("/").split("/") if p]
    if record.get("revision"):
        parts.append(f"#{record['revision']}#")
    return "/".join([*parts, name])


class RemoteHttpDataHandler(DataHandler):
    """Inputs from an HTTP(S) data server, chosen from Alyx dataset records."""

    location = "remote"

    def __init__(self, session_path: str | os.PathLike, signature: dict | None, one: Any = None,
                 datasets: list[dict] | None = None, **options: Any):
        super().__init__(session_path, signature, one=one, **options)
        self.datasets = datasets
        #: files fetched over the network by the last ``setUp`` / served from the cache
        self.downloaded: list[Path] = []
        self.from_cache: list[Path] = []
        self._http: requests.Session | None = None

    # -------------------------------------------------------------- settings
    @property
    def cache_dir(self) -> Path:
        """The md5-keyed content cache shared by every session on this machine."""
        return Path(self.option("remote", "cache_dir") or self.settings.home_dir() / "cache").expanduser()

    def _credentials(self) -> tuple[str, str] | None:
        user = self.option("remote", "http_user")
        password = self.option("remote", "http_password")
        par = getattr(getattr(self.one, "alyx", None), "_par", None)
        if not user and par is not None:  # ONE's own settings (~/.one/.<url key>)
            user = getattr(par, "HTTP_DATA_SERVER_LOGIN", None)
            password = getattr(par, "HTTP_DATA_SERVER_PWD", None)
        return (str(user), str(password or "")) if user else None

    @property
    def http(self) -> requests.Session:
        """One HTTP session per handler (connection reuse), authenticated when configured."""
        if self._http is None:
            self._http = requests.Session()
            self._http.auth = self._credentials()
        return self._http

    # -------------------------------------------------------------- choosing datasets
    def records(self) -> list[dict]:
        """The dataset records given by the caller, else asked of Alyx when ``one`` and ``eid`` are."""
        if self.datasets is None:
            eid = self.options.get("eid")
            if self.one is None or not eid:
                raise DataHandlerError("the remote handler needs the session's dataset records "
                                       "(datasets=...) or one= and eid= to ask Alyx for them")
            self.datasets = list(self.one.alyx.rest("datasets", "list", session=eid, exists=True))
        return self.datasets

    def plan(self) -> dict[str, dict]:
        """``{session-relative path: record}`` for the records matching an input of the signature.

        When several records give the same path (e.g. two revisions without a revision folder),
        the one flagged ``default_dataset`` wins.
        """
        chosen: dict[str, dict] = {}
        for record in self.records():
            rel = dataset_relative_path(record)
            if not any(spec_matches(s, self._bare(rel)) for s in self.input_specs):
                continue
            if rel not in chosen or (record.get("default_dataset") and not chosen[rel].get("default_dataset")):
                chosen[rel] = record
        return chosen

    def data_server(self) -> str | None:
        """Base URL for records without a ``data_url`` (``[remote] data_server``, else ONE's
        ``HTTP_DATA_SERVER``)."""
        base = self.option("remote", "data_server")
        par = getattr(getattr(self.one, "alyx", None), "_par", None)
        if not base and par is not None:
            base = getattr(par, "HTTP_DATA_SERVER", None)
        return str(base).rstrip("/") if base else None

    def _url(self, record: dict) -> str:
        """The record's ``data_url`` (an existing file record, of ``data_repository`` if set), else
        ``<data_server>/<relative_path>`` built from the file record or from the session's
        ``[lab/Subjects/]subject/date/number`` and the dataset's collection and name (records
        of the embedded store have no file records)."""
        candidates = [fr for fr in record.get("file_records") or [] if fr.get("exists", True)]
        prefer = self.option("remote", "data_repository")
        candidates.sort(key=lambda fr: prefer is not None and fr.get("data_repository") != prefer)
        urls = [fr["data_url"] for fr in candidates if fr.get("data_url")]
        urls.sort(key=lambda u: not str(u).startswith(("http://", "https://")))
        if urls:
            return urls[0]
        base = self.data_server()
        if base:
            rel = next((fr["relative_path"] for fr in candidates if fr.get("relative_path")), None)
            if rel is None:
                rel = f"{session_parts(self.original_session_path).relative}/{dataset_relative_path(record)}"
            return f"{base}/{quote(rel.lstrip('/'))}"
        raise DownloadError(f"dataset {record.get('collection') or ''}/{record.get('name')} has no existing "
                            "file record with a data URL, and no [remote] data_server is set: "
                            "it cannot be downloaded")

    # -------------------------------------------------------------- interface
    def setUp(self, **kwargs: Any) -> bool:
        """Download the missing inputs; raise ``MissingInputs`` if a required one has no source."""
        self.downloaded, self.from_cache = [], []
        plan = self.plan()
        # refuse before transferring anything: a required input with no file and no record
        missing = [s for s in self.input_specs if s.required and not s.find(self.session_path)
                   and not any(spec_matches(s, self._bare(rel)) for rel in plan)]
        if missing:
            raise MissingInputs(missing, f"in {self.session_path} nor among the {len(self.records())} "
                                         "dataset records of the session")
        for rel, record in plan.items():
            dest = self.session_path / rel
            size = record.get("file_size")
            if dest.is_file() and (size is None or dest.stat().st_size == size):
                continue
            self.fetch(record, dest)
        return True

    def uploadData(self, outputs: Any, version: str | None = None, **kwargs: Any) -> list[Path]:
        """Outputs stay in the local session; they are registered from there (the data server's
        own upload path, e.g. a globus or FTP patcher, is outside this handler)."""
        return self.outputs_in_session(outputs)

    def cleanUp(self, **kwargs: Any) -> None:
        """Close the HTTP session. Downloaded inputs stay (session and cache) for the next task."""
        if self._http is not None:
            self._http.close()
            self._http = None

    # -------------------------------------------------------------- transfer
    @staticmethod
    def _bare(rel: str) -> str:
        return "/".join(p for p in rel.split("/") if not (p.startswith("#") and p.endswith("#")))

    def _cache_file(self, md5: str) -> Path:
        return self.cache_dir / md5[:2] / md5

    def fetch(self, record: dict, dest: Path) -> Path:
        """Bring one dataset to ``dest``: from the cache if there, else downloaded and verified."""
        size, md5 = record.get("file_size"), (record.get("hash") or "").lower() or None
        use_cache = bool(self.option("remote", "use_cache")) and md5 is not None
        from filelock import FileLock

        locks = self.cache_dir / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        key = hashlib.sha1(str(dest.resolve()).encode()).hexdigest()
        with FileLock(str(locks / f"{key}.lock")):  # two tasks of one session fetching one file
            if dest.is_file() and (size is None or dest.stat().st_size == size):
                return dest
            if use_cache:
                cached = self._cache_file(md5)
                if cached.is_file() and (size is None or cached.stat().st_size == size):
                    link_or_copy(cached, dest)
                    self.from_cache.append(dest)
                    log.info("%s: from cache %s", dest, cached)
                    return dest
            url = self._url(record)
            part = dest.with_name(dest.name + ".part")
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._download(url, part, size)
            self._verify(part, size, md5, url)
            os.replace(part, dest)
            self.downloaded.append(dest)
            if use_cache:
                cached = self._cache_file(md5)
                link_or_copy(dest, cached)
                cached.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        return dest

    def _verify(self, part: Path, size: int | None, md5: str | None, url: str) -> None:
        got = part.stat().st_size
        if size is not None and got != size:
            if got > size:
                part.unlink()
            raise DownloadError(f"{safe_url(url)}: got {got} bytes, the dataset record says {size}"
                                + ("; the partial file was removed" if got > size else
                                   f"; {part.name} is kept to resume"))
        if md5 is not None:
            digest = md5sum(part)
            if digest != md5:
                part.unlink()
                raise DownloadError(f"{safe_url(url)}: md5 {digest} does not match the dataset record's "
                                    f"hash {md5}; the downloaded file was removed")

    def _download(self, url: str, part: Path, size: int | None) -> None:
        """Stream ``url`` into ``part``, resuming what is there, retrying transient failures."""
        retries = int(self.option("remote", "retries"))
        backoff = float(self.option("remote", "backoff"))
        timeout = float(self.option("remote", "timeout"))
        attempt = 0
        while True:
            offset = part.stat().st_size if part.exists() else 0
            if size is not None and offset > size:  # not a prefix of this file
                part.unlink()
                offset = 0
            if size is not None and offset == size and offset > 0:
                return  # complete already; verified by the caller
            # identity: byte offsets, sizes and md5 are those of the file, never of a gzip stream
            headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
            try:
                self._get(url, part, offset, headers, timeout)
                return
            except (_RETRYABLE + (_RetryableStatus,)) as exc:
                attempt += 1
                if attempt > retries:
                    raise DownloadError(f"{safe_url(url)}: giving up after {retries} retries "
                                        f"({type(exc).__name__}); {part.name} is kept to resume") from None
                log.warning("%s: %s, retry %d/%d", safe_url(url), type(exc).__name__, attempt, retries)
                time.sleep(backoff * 2 ** (attempt - 1))

    def _get(self, url: str, part: Path, offset: int, headers: dict, timeout: float) -> None:
        with self.http.get(url, stream=True, timeout=(min(timeout, 30.0), timeout), headers=headers) as r:
            if r.status_code == 416 and offset:  # nothing after offset: let the size/hash check decide
                return
            if r.status_code >= 500 or r.status_code == 429:
                raise _RetryableStatus(r.status_code)
            if r.status_code not in (200, 206):
                hint = " (check [remote] http_user / http_password)" if r.status_code in (401, 403) else ""
                raise DownloadError(f"{safe_url(url)}: HTTP {r.status_code}{hint}")
            mode = "wb"
            if r.status_code == 206:
                start = r.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
                if start != str(offset):
                    raise DownloadError(f"{safe_url(url)}: asked bytes from {offset}, server sent "
                                        f"Content-Range {r.headers.get('Content-Range')!r}")
                mode = "ab"
                log.info("%s: resuming at byte %d", safe_url(url), offset)
            else:
                log.info("downloading %s -> %s", safe_url(url), part.with_suffix(""))
            # read1: one socket read per chunk, so a cut connection loses none of the bytes received
            read = getattr(r.raw, "read1", None) or r.raw.read
            with open(part, mode) as fh:
                while chunk := read(1 << 20, decode_content=True):
                    fh.write(chunk)
