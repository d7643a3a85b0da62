"""Finding a pipeline class: a dotted path imports without reading any package's metadata."""
from __future__ import annotations

import pytest

from hpcpipe import pipelines
from hpcpipe.errors import BadInput
from hpcpipe.pipeline import Pipeline


class _Found(Pipeline):
    pass


class _EntryPoint:
    def __init__(self, cls: type) -> None:
        self.cls = cls

    def load(self) -> type:
        return self.cls


def test_a_dotted_path_is_imported_without_the_entry_points(monkeypatch):
    def unread():
        raise AssertionError("the entry points were read")

    monkeypatch.setattr(pipelines, "_entry_points", unread)
    assert pipelines.find_pipeline(f"{__name__}._Found") is _Found


def test_a_dotted_name_that_does_not_import_is_looked_up_among_the_entry_points(monkeypatch):
    monkeypatch.setattr(pipelines, "_entry_points", lambda: {"lab.ephys": _EntryPoint(_Found)})
    assert pipelines.find_pipeline("lab.ephys") is _Found
    with pytest.raises(BadInput, match=r"cannot import 'lab\.nothing'"):
        pipelines.find_pipeline("lab.nothing")
    with pytest.raises(BadInput, match=r"unknown pipeline 'ephys'; registered pipelines: lab\.ephys"):
        pipelines.find_pipeline("ephys")
