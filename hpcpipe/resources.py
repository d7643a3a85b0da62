"""Right-sizing: what each task class should ask for, learned from what its past runs used.

The rule (per task class and per place it runs: ``local`` or ``slurm:<partition>``), from the
successful runs only (job COMPLETED, exit 0) that were measured (sacct, or the local engine):

* ram  = the 95th percentile of MaxRSS x (1 + ``ram_margin``, default 0.2), never below the
  largest MaxRSS of a successful run, rounded *up* to ``ram_step_mb`` (default 256 MB, the
  smallest step ``--mem`` is asked in here), capped by the partition's memory limit;
* time = the 95th percentile of Elapsed x (1 + ``time_margin``, default 0.5), never below the
  longest successful run, rounded up to whole minutes (SLURM counts minutes), at least one,
  capped by the partition's MaxTime;
* cpu  = the 95th percentile of TotalCPU / Elapsed (CPUs really kept busy) x (1 + ``cpu_margin``,
  default 0.1), rounded up, at least 1 and never more than was asked.

Settings live in ``[resources]`` (``ram_margin``, ``time_margin``, ``cpu_margin``,
``ram_step_mb``, ``percentile``, ``min_runs`` = 1). ``hpcpipe resources --write`` saves the
suggestions to a TOML file (default ``<hpcpipe home>/resources.toml``); submissions apply them
only when the user opted in (``[resources] apply = true``), printing each change (also in
``--dry-run``) and writing it into the task's log, never silently.
"""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput
from .settings import Settings, current
from .usage import Usage

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

FIELDS = ("cpu", "ram", "time_out_secs")


@dataclass
class Suggestion:
    """What one task class should ask for in one place, and on what evidence."""

    executable: str
    where: str
    runs: int
    cpu: int
    ram: float          # GB
    time_out_secs: int
    #: what the last run asked for (GB, s)
    req_cpu: int | None = None
    req_ram: float | None = None
    req_time_out_secs: float | None = None
    #: the largest measured values (MB, s)
    max_rss_mb: float = 0.0
    max_elapsed_secs: float = 0.0

    @property
    def name(self) -> str:
        return self.executable.rsplit(".", 1)[-1]


def setting(settings: Settings | None, key: str) -> float:
    """``[resources] key`` of ``settings`` (default ``settings.current()``), never negative."""
    value = getattr((settings or current()).resources, key)
    if value < 0:
        raise BadInput(f"[resources] {key} = {value!r} must not be negative")
    return value


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (a value that was measured, not an interpolation)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def round_ram_mb(mb: float, step: float | None = None, settings: Settings | None = None) -> int:
    """Up to the next ``ram_step_mb`` (at least one step)."""
    step = step or setting(settings, "ram_step_mb")
    return int(max(step, math.ceil(mb / step) * step))


def round_time_secs(secs: float) -> int:
    """Up to whole minutes (what ``--time`` can say), at least one."""
    return max(60, math.ceil(secs / 60) * 60)


def suggest(executable: str, where: str, runs: list[Usage], caps: tuple[float | None, float | None] = (None, None),
            settings: Settings | None = None) -> Suggestion | None:
    """The rule above for one class and place; None without enough successful measured runs."""
    settings = settings or current()
    ok = [u for u in runs if u.state == "COMPLETED" and (u.exit_code or 0) == 0 and u.elapsed_secs is not None]
    if len(ok) < max(1, int(setting(settings, "min_runs"))) or not ok:
        return None
    pct = setting(settings, "percentile")
    rss = [u.max_rss_mb or 0.0 for u in ok]
    elapsed = [u.elapsed_secs or 0.0 for u in ok]
    ram_mb = round_ram_mb(max(percentile(rss, pct) * (1 + setting(settings, "ram_margin")), max(rss)),
                          settings=settings)
    time_s = round_time_secs(max(percentile(elapsed, pct) * (1 + setting(settings, "time_margin")), max(elapsed)))
    ram_cap, time_cap = caps
    if ram_cap is not None:
        ram_mb = min(ram_mb, int(ram_cap * 1024))
    if time_cap is not None:
        time_s = int(min(time_s, time_cap))
    last = ok[-1]
    busy = [(u.total_cpu_secs or 0) / u.elapsed_secs for u in ok if u.elapsed_secs]
    asked = last.req_cpus or 1
    cpu = min(asked, max(1, math.ceil(percentile(busy, pct) * (1 + setting(settings, "cpu_margin"))))) if busy \
        else asked
    return Suggestion(executable, where, len(ok), cpu, round(ram_mb / 1024, 3), time_s,
                      req_cpu=last.req_cpus, req_ram=round(last.req_mem_mb / 1024, 3) if last.req_mem_mb else None,
                      req_time_out_secs=last.timelimit_secs, max_rss_mb=max(rss), max_elapsed_secs=max(elapsed))


def where_of(row) -> str:
    """``local`` or ``slurm:<partition>`` for a report row (its job and measurement)."""
    if row.job is None or row.job.backend != "slurm":
        return "local"
    return f"slurm:{row.usage.partition}" if row.usage and row.usage.partition else "slurm"


def from_rows(rows, caps_for=None, settings: Settings | None = None) -> list[Suggestion]:
    """Suggestions from report rows with every attempt (``collect(..., history=True)``).

    ``caps_for(where)`` gives ``(max ram GB, max time s)`` of that place, or (None, None).
    """
    groups: dict[tuple[str, str], list[Usage]] = {}
    for r in rows:
        if r.usage is None or not r.task.get("executable"):
            continue
        groups.setdefault((r.task["executable"], where_of(r)), []).append(r.usage)
    out = []
    for (exe, where), runs in sorted(groups.items()):
        runs.sort(key=lambda u: u.end or 0)
        s = suggest(exe, where, runs, caps_for(where) if caps_for else (None, None), settings)
        if s is not None:
            out.append(s)
    return out


# ------------------------------------------------------------------ the suggestions file
def default_path(settings: Settings | None = None) -> Path:
    settings = settings or current()
    return settings.path(settings.resources.file, "resources.toml")


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write(suggestions: list[Suggestion], path: Path | str | None = None, settings: Settings | None = None) -> Path:
    """Save the suggestions as TOML (one ``[[suggestion]]`` table each), replacing the file."""
    path = Path(path) if path else default_path(settings)
    lines = [f"# written by hpcpipe resources, {_dt.datetime.now().isoformat(timespec='seconds')}",
             "# submissions apply these only with [resources] apply = true in the config", ""]
    for s in suggestions:
        lines += ["[[suggestion]]", f"executable = {_toml_str(s.executable)}", f"where = {_toml_str(s.where)}",
                  f"cpu = {s.cpu}", f"ram = {s.ram}", f"time_out_secs = {s.time_out_secs}", f"runs = {s.runs}", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def load(path: Path | str | None = None, settings: Settings | None = None) -> dict[tuple[str, str], dict]:
    """``{(executable, where): {cpu, ram, time_out_secs, runs}}`` from a suggestions file."""
    path = Path(path) if path else default_path(settings)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BadInput(f"suggestions file {path} cannot be read: {exc}") from None
    out = {}
    for item in data.get("suggestion", []):
        try:
            out[(item["executable"], item["where"])] = {k: item[k] for k in FIELDS} | {"runs": item.get("runs")}
        except KeyError as exc:
            raise BadInput(f"suggestions file {path}: an entry lacks {exc.args[0]!r}") from None
    return out


def opted_in(settings: Settings | None = None) -> bool:
    return (settings or current()).resources.apply


def apply(plans, store, where_for, dry_run: bool = False, keep: dict[str, set[str]] | None = None,
          settings: Settings | None = None) -> list[str]:
    """Set the suggested cpu/ram/time on planned records (what job scripts are rendered from)
    and, unless dry, in the store with a ``[hpcpipe:RESOURCES]`` line in the task's log.

    ``where_for(task)`` names the place the task's job goes (``local``, ``slurm:<partition>``);
    ``keep`` lists, per task id, fields not to touch (raised by ``--escalate``). Returns one
    printable line per change; nothing when the user has not opted in (a hint instead, if a
    file exists).
    """
    path = default_path(settings)
    table = load(path)
    if not table:
        return []
    if not opted_in(settings):
        return [f"hint: {len(table)} resource suggestion(s) in {path} not applied "
                "(set [resources] apply = true to use them)"]
    lines = []
    for plan in plans:
        for item in plan.items:
            task = item.task
            found = table.get((task.get("executable") or "", where_for(task)))
            if found is None:
                continue
            changes = {k: found[k] for k in FIELDS
                       if k not in (keep or {}).get(item.id, set()) and found[k] != task.get(k)}
            if not changes:
                continue
            text = ", ".join(f"{k} {task.get(k)} -> {v}" for k, v in changes.items())
            line = f"[hpcpipe:RESOURCES] from {path} ({found.get('runs')} run(s)): {text}"
            task.update(changes)
            plan.origin = None  # its resources are no longer the template's
            if not dry_run and not item.id.startswith("new-"):  # a record made later takes the new values as they are
                current = store.get_task(item.id)
                log = current.get("log") or ""
                store.update_task(item.id, **changes, log=(log + "\n" if log else "") + line + "\n")
            lines.append(f"{task['name']}: resources {text} (suggested from {found.get('runs')} run(s), {path})")
    return lines
