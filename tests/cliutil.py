"""Running the real ``hpcpipe`` command in a subprocess, as a user does, for CLI-level tests."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_hpcpipe(env: dict, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m hpcpipe.cli ARGS`` with ``env``; with ``check``, a non-zero exit fails the test
    showing what the command printed."""
    proc = subprocess.run([sys.executable, "-m", "hpcpipe.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"hpcpipe {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def cancel_left_jobs(home: str | Path) -> None:
    """Teardown: scancel the SLURM jobs a (failed) test left live in the ledger under ``home``."""
    ledger = Path(home) / "jobs.sqlite"
    if not ledger.exists():
        return
    from hpcpipe.ledger import Ledger

    ids = sorted({j.job_id for j in Ledger(ledger).live()})
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)
