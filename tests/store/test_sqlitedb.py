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


def test_a_large_wal_is_copied_into_the_file_on_a_thread_a_small_one_left_to_sqlite(tmp_path):
    path = tmp_path / "big.sqlite"
    db = sqlitedb.connect(path, synchronous="NORMAL")
    db.execute("PRAGMA wal_autocheckpoint=0")  # as a store's batch: the commit copies nothing
    db.execute("CREATE TABLE t (x)")
    assert sqlitedb.checkpoint_behind(path) is None  # a small WAL: SQLite's own checkpoints do
    db.execute("BEGIN")
    db.executemany("INSERT INTO t VALUES (?)", [("x" * 1000,) for _ in range(6000)])  # ~6 MB
    db.execute("COMMIT")
    thread = sqlitedb.checkpoint_behind(path)
    assert thread is not None and not thread.daemon  # the process finishes the copy before exiting
    thread.join(60)
    busy, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert busy == 0 and frames == copied > 0  # every frame was already in the file


def test_a_store_batch_leaves_the_copy_to_the_thread(tmp_path, monkeypatch):
    from hpcpipe.store.sqlite import SQLiteStore

    calls = []
    monkeypatch.setattr(sqlitedb, "checkpoint_behind", calls.append)
    store = SQLiteStore(tmp_path / "tasks.sqlite")
    seen: list[str] = []
    store._db.set_trace_callback(seen.append)
    with store.batch():
        with store.batch():  # nested: one commit, one hand-over
            pass
    assert calls == [store.path]
    begin = seen.index("BEGIN IMMEDIATE")
    assert seen[begin + 1] == "PRAGMA wal_autocheckpoint=0"
    assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000


def test_a_store_batch_keeps_its_pages_until_the_commit(tmp_path):
    """A backfill's batch writes MBs of pages, its unique index touched all over once per task
    type: pages spilled into the WAL mid-transaction are written again at each later touch. The
    batch's page cache holds them until the commit, and is back to what it was after."""
    import os

    from hpcpipe.session import SessionRef
    from hpcpipe.store.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "tasks.sqlite")
    default = store._db.execute("PRAGMA cache_size").fetchone()[0]
    refs = [SessionRef(tmp_path / f"S{k}" / "2026-01-01" / "001", f"S{k}", "2026-01-01", 1, None)
            for k in range(3000)]
    template = [{"name": f"T{j}", "status": "Waiting", "executable": f"lab.tasks.Task{j}", "graph": "G",
                 "parents": [f"T{j - 1}"] if j else [], "level": j, "priority": 100, "cpu": 1, "ram": 4}
                for j in range(6)]
    wal = f"{store.path}-wal"
    with store.batch():
        eids = store.session_ids(refs, create=True)
        store.stamp_tasks(template, eids)
        inside = os.path.getsize(wal)
    after = os.path.getsize(wal)
    assert after > 4 << 20  # the records (18,000) are MBs of pages ...
    assert inside < 1 << 20  # ... none written before the commit
    assert store._db.execute("PRAGMA cache_size").fetchone()[0] == default
