"""SQLite schema and seed fixtures of the Alyx test server.

One sqlite3 file holds everything; JSON-valued columns (``arguments``, ``parents``, lists of
users...) are stored as JSON text. Seeds: an admin user with a 40-hex token, the 29 data
formats Alyx has after init, the data repository types, the ``cortexlab`` lab, and a set of
standard IBL dataset types -- and nothing a lab pipeline adds (a fresh Alyx has no ``hpcpipe.*``
or demo dataset types: fixtures create those over REST, as a lab would).
"""
from __future__ import annotations

import binascii
import hashlib
import json
import os
import sqlite3
import uuid

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY, email TEXT, password_hash TEXT, token TEXT UNIQUE,
    is_superuser INTEGER DEFAULT 0, json TEXT);
CREATE TABLE IF NOT EXISTS labs (name TEXT PRIMARY KEY, repositories TEXT DEFAULT '[]');
CREATE TABLE IF NOT EXISTS repository_types (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS data_repository (
    id TEXT PRIMARY KEY, name TEXT UNIQUE, data_url TEXT, globus_is_personal INTEGER,
    repository_type TEXT, hostname TEXT, globus_path TEXT, globus_endpoint_id TEXT,
    timezone TEXT DEFAULT '', json TEXT);
CREATE TABLE IF NOT EXISTS projects (name TEXT PRIMARY KEY, users TEXT DEFAULT '[]');
CREATE TABLE IF NOT EXISTS subjects (
    id TEXT PRIMARY KEY, nickname TEXT UNIQUE, lab TEXT, responsible_user TEXT,
    species TEXT, sex TEXT);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, subject TEXT, number INTEGER, lab TEXT, start_time TEXT,
    users TEXT, projects TEXT, task_protocol TEXT, type TEXT, parent_session TEXT,
    qc INTEGER DEFAULT 0, json TEXT);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, parents TEXT DEFAULT '[]', session TEXT, data_repository TEXT,
    status INTEGER, name TEXT, priority INTEGER, io_charge INTEGER, level INTEGER,
    gpu INTEGER, cpu INTEGER, ram INTEGER, time_out_secs INTEGER, time_elapsed_secs REAL,
    executable TEXT, graph TEXT, log TEXT, version TEXT, datetime TEXT, arguments TEXT);
CREATE INDEX IF NOT EXISTS tasks_session ON tasks(session);
CREATE TABLE IF NOT EXISTS dataset_types (
    id TEXT PRIMARY KEY, name TEXT UNIQUE, filename_pattern TEXT, description TEXT,
    created_by TEXT);
CREATE TABLE IF NOT EXISTS data_formats (
    id TEXT PRIMARY KEY, name TEXT UNIQUE, file_extension TEXT, description TEXT);
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY, session TEXT, collection TEXT, revision TEXT, name TEXT,
    dataset_type TEXT, data_format TEXT, file_size INTEGER, hash TEXT, version TEXT,
    default_dataset INTEGER, qc INTEGER DEFAULT 0, created_by TEXT, created_datetime TEXT,
    auto_datetime TEXT, protected INTEGER DEFAULT 0, public INTEGER DEFAULT 0);
CREATE INDEX IF NOT EXISTS datasets_session ON datasets(session);
CREATE TABLE IF NOT EXISTS file_records (
    id TEXT PRIMARY KEY, dataset TEXT, data_repository TEXT, relative_path TEXT,
    exists_ INTEGER);
CREATE INDEX IF NOT EXISTS file_records_dataset ON file_records(dataset);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""

#: name, extension -- the 29 formats of a fresh Alyx (two with an empty extension).
DATA_FORMATS = [
    ("bin", ".bin"), ("bz2", ".bz2"), ("cbin", ".cbin"), ("ch", ".ch"), ("csv", ".csv"),
    ("flac", ".flac"), ("htsv", ".htsv"), ("json", ".json"), ("jsonable", ".jsonable"),
    ("log", ".log"), ("matlab", ".m"), ("mat", ".mat"), ("meta", ".meta"), ("mj2", ".mj2"),
    ("mp4", ".mp4"), ("npy", ".npy"), ("npz", ".npz"), ("pqt", ".pqt"),
    ("sparse_npz", ".sparse_npz"), ("ssv", ".ssv"), ("tar", ".tar"), ("tdms", ".tdms"),
    ("tif", ".tif"), ("tsv", ".tsv"), ("yaml", ".yaml"), ("yml", ".yml"), ("zip", ".zip"),
    ("notData", ""), ("unknown", ""),
]

#: A representative subset of the dataset types of a fresh Alyx: (name, filename_pattern).
DATASET_TYPES = [
    ("spikes.times", ""), ("spikes.clusters", ""), ("spikes.amps", ""), ("spikes.depths", ""),
    ("clusters.channels", ""), ("clusters.depths", ""), ("clusters.metrics", ""),
    ("channels.localCoordinates", ""), ("channels.rawInd", ""),
    ("trials.intervals", ""), ("trials.table", ""), ("trials.goCue_times", ""),
    ("trials.feedbackType", ""), ("trials.choice", ""), ("trials.stimOn_times", ""),
    ("wheel.position", ""), ("wheel.timestamps", ""), ("wheelMoves.intervals", ""),
    ("licks.times", ""), ("camera.times", ""), ("camera.dlc", ""),
    ("ephysData.raw.ap", "*.ap.*bin"), ("ephysData.raw.lf", "*.lf.*bin"),
    ("ephysData.raw.meta", "*.meta"), ("ephysData.raw.ch", "*.ch"),
    ("ephysData.raw.sync", "_spikeglx_sync.*"),
    ("_iblrig_taskData.raw", "_iblrig_taskData.raw.*"),
    ("_iblrig_taskSettings.raw", "_iblrig_taskSettings.raw.*"),
    ("_iblrig_Camera.raw", "_iblrig_*Camera.raw.*"),
    ("_ibl_experiment.description", "_ibl_experiment.description*"),
    ("_ibl_log.info", "_ibl_log.info*"),
]

REPOSITORY_TYPES = ["Fileserver", "Cardboard box"]


def connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def hash_password(password: str) -> str:
    return hashlib.sha256(("alyx-test:" + password).encode()).hexdigest()


def new_token() -> str:
    return binascii.hexlify(os.urandom(20)).decode()


def init(db: sqlite3.Connection, username: str, password: str) -> None:
    """Create tables and seed fixtures (idempotent: a restart keeps the data and the token)."""
    db.executescript(SCHEMA)
    if db.execute("SELECT value FROM meta WHERE key='seeded'").fetchone():
        row = db.execute("SELECT username FROM users WHERE username=?", (username,)).fetchone()
        if row is None:
            add_user(db, username, password, superuser=True)
        return
    db.execute("BEGIN")
    add_user(db, username, password, superuser=True)
    db.execute("INSERT INTO labs(name, repositories) VALUES ('cortexlab', '[]')")
    for name in REPOSITORY_TYPES:
        db.execute("INSERT INTO repository_types VALUES (?)", (name,))
    for name, ext in DATA_FORMATS:
        db.execute("INSERT INTO data_formats VALUES (?,?,?,?)",
                   (str(uuid.uuid4()), name, ext, ""))
    for name, pattern in DATASET_TYPES:
        db.execute("INSERT INTO dataset_types VALUES (?,?,?,?,?)",
                   (str(uuid.uuid4()), name, pattern, "", username))
    db.execute("INSERT INTO meta VALUES ('seeded', '1')")
    db.execute("COMMIT")


def add_user(db: sqlite3.Connection, username: str, password: str | None,
             superuser: bool = False, email: str = "") -> str:
    token = new_token()
    db.execute("INSERT INTO users(username, email, password_hash, token, is_superuser, json) "
               "VALUES (?,?,?,?,?,?)",
               (username, email or f"{username}@example.org",
                hash_password(password) if password else None, token, int(superuser),
                json.dumps({"subjects_responsible": [], "allowed_users": []})))
    return token
