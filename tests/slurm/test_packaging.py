"""The wheel must ship the job templates and profiles (hpcpipe.slurm_templates).

pyproject lists packages explicitly (the templates live outside hpcpipe/), so a new package
folder under hpcpipe/ must be added there too; this test says which one is missing.
"""
from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_listed_in_pyproject():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "hpcpipe").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    missing = sorted(on_disk - listed)
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"
    assert "hpcpipe.slurm_templates" in listed
    assert setuptools["package-dir"]["hpcpipe.slurm_templates"] == "slurm_templates"
    data = setuptools["package-data"]["hpcpipe.slurm_templates"]
    assert "profiles/*" in data


def test_templates_and_profiles_exist():
    base = ROOT / "slurm_templates"
    assert (base / "job.sh.tmpl").is_file()
    assert {p.stem for p in (base / "profiles").glob("*.toml")} >= {"generic", "sdsc", "aws"}
