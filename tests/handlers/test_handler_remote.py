"""remote handler against a real HTTP server on 127.0.0.1 (requests counted server-side)."""
from __future__ import annotations

import hashlib
import logging
import os
import stat

import pytest

from hpcpipe.handlers import DownloadError, MissingInputs, get_data_handler


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


UUID = "4e4b2c9a-1111-2222-3333-444455556666"
SPIKES = os.urandom(300_000)
META = b"imSampRate=30000\n" * 100
OTHER = b"not an input"

SIGNATURE = {
    "input_files": [("spikes.times.npy", "alf/probe00", True),
                    ("*.ap.meta", "raw_ephys_data/probe*", True),
                    ("absent.npy", "alf", False)],
    "output_files": [("clusters.metrics.pqt", "alf/probe00", True)],
}
SPIKES_ONLY = {"input_files": [("spikes.times.npy", "alf/probe00", True)]}


def _record(server, name, collection, data, url_name=None, **extra):
    """An Alyx /datasets item for a file the server holds."""
    url_name = url_name or name
    path = f"mainenlab/Subjects/ZM_1/2020-01-01/001/{collection}/{url_name}"
    f = server.root / path
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(data)
    rec = {"name": name, "collection": collection, "revision": None, "file_size": len(data), "hash": md5(data),
           "default_dataset": True,
           "file_records": [{"data_repository": "flatiron_mainenlab", "exists": True,
                             "relative_path": f"mainenlab/Subjects/ZM_1/2020-01-01/001/{collection}/{name}",
                             "data_url": f"{server.url}/{path}"}]}
    rec.update(extra)
    return rec


@pytest.fixture
def datasets(http_server):
    return [
        _record(http_server, "spikes.times.npy", "alf/probe00", SPIKES, url_name=f"spikes.times.{UUID}.npy"),
        _record(http_server, "_spikeglx_g0_t0.imec0.ap.meta", "raw_ephys_data/probe00", META),
        _record(http_server, "other.npy", "alf", OTHER),  # not an input: never fetched
    ]


def _session(tmp_path, name="001"):
    return tmp_path / "local" / "ZM_1" / "2020-01-01" / name


def test_setup_downloads_matching_inputs_without_uuid(tmp_path, http_server, datasets):
    s = _session(tmp_path)
    h = get_data_handler("remote", s, SIGNATURE, datasets=datasets, backoff=0)
    assert h.setUp() is True
    assert (s / "alf/probe00/spikes.times.npy").read_bytes() == SPIKES
    assert (s / "raw_ephys_data/probe00/_spikeglx_g0_t0.imec0.ap.meta").read_bytes() == META
    assert not (s / "alf/other.npy").exists()
    assert not list(s.rglob("*.part")) and not list(s.rglob(f"*{UUID}*"))
    assert sorted(r for r, _ in http_server.requests) == sorted([
        f"mainenlab/Subjects/ZM_1/2020-01-01/001/alf/probe00/spikes.times.{UUID}.npy",
        "mainenlab/Subjects/ZM_1/2020-01-01/001/raw_ephys_data/probe00/_spikeglx_g0_t0.imec0.ap.meta"])
    assert len(h.downloaded) == 2
    # a second setUp of the same session: files are there, nothing requested
    h.setUp()
    assert len(http_server.requests) == 2
    out = s / "alf/probe00/clusters.metrics.pqt"
    out.write_bytes(b"metrics")
    assert h.uploadData([out], "1.0") == [out]
    h.cleanUp()
    assert out.exists()


def test_cache_serves_another_session_without_download(tmp_path, http_server, datasets):
    get_data_handler("remote", _session(tmp_path, "001"), SIGNATURE, datasets=datasets).setUp()
    assert len(http_server.requests) == 2
    s2 = _session(tmp_path, "002")
    h2 = get_data_handler("remote", s2, SIGNATURE, datasets=datasets)
    h2.setUp()
    assert len(http_server.requests) == 2  # no new request
    assert len(h2.from_cache) == 2 and h2.downloaded == []
    f = s2 / "alf/probe00/spikes.times.npy"
    assert f.read_bytes() == SPIKES
    cached = h2.cache_dir / md5(SPIKES)[:2] / md5(SPIKES)
    assert os.path.samefile(f, cached)  # hard link, not a second copy
    assert not cached.stat().st_mode & stat.S_IWUSR  # read-only: a task cannot corrupt the cache


def test_cache_dir_from_config_and_cache_can_be_disabled(tmp_path, http_server, datasets, monkeypatch):
    monkeypatch.setenv("HPCPIPE_REMOTE_CACHE_DIR", str(tmp_path / "mycache"))
    h = get_data_handler("remote", _session(tmp_path, "001"), SIGNATURE, datasets=datasets)
    h.setUp()
    assert (tmp_path / "mycache" / md5(META)[:2] / md5(META)).is_file()
    h2 = get_data_handler("remote", _session(tmp_path, "002"), SIGNATURE, datasets=datasets, use_cache=False)
    h2.setUp()
    assert len(http_server.requests) == 4


def test_truncated_part_resumes_with_range(tmp_path, http_server, datasets):
    s = _session(tmp_path)
    part = s / "alf/probe00/spikes.times.npy.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(SPIKES[:100_000])
    h = get_data_handler("remote", s, SPIKES_ONLY, datasets=datasets[:1])
    h.setUp()
    assert (s / "alf/probe00/spikes.times.npy").read_bytes() == SPIKES
    assert not part.exists()
    assert http_server.requests == [(f"mainenlab/Subjects/ZM_1/2020-01-01/001/alf/probe00/spikes.times.{UUID}.npy",
                                     "bytes=100000-")]


def test_server_without_range_support_restarts_from_zero(tmp_path, http_server, datasets):
    http_server.ranges = False
    s = _session(tmp_path)
    part = s / "alf/probe00/spikes.times.npy.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(SPIKES[:100_000])
    get_data_handler("remote", s, SPIKES_ONLY, datasets=datasets[:1]).setUp()
    assert (s / "alf/probe00/spikes.times.npy").read_bytes() == SPIKES


def test_cut_connection_is_retried_and_resumed(tmp_path, http_server, datasets):
    path = f"mainenlab/Subjects/ZM_1/2020-01-01/001/alf/probe00/spikes.times.{UUID}.npy"
    http_server.cut[path] = 150_000
    s = _session(tmp_path)
    h = get_data_handler("remote", s, SPIKES_ONLY, datasets=datasets[:1], backoff=0)
    h.setUp()
    assert (s / "alf/probe00/spikes.times.npy").read_bytes() == SPIKES
    assert [rng for _, rng in http_server.requests] == [None, "bytes=150000-"]


def test_server_errors_are_retried_then_given_up(tmp_path, http_server, datasets):
    path = f"mainenlab/Subjects/ZM_1/2020-01-01/001/alf/probe00/spikes.times.{UUID}.npy"
    http_server.fail[path] = [503, 502]
    s = _session(tmp_path)
    get_data_handler("remote", s, SPIKES_ONLY, datasets=datasets[:1], backoff=0).setUp()
    assert (s / "alf/probe00/spikes.times.npy").read_bytes() == SPIKES
    assert len(http_server.requests) == 3
    http_server.fail[path] = [503] * 5
    with pytest.raises(DownloadError, match="giving up after 2 retries"):
        get_data_handler("remote", _session(tmp_path, "002"), SPIKES_ONLY, datasets=datasets[:1], backoff=0,
                         retries=2, use_cache=False).setUp()
    assert len(http_server.requests) == 6


def test_wrong_md5_is_refused_and_file_removed(tmp_path, http_server, datasets):
    bad = dict(datasets[0], hash="0" * 32)
    s = _session(tmp_path)
    h = get_data_handler("remote", s, SIGNATURE, datasets=[bad, datasets[1]])
    with pytest.raises(DownloadError) as exc:
        h.setUp()
    msg = str(exc.value)
    assert "md5" in msg and "0" * 32 in msg and md5(SPIKES) in msg and "removed" in msg
    assert not list(s.rglob("spikes.times.npy*"))
    assert not list(h.cache_dir.rglob("0" * 32))


def test_wrong_size_is_refused(tmp_path, http_server, datasets):
    bad = dict(datasets[1], file_size=len(META) - 10, hash=None)
    with pytest.raises(DownloadError, match=f"says {len(META) - 10}"):
        get_data_handler("remote", _session(tmp_path), SIGNATURE, datasets=[datasets[0], bad]).setUp()


def test_missing_record_for_required_input(tmp_path, http_server, datasets):
    with pytest.raises(MissingInputs) as exc:
        get_data_handler("remote", _session(tmp_path), SIGNATURE, datasets=datasets[1:]).setUp()
    assert "'spikes.times.npy' in collection 'alf/probe00'" in str(exc.value)


def test_http_404_is_not_retried(tmp_path, http_server, datasets):
    gone = dict(datasets[1])
    gone["file_records"] = [dict(gone["file_records"][0], data_url=f"{http_server.url}/nope/x.ap.meta")]
    with pytest.raises(DownloadError, match="HTTP 404"):
        get_data_handler("remote", _session(tmp_path), SIGNATURE, datasets=[datasets[0], gone], backoff=0).setUp()
    assert sum(r.startswith("nope/") for r, _ in http_server.requests) == 1


def test_file_record_not_existing_is_not_used(tmp_path, http_server, datasets):
    rec = dict(datasets[1])
    rec["file_records"] = [dict(rec["file_records"][0], exists=False)]
    with pytest.raises(DownloadError, match="no existing file record"):
        get_data_handler("remote", _session(tmp_path), SIGNATURE, datasets=[datasets[0], rec]).setUp()


def test_basic_auth_from_config_and_password_never_logged(tmp_path, http_server, datasets, monkeypatch, caplog):
    http_server.auth = ("ibl", "s3cr3t-pw")
    caplog.set_level(logging.DEBUG)
    h = get_data_handler("remote", _session(tmp_path, "001"), SIGNATURE, datasets=datasets, backoff=0)
    with pytest.raises(DownloadError, match="HTTP 401.*http_user"):
        h.setUp()
    monkeypatch.setenv("HPCPIPE_REMOTE_HTTP_USER", "ibl")
    monkeypatch.setenv("HPCPIPE_REMOTE_HTTP_PASSWORD", "s3cr3t-pw")
    h = get_data_handler("remote", _session(tmp_path, "002"), SIGNATURE, datasets=datasets)
    h.setUp()
    assert (_session(tmp_path, "002") / "alf/probe00/spikes.times.npy").read_bytes() == SPIKES
    assert "s3cr3t" not in caplog.text and "s3cr3t" not in repr(h)


def test_credentials_from_one_params(tmp_path, http_server, datasets):
    http_server.auth = ("onelogin", "onepwd")

    class Par:
        HTTP_DATA_SERVER_LOGIN = "onelogin"
        HTTP_DATA_SERVER_PWD = "onepwd"

    class One:
        class alyx:
            _par = Par

    get_data_handler("remote", _session(tmp_path), SIGNATURE, one=One(), datasets=datasets).setUp()
    assert (_session(tmp_path) / "raw_ephys_data/probe00/_spikeglx_g0_t0.imec0.ap.meta").read_bytes() == META


def test_records_asked_of_alyx_when_not_given(tmp_path, http_server, datasets):
    calls = []

    class Alyx:
        def rest(self, url, action, **filters):
            calls.append((url, action, filters))
            return datasets

    class One:
        alyx = Alyx()

    get_data_handler("remote", _session(tmp_path), SIGNATURE, one=One(), eid="e1d").setUp()
    assert calls == [("datasets", "list", {"session": "e1d", "exists": True})]
    with pytest.raises(Exception, match="datasets=..."):
        get_data_handler("remote", _session(tmp_path), SIGNATURE).setUp()


def test_revision_goes_in_revision_folder(tmp_path, http_server):
    rec = _record(http_server, "spikes.times.npy", "alf/probe00", SPIKES, revision="2024-05-01")
    sig = {"input_files": [("spikes.times.npy", "alf/probe00", True)]}
    s = _session(tmp_path)
    get_data_handler("remote", s, sig, datasets=[rec]).setUp()
    assert (s / "alf/probe00/#2024-05-01#/spikes.times.npy").read_bytes() == SPIKES
