"""SDSC handler against a temp folder laid out as the read-only, UUID-named central store."""
from __future__ import annotations

import os
import stat
import uuid

import pytest

from hpcpipe.handlers import DataHandlerError, MissingInputs, get_data_handler
from hpcpipe.signature import check

SIGNATURE = {
    "input_files": [("spikes.times.npy", "alf/probe00", True),
                    ("*.ap.meta", "raw_ephys_data/probe*", True),
                    ("_iblrig_taskSettings.raw.json", "raw_behavior_data", True),
                    ("absent.npy", "alf", False)],
    "output_files": [("clusters.metrics.pqt", "alf/probe00", True)],
}


def _uuid_name(name: str) -> str:
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.{uuid.uuid4()}.{ext}"


@pytest.fixture
def store(tmp_path):
    """``<tmp>/store/mainenlab/Subjects/ZM_1/2020-01-01/001`` with UUID-named files, read-only."""
    root = tmp_path / "store"
    session = root / "mainenlab" / "Subjects" / "ZM_1" / "2020-01-01" / "001"
    files = {"alf/probe00/spikes.times.npy": b"spikes", "alf/probe00/spikes.clusters.npy": b"clu",
             "raw_ephys_data/probe00/_spikeglx_g0_t0.imec0.ap.meta": b"meta0",
             "raw_ephys_data/probe01/_spikeglx_g0_t0.imec1.ap.meta": b"meta1",
             "raw_behavior_data/_iblrig_taskSettings.raw.json": b"{}"}
    for rel, data in files.items():
        f = session / os.path.dirname(rel) / _uuid_name(os.path.basename(rel))
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
    for d in sorted(root.rglob("*"), reverse=True):
        d.chmod(d.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    yield session
    for d in root.rglob("*"):
        d.chmod(d.stat().st_mode | stat.S_IWUSR)


def _snapshot(root):
    return sorted((p.relative_to(root).as_posix(), p.read_bytes() if p.is_file() else None) for p in root.rglob("*"))


def test_setup_links_inputs_without_uuid_into_scratch(tmp_path, store):
    scratch = tmp_path / "scratch"
    h = get_data_handler("SDSC", store, SIGNATURE, scratch_dir=scratch)
    assert h.setUp() is True
    s = h.session_path
    assert s != store and h.original_session_path == store == h.store_session_path
    assert s.relative_to(h.scratch_root).as_posix() == "mainenlab/Subjects/ZM_1/2020-01-01/001"
    assert h.scratch_root.parent == scratch
    links = sorted(p.relative_to(s).as_posix() for p in s.rglob("*") if p.is_symlink())
    assert links == ["alf/probe00/spikes.times.npy",  # spikes.clusters is not an input
                     "raw_behavior_data/_iblrig_taskSettings.raw.json",
                     "raw_ephys_data/probe00/_spikeglx_g0_t0.imec0.ap.meta",
                     "raw_ephys_data/probe01/_spikeglx_g0_t0.imec1.ap.meta"]
    assert (s / "alf/probe00/spikes.times.npy").read_bytes() == b"spikes"
    assert os.readlink(s / "alf/probe00/spikes.times.npy").startswith(str(store / "alf/probe00/spikes.times."))
    assert check(s, SIGNATURE["input_files"])[0]  # the task's own input check passes on scratch


def test_upload_copies_outputs_and_cleanup_removes_only_scratch(tmp_path, store):
    scratch, outdir = tmp_path / "scratch", tmp_path / "out"
    neighbour = scratch / "other-job"
    neighbour.mkdir(parents=True)
    (neighbour / "keep.txt").write_text("x")
    before = _snapshot(store.parents[3])
    h = get_data_handler("SDSC", store, SIGNATURE, scratch_dir=scratch, output_dir=outdir)
    h.setUp(task_id="42")
    assert h.scratch_root.name.startswith("42-")
    out = h.session_path / "alf/probe00/clusters.metrics.pqt"
    out.write_bytes(b"metrics")
    files = h.uploadData([out], "1.0")
    assert files == [out]
    assert h.relative(files) == ["alf/probe00/clusters.metrics.pqt"]
    copy = outdir / "mainenlab/Subjects/ZM_1/2020-01-01/001/alf/probe00/clusters.metrics.pqt"
    assert copy.read_bytes() == b"metrics" and h.uploaded == {out: copy}
    root = h.scratch_root
    h.cleanUp()
    assert not root.exists()
    assert h.session_path == store  # back to the store path
    assert (neighbour / "keep.txt").exists()  # other jobs' scratch untouched
    assert _snapshot(store.parents[3]) == before  # the store is intact
    assert copy.exists()
    h.cleanUp()  # idempotent


def test_missing_required_input_leaves_no_scratch(tmp_path, store):
    scratch = tmp_path / "scratch"
    sig = {"input_files": [("trials.table.pqt", "alf", True)]}
    h = get_data_handler("SDSC", store, sig, scratch_dir=scratch)
    with pytest.raises(MissingInputs, match="'trials.table.pqt' in collection 'alf' in the store session"):
        h.setUp()
    assert list(scratch.iterdir()) == [] and h.session_path == store


def test_two_handlers_of_one_session_get_separate_scratch(tmp_path, store, monkeypatch):
    monkeypatch.setenv("HPCPIPE_SDSC_SCRATCH_DIR", str(tmp_path / "scratch-from-config"))
    a = get_data_handler("SDSC", store, SIGNATURE)
    b = get_data_handler("SDSC", store, SIGNATURE)
    a.setUp()
    b.setUp()
    assert a.session_path != b.session_path
    assert a.scratch_root.parent == tmp_path / "scratch-from-config"
    a.cleanUp()
    assert (b.session_path / "alf/probe00/spikes.times.npy").exists()
    b.cleanUp()


def test_without_output_dir_outputs_are_returned_from_scratch(tmp_path, store, isolated_home):
    h = get_data_handler("SDSC", store, SIGNATURE)
    h.setUp()
    assert h.scratch_root.parent == isolated_home / "sdsc_scratch"
    out = h.session_path / "alf/probe00/clusters.metrics.pqt"
    out.write_bytes(b"m")
    assert h.uploadData(out, "1.0") == [out] and h.uploaded == {}
    h.cleanUp()


def test_ambiguous_uuid_names_are_refused(tmp_path):
    session = tmp_path / "store" / "ZM_1" / "2020-01-01" / "001" / "alf"
    session.mkdir(parents=True)
    for _ in range(2):
        (session / _uuid_name("trials.table.pqt")).write_bytes(b"t")
    h = get_data_handler("SDSC", session.parent, {"input_files": [("trials.table.pqt", "alf", True)]},
                         scratch_dir=tmp_path / "scratch")
    with pytest.raises(DataHandlerError, match="would be linked as alf/trials.table.pqt"):
        h.setUp()
    assert list((tmp_path / "scratch").iterdir()) == []


def test_session_not_on_store(tmp_path):
    h = get_data_handler("SDSC", tmp_path / "ZM_1/2020-01-01/009", SIGNATURE, scratch_dir=tmp_path / "s")
    with pytest.raises(DataHandlerError, match="does not exist on the store"):
        h.setUp()
