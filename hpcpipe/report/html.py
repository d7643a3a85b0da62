"""The report as one self-contained HTML file: nothing is fetched when it is opened.

* a timeline of every task (queued: submit to start, running: start to end), grouped per
  session or per task type, drawn by matplotlib and inlined as SVG;
* the pipeline graph, nodes coloured by status, laid out by Graphviz ``dot`` and inlined as SVG;
* the efficiency table (the same cells as the terminal table, ``table.cells``);
* the failures, each with its reason and the tail of its log.

matplotlib and the graphviz package are the ``report`` extra (``pip install 'hpcpipe[report]'``);
without them ``write`` raises one clear line. Without the ``dot`` program the page says the
graph is missing and why, and everything else is there.
"""
from __future__ import annotations

import datetime as _dt
import html
import io
import re
import shutil
import time
from pathlib import Path

from ..errors import BadInput
from .collect import Report, Row
from .table import COLUMNS, cells

STATUS_COLOURS = {"Complete": "#4caf50", "Incomplete": "#aed581", "Errored": "#e53935", "Held": "#ffb300",
                  "Waiting": "#90a4ae", "Started": "#42a5f5", "Empty": "#e0e0e0", "Abandoned": "#6d4c41"}
STATE_COLOURS = {"COMPLETED": "#4caf50", "RUNNING": "#42a5f5", "FAILED": "#e53935", "TIMEOUT": "#8e24aa",
                 "OUT_OF_MEMORY": "#d81b60", "CANCELLED": "#ffb300", "NODE_FAIL": "#6d4c41",
                 "PREEMPTED": "#6d4c41"}
QUEUED_COLOUR = "#cfd8dc"
#: job endings listed under Failures (a job cancelled before it ran leaves its task Held, not failed)
FAILED_STATES = ("FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE")
LOG_TAIL_LINES = 30
_MISSING = "the HTML report needs the 'report' extra (matplotlib, graphviz): pip install 'hpcpipe[report]'"


def require_extra():
    """matplotlib (set to draw without a display) and graphviz, or one clear line saying how to get them."""
    try:
        import graphviz  # noqa: F401
        import matplotlib

        matplotlib.use("Agg")  # no display: render to files only
        import matplotlib.pyplot as plt
    except ImportError:
        raise BadInput(_MISSING) from None
    return plt


def _inline_svg(text: str) -> str:
    """An SVG document as an element to put inside HTML (no XML prolog or DOCTYPE)."""
    text = re.sub(r"<\?xml[^>]*\?>", "", text)
    text = re.sub(r"<!DOCTYPE[^>]*>", "", text, flags=re.S)
    return re.sub(r"<!--.*?-->", "", text, flags=re.S).strip()


def timeline_svg(report: Report, group_by: str = "session") -> str:
    """Horizontal bars per task: grey while queued, coloured by SLURM state while running.

    The x axis is seconds since the first submission (its clock time in the label): runs of a
    few seconds and of days read alike.
    """
    plt = require_extra()

    rows = [r for r in report.rows if r.usage and r.usage.start is not None]
    key = (lambda r: (r.session, r.usage.start)) if group_by == "session" else \
        (lambda r: (r.task["name"], r.usage.start))
    rows.sort(key=key)
    height = max(2.2, 0.35 * len(rows) + 1.6)
    fig, ax = plt.subplots(figsize=(11, height))
    now = time.time()
    t0 = min((r.usage.submit if r.usage.submit is not None else r.usage.start for r in rows), default=now)
    labels, group_edges, last_group = [], [], None
    for y, r in enumerate(rows):
        u = r.usage
        submit = u.submit if u.submit is not None else u.start
        end = u.end if u.end is not None else now
        if u.start > submit:
            ax.barh(y, u.start - submit, left=submit - t0, color=QUEUED_COLOUR, edgecolor="none")
        ax.barh(y, max(end - u.start, 0.05), left=u.start - t0, color=STATE_COLOURS.get(u.state, "#78909c"),
                edgecolor="none")
        group = r.session if group_by == "session" else r.task["name"]
        if group != last_group and y:
            group_edges.append(y - 0.5)
        last_group = group
        labels.append(f"{r.task['name']}  ({r.session})" if group_by == "session" else f"{r.session}  ({r.task['name']})")
    for edge in group_edges:
        ax.axhline(edge, color="#607d8b", linewidth=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    start = _dt.datetime.fromtimestamp(t0).isoformat(sep=" ", timespec="seconds")
    ax.set_xlabel(f"seconds since the first submission ({start})")
    ax.set_xlim(left=0)
    ax.grid(axis="x", color="#eceff1")
    ax.set_axisbelow(True)
    ax.set_title(f"timeline, grouped per {group_by}", fontsize=10)
    names = ["queued"] + [s for s in STATE_COLOURS if any(r.usage.state == s for r in rows)]
    handles = [plt.Rectangle((0, 0), 1, 1, color=QUEUED_COLOUR if n == "queued" else STATE_COLOURS[n]) for n in names]
    ax.legend(handles, names, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    return _inline_svg(buf.getvalue())


def graph_svg(report: Report) -> str | None:
    """The tasks and their parents, one cluster per session, nodes filled by status.

    None when Graphviz's ``dot`` program is not installed.
    """
    require_extra()
    import graphviz

    if shutil.which("dot") is None:
        return None
    g = graphviz.Digraph("pipeline", graph_attr={"rankdir": "TB"},
                         node_attr={"shape": "box", "style": "rounded,filled", "fontname": "Helvetica"})
    ids = {r.task["id"] for r in report.rows}
    sessions: dict[str, list[Row]] = {}
    for r in report.rows:
        sessions.setdefault(r.session, []).append(r)
    done: set[str] = set()
    for i, (label, rows) in enumerate(sorted(sessions.items())):
        with g.subgraph(name=f"cluster_{i}", graph_attr={"label": label, "fontname": "Helvetica"}) as sub:
            for r in rows:
                if r.task["id"] in done:
                    continue
                done.add(r.task["id"])
                status = r.task.get("status") or ""
                sub.node(r.task["id"], label=f"{r.task['name']}\n{status}",
                         fillcolor=STATUS_COLOURS.get(status, "#ffffff"))
    for r in report.rows:
        for p in r.task.get("parents") or []:
            if p in ids:
                g.edge(p, r.task["id"])
    return _inline_svg(g.pipe(format="svg").decode())


def _table(report: Report) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = []
    for r in report.rows:
        c = cells(r)
        job = html.escape((r.step or r.job.backend_id) if r.job else "")
        body.append(f'<tr data-job="{job}" data-backend="{html.escape(r.job.backend if r.job else "")}">'
                    + "".join(f'<td data-col="{html.escape(k)}">{html.escape(c[k])}</td>' for k in COLUMNS)
                    + "</tr>")
    return f'<table id="efficiency"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _failures(report: Report) -> str:
    failed = [r for r in report.rows if r.task.get("status") == "Errored"
              or (r.usage and r.usage.state in FAILED_STATES and r.task.get("status") != "Held")]
    if not failed:
        return "<p>No failures.</p>"
    out = []
    for r in failed:
        log_lines = (r.task.get("log") or "").rstrip().splitlines()[-LOG_TAIL_LINES:]
        out.append(f'<div class="failure"><h3>{html.escape(r.task["name"])} <small>{html.escape(r.session)}'
                   f'</small></h3><p class="reason">{html.escape(r.reason or r.state)}</p>'
                   f'<pre>{html.escape(chr(10).join(log_lines))}</pre></div>')
    return "".join(out)


_STYLE = """
body{font-family:Helvetica,Arial,sans-serif;margin:1.5em;color:#263238}
table{border-collapse:collapse;font-size:12px}th,td{border:1px solid #cfd8dc;padding:2px 6px;text-align:right}
td[data-col=session],td[data-col=task],td[data-col=reason],td[data-col=status],td[data-col=state]{text-align:left}
th{background:#eceff1}pre{background:#f5f5f5;padding:.5em;overflow-x:auto;font-size:11px}
.failure{border-left:4px solid #e53935;padding-left:.8em;margin-bottom:1em}.reason{font-weight:bold}
section{margin-bottom:2em}svg{max-width:100%;height:auto}
"""


def page(report: Report, group_by: str = "session") -> str:
    """The whole page as text."""
    timeline = timeline_svg(report, group_by)
    graph = graph_svg(report)
    graph_html = graph if graph is not None else \
        "<p>Graph not drawn: Graphviz's <code>dot</code> program is not installed.</p>"
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.notes)
    title = html.escape(report.title or "hpcpipe report")
    generated = _dt.datetime.now().isoformat(timespec="seconds")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{title}</h1>"
            f"<p>{len(report.rows)} task(s); generated {generated}; SLURM figures from sacct "
            f"({report.queries} query(ies)).</p>" + (f"<ul class=\"notes\">{notes}</ul>" if notes else "")
            + f'<section id="timeline"><h2>Timeline</h2>{timeline}</section>'
            + f'<section id="graph"><h2>Pipeline graph</h2>{graph_html}</section>'
            + f'<section id="table"><h2>Efficiency</h2>{_table(report)}</section>'
            + f'<section id="failures"><h2>Failures</h2>{_failures(report)}</section></body></html>\n')


def write(report: Report, path: Path | str, group_by: str = "session") -> Path:
    """Write the page; returns its path."""
    path = Path(path)
    text = page(report, group_by)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
