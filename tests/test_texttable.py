"""The terminal tables' layout (tabulate's "simple" format, which hpcpipe printed with before)."""
from __future__ import annotations

from hpcpipe.texttable import render


def test_columns_are_two_apart_at_least_two_wider_than_their_header_numbers_right():
    text = render([["S1/2026-11-20/001", "Raw", 0, 1.5, None, "123_4"], ["S22", "QualityControl", 10, 8.0, "x", "9"]],
                  ["session", "task", "level", "ram", "note", "job id"], right=("level", "ram"))
    assert text.splitlines() == [
        "session            task              level    ram  note    job id",
        "-----------------  --------------  -------  -----  ------  --------",
        "S1/2026-11-20/001  Raw                   0    1.5          123_4",
        "S22                QualityControl       10      8  x       9",
    ]


def test_a_cell_is_one_line_and_an_empty_table_is_its_header():
    assert render([["a\nb"]], ["reason"]).splitlines()[-1] == "a b"
    assert render([], ["session", "task"]).splitlines() == ["session    task", "---------  ------"]
