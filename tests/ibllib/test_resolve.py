"""``hpcpipe submit --session PATH`` with no ``--pipeline``: a session carrying IBL's experiment
description runs IBL's dynamic pipeline (built by the real ibllib); the order of the rules."""
from __future__ import annotations

import pytest

from tests.ibllib.conftest import REASON, hpcpipe_cmd

pytest.importorskip("ibllib", reason=REASON)

from tests.ibllib.ibl_tasks import make_ibl_session  # noqa: E402
from tests.ibllib.test_local import EXPECTED, PIPE, records  # noqa: E402

DESCRIPTION = """version: 1.0.0
devices: {}
procedures: []
projects: []
sync:
  bpod:
    collection: raw_behavior_data
    extension: bin
"""


def test_session_with_experiment_description_runs_ibl_dynamic_pipeline(env, tmp_path):
    session = make_ibl_session(tmp_path / "data")
    (session / "_ibl_experiment.description.yaml").write_text(DESCRIPTION)
    proc = hpcpipe_cmd(env, tmp_path, "submit", "--session", str(session))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = records(tmp_path / "home", session)
    assert {n: (r["status"], r["graph"]) for n, r in got.items()} == \
        {"ExperimentDescriptionRegisterRaw": ("Complete", "Pipeline")}, {n: r["log"] for n, r in got.items()}
    from hpcpipe.store.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "home" / "tasks.sqlite")
    assert [d["name"] for d in store.list_datasets(store.session_id(session))] == ["_ibl_experiment.description.yaml"]
    # the graph now recorded is found again without the file's help; a second submit changes nothing
    again = hpcpipe_cmd(env, tmp_path, "submit", "--session", str(session), "--dry-run")
    assert again.returncode == 0, again.stdout + again.stderr


def test_config_rule_comes_before_the_description(env, tmp_path):
    session = make_ibl_session(tmp_path / "data")
    (session / "_ibl_experiment.description.yaml").write_text(DESCRIPTION)
    (tmp_path / "config.toml").write_text(f'[submit]\nrules = [{{glob = "*/Subjects/KS001/*", pipeline = "{PIPE}"}}]\n')
    proc = hpcpipe_cmd(env, tmp_path, "submit", "--session", str(session))
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the test pipeline has failing tasks
    assert {n: r["status"] for n, r in records(tmp_path / "home", session).items()} == EXPECTED
    # then the recorded graph: the session's own pipeline, though the rule is gone
    (tmp_path / "config.toml").write_text("")
    dry = hpcpipe_cmd(env, tmp_path, "submit", "--session", str(session), "--dry-run", "--status", "Errored")
    assert dry.returncode in (0, 1), dry.stdout + dry.stderr
    assert "no pipeline" not in dry.stderr
