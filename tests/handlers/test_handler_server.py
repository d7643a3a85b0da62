"""server / local handlers, the factory, and the shared helpers."""
from __future__ import annotations

import subprocess
import sys

import pytest

from hpcpipe.errors import BadInput
from hpcpipe.handlers import LOCATIONS, MissingInputs, get_data_handler, session_parts, strip_uuid
from hpcpipe.handlers.base import spec_matches
from hpcpipe.signature import FileSpec

SIGNATURE = {
    "input_files": [("*.ap.meta", "raw_ephys_data/probe*", True),
                    ("_iblrig_taskSettings.raw.json", "raw_behavior_data", True),
                    ("optional.npy", "alf", False)],
    "output_files": [("trials.table.pqt", "alf", True)],
}


@pytest.fixture
def session(tmp_path):
    s = tmp_path / "root" / "mainenlab" / "Subjects" / "ZM_1" / "2020-01-01" / "001"
    (s / "raw_ephys_data" / "probe00").mkdir(parents=True)
    (s / "raw_ephys_data" / "probe00" / "_spikeglx_g0_t0.imec0.ap.meta").write_text("meta")
    (s / "raw_behavior_data").mkdir()
    (s / "raw_behavior_data" / "_iblrig_taskSettings.raw.json").write_text("{}")
    return s


@pytest.mark.parametrize("location", ["server", "local"])
def test_setup_checks_inputs_and_upload_returns_outputs(session, location):
    h = get_data_handler(location, session, SIGNATURE)
    assert h.location == location
    assert h.setUp() is True
    out = session / "alf" / "trials.table.pqt"
    out.parent.mkdir()
    out.write_text("x")
    files = h.uploadData([[out], None], "1.0")
    assert files == [out]
    assert h.relative(files) == ["alf/trials.table.pqt"]
    h.cleanUp()
    assert out.exists() and (session / "raw_behavior_data").exists()


def test_missing_required_input_names_pattern_and_collection(session):
    (session / "raw_ephys_data" / "probe00" / "_spikeglx_g0_t0.imec0.ap.meta").unlink()
    h = get_data_handler("server", session, SIGNATURE)
    with pytest.raises(MissingInputs) as exc:
        h.setUp()
    msg = str(exc.value)
    assert "'*.ap.meta'" in msg and "raw_ephys_data/probe*" in msg and str(session) in msg
    assert "optional.npy" not in msg  # optional inputs are not required
    assert [s.pattern for s in exc.value.missing] == ["*.ap.meta"]


def test_output_outside_session_is_refused(session, tmp_path):
    h = get_data_handler("server", session, SIGNATURE)
    stray = tmp_path / "elsewhere.npy"
    stray.write_text("x")
    with pytest.raises(BadInput, match="not inside the session"):
        h.uploadData([stray], "1.0")


def test_factory_unknown_location_lists_valid_ones(session):
    with pytest.raises(BadInput) as exc:
        get_data_handler("popeye", session, SIGNATURE)
    for loc in LOCATIONS:
        assert loc in str(exc.value)


def test_factory_is_case_insensitive_and_ibllib_spellings_work(session):
    assert type(get_data_handler("SDSC", session, SIGNATURE)).__name__ == "SDSCDataHandler"
    assert type(get_data_handler("aws", session, SIGNATURE)).__name__ == "RemoteAwsDataHandler"
    assert type(get_data_handler("Remote", session, SIGNATURE, datasets=[])).__name__ == "RemoteHttpDataHandler"


def test_importing_handlers_stays_light():
    code = ("import sys, hpcpipe.handlers as h; h.handler_class('server'); "
            "print(sorted(m for m in ('boto3', 'botocore', 'requests') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_helpers():
    assert strip_uuid("spikes.times.4e4b2c9a-1111-2222-3333-444455556666.npy") == "spikes.times.npy"
    upper = "_spikeglx_g0_t0.imec0.ap.4E4B2C9A-1111-2222-3333-444455556666.meta"
    assert strip_uuid(upper) == "_spikeglx_g0_t0.imec0.ap.meta"
    assert strip_uuid("spikes.times.npy") == "spikes.times.npy"
    p = session_parts("/mnt/ibl/mainenlab/Subjects/ZM_1/2020-01-01/001/")
    assert (p.lab, p.short) == ("mainenlab", "ZM_1/2020-01-01/001")
    assert p.relative == "mainenlab/Subjects/ZM_1/2020-01-01/001"
    assert session_parts("/data/ZM-1/2020-01-01/1").lab is None
    with pytest.raises(BadInput, match="not an ALF session"):
        session_parts("/data/ZM_1/2020-01-01")
    spec = FileSpec("*.ap.meta", "raw_ephys_data/probe*", True)
    assert spec_matches(spec, "raw_ephys_data/probe00/x.ap.meta")
    assert not spec_matches(spec, "raw_ephys_data/probe00/sub/x.ap.meta")  # * does not cross /
    assert spec_matches(FileSpec("a.npy", "", True), "a.npy")
