"""Plain-text tables for the terminal, in the layout of tabulate's "simple" format (which
hpcpipe printed with before): a header line, a rule of dashes, columns two spaces apart, each
at least two wider than its header, numbers right-aligned, no trailing blanks.

tabulate guesses every cell's type (number, date, colour codes) before laying it out: the
status table of a 10,000-session backfill is 660,000 cells, and it took 8 s of the command's
9. The callers here know which of their columns hold numbers; one format string lays out a row.
"""
from __future__ import annotations

from typing import Iterable, Sequence


def render(rows: Iterable[Sequence[object]], headers: Sequence[str], right: Iterable[str] = ()) -> str:
    """``rows`` under ``headers``, the columns named in ``right`` right-aligned (numbers).

    None is an empty cell, a float is written as ``%g`` (``1.5``, ``2``), a line break in a cell
    as a space (one row, one line).
    """
    aligned = {headers.index(h) for h in right}
    text = [[v if type(v) is str and "\n" not in v else _cell(v) for v in row] for row in rows]  # no call per plain text
    columns = list(zip(*text)) if text else [()] * len(headers)
    widths = [max(len(h) + 2, max(map(len, col), default=0)) for h, col in zip(headers, columns)]
    line = "  ".join(f"{{:{'>' if i in aligned else '<'}{w}}}" for i, w in enumerate(widths))
    out = [line.format(*headers), "  ".join("-" * w for w in widths)]
    out += [line.format(*row) for row in text]
    return "\n".join(s.rstrip() for s in out)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.replace("\n", " ")
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
