"""The report, right-sizing and ``hpcpipe log`` after real jobs on the test cluster: the demo
pipeline plus an over-sized task (Hungry asks 2 GB, touches 60 MB), one session with a failing
task, and a backfill (job arrays) of the over-sized task. Every figure in the page is compared
with what ``sacct`` itself says."""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hpcpipe.demo.session import make_session
from tests.cliutil import run_hpcpipe as hp

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[2]
PIPE = "tests.sample_pipelines.OversizedDemo"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def settle(cli_env: dict, n_tasks: int, timeout: float = 300) -> list[dict]:
    """`hpcpipe status --json` until no submitted task is Waiting or Started, and sacct has every
    job's end (the backfill recorded whole pipelines but submitted one task of each)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = json.loads(hp(cli_env, "status", "--json").stdout)
        busy = [r for r in rows if r["status"] == "Started" or (r["status"] == "Waiting" and r["job_id"])]
        if len(rows) == n_tasks and not busy:
            ids = sorted({r["job_id"] for r in rows if r["job_id"]})
            ended = sacct(ids)
            if all(i in ended and ended[i]["End"] != "Unknown" for i in ids):
                return rows
        assert time.monotonic() < deadline, f"not settled after {timeout} s: {rows}"
        time.sleep(2)


def sacct(ids) -> dict[str, dict]:
    """sacct's own word on these jobs (steps included, as a user would read them), by job id."""
    fields = ["JobID", "State", "ExitCode", "ElapsedRaw", "TotalCPU", "MaxRSS", "ReqMem", "ReqCPUS", "End"]
    out = subprocess.run(["sacct", "--parsable2", "--noheader", f"--format={','.join(fields)}",
                          f"--jobs={','.join(sorted({i.split('_')[0] for i in ids}))}"],
                         capture_output=True, text=True, check=True).stdout
    jobs: dict[str, dict] = {}
    for line in out.splitlines():
        row = dict(zip(fields, line.split("|")))
        owner, _, step = row["JobID"].partition(".")
        if not step:
            jobs[owner] = row | {"rss_k": 0.0}
        elif row["MaxRSS"].endswith("K"):
            jobs[owner]["rss_k"] = max(jobs[owner]["rss_k"], float(row["MaxRSS"][:-1]))
    return jobs


def seconds(total_cpu: str) -> float:
    value = 0.0
    for part in total_cpu.split(":"):
        value = value * 60 + float(part)
    return value


def mb(req_mem: str) -> float:
    """sacct's ReqMem (``300M``, ``1G``) in MB."""
    return float(req_mem[:-1]) * {"M": 1, "G": 1024}[req_mem[-1]]


def page_rows(text: str) -> dict[str, dict[str, str]]:
    rows = {}
    for job, body in re.findall(r'<tr data-job="([^"]*)" data-backend="slurm">(.*?)</tr>', text):
        rows[job] = {k: html.unescape(v) for k, v in re.findall(r'<td data-col="([^"]+)">(.*?)</td>', body)}
    return rows


def test_report_resources_and_log_after_real_jobs(env, tmp_path, slurm_cluster):  # noqa: F811
    if not slurm_cluster["sacct"]:
        pytest.skip("the test cluster runs without accounting (HPCPIPE_SLURM_SACCT=0)")
    root = tmp_path / "data" / "lab" / "Subjects"
    ok = make_session(root / "S1" / "2026-11-20" / "001", duration=15)
    bad = make_session(root / "S2" / "2026-11-20" / "001", duration=15, fail=("DemoTrials",))
    hp(env, "submit", "--session", str(ok), "--session", str(bad), "--pipeline", PIPE, "--backend", "slurm")
    extra = [make_session(root / f"S{n}" / "2026-11-20" / "001", duration=15) for n in (3, 4)]
    hp(env, "backfill", "--session", str(extra[0]), "--session", str(extra[1]), "--pipeline", PIPE,
       "--task", "Hungry")
    rows = settle(env, 4 * 6)
    by = {(r["session"], r["name"]): r for r in rows}
    assert {r["status"] for r in rows if r["job_id"]} == {"Complete", "Errored", "Held"}
    arrays = [r["job_id"] for r in rows if "_" in (r["job_id"] or "")]
    assert len(arrays) == 2  # the backfill's Hungry elements

    # the table and the page, figure for figure against sacct
    page = tmp_path / "report.html"
    out = hp(env, "report", "--html", str(page)).stdout
    assert "report written to" in out and "1 sacct query(ies)" in out
    cells = page_rows(page.read_text())
    truth = sacct(cells)
    assert set(cells) == {r["job_id"] for r in rows if r["job_id"]}
    for job, c in cells.items():
        s = truth[job]
        assert c["state"] == s["State"].split()[0] and c["exit"] == s["ExitCode"], (job, c, s)
        never_ran = s["State"].startswith("CANCELLED") and s["ElapsedRaw"] == "0"
        assert c["elapsed s"] == ("" if never_ran else s["ElapsedRaw"]), (job, c, s)
        assert c["cpu time s"] == f"{seconds(s['TotalCPU']):.3f}", (job, c, s)
        assert c["cpus"] == s["ReqCPUS"] and c["req mem MB"] == f"{mb(s['ReqMem']):.1f}", (job, c, s)
        assert c["max rss MB"] == (f"{s['rss_k'] / 1024:.1f}" if s["rss_k"] else ""), (job, c, s)
    hungry = [c for c in cells.values() if c["task"] == "Hungry"]
    assert len(hungry) == 4 and all(c["req mem MB"] == "2048.0" for c in hungry)
    assert all(float(c["max rss MB"]) >= 60 for c in hungry)
    failed = next(c for c in cells.values() if c["task"] == "DemoTrials" and c["status"] == "Errored")
    assert failed["reason"].startswith("Python error: RuntimeError: DemoTrials")
    text = page.read_text()
    assert 'id="failures"' in text and "Traceback (most recent call last)" in text
    assert text.count("<svg") >= 2  # timeline and graph, inline

    if CHROMIUM:
        shot = tmp_path / "shot.png"
        argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                "--window-size=1400,3000", f"--screenshot={shot}", page.as_uri()]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and not [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("HPCPIPE_KEEP_SCREENSHOT"):
            shutil.copy(shot, os.environ["HPCPIPE_KEEP_SCREENSHOT"])
    else:
        print("chromium not installed: page not rendered in a browser")

    # hpcpipe log: the Errored task's traceback, its job's output file and how the job ended
    log = hp(env, "log", "--session", str(bad), "--task", "DemoTrials").stdout
    assert "Traceback (most recent call last)" in log and "RuntimeError: DemoTrials: failure requested" in log
    assert "ended: FAILED, exit code 1:0" in log
    output = next(ln for ln in log.splitlines() if ln.startswith("stdout/stderr: ")).split(": ", 1)[1]
    assert Path(output).is_file() and output.endswith(f".{by[(failed_session(rows, bad), 'DemoTrials')]['job_id']}.out")

    # right-sizing: less RAM for the over-sized task, applied to a later dry run only when opted in
    res = hp(env, "resources", "--write").stdout
    row = next(ln for ln in res.splitlines() if ln.startswith("Hungry "))
    assert "slurm:cpu" in row and " 4 " in row and "2 -> 0.25" in row, res
    later = make_session(root / "S5" / "2026-11-20" / "001", duration=15)
    Path(env["HPCPIPE_CONFIG"]).write_text("[resources]\napply = true\n")
    dry = hp(env, "submit", "--session", str(later), "--pipeline", PIPE, "--backend", "slurm", "--dry-run").stdout
    assert "Hungry: resources ram 2 -> 0.25" in dry, dry
    run = max((Path(env["HPCPIPE_HOME"]) / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    assert "#SBATCH --mem=256M" in (run / "scripts" / "Hungry.0.sh").read_text()


def failed_session(rows: list[dict], path: Path) -> str:
    """The store's id of the session whose tasks ran at ``path`` (the failing one)."""
    names = {r["session"] for r in rows if r["name"] == "DemoTrials" and r["status"] == "Errored"}
    assert len(names) == 1
    return names.pop()
