"""Text that a notebook (or its file name) yields, made safe to store, print and export.

Everything a group controls (group cell, file and folder names, answers, outputs,
tracebacks) may hold what the rest of the grader cannot take as it is:

* lone UTF-16 surrogates (``"\\ud800"`` in a JSON string, or a file name that is not UTF-8,
  which Python reads with ``surrogateescape``): SQLite, UTF-8 files and the terminal
  refuse them.  :func:`clean` replaces each by U+FFFD, recursively.
* rich console markup (``[/]``, ``[link=...]``): :func:`markup` escapes it, so that
  ``console.print`` shows the text as written.
* spreadsheet formulas in CSV cells (``=HYPERLINK(...)``): :func:`csv_cell` prefixes a
  ``'`` as OWASP recommends, numbers excepted (Moodle reads the Grade column).

>>> clean({"a": ["x\\ud800y"]})
{'a': ['x\\ufffdy']}
>>> csv_cell("=1+1"), csv_cell("-3"), csv_cell("-"), csv_cell("@SUM(A1)")
("'=1+1", '-3', '-', "'@SUM(A1)")
>>> markup("a[/]b")
'a\\\\[/]b'
"""
from __future__ import annotations

import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")
#: What a spreadsheet evaluates at the start of a cell (OWASP "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: A plain number (a grade, a point count): left as it is, so that it stays a number.
_NUMBER = re.compile(r"[+-]?\d+(?:[.,]\d+)?(?:[eE][+-]?\d+)?")


def clean_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (a valid pair is joined)."""
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def clean(obj: Any) -> Any:
    """``obj`` (strings, lists, tuples, dicts, as JSON holds them) with every string,
    keys included, passed through :func:`clean_text`."""
    if isinstance(obj, str):
        return clean_text(obj)
    if isinstance(obj, dict):
        return {clean(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [clean(v) for v in obj]
    if type(obj) is tuple:
        return tuple(clean(v) for v in obj)
    return obj


def markup(text: Any) -> str:
    """``text`` as rich shows it literally (its ``[`` escaped), surrogates replaced."""
    from rich.markup import escape

    return escape(clean_text(str(text)))


def csv_cell(value: Any) -> str:
    """A CSV cell that no spreadsheet evaluates: a leading ``= + - @``, tab or carriage
    return gets a ``'`` in front, unless the cell is a plain number (or ``-``)."""
    text = clean_text(str(value))
    if text.startswith(_FORMULA_START) and text != "-" and not _NUMBER.fullmatch(text):
        return "'" + text
    return text


def csv_row(values) -> list[str]:
    return [csv_cell(v) for v in values]
