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


def concurrent_cancels(env: dict, run: str, n: int = 2, timeout: float = 300) -> list[str]:
    """``n`` ``hpcpipe cancel --run RUN`` started at the same moment; their stdout, sorted, once
    each has exited 0 printing nothing on stderr but the lock's "waiting" line."""
    argv = [sys.executable, "-m", "hpcpipe.cli", "cancel", "--run", run]
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(n)]
    outs = [p.communicate(timeout=timeout) for p in procs]
    assert [p.returncode for p in procs] == [0] * n, outs
    assert all(line.startswith("hpcpipe: waiting for another") for _, err in outs for line in err.splitlines()), outs
    return sorted(out.strip() for out, _ in outs)


def cancel_left_jobs(home: str | Path) -> None:
    """Teardown: scancel the SLURM jobs a (failed) test left live in the ledger under ``home``."""
    ledger = Path(home) / "jobs.sqlite"
    if not ledger.exists():
        return
    from hpcpipe.ledger import Ledger

    ids = sorted({j.job_id for j in Ledger(ledger).live()})
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)
