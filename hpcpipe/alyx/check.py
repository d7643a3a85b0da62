"""What a pipeline needs on Alyx, found in one go before any task runs (``hpcpipe alyx check``).

A fresh Alyx (ALYX-API.md §5) lacks what a lab pipeline adds: the session (``register-file``
never creates one), the dataset type of each output (``register-file`` answers 500 per missing
type, after registering the files before it), the data repository outputs are registered in,
the lab. Found one failure at a time, each costs an Errored task; here everything missing is
listed in one message, with how to add it.

With the explicit opt-in (``hpcpipe alyx check --create``, or ``[alyx] create_missing = true``
for ``submit``/``backfill``) the missing session (and its subject) and dataset types are
created over REST, where the user has the rights (any authenticated non-public user on a
standard Alyx). Labs and data repositories are the administrator's: they are only reported,
with the request that would create them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..errors import BadInput
from ..session import parse_session_path
from . import register as reg

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Missing:
    """One thing the server lacks: ``kind`` (session, subject, dataset type, data format, data
    repository, lab), its ``name``, what needs it, and how to add it."""

    kind: str
    name: str
    needed_by: str
    how: str
    creatable: bool = False
    lab: str | None = None  # of a subject or session to create

    def line(self) -> str:
        return f"{self.kind} {self.name!r} (needed by {self.needed_by}): {self.how}"


def output_patterns(tasks: Iterable[Any]) -> list[tuple[str, str]]:
    """``(file name pattern, task name)`` of every output in the tasks' signatures."""
    out = []
    for task in tasks:
        for entry in (getattr(task, "signature", None) or {}).get("output_files", []):
            name = entry[0] if isinstance(entry, (list, tuple)) else entry
            if isinstance(name, str) and (name, task.name) not in out:
                out.append((name, task.name))
    return out


def find_missing(store: Any, sessions: Iterable[Path | str], tasks: Iterable[Any]) -> list[Missing]:
    """Everything the pipeline's ``tasks`` need on the store's Alyx for ``sessions``."""
    missing: list[Missing] = []
    labs = {lab["name"] for lab in store.rest("labs", "list")}
    refs = [parse_session_path(path, must_exist=False) for path in sessions]
    known = store.session_ids(refs)  # a few requests for all (a backfill's thousands), then cached
    for ref, eid in zip(refs, known):
        if ref.lab and ref.lab not in labs and not any(m.kind == "lab" and m.name == ref.lab for m in missing):
            missing.append(Missing("lab", ref.lab, f"session {ref.short}",
                                   f'an administrator creates it: POST /labs {{"name": "{ref.lab}"}}'))
        if eid is not None:
            continue
        lab_ok = ref.lab is None or ref.lab in labs  # a session or subject needs its lab first
        if not store.rest("subjects", "list", nickname=ref.subject) and \
                not any(m.kind == "subject" and m.name == ref.subject for m in missing):
            missing.append(Missing("subject", ref.subject, f"session {ref.short}",
                                   f'POST /subjects {{"nickname": "{ref.subject}", "lab": "{ref.lab or "<lab>"}"}}',
                                   creatable=lab_ok, lab=ref.lab))
        missing.append(Missing("session", ref.short, "every task",
                               f'POST /sessions {{"subject": "{ref.subject}", "number": {ref.number}, '
                               f'"start_time": "{ref.date}T00:00:00"' + (f', "lab": "{ref.lab}"' if ref.lab else "") + "}",
                               creatable=lab_ok, lab=ref.lab))
    repository = store.repository
    if repository and not store.rest("data-repository", "list", name=repository):
        missing.append(Missing("data repository", repository, "every output ([alyx] repository)",
                               f'an administrator creates it: POST /data-repository {{"name": "{repository}", '
                               '"data_url": ..., "repository_type": "Fileserver", "globus_is_personal": false}, '
                               "and attaches it to the lab (PATCH /labs/<lab> {\"repositories\": [...]})"))
    types, formats = store.catalog(refresh=True)
    for pattern, task in output_patterns(tasks):
        base = pattern.rsplit("/", 1)[-1]
        if "*" in base or "?" in base or "[" in base:
            continue  # a wildcard name: its files are checked when they exist (register_files)
        dtype, why = reg.match_dataset_type(base, types)
        if dtype is None:
            name = reg.alf_object_attribute(base)
            if name and not any(m.kind == "dataset type" and m.name == name for m in missing):
                missing.append(Missing("dataset type", name, f"{task} ({base})",
                                       f'POST /dataset-types {{"name": "{name}", "filename_pattern": ""}}',
                                       creatable=True))
            elif not name:
                missing.append(Missing("dataset type", base, task, why))
        fmt, why = reg.match_data_format(base, formats)
        if fmt is None and not any(m.kind == "data format" and m.name == base.rsplit(".", 1)[-1] for m in missing):
            missing.append(Missing("data format", base.rsplit(".", 1)[-1], f"{task} ({base})", why))
    return missing


def create_missing(store: Any, missing: list[Missing]) -> list[Missing]:
    """Create what can be created (subjects, then sessions, then dataset types); returns the rest."""
    user = getattr(store.alyx, "username", None) or getattr(store.alyx, "user", None)
    order = {"subject": 0, "session": 1, "dataset type": 2}
    left = [m for m in missing if not m.creatable]
    for item in sorted((m for m in missing if m.creatable), key=lambda m: order[m.kind]):
        if item.kind == "subject":
            store.rest("subjects", "create", data={"nickname": item.name, **({"lab": item.lab} if item.lab else {})})
        elif item.kind == "session":
            subject, date, number = item.name.split("/")
            data = {"subject": subject, "number": int(number), "start_time": f"{date}T00:00:00",
                    **({"lab": item.lab} if item.lab else {}), **({"users": [user]} if user else {})}
            store.rest("sessions", "create", data=data)
        else:
            store.rest("dataset-types", "create", data={
                "name": item.name, "filename_pattern": "", "description": f"created by hpcpipe for {item.needed_by}"})
        _logger.info("created %s %s on Alyx", item.kind, item.name)
        print(f"created {item.kind} {item.name} on Alyx")
    return left


def message(store: Any, missing: list[Missing]) -> str:
    """The one message listing everything missing."""
    lines = "; ".join(m.line() for m in missing)
    fix = " (run `hpcpipe alyx check --create` to create the sessions and dataset types)" \
        if any(m.creatable for m in missing) else ""
    return f"Alyx at {store.base_url} lacks {len(missing)} thing(s) this pipeline needs: {lines}{fix}"


def check(store: Any, sessions: list[Path], tasks: list[Any], create: bool = False) -> list[Missing]:
    """Find what is missing, create it when asked; raise ``BadInput`` listing what is left."""
    missing = find_missing(store, sessions, tasks)
    if missing and create:
        missing = create_missing(store, missing)
        if not missing:
            missing = find_missing(store, sessions, tasks)
    if missing:
        raise BadInput(message(store, missing))
    return missing
