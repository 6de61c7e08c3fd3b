"""Moodle: who is who in "Download all submissions", and the way back (worksheet, feedback zip).

Everything here follows Moodle's own source (``mod/assign``):

* **Download all submissions** names each entry ``<prefix>_<plugin>[_]/<file>`` (folders, the
  default; the trailing ``_`` is Moodle < 4.1) or ``<prefix>_<plugin>_<file>`` (flat). The
  prefix is ``Full Name_<participant id>`` (``Participant_<id>`` with blind marking); for team
  submissions ``Group name_<group id>`` (Moodle >= 4.1, one entry per group; ``Default group``
  without an id) or ``Group name-Full Name_<participant id>`` (before 4.1, one entry per
  member). Underscores in names become spaces, and ``clean_filename`` drops ``& < > " ` | ' :
  \\ /`` (``O'Brien`` arrives as ``OBrien``). :func:`parse_entry` reads that back.
* **Grading worksheet** (``assignfeedback_offline``): a CSV whose headers are in the teacher's
  language; the import locates Identifier, Grade and Last modified (grade) by their translated
  names, reads the grade with ``unformat_float`` (a ``.`` always works), the date with PHP's
  ``strtotime`` (English day/month names only) and skips a row whose stored grade is more than
  60 s newer than that date. :func:`export` therefore fills in the teacher's own file, keeps its
  headers, delimiter, encoding and order, and writes "now" in Moodle's English format.
* **Feedback zip** ("Upload multiple feedback files in a zip"): each path part is split by
  ``_`` into at most 5 pieces; piece 2 must be a participant id of the assignment, pieces 3-4
  a plugin; the rest is the file name. So ``Full Name_<id>_assignfeedback_file/<group>.pdf``
  with no ``_`` in the name part (:func:`safe_name`).

>>> parse_entry("Zoë Müller-Lüdenscheidt_17_assignsubmission_file/mullerludenscheidt_lab_01.ipynb")
('Zoë Müller-Lüdenscheidt', '17', 'assignsubmission_file', 'mullerludenscheidt_lab_01.ipynb')
>>> parse_entry("Participant_8_assignsubmission_file_x_lab_01.ipynb")
('Participant', '8', 'assignsubmission_file', 'x_lab_01.ipynb')
>>> safe_name("Jean_Luc D'Arcy")
'Jean Luc DArcy'
"""
from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable

from .ingest import Batch, Submission, family_name, fold
from .untrusted import csv_row

# ----------------------------------------------------------------------------- entries

#: ``Name_<id>_<subtype>_<type>`` + optional ``_`` (< 4.1) or ``_<file>`` (flat layout).
_ENTRY = re.compile(r"^(?P<name>[^/]*?)_(?P<id>\d+)_(?P<plugin>assign(?:submission|feedback)_[a-z0-9]+)"
                    r"(?:_(?P<rest>.*))?$")
#: Team submission of students in no group (Moodle >= 4.1): ``Default group_<plugin>...``.
_ENTRY_NOID = re.compile(r"^(?P<name>[^/_]+)_(?P<plugin>assign(?:submission|feedback)_[a-z0-9]+)"
                         r"(?:_(?P<rest>.*))?$")
#: What ``clean_filename`` (PARAM_FILE) removes, plus the separators a name must not hold.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f&<>\"`|':\\/]")


def parse_entry(path_in_zip: str) -> tuple[str | None, str | None, str | None, str]:
    """``(name, participant id, plugin, file)`` of one path of Moodle's download.

    The first path part that is a Moodle prefix wins (as in Moodle's own import); ``file`` is
    the rest of the path (POSIX). Not a Moodle entry: ``(None, None, None, path)``. For team
    submissions the id is the group's (>= 4.1) and ``None`` for ``Default group``.

    >>> parse_entry("Team Rocket_4_assignsubmission_file_/a_b_lab_01.ipynb")
    ('Team Rocket', '4', 'assignsubmission_file', 'a_b_lab_01.ipynb')
    >>> parse_entry("notes/lovelace_lab_01.ipynb")
    (None, None, None, 'notes/lovelace_lab_01.ipynb')
    """
    parts = [p for p in path_in_zip.replace("\\", "/").split("/") if p]
    for i, part in enumerate(parts):
        m = _ENTRY.match(part) or _ENTRY_NOID.match(part)
        if not m:
            continue
        rest = [m.group("rest")] if m.group("rest") else []
        file = "/".join(rest + parts[i + 1:])
        if not file:                      # a folder entry of the zip
            continue
        ident = m.groupdict().get("id")
        return m.group("name"), ident, m.group("plugin"), file
    return None, None, None, "/".join(parts)


def safe_name(name: str | None) -> str:
    """A name Moodle's feedback import can split: no ``_`` (the piece separator), nothing that
    ``clean_filename`` would strip, one space between words; never empty."""
    text = _UNSAFE.sub("", (name or "").replace("_", " "))
    text = " ".join(text.split()).strip(". ~")
    return text or "Participant"


def _norm(text: str | None) -> str:
    """How Moodle prints a group or person in a path, compared loosely."""
    return " ".join(_UNSAFE.sub("", (text or "").replace("_", " ")).casefold().split())


def _words(name: str) -> list[str]:
    return [w for w in (fold(x) for x in re.split(r"\s+", name or "")) if w]


def _spans(words: list[str]) -> set[str]:
    """Every run of consecutive folded words, joined (``van der berg`` -> ``vanderberg``)."""
    return {"".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, len(words) + 1)}


def name_match(person: str, members: Iterable[str], families: Iterable[str]) -> str | None:
    """``"full"`` when ``person`` is one of the group cell's full names (any word order,
    accents and signs folded), ``"family"`` when only a family name of the group matches,
    else ``None``.

    >>> name_match("MÜLLER-LÜDENSCHEIDT Zoë", ["Zoë Müller-Lüdenscheidt"], [])
    'full'
    >>> name_match("Seán OBrien", [], ["obrien"])
    'family'
    """
    words = _words(person)
    if not words:
        return None
    for m in members:
        if sorted(_words(m)) == sorted(words):
            return "full"
    spans = _spans(words)
    if any(f and f in spans for f in families):
        return "family"
    return None


# ----------------------------------------------------------------------------- records

def _records(source: Batch | Iterable[Any], lab_number: int | None = None) -> list[dict]:
    """Submissions as plain dicts, from a :class:`Batch` or from ``Store.submissions()``."""
    out = []
    lab = lab_number if lab_number is not None else getattr(source, "lab_number", 0) or 0
    for i, s in enumerate(source):
        if isinstance(s, Submission):
            d = s.as_dict()
            d["feedback"] = s.feedback_name(lab)
            d["id"] = None
        else:
            d = dict(s)
        d.setdefault("id", None)
        d.setdefault("file_names", [])
        d["_order"] = i
        out.append(d)
    return out


def _families(rec: dict) -> set[str]:
    return {f for f in list(rec.get("family_names") or []) + list(rec.get("file_names") or []) if f}


def _representative(recs: list[dict]) -> dict:
    return min(recs, key=lambda r: (len(r.get("flags") or []), r["file"]))


def _person_ids(rec: dict) -> list[tuple[str, ...]]:
    """Whom a notebook claims: its group cell's full names, else its file name's family names."""
    if rec.get("members"):
        return [("full", *sorted(_words(m))) for m in rec["members"] if _words(m)]
    return [("family", f) for f in rec.get("family_names") or [] if f]


def _same_person(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    if a[0] == b[0] == "full":
        return a[1:] == b[1:]
    fa = a[1:] if a[0] == "family" else None
    fb = b[1:] if b[0] == "family" else None
    if fa and fb:
        return fa == fb
    full, fam = (a, fb) if fb else (b, fa)
    return bool(fam) and fam[0] in _spans(list(full[1:]))


def flag_claims(batch: Batch) -> None:
    """Flag two different notebooks (distinct hashes) that claim the same member, in their
    group cells (full names) or, without a group cell, their file names (family names)."""
    by_hash = {h: subs for h, subs in batch.by_hash().items() if not subs[0].problem}
    claims = {h: _person_ids(_records([subs[0]], batch.lab_number)[0])
              for h, subs in by_hash.items()}
    hashes = list(claims)
    for i, h in enumerate(hashes):
        for h2 in hashes[i + 1:]:
            shared = {" ".join(a[1:] if a[0] == "full" else b[1:])
                      for a in claims[h] for b in claims[h2] if _same_person(a, b)}
            if not shared:
                continue
            for mine, other in ((h, h2), (h2, h)):
                others = by_hash[other]
                names = ", ".join(s.name for s in others[:3]) + (" ..." if len(others) > 3 else "")
                for s in by_hash[mine]:
                    s.flags.append(f"claims the same member ({', '.join(sorted(shared))}) as a "
                                   f"different notebook: {names}")


# ----------------------------------------------------------------------------- participants

@dataclass
class Participant:
    """One Moodle participant (a student, or a group entry of a team submission) and the group
    whose grade and PDF they get (``group_key`` None: none found, see ``flags``)."""

    name: str
    id: str | None
    group_key: str | None
    feedback: str | None = None        # the group's PDF is OUT/feedback/<feedback>.pdf
    sha256: str | None = None
    submission_id: int | None = None   # store row whose scores are the group's
    via: str = "upload"                # upload | team | group cell | family name | none
    kind: str = "student"              # student | team | unknown (cannot tell)
    row: int | None = None             # index of the worksheet row, when from a worksheet
    flags: list[str] = field(default_factory=list)


@dataclass
class RosterRow:
    """A worksheet row: who Moodle lists for the assignment."""

    id: str
    name: str = ""
    group: str = ""
    row: int | None = None


def _entry_kind(rec: dict, group_names: set[str] | None) -> tuple[str, str]:
    """(kind, person name) of the Moodle entry holding ``rec``: ``student`` (the id is a
    participant id), ``team`` (>= 4.1: the id is a group id) or ``unknown``."""
    name = rec["moodle_name"] or ""
    if rec.get("moodle_id") is None:
        return "team", name
    if group_names is not None:
        if not group_names:                       # no Group column: individual submissions
            return "student", name
        n = _norm(name)
        if n in group_names:
            return "team", name
        for m in re.finditer("-", name):                       # before 4.1: "Group-Full Name"
            if _norm(name[:m.start()]) in group_names:
                return "student", name[m.end():]
        return "student", name
    # no worksheet: tell from the name itself
    members, families = rec.get("members") or [], _families(rec)
    if _norm(name) == "participant" or _norm(name).endswith("-participant"):
        return "student", name
    if name_match(name, members, families) == "full":
        return "student", name
    for i in [m.start() for m in re.finditer("-", name)]:      # before 4.1: "Group-Full Name"
        if name_match(name[i + 1:], members, families) == "full":
            return "student", name[i + 1:]
    if name_match(name, members, families) or not members and not families:
        return "student", name
    return "unknown", name


def participants(source: Batch | Iterable[Any], roster: Iterable[RosterRow] | None = None, *,
                 lab_number: int | None = None) -> list[Participant]:
    """Every Moodle participant mapped to its group.

    ``source``: an ingested :class:`Batch` or the rows of ``Store.submissions()``. Without a
    ``roster`` (the worksheet's rows) the participants are the entries of the download: one per
    (name, id), mapped by the hash of what they uploaded. With a roster, every roster row is
    mapped: by its own upload (identical hash), else by its group's entry (team submissions,
    Moodle >= 4.1), else by its name in a group cell (full name) or file name (family name) --
    a member who uploaded nothing, flagged. Nothing found: ``group_key`` None.
    """
    recs = _records(source, lab_number)
    by_hash: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        by_hash[r["sha256"]].append(r)
    groups = {h: _representative(rs) for h, rs in by_hash.items()}
    roster = list(roster) if roster is not None else None
    group_names = None if roster is None else {_norm(r.group) for r in roster if r.group.strip()}

    entries: dict[tuple[str, str | None], list[dict]] = defaultdict(list)
    kinds: dict[tuple[str, str | None], tuple[str, str]] = {}
    for r in recs:
        if r.get("moodle_name") is None:
            continue
        key = (r["moodle_name"], r.get("moodle_id"))
        entries[key].append(r)
        kinds.setdefault(key, _entry_kind(r, group_names))

    def pick(recs_: list[dict], p: Participant) -> None:
        hashes = {r["sha256"] for r in recs_}
        if len(hashes) > 1:
            p.flags.append(f"{len(hashes)} different notebooks: "
                           + ", ".join(sorted(r["file"] for r in recs_))
                           + "; graded with the one with the fewest flags")
        chosen = _representative([groups[h] for h in hashes])
        own = [r for r in recs_ if r["sha256"] == chosen["sha256"]]
        row = own[0] if own else chosen
        p.group_key, p.feedback, p.sha256 = row["group_key"], row["feedback"], row["sha256"]
        p.submission_id = row.get("id")

    taken: dict[str, set[str]] = defaultdict(set)   # family names of members on the roster
    for h, g in groups.items():
        for m in g.get("members") or []:
            if roster and any(name_match(r.name, [m], []) == "full" for r in roster):
                taken[h].add(fold(family_name(m)))

    def by_name(p: Participant, exclude: str | None = None) -> None:
        """Group cells / file names that name ``p``."""
        full, fam = [], []
        for h, g in groups.items():
            how = name_match(p.name, g.get("members") or [], _families(g) - taken[h])
            (full if how == "full" else fam if how == "family" else []).append(h)
        if exclude is not None:
            others = [h for h in full if h != exclude]
            if others:
                p.flags.append("also named in the group cell of a different notebook: "
                               + ", ".join(groups[h]["file"] for h in others))
            return
        found, via = (full, "group cell") if full else (fam, "family name")
        if len(found) == 1:
            g = groups[found[0]]
            p.group_key, p.feedback, p.sha256 = g["group_key"], g["feedback"], g["sha256"]
            p.submission_id, p.via = g.get("id"), via
            where = "group cell" if via == "group cell" else "group cell or file name (family name only)"
            p.flags.append(f"uploaded nothing: graded with the group {g['group_key']} "
                           f"({g['file']}), whose {where} names them")
        elif len(found) > 1:
            p.via = "none"
            p.flags.append(f"uploaded nothing and {len(found)} different notebooks name them ("
                           + ", ".join(groups[h]["file"] for h in found) + "): not graded")
        else:
            p.via = "none"

    out: list[Participant] = []
    if roster is None:
        for key, recs_ in entries.items():
            kind, person = kinds[key]
            p = Participant(name=person, id=key[1], group_key=None, kind=kind)
            pick(recs_, p)
            if kind == "team":
                p.via = "team"
                p.flags.append(f"'{key[0]}' is a group of a team submission (Moodle >= 4.1 names "
                               f"groups, not students): its members need the grading worksheet")
            elif kind == "unknown":
                p.flags.append(f"'{key[0]}' (id {key[1]}) is named nowhere in its notebook: a "
                               f"student who is not in the group cell, or a group of a team "
                               f"submission; pass the grading worksheet to tell")
            else:
                by_name(p, exclude=p.sha256)
                g = groups[p.sha256]
                if (_norm(person) != "participant" and (g.get("members") or _families(g))
                        and not name_match(person, g.get("members") or [], _families(g))):
                    p.flags.append(f"uploaded {g['file']}, whose group cell does not name them")
            out.append(p)
        return sorted(out, key=lambda p: (p.name.casefold(), p.id or ""))

    by_id: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    teams: dict[str, list[dict]] = defaultdict(list)
    for key, recs_ in entries.items():
        kind, person = kinds[key]
        if kind == "student" and key[1] is not None:
            by_id[str(int(key[1]))].extend((person, r) for r in recs_)
            if person != key[0]:                  # before 4.1: "Group-Full Name"
                teams[_norm(key[0][:len(key[0]) - len(person) - 1])].extend(recs_)
        elif kind == "team":
            teams[_norm(key[0])].extend(recs_)
    for r in roster:
        pid = str(int(r.id)) if r.id.isdigit() else r.id
        p = Participant(name=r.name, id=pid, group_key=None, row=r.row)
        own = by_id.get(pid, [])
        if r.name:      # an entry of another name with this id is not theirs (a group id?)
            wrong = [(n, x) for n, x in own if _norm(n) != "participant"
                     and not _norm(n).endswith("-participant") and name_match(n, [r.name], []) is None]
            for n, x in wrong:
                p.flags.append(f"the download's entry '{x['moodle_name']}_{x['moodle_id']}' "
                               f"({x['file']}) has their id but another name: not used")
            own = [(n, x) for n, x in own if (n, x) not in wrong]
        if own:
            pick([x for _, x in own], p)
            if r.name:
                by_name(p, exclude=p.sha256)
                g = groups[p.sha256]
                if ((g.get("members") or _families(g))
                        and not name_match(r.name, g.get("members") or [], _families(g))):
                    p.flags.append(f"uploaded {g['file']}, whose group cell does not name them")
        elif r.group.strip() and teams.get(_norm(r.group)):
            pick(teams[_norm(r.group)], p)
            p.via = "team"
        elif r.name:
            by_name(p)
        else:
            p.via = "none"
        out.append(p)
    return out


# ----------------------------------------------------------------------------- worksheet

#: Moodle's headers, lower-cased, in the languages met so far (en, fr, de, es, it, pt, nl).
HEADERS: dict[str, tuple[str, ...]] = {
    "id": ("identifier", "identifiant", "id", "identifikator", "identificador", "identificativo",
           "identificatie"),
    "name": ("full name", "nom complet", "nom", "vollständiger name", "nombre completo",
             "nome completo", "volledige naam"),
    "email": ("email address", "adresse de courriel", "adresse e-mail", "adresse email",
              "e-mail-adresse", "dirección email", "dirección de correo", "indirizzo email",
              "endereço de email", "e-mailadres"),
    "status": ("status", "statut", "estado", "stato"),
    "group": ("group", "groupe", "gruppe", "grupo", "gruppo", "groep"),
    "grade": ("grade", "note", "bewertung", "calificación", "valutazione", "nota", "cijfer"),
    "max": ("maximum grade", "note maximale", "bestwertung", "höchste bewertung",
            "calificación máxima", "valutazione massima", "nota máxima", "maximaal cijfer"),
    "canchange": ("grade can be changed", "la note peut être modifiée",
                  "bewertung kann geändert werden", "la calificación puede ser cambiada",
                  "la valutazione può essere modificata", "a nota pode ser alterada",
                  "cijfer kan gewijzigd worden"),
    "modsub": ("last modified (submission)", "dernière modification (travail remis)",
               "zuletzt geändert (abgabe)", "última modificación (entrega)",
               "ultima modifica (consegna)", "última modificação (submissão)",
               "laatst gewijzigd (ingediend)"),
    "modgrade": ("last modified (grade)", "dernière modification (note)",
                 "zuletzt geändert (bewertung)", "última modificación (calificación)",
                 "ultima modifica (valutazione)", "última modificação (nota)",
                 "laatst gewijzigd (cijfer)"),
    "comments": ("feedback comments", "feedback par commentaires", "commentaires de feedback",
                 "commentaires", "feedback als kommentar", "comentarios de retroalimentación",
                 "comentarios de realimentación", "commenti", "comentários de feedback",
                 "feedback-opmerkingen"),
}
ENGLISH_HEADERS = ["Identifier", "Full name", "Email address", "Status", "Grade", "Maximum Grade",
                   "Grade can be changed", "Last modified (submission)", "Last modified (grade)",
                   "Feedback comments"]
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")
_DATE = re.compile(r"(19|20)\d\d")
_NUMBER = re.compile(r"^-?\d+(?:[.,]\d+)?$")


class WorksheetError(ValueError):
    """The worksheet cannot be read or filled in (names the file and what is missing)."""


def moodle_date(when: datetime) -> str:
    """A time as Moodle writes it in an English worksheet (``userdate``, strftimedaydatetime)
    -- the only language PHP's ``strtotime`` reads back.

    >>> moodle_date(datetime(2026, 1, 9, 14, 5))
    'Friday, 9 January 2026, 2:05 PM'
    """
    hour = when.hour % 12 or 12
    return (f"{_DAYS[when.weekday()]}, {when.day} {_MONTHS[when.month - 1]} {when.year}, "
            f"{hour}:{when.minute:02d} {'AM' if when.hour < 12 else 'PM'}")


@dataclass
class Worksheet:
    """A grading worksheet as downloaded, to be written back the same way."""

    path: Path | None
    header: list[str]
    rows: list[list[str]]
    columns: dict[str, int]            # role (see HEADERS) -> column index
    delimiter: str = ","
    bom: bool = False
    newline: str = "\r\n"
    quote_all: bool = False
    encoding: str = "utf-8"

    def roster(self) -> list[RosterRow]:
        out = []
        for i, row in enumerate(self.rows):
            ident = self.cell(row, "id")
            m = re.search(r"(\d+)\s*$", ident)
            if not m:
                continue
            out.append(RosterRow(id=m.group(1), name=self.cell(row, "name"),
                                 group=self.cell(row, "group"), row=i))
        return out

    def cell(self, row: list[str], role: str) -> str:
        i = self.columns.get(role)
        return row[i].strip() if i is not None and i < len(row) else ""

    def set(self, row: list[str], role: str, value: str) -> None:
        i = self.columns[role]
        while len(row) <= i:
            row.append("")
        row[i] = value

    def text(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, delimiter=self.delimiter, lineterminator=self.newline,
                       quoting=csv.QUOTE_ALL if self.quote_all else csv.QUOTE_MINIMAL)
        w.writerow(self.header)
        # Names (and anything else) a spreadsheet would evaluate are neutralised; numbers,
        # the Grade column Moodle imports, stay numbers.
        w.writerows(csv_row(r) for r in self.rows)
        return buf.getvalue()

    def write(self, path: Path) -> Path:
        data = self.text().encode(self.encoding, errors="replace")
        if self.bom:
            data = b"\xef\xbb\xbf" + data
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path


def _locate(header: list[str], rows: list[list[str]]) -> dict[str, int]:
    """Column roles by Moodle's translated header names, then by Moodle's order and contents."""
    cols: dict[str, int] = {}
    for i, h in enumerate(header):
        key = " ".join(h.strip().lstrip("\ufeff").casefold().split())
        for role, names in HEADERS.items():
            if role not in cols and key in names:
                cols[role] = i
                break

    def values(i: int) -> list[str]:
        return [r[i].strip() for r in rows if i < len(r) and r[i].strip()]

    if "id" not in cols and header:
        cols["id"] = 0                               # Moodle always writes it first
    if "max" not in cols:                            # constant number, after the grade
        for i in range(1, len(header)):
            v = values(i)
            if v and all(_NUMBER.match(x) for x in v) and len(set(v)) == 1 and \
                    all(_NUMBER.match(x) or x in ("-",) for x in values(i - 1)):
                cols["max"] = i
                break
    if "grade" not in cols and "max" in cols:
        cols["grade"] = cols["max"] - 1
    if "modgrade" not in cols:                       # the last date column (after the grade)
        start = cols.get("max", cols.get("grade", 0)) + 1
        dates = [i for i in range(start, len(header))
                 if (v := values(i)) and all(x == "-" or _DATE.search(x) for x in v)]
        if dates:
            cols["modgrade"] = dates[-1]
    if "comments" not in cols and "modgrade" in cols and cols["modgrade"] + 1 < len(header):
        cols["comments"] = cols["modgrade"] + 1
    if "name" not in cols and len(header) > 1 and cols.get("id") == 0 and 1 not in cols.values():
        v = values(1)
        if v and not any("@" in x or _NUMBER.match(x) for x in v):
            cols["name"] = 1
    return cols


def read_worksheet(path: str | Path) -> Worksheet:
    """Read Moodle's grading worksheet: comma or semicolon (or tab), UTF-8 with or without a
    BOM (else Windows-1252), any language."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise WorksheetError(f"{path}: cannot read the worksheet ({exc.strerror or exc})") from None
    bom = raw.startswith(b"\xef\xbb\xbf")
    try:
        text, encoding = raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = raw.decode("cp1252", errors="replace"), "cp1252"
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    if not first:
        raise WorksheetError(f"{path}: empty file, not a Moodle grading worksheet")
    delimiter = max([",", ";", "\t"], key=first.count)
    newline = "\r\n" if "\r\n" in text else "\n"
    table = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)]
    while table and not any(c.strip() for c in table[0]):
        table.pop(0)
    header, rows = table[0], [r for r in table[1:] if any(c.strip() for c in r)]
    ws = Worksheet(path=path, header=header, rows=rows, columns=_locate(header, rows),
                   delimiter=delimiter, bom=bom, newline=newline,
                   quote_all=first.lstrip("\ufeff").startswith('"'), encoding=encoding)
    missing = [role for role in ("id", "grade", "modgrade") if role not in ws.columns]
    if missing or not ws.roster() and rows:
        raise WorksheetError(
            f"{path}: not a Moodle grading worksheet I can fill in: no column for "
            f"{', '.join(missing) or 'the participant identifier'} (headers: {', '.join(header)})")
    return ws


def new_worksheet(people: list[Participant], max_grade: float) -> Worksheet:
    """A worksheet with Moodle's English headers, one row per participant."""
    ws = Worksheet(path=None, header=list(ENGLISH_HEADERS), rows=[], columns={
        "id": 0, "name": 1, "email": 2, "status": 3, "grade": 4, "max": 5, "canchange": 6,
        "modsub": 7, "modgrade": 8, "comments": 9}, bom=False)
    for p in people:
        p.row = len(ws.rows)
        ws.rows.append([f"Participant {p.id}", p.name, "", "", "", _fmt(max_grade, 2), "Yes",
                        "-", "-", ""])
    return ws


def _fmt(x: float, decimals: int) -> str:
    return f"{x:.{decimals}f}"


def _decimals(text: str) -> int:
    m = re.search(r"[.,](\d+)$", text.strip())
    return len(m.group(1)) if m else 2


def _number(text: str) -> float | None:
    text = text.strip().replace("\u00a0", "").replace(" ", "")
    if not text or not _NUMBER.match(text):
        return None
    return float(text.replace(",", "."))


# ----------------------------------------------------------------------------- export

def _graded(store) -> tuple[dict[int, tuple[float, float]], set[str]]:
    totals: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for s in store.scores():
        t = totals[s["submission_id"]]
        t[0] += float(s["points"])
        t[1] += float(s["max_points"])
    evidence = {r["sha256"] for r in store.evidence_rows()}
    return {k: (v[0], v[1]) for k, v in totals.items()}, evidence


def _report_names(feedback_dir: Path) -> dict[str, str]:
    """``OUT/feedback/index.json`` (submission id -> report file name, written by
    :func:`grader.render.render_feedback`), or ``{}`` when there is none.  Two notebooks
    of the same base name get different reports (``X.pdf``, ``X_2.pdf``): only the index
    tells which is whose."""
    try:
        index = json.loads((feedback_dir / "index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(index, dict):
        return {}
    return {str(k): v for k, v in index.items()
            if isinstance(v, str) and v and Path(v).name == v and v not in (".", "..")}


def export(out: str | Path, worksheet: str | Path | None = None, *, max_grade: float = 100.0,
           now: datetime | None = None, log: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Fill in Moodle's grading worksheet and write the feedback zip from ``OUT/grader.db``.

    Writes ``OUT/moodle/<worksheet's name>`` (or ``OUT/moodle/grading-worksheet.csv`` with
    Moodle's English headers, from the participants of the download, when no worksheet is
    given), ``OUT/moodle/feedback.zip`` (``Full Name_<id>_assignfeedback_file/<group>.pdf`` for
    every participant of a graded group) and ``OUT/moodle/export.txt`` (who got what, and every
    problem). Returns ``{"worksheet": ..., "feedback zip": ..., "report": ...}``.
    ``max_grade`` is used only without a worksheet (Moodle's default maximum grade is 100).
    """
    from .store import DB_NAME, Store

    out = Path(out)
    log = log or (lambda msg: None)
    db = out / DB_NAME
    if not db.exists():
        raise FileNotFoundError(f"{db}: no grader store; run `grader grade ... --out {out}` first")
    stamp = moodle_date(now or datetime.now())
    with Store(db) as store:
        rows = store.submissions()
        totals, evidence = _graded(store)
        lab = store.lab_number
    notes: list[str] = []
    ws = read_worksheet(worksheet) if worksheet else None
    people = participants(rows, ws.roster() if ws else None, lab_number=lab)
    if ws is None:
        for p in people:
            if p.kind != "student" or p.id is None:
                notes.append(f"not exported: {p.name} (id {p.id}): {'; '.join(p.flags)}")
        people = [p for p in people if p.kind == "student" and p.id is not None]
        ws = new_worksheet(people, max_grade)
    by_id = {r["id"]: r for r in rows}

    moodle_dir = out / "moodle"
    moodle_dir.mkdir(parents=True, exist_ok=True)
    feedback_dir = out / "feedback"
    report_of = _report_names(feedback_dir)
    lines: list[str] = []
    zipped: list[tuple[str, Path]] = []
    missing_pdfs: dict[tuple[str, str], Path] = {}
    served: set[str] = set()
    for p in people:
        row = ws.rows[p.row] if p.row is not None else None
        label = f"{p.name or 'Participant'} (Participant {p.id})"
        sub = by_id.get(p.submission_id) if p.submission_id is not None else None
        if sub is None and p.sha256:
            sub = next((r for r in rows if r["sha256"] == p.sha256), None)
        if p.group_key is None or sub is None:
            why = "; ".join(p.flags) or "no notebook of theirs and no group cell names them"
            lines.append(f"{label}: untouched ({why})")
            continue
        if not sub.get("problem") and sub["sha256"] not in evidence:
            lines.append(f"{label}: untouched, the group {p.group_key} is not graded yet")
            continue
        total, maximum = totals.get(sub["id"], (0.0, 0.0))
        if maximum <= 0:
            lines.append(f"{label}: untouched, no scores for the group {p.group_key} "
                         f"(run grader rescore)")
            continue
        max_text = ws.cell(row, "max") if "max" in ws.columns else ""
        top = _number(max_text)
        if top is None:
            notes.append(f"{label}: the worksheet gives no maximum grade ({max_text!r}: a scale?); "
                         f"grade left empty")
            continue
        grade = min(max(total / maximum * top, 0.0), top)
        served.add(sub["sha256"])
        grade_text = _fmt(grade, _decimals(max_text))
        ws.set(row, "grade", grade_text)
        ws.set(row, "modgrade", stamp)
        pdf = feedback_dir / report_of.get(str(sub["id"]), f"{sub['feedback']}.pdf")
        comment = (f"{total:g} / {maximum:g} points. Report: {pdf.name}")
        if sub.get("problem"):
            comment = f"0 / {maximum:g} points: the notebook could not be graded. " \
                      f"Report: {pdf.name}"
        if p.via not in ("upload", "team"):
            comment += " (you uploaded nothing: graded with your group's notebook)"
        if "comments" in ws.columns:
            ws.set(row, "comments", comment)
        if "canchange" in ws.columns and _norm(ws.cell(row, "canchange")) in ("no", "non", "nein"):
            notes.append(f"{label}: Moodle says the grade cannot be changed (locked): it will "
                         f"skip this row")
        lines.append(f"{label}: {grade_text} / {max_text} from group {p.group_key} "
                     f"({total:g}/{maximum:g}, via {p.via}) -> {pdf.name}"
                     + (f" [{'; '.join(p.flags)}]" if p.flags else ""))
        if pdf.is_file():
            zipped.append((f"{safe_name(p.name) if p.name else 'Participant'}_{p.id}"
                           f"_assignfeedback_file/{pdf.name}", pdf))
        else:
            missing_pdfs[(p.group_key, pdf.name)] = pdf

    for (key, _), pdf in sorted(missing_pdfs.items()):
        notes.append(f"missing PDF for the group {key}: {pdf} does not exist; its members get "
                     f"their grade but no feedback file")
    graded_hashes = {r["sha256"] for r in rows if r.get("problem") or r["sha256"] in evidence}
    for h in sorted(graded_hashes - served):
        r = next(x for x in rows if x["sha256"] == h)
        notes.append(f"group {r['group_key']} ({r['file']}): graded, but no Moodle participant "
                     f"found for it")

    name = Path(worksheet).name if worksheet else "grading-worksheet.csv"
    ws_path = ws.write(moodle_dir / name)
    zip_path = moodle_dir / "feedback.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
        for arc, pdf in zipped:
            z.write(pdf, arc)
    report = moodle_dir / "export.txt"
    report.write_text(
        "Moodle export\n"
        f"worksheet: {ws_path}\nfeedback zip: {zip_path} ({len(zipped)} file(s))\n\n"
        "Upload in this order: the worksheet first (Grading action: Upload grading worksheet),\n"
        "then the zip (Upload multiple feedback files in a zip).\n\n"
        + ("problems:\n" + "\n".join(f"  {n}" for n in notes) + "\n\n" if notes else "")
        + "participants:\n" + "\n".join(f"  {ln}" for ln in lines) + "\n", encoding="utf-8")
    for n in notes:
        log(f"warning: {n}")
    log(f"worksheet: {ws_path}")
    log(f"feedback zip: {zip_path} ({len(zipped)} PDF(s))")
    log(f"report: {report}")
    return {"worksheet": ws_path, "feedback zip": zip_path, "report": report}
