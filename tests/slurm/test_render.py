"""Rendering job scripts: resource mapping, quoting, profiles, golden file (no cluster)."""
from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from hpcpipe.errors import BadInput
from hpcpipe.slurm.profiles import Profile, list_profiles, load_profile
from hpcpipe.slurm.render import (
    JobSpec,
    Resources,
    compress_indices,
    expand_indices,
    format_time,
    job_script,
    mem_option,
    nice_for,
    resolve_partition,
    sbatch_options,
    time_minutes,
)

GOLDEN = Path(__file__).parent / "golden"


def golden_spec() -> JobSpec:
    return JobSpec(
        name="hp_run42_Ephys Sync",
        command=["python", "-m", "hpcpipe.jobside", "--run", "run42", "--task", "EphysSync",
                 "--session", "/data/lab/Subjects/KS 022/2024-05-01/001"],
        resources={"cpu": 4, "ram": 7.5, "gpu": 1, "time_out_secs": 5400, "priority": 90,
                   "io_charge": 20, "job_size": "large"},
        output="/home/u/.local/share/hpcpipe/runs/run42/logs/%x_%A_%a.out",
        error="/home/u/.local/share/hpcpipe/runs/run42/logs/%x_%A_%a.err",
        dependencies=["1001", "1002_3"],
        aftercorr=["1000"],
        array=[0, 1, 2, 3, 7, 9, 10],
        array_throttle=50,
        env={"HPCPIPE_RUN": "run42", "HPCPIPE_STORE": "/home/u/store dir/tasks.sqlite"},
    )


def test_golden_script():
    profile = load_profile("aws")
    text = job_script(golden_spec(), profile)
    path = GOLDEN / "aws_array_job.sh"
    if os.environ.get("HPCPIPE_REGEN_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), "rendering changed; HPCPIPE_REGEN_GOLDEN=1 rewrites the golden file"


def opts(spec: JobSpec, profile: Profile | None = None) -> dict:
    return dict(sbatch_options(spec, profile or Profile()))


# ------------------------------------------------------------------ mapping rules
@pytest.mark.parametrize("secs,minutes", [(1, 1), (59, 1), (60, 1), (61, 2), (3600, 60), (3601, 61),
                                          (5.5, 1), (86400 * 2 + 1, 2881)])
def test_time_rounds_up_to_whole_minutes(secs, minutes):
    assert time_minutes(secs) == minutes


def test_time_format():
    assert format_time(1) == "00:01:00"
    assert format_time(61) == "01:01:00"
    assert format_time(1440 + 90) == "1-01:30:00"


@pytest.mark.parametrize("priority,nice", [(100, 0), (90, 100), (50, 500), (0, 1000)])
def test_nice_rule(priority, nice):
    assert nice_for(priority) == nice


def test_nice_step_from_profile_and_never_negative():
    spec = JobSpec(name="j", command=["true"], resources={"priority": 95})
    assert opts(spec, Profile(nice_step=100))["--nice"] == "500"
    assert all(nice_for(p) >= 0 for p in range(101))
    with pytest.raises(BadInput, match="priority"):
        Resources(priority=101)


def test_memory_option():
    assert mem_option(4) == "4G"
    assert mem_option(1.5) == "1536M"
    assert mem_option(0.1) == "103M"


@pytest.mark.parametrize("indices,text", [
    ([0], "0"), ([0, 1, 2, 3, 9, 11, 12], "0-3,9,11-12"), ([7, 3, 0], "0,3,7"),
    ([5, 5, 6], "5-6"), (list(range(10000)), "0-9999"),
])
def test_array_compression(indices, text):
    assert compress_indices(indices) == text
    assert expand_indices(text) == sorted(set(indices))


def test_expand_slurm_forms():
    assert expand_indices("[4-5,9%2]") == [4, 5, 9]
    assert expand_indices("0-6:3") == [0, 3, 6]


def test_gpu_flag_per_profile():
    spec = JobSpec(name="j", command=["true"], resources={"gpu": 2})
    assert opts(spec, Profile(gpu_flag="gres"))["--gres"] == "gpu:2"
    assert opts(spec, Profile(gpu_flag="gpus"))["--gpus"] == "2"
    assert "--gres" not in opts(JobSpec(name="j", command=["true"]))


def test_io_charge_only_with_a_license():
    spec = JobSpec(name="j", command=["true"], resources={"io_charge": 5})
    assert opts(spec, Profile(io_license="io"))["--licenses"] == "io:5"
    assert "--licenses" not in opts(spec, Profile())


def test_partition_resolution():
    prof = Profile(partition="shared", gpu_partition="gpu-shared", job_size={"large": "compute"})
    def part(**kw):
        spec = JobSpec(name="j", command=["true"], **kw)
        return resolve_partition(spec, prof)
    assert part() == "shared"
    assert part(resources={"gpu": 1}) == "gpu-shared"
    assert part(resources={"job_size": "large", "gpu": 1}) == "compute"
    assert part(resources={"job_size": "unmapped"}) == "shared"
    assert part(partition="debug", resources={"job_size": "large"}) == "debug"
    assert resolve_partition(JobSpec(name="j", command=["true"]), Profile()) is None


def test_dependencies_and_kill_on_invalid_dep():
    spec = JobSpec(name="j", command=["true"], dependencies=["1", "2"])
    o = opts(spec)
    assert o["--dependency"] == "afterok:1:2"
    assert o["--kill-on-invalid-dep"] == "yes"
    spec = JobSpec(name="j", command=["true"], aftercorr=["7"], array=[0, 3], kill_on_invalid_dep=False)
    o = opts(spec)
    assert o["--dependency"] == "aftercorr:7" and "--kill-on-invalid-dep" not in o
    assert "--dependency" not in opts(JobSpec(name="j", command=["true"]))


def test_array_with_throttle():
    spec = JobSpec(name="j", command=["true"], array=[9, 0, 1, 2], array_throttle=3)
    assert opts(spec)["--array"] == "0-2,9%3"


# ------------------------------------------------------------------ refusals
def test_unknown_resource_lists_valid_ones():
    with pytest.raises(BadInput) as err:
        JobSpec(name="j", command=["true"], resources={"cpus": 2, "ram": 1})
    msg = str(err.value)
    assert "cpus" in msg and all(n in msg for n in Resources.names())


@pytest.mark.parametrize("kw,match", [
    ({"name": "a\nb"}, "line break"),
    ({"name": "a,b"}, "comma"),
    ({"output": "/x\n/y"}, "line break"),
    ({"command": "echo hi"}, "argv"),
    ({"command": []}, "argv"),
    ({"dependencies": ["12; rm"]}, "job id"),
    ({"aftercorr": ["12"]}, "array"),
    ({"array": [0], "aftercorr": ["12_1"]}, "array job id"),
    ({"array": [-1]}, "non-negative"),
    ({"array_throttle": 2}, "needs an array"),
    ({"env": {"A-B": "x"}}, "not valid"),
    ({"resources": {"cpu": 0}}, "at least 1"),
    ({"resources": {"ram": -1}}, "positive"),
])
def test_bad_specs_are_refused(kw, match):
    base = {"name": "j", "command": ["true"]}
    base.update(kw)
    with pytest.raises(BadInput, match=match):
        JobSpec(**base)


# ------------------------------------------------------------------ quoting
EVIL = "/data/it's a \"dir\" $(touch /tmp/pwned) `id` ; rm -rf ~ & $HOME\nnext line"


def test_every_task_value_is_quoted():
    spec = JobSpec(name="hp_$(id)_`id`", command=["python", "-m", "hpcpipe.jobside", "--session", EVIL],
                   output="/logs/a b/'q'/%j.out", env={"SESSION": EVIL}, workdir="/w d/$(id)")
    text = job_script(spec, Profile())
    lines = text.splitlines()
    # the command line parses back to exactly the argv
    start = next(i for i, line in enumerate(lines) if line.startswith("python"))
    command = "\n".join(lines[start:])
    assert shlex.split(command) == spec.command
    # directives carry quoted values sbatch reads back unchanged
    directives = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in lines if line.startswith("#SBATCH --")}
    assert shlex.split(directives["#SBATCH --job-name"]) == [spec.name]
    assert shlex.split(directives["#SBATCH --output"]) == [spec.output]
    assert shlex.split(directives["#SBATCH --chdir"]) == [spec.workdir]
    env_line = next(line for line in text.split("\nexport ") if line.startswith("SESSION="))
    assert shlex.split(env_line.split("=", 1)[1].split("\n\n")[0]) == [EVIL]


# ------------------------------------------------------------------ profiles
def test_builtin_profiles_load():
    assert {"generic", "sdsc", "aws"} <= set(list_profiles())
    sdsc = load_profile("sdsc")
    assert sdsc.gpu_flag == "gpus" and sdsc.location == "SDSC" and sdsc.setup
    aws = load_profile("aws")
    assert aws.io_license == "io" and aws.location == "AWS"
    assert load_profile().name == "generic"


def test_unknown_profile_key_lists_valid_ones():
    with pytest.raises(BadInput) as err:
        Profile.from_dict({"acount": "x"}, name="mine")
    assert "acount" in str(err.value) and "account" in str(err.value) and "gpu_flag" in str(err.value)


def test_unknown_profile_name_lists_available():
    with pytest.raises(BadInput, match="generic"):
        load_profile("nope")


@pytest.mark.parametrize("data,match", [({"gpu_flag": "cuda"}, "gpu_flag"), ({"location": "mars"}, "location"),
                                        ({"setup": "module load x"}, "list of strings"),
                                        ({"extra_directives": ["-p x"]}, "--option")])
def test_bad_profile_values(data, match):
    with pytest.raises(BadInput, match=match):
        Profile.from_dict(data, name="bad")


def test_user_profile_dir_and_config_overrides(tmp_path, monkeypatch):
    mine = tmp_path / "profiles"
    mine.mkdir()
    (mine / "lab.toml").write_text('partition = "lab"\nsetup = ["conda activate ibl"]\nlocation = "remote"\n'
                                   'template = "my.tmpl"\n')
    (mine / "my.tmpl").write_text("#!/bin/sh\n${directives}\n${environment}\n${setup}\nexec ${command}\n")
    (mine / "generic.toml").write_text('partition = "shadowed"\n')
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[slurm]\nprofile_dirs = ["{mine}"]\nprofile = "lab"\naccount = "abc123"\n')
    monkeypatch.setenv("HPCPIPE_CONFIG", str(cfg))
    prof = load_profile()
    assert (prof.name, prof.partition, prof.account, prof.location) == ("lab", "lab", "abc123", "remote")
    assert load_profile("generic").partition == "shadowed"  # user folders win
    text = job_script(JobSpec(name="j", command=["echo", "a b"]), prof)
    assert text.startswith("#!/bin/sh\n#SBATCH --job-name=j\n#SBATCH --partition=lab\n#SBATCH --account=abc123")
    assert "conda activate ibl\nexec echo 'a b'\n" in text
    monkeypatch.setenv("HPCPIPE_SLURM_ACCOUNT", "envacct")
    assert load_profile("lab").account == "envacct"


def test_template_with_unknown_placeholder(tmp_path, monkeypatch):
    (tmp_path / "t.toml").write_text('template = "bad.tmpl"\n')
    (tmp_path / "bad.tmpl").write_text("${directives}\n${nonsense}\n")
    monkeypatch.setenv("HPCPIPE_SLURM_PROFILE_DIRS", str(tmp_path))
    with pytest.raises(BadInput, match="nonsense"):
        job_script(JobSpec(name="j", command=["true"]), "t")
