"""A synthetic recording session for the demo pipeline: raw ephys, a sync channel, behaviour.

Deterministic (seeded by the session path), small enough to process in seconds, real enough that
each demo task does genuine numpy work on it.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path

import numpy as np

from ..errors import BadInput
from ..session import parse_session_path

FS = 3000  # Hz
DURATION = 120  # s (a trial every ~3 s)
N_CHANNELS = 8


def default_session_path(root: Path | str) -> Path:
    """``root`` itself when it is a session path, else ``root/demolab/Subjects/DEMO001/<date>/001``."""
    root = Path(root).expanduser()
    try:
        parse_session_path(root, must_exist=False)
        return root
    except BadInput:
        return root / "demolab" / "Subjects" / "DEMO001" / _dt.date.today().isoformat() / "001"


def make_session(root: Path | str, fail: tuple[str, ...] = (), duration: float = DURATION) -> Path:
    """Write a demo session under ``root`` and return its path.

    ``fail`` names demo tasks that must error in this session (a marker file each), so tests and
    backfills can show a failure that blocks only that session's children. ``duration`` (s)
    sets the size: 120 s is about 11 MB; tests backfilling hundreds of sessions use 15 s.
    """
    if duration < 12:
        raise BadInput(f"demo session duration {duration} s is too short (12 s at least)")
    n_trials = int(duration // 3) - 1
    path = default_session_path(root)
    raw = path / "raw_demo_data"
    raw.mkdir(parents=True, exist_ok=True)
    seed = int(hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(seed)
    n = int(FS * duration)
    t = np.arange(n) / FS
    # trial starts every ~3 s; the sync channel pulses at each
    starts = np.cumsum(rng.uniform(2.5, 3.0, n_trials))
    sync = np.zeros(n, dtype=np.int8)
    for s in starts:
        sync[int(s * FS):int(s * FS) + FS // 20] = 1
    ephys = rng.normal(0, 1, (N_CHANNELS, n)).astype(np.float32)
    rates = rng.uniform(2, 20, N_CHANNELS)
    for ch in range(N_CHANNELS):
        spikes = rng.random(n) < rates[ch] / FS
        ephys[ch, spikes] -= 8.0
    # behaviour clock is offset and drifts relative to the ephys clock
    behaviour = {"trial_start": (starts * 1.0001 + 0.25).tolist(),
                 "response": (starts + rng.uniform(0.3, 1.5, n_trials)).tolist(),
                 "choice": rng.choice([-1, 1], n_trials).tolist()}
    np.save(raw / "_demo_raw.ephys.npy", ephys)
    np.save(raw / "_demo_raw.sync.npy", sync)
    np.save(raw / "_demo_raw.timestamps.npy", t[:: FS])
    (raw / "_demo_raw.behaviour.json").write_text(json.dumps(behaviour))
    (raw / "_demo_raw.meta.json").write_text(json.dumps({"fs": FS, "n_channels": N_CHANNELS}))
    for name in fail:
        (path / f"_demo_fail_{name}").write_text("this task errors on purpose in this session\n")
    return path
