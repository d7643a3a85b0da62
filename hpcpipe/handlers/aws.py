"""``AWS``: inputs from an S3 bucket, outputs uploaded to a bucket prefix, then registered.

Object keys follow the session: inputs are read from
``<prefix>/<subject>/<date>/<number>/<collection>/<file>`` and outputs written to
``<output_prefix>/<subject>/<date>/<number>/<collection>/<file>``. ``setUp`` lists the session
prefix once, fetches the objects matching the signature's inputs into a local content cache
and hard-links (else copies) them into ``session_path``; a file already there with the object's
size is kept. The cache is keyed by the object's ETag when it is a plain md5 (single-part
uploads: the same key as the ``remote`` handler's cache, so both share it, and the download is
verified against it), else by bucket/key/ETag; a second session or ``setUp`` does not download
again. ``uploadData`` uploads each output, checks the stored size, and returns the local files
for registration (their S3 URIs in ``handler.uploaded``).

boto3 is an optional extra (``pip install hpcpipe[aws]``) and is imported only when the handler
first talks to S3, so ``import hpcpipe.handlers`` stays light. Credentials come from boto3's
usual chain (environment, ``~/.aws``, instance role) and are never read or logged here.

Options (constructor keyword, else ``[aws]`` in the config file): ``bucket``, ``prefix``,
``output_bucket`` (default ``bucket``), ``output_prefix`` (default ``prefix``),
``endpoint_url`` (S3-compatible servers), ``region``, ``cache_dir`` (default
``<hpcpipe home>/cache``). A ready boto3 client may be passed as ``client=``.
"""
from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path
from typing import Any

from ..errors import BadInput
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
)

_MD5_RE = re.compile(r"^[0-9a-f]{32}$")


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


class RemoteAwsDataHandler(DataHandler):
    """Inputs from S3 (through a local cache), outputs to S3."""

    location = "AWS"

    def __init__(self, session_path: str | os.PathLike, signature: dict | None, one: Any = None,
                 client: Any = None, **options: Any):
        super().__init__(session_path, signature, one=one, **options)
        self.parts = session_parts(self.session_path)
        self._s3 = client
        self.downloaded: list[Path] = []
        self.from_cache: list[Path] = []
        #: local output file -> ``s3://bucket/key`` it was uploaded to
        self.uploaded: dict[Path, str] = {}

    # -------------------------------------------------------------- settings
    @property
    def s3(self) -> Any:
        """The boto3 S3 client, created (and boto3 imported) on first use."""
        if self._s3 is None:
            try:
                import boto3
            except ImportError:
                raise DataHandlerError("the AWS handler needs boto3: pip install 'hpcpipe[aws]'") from None
            session = boto3.session.Session(region_name=self.option("aws", "region") or None)
            self._s3 = session.client("s3", endpoint_url=self.option("aws", "endpoint_url") or None)
        return self._s3

    @property
    def cache_dir(self) -> Path:
        return Path(self.option("aws", "cache_dir") or self.settings.home_dir() / "cache").expanduser()

    def _setting(self, key: str, fallback: str | None = None) -> str:
        value = self.option("aws", key) or (self.option("aws", fallback) if fallback else None)
        if not value:
            raise BadInput(f"the AWS handler needs [aws] {key}" + (f" or {fallback}" if fallback else "")
                           + " (config file, $HPCPIPE_AWS_" + key.upper() + " or handler option)")
        return str(value)

    @property
    def input_prefix(self) -> str:
        """``<prefix>/<subject>/<date>/<number>``: where this session's inputs are."""
        return _join(self.option("aws", "prefix") or "", self.parts.short)

    @property
    def output_prefix(self) -> str:
        out = self.option("aws", "output_prefix")
        return _join(out if out is not None else (self.option("aws", "prefix") or ""), self.parts.short)

    # -------------------------------------------------------------- interface
    def setUp(self, **kwargs: Any) -> bool:
        """Fetch the session's objects matching the inputs; raise ``MissingInputs`` for required ones absent."""
        self.downloaded, self.from_cache = [], []
        bucket = self._setting("bucket")
        base = self.input_prefix + "/"
        plan: dict[str, dict] = {}
        for obj in self._list(bucket, base):
            rel = obj["Key"][len(base):]
            if any(spec_matches(s, rel) for s in self.input_specs):
                plan[rel] = obj
        for rel, obj in plan.items():
            dest = self.session_path / rel
            if dest.is_file() and dest.stat().st_size == obj["Size"]:
                continue
            self._fetch(bucket, obj, dest)
        missing = [s for s in self.input_specs
                   if s.required and not s.find(self.session_path) and not any(spec_matches(s, r) for r in plan)]
        if missing:
            raise MissingInputs(missing, f"in {self.session_path} nor under s3://{bucket}/{base}")
        return True

    def uploadData(self, outputs: Any, version: str | None = None, **kwargs: Any) -> list[Path]:
        """Upload each output under the output prefix; return the local files to register."""
        bucket = self._setting("output_bucket", "bucket")
        files = self.outputs_in_session(outputs)
        for file, rel in zip(files, self.relative(files)):
            key = _join(self.output_prefix, rel)
            extra = {"Metadata": {"hpcpipe-version": str(version)}} if version else None
            try:
                self.s3.upload_file(str(file), bucket, key, ExtraArgs=extra)
                size = self.s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
            except Exception as exc:  # botocore's errors, imported lazily; no credentials in them
                raise DataHandlerError(f"upload of {file} to s3://{bucket}/{key} failed: {exc}") from None
            if size != file.stat().st_size:
                raise DataHandlerError(f"s3://{bucket}/{key} holds {size} bytes, {file} has {file.stat().st_size}")
            self.uploaded[file] = f"s3://{bucket}/{key}"
            log.info("uploaded %s -> s3://%s/%s", file, bucket, key)
        return files

    def cleanUp(self, **kwargs: Any) -> None:
        """Inputs stay in the session and the cache for the next task; nothing to remove."""

    # -------------------------------------------------------------- helpers
    def _list(self, bucket: str, prefix: str) -> list[dict]:
        try:
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            return [obj for page in pages for obj in page.get("Contents", [])]
        except DataHandlerError:
            raise
        except Exception as exc:
            raise DataHandlerError(f"cannot list s3://{bucket}/{prefix}: {exc}") from None

    def _cache_file(self, bucket: str, obj: dict) -> tuple[Path, str | None]:
        etag = str(obj.get("ETag", "")).strip('"').lower()
        if _MD5_RE.match(etag):
            return self.cache_dir / etag[:2] / etag, etag
        key = hashlib.sha1(f"{bucket}/{obj['Key']}/{etag}".encode()).hexdigest()
        return self.cache_dir / "s3" / key[:2] / key, None

    def _fetch(self, bucket: str, obj: dict, dest: Path) -> None:
        cached, md5 = self._cache_file(bucket, obj)
        if not (cached.is_file() and cached.stat().st_size == obj["Size"]):
            cached.parent.mkdir(parents=True, exist_ok=True)
            part = cached.with_name(f"{cached.name}.{os.getpid()}.part")
            try:
                self.s3.download_file(bucket, obj["Key"], str(part))
            except Exception as exc:
                part.unlink(missing_ok=True)
                raise DownloadError(f"download of s3://{bucket}/{obj['Key']} failed: {exc}") from None
            got = part.stat().st_size
            digest = md5sum(part) if md5 else None
            if got != obj["Size"] or digest != md5:
                part.unlink()
                raise DownloadError(f"s3://{bucket}/{obj['Key']}: got {got} bytes md5 {digest}, expected "
                                    f"{obj['Size']} bytes md5 {md5}; the download was removed")
            part.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            os.replace(part, cached)
            self.downloaded.append(dest)
            log.info("downloaded s3://%s/%s", bucket, obj["Key"])
        else:
            self.from_cache.append(dest)
        link_or_copy(cached, dest)
