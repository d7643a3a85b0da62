"""Opening a SQLite file that several processes share (the embedded store, the job ledger).

WAL, so readers never wait for a writer, and a busy timeout, so writers wait for each other. One
step SQLite does not wait for: switching a new file to WAL takes an exclusive lock and answers
"database is locked" at once when another process opens the same new file in that instant (two
``hpcpipe submit`` started together on a fresh machine), so that step is retried here, within
the same bound as every other wait.
"""
from __future__ import annotations

import sqlite3
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
