"""The backfill benchmark runs as README says, on the real cluster (small sizes: the figures are
its business, not the test's; the test pins that the command a reader copies still works and
prints every row, and that it gives the node back)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[2]


def test_backfill_bench_prints_every_figure_and_resumes_the_node(slurm_cluster):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCPIPE_") or k.startswith("HPCPIPE_SLURM")}
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "bench" / "backfill.py"), "--sessions", "20",
                          "--small", "10", "--baseline-sessions", "2"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    for row in ("hpcpipe backfill (process)", "backfill in-process", "sbatch loop, afterok (shell)",
                "hpcpipe status --json (process)", "hpcpipe status, the table (process)", "hpcpipe cancel --run (process)",
                "status --json after scancel --name", "per-session ratio", "growth 10 -> 20 sessions"):
        assert row in res.stdout, res.stdout
    node = os.environ["HPCPIPE_SLURM_NODE"]
    state = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%T"], capture_output=True, text=True).stdout
    assert "drain" not in state, state
