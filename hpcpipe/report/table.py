"""The report's figures as text: one formatting for the terminal table and the HTML page,
so the page and ``sacct`` can be compared number for number."""
from __future__ import annotations

from .collect import Report, Row

COLUMNS = ("session", "task", "status", "job", "state", "exit", "cpus", "req mem MB", "max rss MB", "mem eff",
           "time limit s", "elapsed s", "cpu time s", "cpu eff", "wait s", "reason")


def _num(value, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _secs(value) -> str:
    """Whole seconds as sacct's ElapsedRaw has them; a local measurement to the tenth."""
    return "" if value is None else (f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}")


def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.0f}%"


def cells(row: Row) -> dict[str, str]:
    """One row's values as shown: MB with one decimal (sacct's K / 1024), seconds as sacct
    counts them (Elapsed whole, TotalCPU to the millisecond), efficiencies in percent."""
    u = row.usage
    job = row.job
    exit_code = "" if u is None or u.exit_code is None else f"{u.exit_code}:{u.signal or 0}"
    req_mem = u.req_mem_mb if u and u.req_mem_mb else (row.req_ram_gb * 1024 if row.req_ram_gb else None)
    return {
        "session": row.session, "task": row.task["name"], "status": row.task.get("status") or "",
        "job": (f"{job.backend} {row.step or job.backend_id}" if job else ""), "state": row.state, "exit": exit_code,
        "cpus": "" if row.req_cpus is None else str(row.req_cpus),
        "req mem MB": _num(req_mem), "max rss MB": _num(u.max_rss_mb if u else None),
        "mem eff": _pct(u.mem_efficiency if u else None),
        "time limit s": _num(row.req_time_secs, 0), "elapsed s": _secs(u.elapsed_secs if u else None),
        "cpu time s": _num(u.total_cpu_secs if u else None, 3), "cpu eff": _pct(u.cpu_efficiency if u else None),
        "wait s": _num(u.queue_wait_secs if u else None, 0), "reason": row.reason[:80],
    }


def render(report: Report) -> str:
    """The terminal summary: the table, then totals and any notes."""
    from ..texttable import render as table

    text = table([[cells(r)[c] for c in COLUMNS] for r in report.rows], list(COLUMNS))
    measured = [r for r in report.rows if r.usage]
    used = sum(r.usage.total_cpu_secs or 0 for r in measured)
    booked = sum((r.usage.elapsed_secs or 0) * (r.usage.req_cpus or 1) for r in measured)
    lines = [text, "", f"{len(report.rows)} task(s), {len(measured)} measured ({report.queries} sacct query(ies)); "
             f"CPU time used {used:.1f} s of {booked:.1f} s booked"
             + (f" ({100 * used / booked:.0f}%)" if booked else "")]
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)
