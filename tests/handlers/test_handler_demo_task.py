"""A demo Task run end to end through each data handler, as the job side runs it:
``task.run()`` (setUp through the handler, ``_run``), the registration payload
(``uploadData`` through the handler), then ``task.cleanUp()``."""
from __future__ import annotations

import hashlib
import shutil
import uuid

import pytest

pytest.importorskip("numpy")
from hpcpipe.demo.session import make_session  # noqa: E402
from hpcpipe.demo.tasks import DemoSync  # noqa: E402

INPUTS = ["raw_demo_data/_demo_raw.sync.npy", "raw_demo_data/_demo_raw.meta.json"]
SESSION = "demolab/Subjects/DEMO001/2024-01-02/001"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A demo session (only DemoSync's inputs kept)."""
    path = make_session(tmp_path_factory.mktemp("src") / SESSION)
    for f in list(path.rglob("*")):
        if f.is_file() and f.relative_to(path).as_posix() not in INPUTS:
            f.unlink()
    return path


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def _check_payload(task, registered_session):
    payload = task.dataset_payload()
    assert payload["filenames"] == ["alf/_demo_sync.times.npy"]
    assert payload["session_path"] == str(registered_session)
    assert payload["hashes"] == [_md5(task.session_path / "alf/_demo_sync.times.npy")]
    return payload


def test_server(tmp_path, source):
    session = tmp_path / SESSION
    shutil.copytree(source, session)
    task = DemoSync(session, location="server")
    assert task.run() == 0, task.log
    _check_payload(task, session)
    task.cleanUp()
    assert (session / "alf/_demo_sync.times.npy").exists()


def test_server_missing_input_fails_before_run(tmp_path, source):
    session = tmp_path / SESSION
    shutil.copytree(source, session)
    (session / INPUTS[0]).unlink()
    task = DemoSync(session, location="server")
    assert task.run() == -1
    assert "'_demo_raw.sync.npy' in collection 'raw_demo_data'" in task.log


def test_remote(tmp_path, source, http_server):
    shutil.copytree(source, http_server.root / SESSION)
    datasets = []
    for rel in INPUTS:
        f = source / rel
        collection, name = rel.rsplit("/", 1)
        datasets.append({"name": name, "collection": collection, "revision": None, "hash": _md5(f),
                         "file_size": f.stat().st_size, "file_records": []})  # embedded-store records

    class RemoteDemoSync(DemoSync):
        def get_data_handler(self, location=None):
            from hpcpipe.handlers import get_data_handler
            return get_data_handler("remote", self.session_path, self.signature, datasets=datasets,
                                    data_server=http_server.url)

    session = tmp_path / "local" / SESSION
    task = RemoteDemoSync(session, location="remote")
    assert task.run() == 0, task.log
    assert sorted(r for r, _ in http_server.requests) == sorted(f"{SESSION}/{rel}" for rel in INPUTS)
    _check_payload(task, session)
    task.cleanUp()


def test_sdsc(tmp_path, source, monkeypatch):
    store = tmp_path / "store" / SESSION
    for rel in INPUTS:
        stem, ext = rel.rsplit(".", 1)
        (store / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, store / f"{stem}.{uuid.uuid4()}.{ext}")
    monkeypatch.setenv("HPCPIPE_SDSC_SCRATCH_DIR", str(tmp_path / "scratch"))
    monkeypatch.setenv("HPCPIPE_SDSC_OUTPUT_DIR", str(tmp_path / "out"))
    task = DemoSync(store, location="SDSC")
    assert task.run() == 0, task.log
    assert task.session_path != store and task.session_path.is_relative_to(tmp_path / "scratch")
    _check_payload(task, store)  # registered against the store's session, not the scratch copy
    task.cleanUp()
    assert list((tmp_path / "scratch").iterdir()) == []
    assert (tmp_path / "out" / SESSION / "alf/_demo_sync.times.npy").exists()
    assert not (store / "alf").exists()


@pytest.mark.s3
def test_aws(tmp_path, source, s3_server, aws_env, monkeypatch):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    bucket = f"demo-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    for rel in INPUTS:
        s3.upload_file(str(source / rel), bucket, f"in/DEMO001/2024-01-02/001/{rel}")
    for key, value in {"BUCKET": bucket, "PREFIX": "in", "OUTPUT_PREFIX": "out", "ENDPOINT_URL": s3_server}.items():
        monkeypatch.setenv(f"HPCPIPE_AWS_{key}", value)
    session = tmp_path / "ec2" / SESSION
    task = DemoSync(session, location="AWS")
    assert task.run() == 0, task.log
    _check_payload(task, session)
    body = s3.get_object(Bucket=bucket, Key="out/DEMO001/2024-01-02/001/alf/_demo_sync.times.npy")["Body"].read()
    assert body == (session / "alf/_demo_sync.times.npy").read_bytes()
    task.cleanUp()
