"""``hpcpipe report / log / resources`` and the status table, as a user runs them, on the
embedded default (local engine: every figure measured by the engine with ``os.wait4``)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hpcpipe.demo.session import make_session
from hpcpipe.store.sqlite import SQLiteStore
from tests.cliutil import run_hpcpipe as hp

REPO = Path(__file__).resolve().parents[2]
PIPE = "tests.sample_pipelines.OversizedDemo"


@pytest.fixture
def env(tmp_path):
    home = tmp_path / "home"
    return dict(os.environ, HPCPIPE_HOME=str(home), HPCPIPE_CONFIG=str(tmp_path / "config.toml"),
                HPCPIPE_GPU_LOCK_DIR=str(tmp_path / "locks"), PYTHONPATH=str(REPO))


@pytest.fixture
def ran(env, tmp_path):
    """One local run: the demo (DemoTrials made to fail, its children Held) plus Hungry (60 MB)."""
    session = make_session(tmp_path / "data" / "labA" / "Subjects" / "S1" / "2026-11-20" / "001", duration=15,
                           fail=("DemoTrials",))
    proc = hp(env, "submit", "--session", str(session), "--pipeline", PIPE, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # a task failed
    return session


def test_local_usage_is_measured_and_reported(env, ran):
    out = hp(env, "report").stdout
    lines = {ln.split()[1]: ln for ln in out.splitlines() if "/001" in ln}
    assert set(lines) == {"DemoSync", "DemoSpikeSorting", "DemoTrials", "DemoBehaviourQC", "DemoSummary", "Hungry"}
    store = SQLiteStore(Path(env["HPCPIPE_HOME"]) / "tasks.sqlite")
    hungry = next(t for t in store.list_tasks() if t["name"] == "Hungry")
    run_dir = next((Path(env["HPCPIPE_HOME"]) / "runs").iterdir())
    usage = json.loads((run_dir / "usage" / f"{hungry['id']}.json").read_text())
    assert usage["source"] == "local" and usage["state"] == "COMPLETED"
    assert usage["max_rss_mb"] >= 60 and usage["req_mem_mb"] == 2048  # it touched 60 MB of its 2 GB
    assert usage["elapsed_secs"] >= 1 and 0 < usage["total_cpu_secs"]  # it ran a second, busy
    assert f"{usage['max_rss_mb']:.1f}" in lines["Hungry"] and "2048.0" in lines["Hungry"]
    assert f"{usage['total_cpu_secs']:.3f}" in lines["Hungry"]
    assert "Python error: RuntimeError: DemoTrials" in lines["DemoTrials"]
    assert "Held" in lines["DemoSummary"]
    assert "6 task(s), 4 measured" in out


def test_log_prints_the_traceback_of_an_errored_task(env, ran):
    out = hp(env, "log", "--session", str(ran), "--task", "DemoTrials").stdout
    assert out.startswith("task DemoTrials (") and ": Errored" in out.splitlines()[0]
    assert "ended: FAILED, exit code 1:0" in out
    assert "Traceback (most recent call last)" in out and "RuntimeError: DemoTrials: failure requested" in out
    output = next(ln for ln in out.splitlines() if ln.startswith("stdout/stderr: ")).split(": ", 1)[1]
    assert Path(output).is_file() and "DemoTrials" in Path(output).read_text()
    tail = hp(env, "log", "--session", str(ran), "--task", "DemoTrials", "--tail", "3").stdout.splitlines()
    assert tail[-4].startswith("----- log, last 3 lines") and len(tail[tail.index(tail[-4]) + 1:]) == 3
    task_id = out.split("(", 1)[1].split(")", 1)[0]
    assert "RuntimeError" in hp(env, "log", "--id", task_id).stdout
    bad = hp(env, "log", "--session", str(ran), check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--task NAME" in bad.stderr


def test_resources_suggest_less_and_apply_only_when_opted_in(env, ran, tmp_path):
    out = hp(env, "resources", "--write").stdout
    row = next(ln for ln in out.splitlines() if ln.startswith("Hungry "))
    assert "local" in row and "2 -> 0.25" in row  # 60 MB x 1.2 -> 256 MB, of 2 GB asked
    path = Path(env["HPCPIPE_HOME"]) / "resources.toml"
    assert path.is_file() and "tests.sample_pipelines.Hungry" in path.read_text()
    other = make_session(tmp_path / "data" / "labA" / "Subjects" / "S1" / "2026-11-20" / "002", duration=15)
    dry = hp(env, "submit", "--session", str(other), "--pipeline", PIPE, "--dry-run").stdout
    assert "not applied" in dry and "would run Hungry (cpu 1, gpu 0, ram 2G)" in dry
    Path(env["HPCPIPE_CONFIG"]).write_text("[resources]\napply = true\n")
    dry = hp(env, "submit", "--session", str(other), "--pipeline", PIPE, "--dry-run").stdout
    assert "Hungry: resources ram 2 -> 0.25" in dry and "would run Hungry (cpu 1, gpu 0, ram 0.25G)" in dry
    store = SQLiteStore(Path(env["HPCPIPE_HOME"]) / "tasks.sqlite")
    assert {str(store.session_path(t["session"])) for t in store.list_tasks()} == {str(ran)}  # dry: nothing recorded
    assert "[hpcpipe:RESOURCES]" not in "".join(t["log"] or "" for t in store.list_tasks())


def test_status_tells_sessions_apart_and_shows_reasons(env, tmp_path):
    a = make_session(tmp_path / "d1" / "labA" / "Subjects" / "S1" / "2026-11-20" / "001", duration=15,
                     fail=("DemoSync",))
    b = make_session(tmp_path / "d2" / "labB" / "Subjects" / "S1" / "2026-11-20" / "001", duration=15)
    for s in (a, b):
        hp(env, "submit", "--session", str(s), "--pipeline", "demo", "--task", "DemoSync", check=False)
    out = hp(env, "status", "--reason").stdout
    assert "labA/Subjects/S1/2026-11-20/001" in out and "labB/Subjects/S1/2026-11-20/001" in out
    row = next(ln for ln in out.splitlines() if "labA" in ln and "DemoSync" in ln)
    assert "Python error: RuntimeError: DemoSync" in row
    rows = json.loads(hp(env, "status", "--json", "--reason").stdout)
    assert {r["reason"] for r in rows if r["name"] == "DemoSync"} >= {None}


def test_html_needs_the_report_extra_one_line(env, ran, tmp_path):
    blocker = tmp_path / "no-matplotlib" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('matplotlib is not installed')\n")
    env = dict(env, PYTHONPATH=f"{blocker.parent}{os.pathsep}{env['PYTHONPATH']}")
    proc = hp(env, "report", "--html", str(tmp_path / "r.html"), check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("hpcpipe: error: the HTML report needs the 'report' extra (matplotlib, graphviz): "
                           "pip install 'hpcpipe[report]'\n")
    assert not (tmp_path / "r.html").exists()


def test_report_selects_by_run_and_time_window(env, ran):
    run_id = next((Path(env["HPCPIPE_HOME"]) / "runs").iterdir()).name
    # a run, or a window, holds the tasks that had a job in it (the Held ones had none)
    assert "4 task(s), 4 measured" in hp(env, "report", "--run", run_id).stdout
    assert "4 task(s), 4 measured" in hp(env, "report", "--since", "1h", "--pipeline", "oversized").stdout
    assert hp(env, "report", "--until", "2000-01-01").stdout == "no task matches\n"
    assert hp(env, "report", "--pipeline", "demo").stdout == "no task matches\n"  # the graph is 'oversized'
    one = hp(env, "report", "--session", str(ran), "--all-attempts").stdout
    assert "6 task(s)" in one


def test_unknown_run_is_bad_input(env, ran):
    proc = hp(env, "report", "--run", "hp-nope", check=False)
    assert proc.returncode == 2 and "no job of run 'hp-nope'" in proc.stderr


# ---------------------------------------------------------------------- the page in a real browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(page: Path, out: Path, *mode: str) -> subprocess.CompletedProcess:
    """Headless Chromium, no network features, console messages logged to stderr."""
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={out / 'profile'}",
            "--enable-logging=stderr", "--v=0", "--window-size=1400,2400", *mode, page.as_uri()]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def console_messages(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup-env installs it as root)")
def test_html_page_renders_in_chromium_without_console_errors(env, ran, tmp_path):
    page = tmp_path / "report.html"
    hp(env, "report", "--html", str(page))
    text = page.read_text()
    import re

    # self-contained: nothing to fetch (XML namespace names are identifiers, never fetched)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:|//)|url\(\s*["']?https?:|@import|<link""", text)
    assert "<script" not in text
    # the check sees console errors: a page that logs one is caught
    control = tmp_path / "control.html"
    control.write_text("<html><body><script>console.error('broken on purpose')</script></body></html>")
    assert any("broken on purpose" in m for m in console_messages(chromium(control, tmp_path, "--dump-dom").stderr))
    dom = chromium(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0 and console_messages(dom.stderr) == []
    assert 'id="timeline"' in dom.stdout and dom.stdout.count("<svg") >= 2 and "Hungry" in dom.stdout
    shot = chromium(page, tmp_path, f"--screenshot={tmp_path / 'shot.png'}")
    assert shot.returncode == 0 and console_messages(shot.stderr) == []
    png = (tmp_path / "shot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20000
    keep = os.environ.get("HPCPIPE_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(tmp_path / "shot.png", keep)
