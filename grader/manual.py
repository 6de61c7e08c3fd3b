"""Whose is a hand-graded score: a submission (its hash, its uploaders), never a group cell.

A group cell is text the group wrote: any notebook can claim any member.  So a manual score
goes to the one notebook that its row names, and to no other:

* the row's ``group`` may be a hash prefix (``#3fa9c1d2``), a report file name
  (``lovelace_turing_lab_01_3fa9c1d2.pdf``), a submitted file (``lovelace_turing_lab_01.ipynb``
  or its path in the download), or the group as people write it (``Turing Lovelace``,
  normalised by :func:`grader.ingest.group_key_of`);
* a group name that fits several notebooks is given to the one whose uploaders are in its
  own group cell (:func:`backed`), and when that does not decide, to none of them: the row
  is reported, with the names that tell them apart.  The same holds for a notebook whose
  group cell claims a member that another notebook claims too (flagged at ingest): a group
  name gives it points only when its uploader backs it;
* a row naming no notebook (with the closest known names), an unknown question, or points
  outside ``0..max`` is reported with its line, never dropped silently or clamped.

Pure: plain dicts (``Store.submissions()`` rows) in, plain data out.

>>> subs = [{"id": 1, "sha256": "a" * 64, "group_key": "lovelace", "file": "x.ipynb",
...          "members": ["Ada Lovelace"], "family_names": ["lovelace"], "moodle_name": None}]
>>> rows = [ManualScore("Lovelace", "q", 1.0, "", 2), ManualScore("lovelce", "q", 1.0, "", 3)]
>>> by_hash, problems = match_manual(rows, subs, {"q": 2.0}, {1: "lovelace_lab_01.pdf"})
>>> by_hash["a" * 64]
{'q': (1.0, '')}
>>> problems
["line 3: group 'lovelce' matches no submission (closest: 'lovelace', 'lovelace_lab_01.pdf')"]
"""
from __future__ import annotations

import difflib
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Iterable, Mapping

from .ingest import group_key_of
from .moodle import name_match


@dataclass(frozen=True, order=True)
class ManualScore:
    """One row of the instructor's manual CSV, as typed (``group`` not normalised)."""

    group: str        # how the row names the submission (see the module doc)
    question: str
    points: float
    comment: str = ""
    line: int = field(default=0, compare=False)   # line in the CSV (0: unknown)

    @property
    def group_key(self) -> str:
        return group_key_of(self.group)


def backed(subs: Iterable[Mapping]) -> set[str]:
    """Hashes of the notebooks that one of their own uploaders (the Moodle entry holding
    the file) is a member of, by the notebook's group cell or file name."""
    out = set()
    for s in subs:
        who = s.get("moodle_name")
        if not who:
            continue
        families = [f for f in list(s.get("family_names") or []) + list(s.get("file_names") or [])
                    if f]
        # before Moodle 4.1 a team member's entry is "Group-Full Name"
        names = [who, *(who[m.end():] for m in re.finditer("-", who))]
        if any(name_match(n, s.get("members") or [], families) for n in names):
            out.add(s["sha256"])
    return out


def _where(line: int) -> str:
    return f"line {line}" if line else "a stored row"


def match_manual(rows: Iterable[ManualScore], subs: list[Mapping],
                 questions: Mapping[str, float], report_names: Mapping[int, str]
                 ) -> tuple[dict[str, dict[str, tuple[float, str]]], list[str]]:
    """``({sha256: {question: (points, comment)}}, problems)``: each manual row given to the
    one notebook it names; every row that is not, reported (``"line N: ..."``).

    ``questions``: question id -> its maximum points; ``report_names``: submission id ->
    its report's file name (:func:`grader.render.feedback_files`)."""
    by_hash: dict[str, list[Mapping]] = defaultdict(list)
    for s in subs:
        by_hash[s["sha256"]].append(s)
    supported = backed(subs)
    contested = {s["sha256"] for s in subs
                 if any(str(f).startswith("claims the same member") for f in s.get("flags") or [])}
    reports = {n.lower(): s["sha256"] for s in subs
               for n in [report_names.get(s["id"], "")] if n}
    files: dict[str, set[str]] = defaultdict(set)
    keys: dict[str, set[str]] = defaultdict(set)
    for s in subs:
        files[str(s["file"]).lower()].add(s["sha256"])
        files[PurePosixPath(str(s["file"])).name.lower()].add(s["sha256"])
        keys[str(s["group_key"])].add(s["sha256"])

    def label(h: str) -> str:
        s = by_hash[h][0]
        return f"{report_names.get(s['id']) or s['file']} (#{h[:12]})"

    def candidates(text: str) -> tuple[set[str], bool]:
        """(hashes the text names, whether only by a group name)."""
        t = text.strip().lower()
        if re.fullmatch(r"#?[0-9a-f]{8,64}", t):
            found = {h for h in by_hash if h.startswith(t.lstrip("#"))}
            if found:
                return found, False
        for name in (t, t + ".pdf"):
            if name in reports:
                return {reports[name]}, False
        if t in files:
            return set(files[t]), False
        return set(keys.get(group_key_of(text), ())), True

    given: dict[str, dict[str, tuple[float, str]]] = defaultdict(dict)
    first: dict[tuple[str, str], int] = {}
    problems: list[str] = []
    for r in rows:
        where = _where(r.line)
        if r.question not in questions:
            close = difflib.get_close_matches(r.question, list(questions), n=3, cutoff=0.5)
            problems.append(f"{where}: question {r.question!r} is not one of this lab's"
                            + (f" (closest: {', '.join(map(repr, close))})" if close else
                               f" ({', '.join(questions)})"))
            continue
        top = float(questions[r.question])
        if not 0 <= r.points <= top:
            problems.append(f"{where}: {r.points:g} points for {r.question!r}, outside 0..{top:g}: "
                            f"not given")
            continue
        found, by_name = candidates(r.group)
        if by_name and len(found) > 1:
            mine = found & supported
            if len(mine) == 1:
                found = mine
        if by_name and len(found) == 1 and not found & supported and found & contested:
            problems.append(
                f"{where}: group {r.group!r} names {label(next(iter(found)))}, whose group cell "
                f"claims a member that another notebook claims too, and no uploader of its "
                f"own backs it: not given; name it by its report or hash to give it")
            continue
        if not found:
            known = sorted(set(keys) | {n for n in reports})
            close = difflib.get_close_matches(group_key_of(r.group) or r.group.lower(), known,
                                              n=3, cutoff=0.5)
            problems.append(f"{where}: group {r.group!r} matches no submission"
                            + (f" (closest: {', '.join(map(repr, close))})" if close else ""))
            continue
        if len(found) > 1:
            problems.append(
                f"{where}: group {r.group!r} fits {len(found)} different notebooks, none given "
                f"the points (a group cell can claim anyone); name one by its report or hash: "
                + "; ".join(label(h) for h in sorted(found)))
            continue
        (h,) = found
        if (h, r.question) in first:
            problems.append(f"{where}: {label(h)}, question {r.question!r} already given on "
                            f"{_where(first[h, r.question])}")
            continue
        first[h, r.question] = r.line
        given[h][r.question] = (float(r.points), r.comment or "")
    return dict(given), problems
