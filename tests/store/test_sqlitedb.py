"""Opening a new SQLite file from several processes at once (two submits on a fresh machine)."""
from __future__ import annotations

import multiprocessing

from hpcpipe import sqlitedb


def _open(path: str, barrier, errors) -> None:
    barrier.wait()
    try:
        sqlitedb.connect(path, synchronous="NORMAL").execute("CREATE TABLE IF NOT EXISTS t (x)")
    except Exception as exc:  # reported to the test, which names it
        errors.put(repr(exc))


def test_processes_opening_one_new_file_together_all_get_it_in_wal(tmp_path):
    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    for trial in range(15):
        path = str(tmp_path / f"new{trial}.sqlite")
        barrier = ctx.Barrier(4)
        procs = [ctx.Process(target=_open, args=(path, barrier, errors)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert errors.empty(), errors.get()
        assert sqlitedb.connect(path, synchronous="NORMAL").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
