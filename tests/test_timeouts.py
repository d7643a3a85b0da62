"""time_out_secs above Alyx's SmallInteger cap: recorded capped, enforced in full."""
from __future__ import annotations

from hpcpipe.demo.session import make_session
from hpcpipe.pipeline import time_out_secs
from hpcpipe.slurm.backend import _resources
from hpcpipe.slurm.render import job_script
from hpcpipe.store.sqlite import SQLiteStore
from tests.sample_pipelines import DayLongPipeline


def test_day_long_task_is_recorded_capped_and_submitted_in_full(tmp_path):
    session = make_session(tmp_path / "S1" / "2026-11-20" / "001", duration=15)
    store = SQLiteStore(tmp_path / "tasks.sqlite")
    pipe = DayLongPipeline(session, one=store)
    (record,) = pipe.create_alyx_tasks()
    assert record["time_out_secs"] == 32767  # what Alyx can hold
    assert time_out_secs(record) == 86400  # what the task class says
    res = _resources(record)
    assert res.time_out_secs == 86400
    from hpcpipe.slurm.profiles import Profile
    from hpcpipe.slurm.render import JobSpec

    script = job_script(JobSpec(name="r", command=["true"], resources=res), Profile())
    assert "--time=1-00:00:00" in script


def test_job_size_comes_from_the_task_class_and_picks_the_partition(tmp_path):
    from hpcpipe.slurm.profiles import Profile
    from hpcpipe.slurm.render import JobSpec, resolve_partition

    session = make_session(tmp_path / "S2" / "2026-11-20" / "001", duration=15)
    store = SQLiteStore(tmp_path / "tasks.sqlite")
    (record,) = DayLongPipeline(session, one=store).create_alyx_tasks()
    assert "job_size" not in record  # Alyx has no such field
    res = _resources(record)
    assert res.job_size == "small"  # Task's default, read from the class
    spec = JobSpec(name="r", command=["true"], resources=res)
    assert resolve_partition(spec, Profile(job_size={"small": "short", "large": "long"})) == "short"
