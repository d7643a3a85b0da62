"""AWS handler against an S3-compatible server process (moto in server mode on 127.0.0.1)."""
from __future__ import annotations

import hashlib
import logging
import os
import uuid

import pytest

from hpcpipe.errors import BadInput
from hpcpipe.handlers import MissingInputs, get_data_handler

pytestmark = pytest.mark.s3

SIGNATURE = {
    "input_files": [("spikes.times.npy", "alf/probe00", True),
                    ("*.ap.meta", "raw_ephys_data/probe*", True),
                    ("absent.npy", "alf", False)],
    "output_files": [("clusters.metrics.pqt", "alf/probe00", True)],
}
SPIKES = os.urandom(200_000)


@pytest.fixture
def s3(s3_server, aws_env):
    import boto3

    return boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")


@pytest.fixture
def buckets(s3):
    """A fresh input and output bucket per test, with one session's objects under ``data/``."""
    tag = uuid.uuid4().hex[:8]
    src, dst = f"in-{tag}", f"out-{tag}"
    s3.create_bucket(Bucket=src)
    s3.create_bucket(Bucket=dst)
    base = "data/ZM_1/2020-01-01/001"
    s3.put_object(Bucket=src, Key=f"{base}/alf/probe00/spikes.times.npy", Body=SPIKES)
    s3.put_object(Bucket=src, Key=f"{base}/alf/probe00/spikes.clusters.npy", Body=b"not an input")
    s3.put_object(Bucket=src, Key=f"{base}/raw_ephys_data/probe00/_spikeglx_g0_t0.imec0.ap.meta", Body=b"meta")
    s3.put_object(Bucket=src, Key="data/ZM_1/2020-01-01/002/alf/probe00/spikes.times.npy", Body=b"other session")
    return src, dst


def _session(tmp_path, root="local"):
    return tmp_path / root / "mainenlab" / "Subjects" / "ZM_1" / "2020-01-01" / "001"


def _handler(tmp_path, s3_server, buckets, root="local", **kw):
    opts = dict(bucket=buckets[0], prefix="data", output_bucket=buckets[1], output_prefix="results",
                endpoint_url=s3_server, region="us-east-1")
    opts.update(kw)
    return get_data_handler("AWS", _session(tmp_path, root), SIGNATURE, **opts)


def test_setup_downloads_inputs_through_cache(tmp_path, s3_server, buckets):
    h = _handler(tmp_path, s3_server, buckets)
    assert h.setUp() is True
    s = h.session_path
    assert (s / "alf/probe00/spikes.times.npy").read_bytes() == SPIKES
    assert (s / "raw_ephys_data/probe00/_spikeglx_g0_t0.imec0.ap.meta").read_bytes() == b"meta"
    assert not (s / "alf/probe00/spikes.clusters.npy").exists()
    assert len(h.downloaded) == 2
    cached = h.cache_dir / hashlib.md5(SPIKES).hexdigest()[:2] / hashlib.md5(SPIKES).hexdigest()
    assert os.path.samefile(cached, s / "alf/probe00/spikes.times.npy")
    h.setUp()  # again: files present, nothing fetched
    assert h.downloaded == [] and h.from_cache == []
    # another local session folder with the same inputs: served from the cache
    h2 = _handler(tmp_path, s3_server, buckets, root="elsewhere")
    h2.setUp()
    assert h2.downloaded == [] and len(h2.from_cache) == 2
    h.cleanUp()
    assert (s / "alf/probe00/spikes.times.npy").exists()


def test_upload_outputs_to_output_prefix(tmp_path, s3_server, buckets, s3):
    h = _handler(tmp_path, s3_server, buckets)
    h.setUp()
    out = h.session_path / "alf/probe00/clusters.metrics.pqt"
    out.write_bytes(b"metrics")
    files = h.uploadData([out], "1.2.3")
    assert files == [out] and h.relative(files) == ["alf/probe00/clusters.metrics.pqt"]
    key = "results/ZM_1/2020-01-01/001/alf/probe00/clusters.metrics.pqt"
    assert h.uploaded == {out: f"s3://{buckets[1]}/{key}"}
    obj = s3.get_object(Bucket=buckets[1], Key=key)
    assert obj["Body"].read() == b"metrics"
    assert obj["Metadata"] == {"hpcpipe-version": "1.2.3"}


def test_missing_required_input_names_the_prefix(tmp_path, s3_server, buckets, s3):
    s3.delete_object(Bucket=buckets[0], Key="data/ZM_1/2020-01-01/001/alf/probe00/spikes.times.npy")
    with pytest.raises(MissingInputs) as exc:
        _handler(tmp_path, s3_server, buckets).setUp()
    assert "'spikes.times.npy' in collection 'alf/probe00'" in str(exc.value)
    assert f"s3://{buckets[0]}/data/ZM_1/2020-01-01/001/" in str(exc.value)


def test_settings_from_config_file(tmp_path, s3_server, buckets, s3, monkeypatch, caplog):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[aws]\nbucket = "{buckets[0]}"\nprefix = "data"\nendpoint_url = "{s3_server}"\n'
                   'region = "us-east-1"\n')
    monkeypatch.setenv("HPCPIPE_CONFIG", str(cfg))
    caplog.set_level(logging.DEBUG)
    h = get_data_handler("AWS", _session(tmp_path), SIGNATURE)
    h.setUp()
    out = h.session_path / "alf/probe00/clusters.metrics.pqt"
    out.write_bytes(b"m")
    h.uploadData([out], None)  # no output bucket/prefix: same as the inputs'
    assert s3.head_object(Bucket=buckets[0], Key="data/ZM_1/2020-01-01/001/alf/probe00/clusters.metrics.pqt")
    assert "testing-secret-never-logged" not in caplog.text


def test_multipart_etag_is_cached_by_key(tmp_path, s3_server, buckets, s3):
    key = "data/ZM_1/2020-01-01/001/raw_ephys_data/probe00/_spikeglx_g0_t0.imec0.ap.meta"
    body = os.urandom(5 * 1024 * 1024) + b"tail"
    mpu = s3.create_multipart_upload(Bucket=buckets[0], Key=key)
    parts = []
    for n, chunk in enumerate((body[:5 * 1024 * 1024], body[5 * 1024 * 1024:]), 1):
        r = s3.upload_part(Bucket=buckets[0], Key=key, PartNumber=n, UploadId=mpu["UploadId"], Body=chunk)
        parts.append({"PartNumber": n, "ETag": r["ETag"]})
    s3.complete_multipart_upload(Bucket=buckets[0], Key=key, UploadId=mpu["UploadId"],
                                 MultipartUpload={"Parts": parts})
    h = _handler(tmp_path, s3_server, buckets)
    h.setUp()
    assert (h.session_path / "raw_ephys_data/probe00/_spikeglx_g0_t0.imec0.ap.meta").read_bytes() == body
    assert len(list((h.cache_dir / "s3").rglob("*"))) == 2  # one folder, one file
    h2 = _handler(tmp_path, s3_server, buckets, root="again")
    h2.setUp()
    assert h2.downloaded == []


def test_missing_bucket_setting_is_named(tmp_path, aws_env):
    h = get_data_handler("AWS", _session(tmp_path), SIGNATURE)
    with pytest.raises(BadInput, match=r"\[aws\] bucket"):
        h.setUp()
