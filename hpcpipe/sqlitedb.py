"""Opening a SQLite file that several processes share (the embedded store, the job ledger).

WAL, so readers never wait for a writer, and a busy timeout, so writers wait for each other. One
step SQLite does not wait for: switching a new file to WAL takes an exclusive lock and answers
"database is locked" at once when another process opens the same new file in that instant (two
``hpcpipe submit`` started together on a fresh machine), so that step is retried here, within
the same bound as every other wait.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

#: seconds any step waits for another process's lock (SQLite's busy timeout, the WAL switch)
BUSY_SECS = 60.0


def connect(path: Path | str, synchronous: str) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), rows as ``sqlite3.Row``,
    WAL, ``synchronous`` (``FULL``, ``NORMAL``) and a busy timeout."""
    db = sqlite3.connect(path, timeout=BUSY_SECS, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute(f"PRAGMA busy_timeout={int(BUSY_SECS * 1000)}")
    deadline = time.monotonic() + BUSY_SECS
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                db.close()
                raise
            time.sleep(0.02)
    db.execute(f"PRAGMA synchronous={synchronous}")
    return db


#: a WAL this large after a bulk write is copied into the database on a thread (SQLite's own
#: automatic checkpoint starts at 1,000 pages: 4 MB)
BEHIND_BYTES = 4 << 20


def checkpoint_behind(path: Path | str) -> threading.Thread | None:
    """Copy a large WAL into the database file on a thread of its own (a ``PASSIVE`` checkpoint:
    it waits for nobody and nobody waits for it), so a bulk write's commit does not wait for
    it: a 10,000-session backfill's 21 MB of task records are written back while its jobs are
    queued. The thread is not a daemon: the process finishes the copy before it exits. A crash
    meanwhile loses nothing (the WAL stays until the next checkpoint)."""
    try:
        if os.path.getsize(f"{path}-wal") < BEHIND_BYTES:
            return None
    except FileNotFoundError:
        return None

    def copy() -> None:
        try:
            db = sqlite3.connect(path, timeout=BUSY_SECS)
            try:
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                db.close()
        except sqlite3.Error as exc:  # nothing is lost: the next checkpoint copies the WAL
            logging.getLogger("hpcpipe").debug("checkpoint of %s left for later: %s", path, exc)

    thread = threading.Thread(target=copy, name="hpcpipe-checkpoint")
    thread.start()
    return thread
