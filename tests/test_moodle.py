"""Moodle round trip: the download zip in every layout Moodle writes -> groups -> worksheet and
feedback zip, read back with Python re-implementations of Moodle's own import rules."""
from __future__ import annotations

import csv
import io
import re
import zipfile
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from grader.ingest import ingest
from grader.moodle import (export, moodle_date, name_match, parse_entry, participants,
                           read_worksheet, safe_name)
from grader.store import Store

NOW = datetime(2026, 1, 9, 14, 5)
EN = ["Identifier", "Full name", "Email address", "Status", "Grade", "Maximum Grade",
      "Grade can be changed", "Last modified (submission)", "Last modified (grade)",
      "Feedback comments"]
EN_TEAM = EN[:4] + ["Group"] + EN[4:]
FR_TEAM = ["Identifiant", "Nom complet", "Adresse de courriel", "Statut", "Groupe", "Note",
           "Note maximale", "La note peut être modifiée", "Dernière modification (travail remis)",
           "Dernière modification (note)", "Feedback par commentaires"]
OLD = "Thursday, 8 January 2026, 9:41 AM"

# The class: three groups, one student in none. (name, participant id)
ZOE, SEAN, JEAN = ("Zoë Müller-Lüdenscheidt", 7311), ("Seán O'Brien", 7312), ("Jean-Luc D'Arcy", 7313)
ADA, ALAN = ("Ada Lovelace", 8021), ("Alan Turing", 8022)
MARIA = ("María José García Núñez", 9031)
GRACE = ("Grace Hopper", 9041)
GROUPS = {   # file name, members (group cell), who uploads, points of 20
    "A": ("mullerludenscheidt_obrien_darcy_lab_01.ipynb", [ZOE, SEAN, JEAN], [ZOE, SEAN], 15),
    "B": ("lovelace_turing_lab_01.ipynb", [ADA, ALAN], [ADA, ALAN], 20),
    "C": ("nunez_lab_01.ipynb", [MARIA], [MARIA], 5),
}
EVERYONE = [ZOE, SEAN, JEAN, ADA, ALAN, MARIA, GRACE]


# ----------------------------------------------------------------------------- as Moodle does

def clean_filename(text: str) -> str:
    """Moodle's clean_filename (PARAM_FILE)."""
    return re.sub(r"[\x00-\x1f\x7f&<>\"`|':\\/]", "", text)


def prefix(name: str, ident) -> str:
    """mod_assign's prefix: underscores -> spaces, then clean_filename."""
    return clean_filename(name.replace("_", " ") + (f"_{ident}" if ident is not None else ""))


def entry(pre: str, file: str, layout: str, pre41: bool) -> str:
    if layout == "flat":
        return clean_filename(f"{pre}_assignsubmission_file_{file}")
    return f"{pre}_assignsubmission_file{'_' if pre41 else ''}/{file}"


def notebook(members, marker: str) -> bytes:
    src = "GROUP = [\n" + "".join(f"    {m!r},\n" for m in members) + "]\n"
    cells = [new_code_cell(src, metadata={"grader": {"group": True}}),
             new_code_cell(f"x = {marker!r}")]
    return nbformat.writes(new_notebook(cells=cells)).encode()


def class_zip(path: Path, layout="folders", pre41=False, blind=False) -> Path:
    """Individual submissions: every uploading member uploads the group's notebook."""
    with zipfile.ZipFile(path, "w") as z:
        for label, (fname, members, uploaders, _) in GROUPS.items():
            data = notebook([m for m, _ in members], label)
            for name, pid in uploaders:
                pre = prefix("Participant" if blind else name, pid)
                z.writestr(entry(pre, fname, layout, pre41), data)
                z.writestr(entry(pre, fname.replace(".ipynb", ".pdf"), layout, pre41), b"%PDF-1.7")
    return path


def worksheet(path: Path, people, headers=EN, delimiter=",", bom=True, groups=None,
              max_text="100.00", blind_names=False) -> Path:
    """A grading worksheet as Moodle writes it (one row per participant)."""
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    w.writerow(headers)
    for name, pid in people:
        row = [f"Participant {pid}", name, f"{pid}@example.edu", "Submitted for grading"]
        if groups is not None:
            row.append(groups.get(pid, "Default group"))
        row += ["", max_text, "Yes", OLD, "-", ""]
        if blind_names:   # blind marking: no name, no email
            row = [row[0]] + row[3:]
        w.writerow(row)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buf.getvalue().encode("utf-8"))
    return path


PLUGINS = {("assignsubmission", "file"), ("assignsubmission", "onlinetext"),
           ("assignfeedback", "file"), ("assignfeedback", "comments"),
           ("assignfeedback", "editpdf"), ("assignfeedback", "offline")}


def moodle_feedback_import(zip_path: Path, participant_ids) -> dict[int, list[tuple[str, bytes]]]:
    """assignfeedback_file_zip_importer::is_valid_filename_for_import, line by line."""
    got: dict[int, list[tuple[str, bytes]]] = defaultdict(list)
    with zipfile.ZipFile(zip_path) as z:
        for info in z.infolist():
            if info.is_dir():
                continue
            base = info.filename.rsplit("/", 1)[-1]
            if base.startswith(".") or base.startswith("~"):
                continue
            parts = info.filename.split("/")
            while parts:
                part = parts.pop(0)
                pieces = part.split("_", 4)          # explode('_', $pathpart, 5)
                if len(pieces) < 4 or not pieces[1].isdigit():
                    continue
                pid = int(pieces[1])
                if pid not in participant_ids or (pieces[2], pieces[3]) not in PLUGINS:
                    continue
                parts.insert(0, pieces[4] if len(pieces) == 5 else "")
                got[pid].append(("/".join(parts), z.read(info)))
                break
    return dict(got)


def moodle_grade_import(path: Path, lang=("Identifier", "Grade", "Last modified (grade)"),
                        delimiter=",") -> dict[int, tuple[float, datetime]]:
    """assignfeedback_offline_grade_importer: columns by (translated) name; strtotime."""
    text = path.read_bytes().decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    header = rows[0]
    i_id, i_grade, i_mod = (header.index(h) for h in lang)
    out = {}
    for r in rows[1:]:
        if not r[i_grade].strip():
            continue
        pid = int(r[i_id][len("Participant "):])
        grade = float(r[i_grade].replace(" ", ""))                 # unformat_float with "."
        when = datetime.strptime(r[i_mod], "%A, %d %B %Y, %I:%M %p")   # what strtotime reads
        out[pid] = (grade, when)
    return out


def graded_out(out: Path, batch, missing_pdf: str | None = None) -> Path:
    """The store as `grader grade` leaves it, with fake scores, and dummy PDFs."""
    points = {GROUPS[k][0]: GROUPS[k][3] for k in GROUPS}
    with Store(out, lab_number=1) as db:
        ids = db.add_submissions(batch)
        for sha in {s.sha256 for s in batch}:
            db.put_evidence(sha, {"status": "ok", "answers": {}})
        for sid, sub in zip(ids, batch):
            p = points[Path(sub.name).name.split("_assignsubmission_file_")[-1]]
            db.put_scores(sid, [{"question": "q1", "points": min(p, 10), "max_points": 10},
                                {"question": "q2", "points": max(p - 10, 0), "max_points": 10}])
    (out / "feedback").mkdir(parents=True, exist_ok=True)
    for sub in batch:
        name = sub.feedback_name(1)
        if name != missing_pdf:
            (out / "feedback" / f"{name}.pdf").write_bytes(f"%PDF {name}".encode())
    return out


def pdf_of(label: str) -> str:
    return {"A": "mullerludenscheidt_obrien_darcy_lab_01.pdf", "B": "lovelace_turing_lab_01.pdf",
            "C": "nunez_lab_01.pdf"}[label]


def expected():
    """pid -> (grade of 100, pdf) for every member of a group (uploaders or not)."""
    exp = {}
    for label, (_, members, _, pts) in GROUPS.items():
        for _, pid in members:
            exp[pid] = (pts * 5.0, pdf_of(label))
    return exp


# ----------------------------------------------------------------------------- parse_entry

@pytest.mark.parametrize("path, want", [
    ("Zoë Müller-Lüdenscheidt_7311_assignsubmission_file/a_b_lab_01.ipynb",
     ("Zoë Müller-Lüdenscheidt", "7311", "assignsubmission_file", "a_b_lab_01.ipynb")),
    ("Seán OBrien_7312_assignsubmission_file_/sub dir/x.ipynb",
     ("Seán OBrien", "7312", "assignsubmission_file", "sub dir/x.ipynb")),
    ("Jean-Luc DArcy_7313_assignsubmission_file_a_b_lab_01.ipynb",
     ("Jean-Luc DArcy", "7313", "assignsubmission_file", "a_b_lab_01.ipynb")),
    ("Participant_55_assignsubmission_onlinetext/onlinetext.html",
     ("Participant", "55", "assignsubmission_onlinetext", "onlinetext.html")),
    ("Team A-Ada Lovelace_8021_assignsubmission_file_/x.ipynb",
     ("Team A-Ada Lovelace", "8021", "assignsubmission_file", "x.ipynb")),
    ("Default group_assignsubmission_file/x.ipynb",
     ("Default group", None, "assignsubmission_file", "x.ipynb")),
    ("wrapper/Ada Lovelace_8021_assignsubmission_file/x.ipynb",
     ("Ada Lovelace", "8021", "assignsubmission_file", "x.ipynb")),
    ("lovelace_turing_lab_01.ipynb", (None, None, None, "lovelace_turing_lab_01.ipynb")),
])
def test_parse_entry(path, want):
    assert parse_entry(path) == want


def test_safe_name_and_matching():
    assert safe_name("Jean_Luc D'Arcy") == "Jean Luc DArcy"
    assert safe_name("  ") == "Participant"
    assert "_" not in safe_name("a_b_c") and "/" not in safe_name("a/b")
    assert name_match("Seán OBrien", ["Seán O'Brien"], []) == "full"
    assert name_match("NÚÑEZ María José García", ["María José García Núñez"], []) == "full"
    assert name_match("Jean-Luc D'Arcy", [], ["darcy"]) == "family"
    assert name_match("Grace Hopper", ["Ada Lovelace"], ["lovelace"]) is None
    assert moodle_date(NOW) == "Friday, 9 January 2026, 2:05 PM"
    assert datetime.strptime(moodle_date(NOW), "%A, %d %B %Y, %I:%M %p") == NOW


# ----------------------------------------------------------------------------- ingest of a zip

@pytest.mark.parametrize("layout", ["folders", "flat"])
@pytest.mark.parametrize("pre41", [False, True])
def test_ingest_zip_every_layout(tmp_path, layout, pre41):
    z = class_zip(tmp_path / "download.zip", layout, pre41)
    batch = ingest(z, 1, extract_to=tmp_path / "x")
    assert len(batch) == 5 and len(batch.unique()) == 3
    assert batch.source == z.resolve() and batch.root == (tmp_path / "x").resolve()
    assert len(batch.ignored) == 5                                     # the PDFs
    got = {(s.moodle_name, s.moodle_id): s.group_key for s in batch}
    assert got == {("Zoë Müller-Lüdenscheidt", "7311"): "darcy_mullerludenscheidt_obrien",
                   ("Seán OBrien", "7312"): "darcy_mullerludenscheidt_obrien",
                   ("Ada Lovelace", "8021"): "lovelace_turing",
                   ("Alan Turing", "8022"): "lovelace_turing",
                   ("María José García Núñez", "9031"): "nunez"}
    for s in batch:
        assert s.flags == [], s.flags
    people = {p.id: p for p in participants(batch)}
    assert set(people) == {"7311", "7312", "8021", "8022", "9031"}
    assert all(p.flags == [] and p.kind == "student" for p in people.values())
    assert people["7312"].feedback == "mullerludenscheidt_obrien_darcy_lab_01"


def test_zip_extraction_is_safe(tmp_path, monkeypatch):
    import grader.ingest as ingest_mod

    monkeypatch.setattr(ingest_mod, "MAX_BYTES", 2000)
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("../escaped.ipynb", notebook(["A B"], "x"))
        zf.writestr("/abs/escaped2.ipynb", notebook(["A B"], "x"))
        link = zipfile.ZipInfo("Ada Lovelace_1_assignsubmission_file/link.ipynb")
        link.external_attr = (0o120777) << 16
        zf.writestr(link, "/etc/passwd")
        zf.writestr("Ada Lovelace_1_assignsubmission_file/big_lab_01.ipynb", b" " * 50000)
        zf.writestr("Ada Lovelace_1_assignsubmission_file/lovelace_lab_01.ipynb",
                    notebook(["Ada Lovelace"], "ok"))
    dest = tmp_path / "inside" / "x"
    batch = ingest(z, 1, extract_to=dest)
    assert not (tmp_path / "inside" / "escaped.ipynb").exists()
    assert not (tmp_path / "escaped.ipynb").exists() and not Path("/abs/escaped2.ipynb").exists()
    assert sorted(s.name for s in batch) == [
        "Ada Lovelace_1_assignsubmission_file/big_lab_01.ipynb",
        "Ada Lovelace_1_assignsubmission_file/lovelace_lab_01.ipynb"]
    big = next(s for s in batch if "big" in s.name)
    assert "larger than" in big.problem and "refused" in big.problem and not big.path.exists()
    assert sum("refused" in i for i in batch.ignored) == 3
    assert not any(p.is_symlink() for p in dest.rglob("*"))


def test_two_notebooks_claiming_a_member_are_flagged(tmp_path):
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as z:
        z.writestr("Ada Lovelace_1_assignsubmission_file/lovelace_poincare_lab_01.ipynb",
                   notebook(["Ada Lovelace", "Henri Poincaré"], "1"))
        z.writestr("Alan Turing_2_assignsubmission_file/turing_poincare_lab_01.ipynb",
                   notebook(["Alan Turing", "Henri Poincaré"], "2"))
    batch = ingest(tmp_path / "d.zip", 1)
    for s in batch:
        assert any("claims the same member (henri poincare)" in f for f in s.flags), s.flags
    roster_ws = worksheet(tmp_path / "w.csv", [("Ada Lovelace", 1), ("Alan Turing", 2),
                                               ("Henri Poincaré", 3)])
    people = {p.id: p for p in participants(batch, read_worksheet(roster_ws).roster())}
    assert people["1"].group_key == "lovelace_poincare"
    henri = people["3"]
    assert henri.group_key is None and any("2 different notebooks" in f for f in henri.flags)


# ----------------------------------------------------------------------------- export

@pytest.mark.parametrize("layout", ["folders", "flat"])
@pytest.mark.parametrize("pre41", [False, True])
def test_export_individual_with_worksheet(tmp_path, layout, pre41):
    batch = ingest(class_zip(tmp_path / "download.zip", layout, pre41), 1)
    out = graded_out(tmp_path / "out", batch)
    ws = worksheet(tmp_path / "Grades-DL-Lab 01-42.csv", EVERYONE)
    paths = export(out, ws, now=NOW)
    assert paths["worksheet"] == out / "moodle" / "Grades-DL-Lab 01-42.csv"
    text = paths["worksheet"].read_bytes()
    assert text.startswith(b"\xef\xbb\xbf")                           # BOM kept
    rows = list(csv.reader(io.StringIO(text.decode("utf-8-sig"))))
    assert rows[0] == EN and [r[1] for r in rows[1:]] == [n for n, _ in EVERYONE]   # order kept
    grades = moodle_grade_import(paths["worksheet"])
    exp = expected()
    assert {pid: g for pid, (g, _) in grades.items()} == {pid: g for pid, (g, _) in exp.items()}
    assert all(when == NOW for _, when in grades.values())
    grace = rows[-1]
    assert grace == ["Participant 9041", "Grace Hopper", "9041@example.edu",
                     "Submitted for grading", "", "100.00", "Yes", OLD, "-", ""]   # untouched
    jean = next(r for r in rows if r[1] == JEAN[0])
    assert "75.00" == jean[4] and "uploaded nothing" in jean[9]
    assert "mullerludenscheidt_obrien_darcy_lab_01.pdf" in jean[9] and "15 / 20" in jean[9]
    # the feedback zip, read the way Moodle reads it
    files = moodle_feedback_import(paths["feedback zip"], {pid for _, pid in EVERYONE})
    assert {pid: [f.lstrip("/") for f, _ in fs] for pid, fs in files.items()} == \
        {pid: [pdf] for pid, (_, pdf) in exp.items()}
    for pid, fs in files.items():
        assert fs[0][1] == f"%PDF {exp[pid][1][:-4]}".encode()
    with zipfile.ZipFile(paths["feedback zip"]) as z:
        for name in z.namelist():
            assert name.count("_", 0, name.index("/")) == 3, name   # name part holds no "_"
    report = paths["report"].read_text()
    assert "Grace Hopper (Participant 9041): untouched" in report


def test_export_without_worksheet_writes_moodle_english_one(tmp_path):
    batch = ingest(class_zip(tmp_path / "download.zip"), 1)
    out = graded_out(tmp_path / "out", batch)
    paths = export(out, now=NOW)
    rows = list(csv.reader(io.StringIO(paths["worksheet"].read_text(encoding="utf-8"))))
    assert rows[0] == EN
    grades = moodle_grade_import(paths["worksheet"])
    uploaders = {pid for *_, ups, _ in GROUPS.values() for _, pid in ups}
    exp = expected()
    assert {pid: g for pid, (g, _) in grades.items()} == {p: exp[p][0] for p in uploaders}
    files = moodle_feedback_import(paths["feedback zip"], uploaders)
    assert {pid: [f.lstrip("/") for f, _ in fs] for pid, fs in files.items()} == \
        {p: [exp[p][1]] for p in uploaders}


def test_blind_marking(tmp_path):
    batch = ingest(class_zip(tmp_path / "download.zip", blind=True), 1)
    assert {s.moodle_name for s in batch} == {"Participant"}
    out = graded_out(tmp_path / "out", batch)
    # without viewblinddetails the worksheet has no name or email column
    headers = [EN[0]] + EN[3:]
    ws = worksheet(tmp_path / "w.csv", EVERYONE, headers=headers, blind_names=True)
    paths = export(out, ws, now=NOW)
    grades = moodle_grade_import(paths["worksheet"])
    exp = expected()
    uploaders = {pid for *_, ups, _ in GROUPS.values() for _, pid in ups}
    assert {pid: g for pid, (g, _) in grades.items()} == {p: exp[p][0] for p in uploaders}
    files = moodle_feedback_import(paths["feedback zip"], {pid for _, pid in EVERYONE})
    assert set(files) == uploaders
    with zipfile.ZipFile(paths["feedback zip"]) as z:
        assert all(n.startswith("Participant_") for n in z.namelist())


TEAM_OF = {ZOE[1]: "Team_A", SEAN[1]: "Team_A", JEAN[1]: "Team_A", ADA[1]: "Team B",
           ALAN[1]: "Team B", MARIA[1]: "Team C", 5: "Team B"}


def team_zip(path: Path, pre41: bool, layout="folders") -> Path:
    """Team submissions: >= 4.1 one entry per group (group id; Team A's id 5 is also the
    participant id of a member of Team B), before 4.1 one entry per member."""
    gid = {"A": 5, "B": 6, "C": 7}
    with zipfile.ZipFile(path, "w") as z:
        for label, (fname, members, _, _) in GROUPS.items():
            data = notebook([m for m, _ in members], label)
            group = {"A": "Team_A", "B": "Team B", "C": "Team C"}[label]
            if pre41:
                for name, pid in members:
                    z.writestr(entry(prefix(f"{group}-{name}", pid), fname, layout, True), data)
            else:
                z.writestr(entry(prefix(group, gid[label]), fname, layout, False), data)
    return path


@pytest.mark.parametrize("pre41", [False, True])
def test_team_submissions_french_semicolon_worksheet(tmp_path, pre41):
    batch = ingest(team_zip(tmp_path / "download.zip", pre41), 1)
    assert len(batch.unique()) == 3
    out = graded_out(tmp_path / "out", batch)
    people = EVERYONE + [("Hedy Lamarr", 5)]           # participant 5, in Team B
    ws = worksheet(tmp_path / "Notes-DL.csv", people, headers=FR_TEAM, delimiter=";", bom=False,
                   groups=TEAM_OF, max_text="20,00")
    paths = export(out, ws, now=NOW)
    raw = paths["worksheet"].read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf")
    assert raw.decode().splitlines()[0] == ";".join(FR_TEAM)
    grades = moodle_grade_import(paths["worksheet"], delimiter=";", lang=(
        "Identifiant", "Note", "Dernière modification (note)"))
    exp = {pid: (g / 5, pdf) for pid, (g, pdf) in expected().items()}
    exp[5] = exp[ADA[1]]                               # Hedy: Team B, not Team A (group id 5)
    assert {pid: g for pid, (g, _) in grades.items()} == {p: g for p, (g, _) in exp.items()}
    files = moodle_feedback_import(paths["feedback zip"], {pid for _, pid in people})
    assert {pid: [f.lstrip("/") for f, _ in fs] for pid, fs in files.items()} == \
        {pid: [pdf] for pid, (_, pdf) in exp.items()}
    rows = list(csv.reader(io.StringIO(raw.decode()), delimiter=";"))
    assert rows[-2][1] == "Grace Hopper" and rows[-2][5] == ""     # in no team: untouched


def test_team_pre41_without_worksheet(tmp_path):
    batch = ingest(team_zip(tmp_path / "download.zip", True, layout="flat"), 1)
    people = {p.id: p for p in participants(batch)}
    assert {pid: p.name for pid, p in people.items()} == {
        str(pid): clean_filename(n) for n, pid in [ZOE, SEAN, JEAN, ADA, ALAN, MARIA]}
    assert all(p.kind == "student" for p in people.values())


def test_team_41_without_worksheet_asks_for_it(tmp_path):
    batch = ingest(team_zip(tmp_path / "download.zip", False), 1)
    out = graded_out(tmp_path / "out", batch)
    logs = []
    paths = export(out, now=NOW, log=logs.append)
    assert moodle_grade_import(paths["worksheet"]) == {}
    assert any("team submission" in m and "worksheet" in m for m in logs)


def test_missing_pdf_named_and_export_goes_on(tmp_path):
    batch = ingest(class_zip(tmp_path / "download.zip"), 1)
    out = graded_out(tmp_path / "out", batch, missing_pdf="lovelace_turing_lab_01")
    logs = []
    paths = export(out, worksheet(tmp_path / "w.csv", EVERYONE), now=NOW, log=logs.append)
    assert any("missing PDF for the group lovelace_turing" in m
               and str(out / "feedback" / "lovelace_turing_lab_01.pdf") in m for m in logs)
    files = moodle_feedback_import(paths["feedback zip"], {pid for _, pid in EVERYONE})
    assert ADA[1] not in files and ALAN[1] not in files and ZOE[1] in files
    assert moodle_grade_import(paths["worksheet"])[ADA[1]][0] == 100.0   # the grade still goes


def test_two_notebooks_of_one_group_each_get_their_own_report(tmp_path):
    """Ada and Alan upload different notebooks under one name: the reports are X_<hash>.pdf
    each (render's OUT/feedback/index.json says whose is which); each gets their own."""
    import json

    from grader.render import feedback_files

    fname = GROUPS["B"][0]
    with zipfile.ZipFile(tmp_path / "download.zip", "w") as z:
        for (name, pid), marker in ((ADA, "v1"), (ALAN, "v2")):
            z.writestr(entry(prefix(name, pid), fname, "folders", False),
                       notebook([ADA[0], ALAN[0]], marker))
    batch = ingest(tmp_path / "download.zip", 1)
    assert len(batch.unique()) == 2
    out = graded_out(tmp_path / "out", batch)
    with Store(out) as db:
        subs = db.submissions()
    index = {}
    for name, rs in feedback_files([{"submission": r} for r in subs]):   # as render_feedback
        (out / "feedback" / name).write_bytes(f"%PDF {rs[0]['submission']['sha256']}".encode())
        index.update({str(r["submission"]["id"]): name for r in rs})
    (out / "feedback" / "index.json").write_text(json.dumps(index))
    # both uploaders are in both group cells: neither takes the plain name, each its hash
    assert sorted(index.values()) == sorted(f"lovelace_turing_lab_01_{s.sha256[:8]}.pdf"
                                            for s in batch)
    sha_of = {s.moodle_id: s.sha256 for s in batch}
    name_of = {int(s["moodle_id"]): index[str(s["id"])] for s in subs}

    paths = export(out, worksheet(tmp_path / "w.csv", [ADA, ALAN]), now=NOW)
    files = moodle_feedback_import(paths["feedback zip"], {ADA[1], ALAN[1]})
    assert set(files) == {ADA[1], ALAN[1]}
    for _, pid in (ADA, ALAN):
        [(pdf, data)] = files[pid]
        assert pdf.lstrip("/") == name_of[pid]
        assert data == f"%PDF {sha_of[str(pid)]}".encode()            # their own notebook's
    assert files[ADA[1]][0][1] != files[ALAN[1]][0][1]
    rows = list(csv.reader(io.StringIO(paths["worksheet"].read_text(encoding="utf-8-sig"))))
    comments = {r[1]: r[9] for r in rows[1:]}
    assert name_of[ADA[1]] in comments[ADA[0]] and name_of[ALAN[1]] in comments[ALAN[0]]
    report = paths["report"].read_text()
    assert f"-> {name_of[ADA[1]]}" in report and f"-> {name_of[ALAN[1]]}" in report


def test_unknown_language_headers_located_by_position(tmp_path):
    batch = ingest(class_zip(tmp_path / "download.zip"), 1)
    out = graded_out(tmp_path / "out", batch)
    headers = ["Tunniste", "Koko nimi", "Sähköposti", "Tila", "Arvosana", "Maksimiarvosana",
               "Arvosanaa voi muuttaa", "Muokattu (palautus)", "Muokattu (arvosana)",
               "Palautekommentit"]
    ws = worksheet(tmp_path / "w.csv", EVERYONE, headers=headers)
    sheet = read_worksheet(ws)
    assert sheet.columns["grade"] == 4 and sheet.columns["max"] == 5
    assert sheet.columns["modgrade"] == 8 and sheet.columns["comments"] == 9
    paths = export(out, ws, now=NOW)
    grades = moodle_grade_import(paths["worksheet"], lang=("Tunniste", "Arvosana",
                                                           "Muokattu (arvosana)"))
    assert {pid: g for pid, (g, _) in grades.items()} == {p: g for p, (g, _) in expected().items()}


def test_export_needs_a_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="grader grade"):
        export(tmp_path / "nothing")


def test_moodle_cli(tmp_path):
    from click.testing import CliRunner

    from grader.moodle_cli import moodle

    batch = ingest(class_zip(tmp_path / "download.zip"), 1)
    out = graded_out(tmp_path / "out", batch)
    ws = worksheet(tmp_path / "w.csv", EVERYONE)
    res = CliRunner().invoke(moodle, ["export", str(out), "--worksheet", str(ws)])
    assert res.exit_code == 0, res.output
    assert (out / "moodle" / "w.csv").exists() and (out / "moodle" / "feedback.zip").exists()
    assert "feedback zip" in res.output


def test_family_name_match_only_for_someone_not_on_the_roster(tmp_path):
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as z:
        z.writestr("Anna Martin_1_assignsubmission_file/martin_lab_01.ipynb",
                   notebook(["Anna Martin"], "1"))
        # no group cell: the file name names the members (family names)
        z.writestr("Ada Lovelace_3_assignsubmission_file/lovelace_darcy_lab_01.ipynb",
                   nbformat.writes(new_notebook(cells=[new_code_cell("x = 1")])).encode())
    batch = ingest(tmp_path / "d.zip", 1)
    ws = worksheet(tmp_path / "w.csv", [("Anna Martin", 1), ("Paul Martin", 2),
                                        ("Ada Lovelace", 3), (JEAN[0], 4)])
    people = {p.id: p for p in participants(batch, read_worksheet(ws).roster())}
    assert people["1"].group_key == "martin" and people["1"].via == "upload"
    assert people["2"].group_key is None                   # Anna's family name, not his group
    assert people["4"].group_key == "darcy_lovelace" and people["4"].via == "family name"
    assert any("uploaded nothing" in f for f in people["4"].flags)
