"""Issue 27: one notebook never stops the class, and nothing a group writes misleads the
instructor.  One test per class of input (surrogates, markup, zip bombs, formulas, file
names, claimed members, figures, manual rows), then property-based tests (hypothesis)
that feed arbitrary text through ingest, the store, the reports and the exports.

No kernel runs here: the evidence a kernel would leave is written into a real store, as
``grader grade`` does.  The one real-kernel batch of hostile notebooks is the corpus
(tests/corpus, tests/test_corpus.py).
"""
from __future__ import annotations

import base64
import csv
import io
import json
import os
import time
import zipfile
from pathlib import Path

import nbformat
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from rich.console import Console

import grader.ingest as ingest_mod
from conftest import formula_cells, notebook, read_grades
from grader.cli import main
from grader.grade import _collect, _summary, rescore
from grader.ingest import ingest
from grader.moodle import export
from grader.render import MAX_REPORT_PIXELS, feedback_data, feedback_files, render_feedback
from grader.store import Store
from grader.untrusted import clean_text

HOSTILE = ["\ud800", "\udfff", "\udced", "[/]", "[bold]", "[link=file:///etc/passwd]x[/link]",
           '=HYPERLINK("http://evil.example","x")', "+1", "-2+3", "@SUM(A1)", "\t=1",
           "\r=1", "\x00", "<script>alert(1)</script>", "{{ 7*7 }}", "\u202e", "'", '"', ";", ","]
def evidence(answer=42, text="Because.", status="ok", extra=None, ratio=0.25) -> dict:
    ev = {"status": status, "message": None, "seconds": 1.0, "isolation": "bubblewrap",
          "answers": {"answer": answer, "ratio": ratio}, "texts": {"why": text},
          "errors": [], "figures": [], "measurements": {}}
    ev.update(extra or {})
    return ev


def graded(out: Path, lab: Path, files: dict[str, tuple[list[str], dict]], lab_number=7,
           source: Path | None = None) -> Path:
    """``out`` as `grader grade` leaves it: notebooks ingested from a folder, each hash's
    evidence stored (what the kernel would have left); files given the same evidence
    object are the same notebook (one group's members uploading it)."""
    subs = source or out.parent / "subs"
    written: dict[int, str] = {}
    for name, (members, ev) in files.items():
        path = subs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = written.setdefault(id(ev), nbformat.writes(notebook(f"# {id(ev)}", group=members)))
        path.write_text(text)
    batch = ingest(subs, lab_number)
    with Store(out / "grader.db", lab_number) as db:
        db.set_meta("lab", str(lab))
        db.add_submissions(batch)
        for s in batch.unique():
            db.put_evidence(s.sha256, files[s.name][1])
    return out


# ---------------------------------------------------------------- 1. text the store cannot hold

def test_lone_surrogates_in_group_cell_file_name_and_answers_are_stored(tmp_path, tiny_lab):
    subs = tmp_path / "subs"
    subs.mkdir()
    nb = notebook("answer = 42", group=["Ada \ud800 Lovelace", "Alan Turing"])
    (subs / "lovelace_turing_lab_07.ipynb").write_text(json.dumps(nb))   # JSON escape \ud800
    # a file name that is not UTF-8: Python reads it with surrogateescape
    os.makedirs(os.fsencode(subs / "Gr\xe2ce"), exist_ok=True)
    bad = os.path.join(os.fsencode(subs), b"hopper\xff_lab_07.ipynb")
    with open(bad, "w") as fh:
        fh.write(json.dumps(notebook("answer = 1", group=["Grace Hopper"])))
    batch = ingest(subs, 7)
    assert not batch.problems()
    out = tmp_path / "out"
    with Store(out / "grader.db", 7) as db:
        db.set_meta("lab", str(tiny_lab))
        db.add_submissions(batch)
        for s in batch.unique():
            db.put_evidence(s.sha256, evidence(answer="4\ud8002", text="x\udfff y",
                                               extra={"errors": [{"cell_index": 1, "ename": "E\ud800",
                                                                  "evalue": "\udcff",
                                                                  "traceback": "tb \ud800"}]}))
        stored = db.submissions()
    assert {s["file"] for s in stored} == {"lovelace_turing_lab_07.ipynb", "hopper\ufffd_lab_07.ipynb"}
    assert "Ada \ufffd Lovelace" in stored[-1]["members"] + stored[0]["members"]
    rows = rescore(out, tiny_lab)
    assert len(rows) == 2 and read_grades(out)
    assert all(p.stat().st_size > 1000 for p in (out / "feedback").glob("*.pdf"))


def test_a_failure_to_store_one_groups_evidence_is_its_grader_error(tmp_path):
    """The batch goes on: the next notebook is stored, the failing one gets grader-error."""
    from concurrent.futures import Future

    from rich.progress import Progress

    subs = tmp_path / "subs"
    for n in ("a", "b"):
        (subs).mkdir(exist_ok=True)
        nbformat.write(notebook(f"answer = '{n}'", group=[f"X {n}"]), subs / f"{n}_lab_07.ipynb")
    batch = ingest(subs, 7)
    futures = {}
    for s, ev in zip(batch, [evidence(extra={"oops": object()}), evidence()]):
        f = Future()
        f.set_result(ev)
        futures[f] = s
    buf = io.StringIO()
    with Store(tmp_path / "out", 7) as db:
        db.add_submissions(batch)
        with Progress(console=Console(file=buf)) as bar:
            _collect(futures, lambda fs: list(fs), db, batch.by_hash(), bar, bar.add_task("x"))
        a, b = (db.evidence(s.sha256) for s in batch)
    assert a["status"] == "grader-error" and "a_lab_07.ipynb" in a["message"]
    assert "could not be stored" in a["message"]
    assert b["status"] == "ok"


def test_ingest_names_the_file_of_any_read_error(tmp_path, monkeypatch):
    subs = tmp_path / "subs"
    subs.mkdir()
    nbformat.write(notebook("answer = 42"), subs / "ok_lab_07.ipynb")
    nbformat.write(notebook("answer = 1"), subs / "boom_lab_07.ipynb")
    real = ingest_mod._read_members

    def flaky(nb, sub):
        if "boom" in sub.name:
            raise RuntimeError("a reader bug")
        return real(nb, sub)

    monkeypatch.setattr(ingest_mod, "_read_members", flaky)
    batch = ingest(subs, 7)
    boom = next(s for s in batch if "boom" in s.name)
    assert boom.problem.startswith("boom_lab_07.ipynb:") and "a reader bug" in boom.problem
    assert next(s for s in batch if "ok" in s.name).problem is None


# ---------------------------------------------------------------- 2. markup

def test_console_markup_in_names_is_shown_as_written(tmp_path, tiny_lab):
    out = graded(tmp_path / "out", tiny_lab, {
        "[bold]x[/]_lab_07.ipynb": (["[/] Lovelace", "[link=file:///etc/passwd]y[/link]"],
                                    evidence())})
    rows = rescore(out, tiny_lab)
    buf = io.StringIO()
    _summary(Console(file=buf, width=300), rows, out)
    text = buf.getvalue()
    assert "[/] Lovelace" in text and "[link=file:///etc/passwd]y[/link]" in text
    # the CLI prints the same table again on every rescore
    r = CliRunner().invoke(main, ["rescore", str(out)])
    assert r.exit_code == 0, r.output


# ---------------------------------------------------------------- 3. zip bombs

def test_zip_bomb_members_are_refused_and_the_rest_is_graded(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_mod, "MAX_ZIP_BYTES", 3 * 2**20)
    good = nbformat.writes(notebook("answer = 42", group=["Ada Lovelace"])).encode()
    pad = nbformat.writes(notebook("x = 1", group=["Alan Turing"]))
    padded = pad.replace('"x = 1"', '"x = 1  # ' + "p" * (2 * 2**20) + '"').encode()
    zpath = tmp_path / "download.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("Ada Lovelace_1_assignsubmission_file/lovelace_lab_07.ipynb", good)
        # declares 101 MiB (zeros pack to ~100 KiB)
        z.writestr("Eve Bomb_2_assignsubmission_file/bomb_lab_07.ipynb", b"\0" * (101 * 2**20))
        # 9 MiB from a few KiB: refused by its ratio
        z.writestr("Eve Ratio_3_assignsubmission_file/ratio_lab_07.ipynb", b" " * (9 * 2**20))
        # 2 MiB each: the second one passes the 3 MiB in all
        z.writestr("Alan Turing_4_assignsubmission_file/turing_lab_07.ipynb", padded)
        z.writestr("Bob Late_5_assignsubmission_file/late_lab_07.ipynb", padded + b" ")
    assert zpath.stat().st_size < 2**20
    dest = tmp_path / "out" / "submissions"
    batch = ingest(zpath, 7, extract_to=dest)
    by = {Path(s.name).name: s for s in batch}
    assert set(by) == {"lovelace_lab_07.ipynb", "bomb_lab_07.ipynb", "ratio_lab_07.ipynb",
                       "turing_lab_07.ipynb", "late_lab_07.ipynb"}
    assert by["lovelace_lab_07.ipynb"].problem is None and by["turing_lab_07.ipynb"].problem is None
    assert "refused" in by["bomb_lab_07.ipynb"].problem and "101.0 MiB" in by["bomb_lab_07.ipynb"].problem
    assert "zip bomb" in by["ratio_lab_07.ipynb"].problem
    assert "download.zip" in by["late_lab_07.ipynb"].problem and "GiB" in by["late_lab_07.ipynb"].problem
    assert by["bomb_lab_07.ipynb"].moodle_name == "Eve Bomb"        # still whose it is
    used = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    assert used <= 3 * 2**20


@pytest.mark.parametrize("folder_first", [False, True])
def test_a_file_and_a_folder_of_one_name_cost_only_that_member(tmp_path, folder_first):
    # Moodle's file area can hold x.ipynb and x.ipynb/y.ipynb side by side
    good = nbformat.writes(notebook("answer = 42", group=["Ada Lovelace"])).encode()
    odd = nbformat.writes(notebook("answer = 1", group=["Eve Odd"])).encode()
    members = [("Eve Odd_2_assignsubmission_file/x_lab_07.ipynb", odd),
               ("Eve Odd_2_assignsubmission_file/x_lab_07.ipynb/y_lab_07.ipynb", odd)]
    zpath = tmp_path / "download.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("Ada Lovelace_1_assignsubmission_file/lovelace_lab_07.ipynb", good)
        for name, data in (members[::-1] if folder_first else members):
            z.writestr(name, data)
    batch = ingest(zpath, 7, extract_to=tmp_path / "out" / "submissions")
    by = {s.name: s for s in batch}
    assert by["Ada Lovelace_1_assignsubmission_file/lovelace_lab_07.ipynb"].problem is None
    problems = [s.problem for s in batch if s.problem]
    assert len(problems) == 1 and "cannot be written" in problems[0]


# ---------------------------------------------------------------- 4. formulas in CSV

def test_no_csv_cell_is_a_formula_and_moodle_still_reads_the_grades(tmp_path, tiny_lab):
    out = graded(tmp_path / "out", tiny_lab, {
        "=cmd Eve_9_assignsubmission_file/evil_lab_07.ipynb":
            (["=cmd Eve", '=HYPERLINK("http://evil.example","click")', "@SUM(A1)"], evidence()),
        "Ada Lovelace_1_assignsubmission_file/lovelace_lab_07.ipynb":
            (["Ada Lovelace"], evidence(answer=41))})
    rescore(out, tiny_lab)
    assert formula_cells(out / "grades.csv") == []
    g = read_grades(out)
    cell = g["'=cmd Eve_9_assignsubmission_file/evil_lab_07.ipynb"]["members"]   # the file too
    assert cell.startswith("'=cmd Eve; =HYPERLINK")   # shown, not evaluated
    assert g["Ada Lovelace_1_assignsubmission_file/lovelace_lab_07.ipynb"]["total"] == "1"
    paths = export(out, max_grade=100)
    assert formula_cells(paths["worksheet"]) == []
    with open(paths["worksheet"], newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    grades = {r["Identifier"]: float(r["Grade"]) for r in rows if r["Grade"]}  # Moodle's read
    assert grades["Participant 1"] == pytest.approx(100 / 6, abs=0.01)
    assert grades["Participant 9"] == pytest.approx(50, abs=0.01)   # 3 of 6, "why" pending
    assert any(r["Full name"].startswith("'=") for r in rows)


# ---------------------------------------------------------------- 6. claimed members

def moodle_class(tmp_path: Path, tiny_lab: Path, hostile_first=True) -> Path:
    """Lovelace and Turing upload their notebook; Eve uploads one whose group cell claims
    them, under the same file name."""
    honest = (["Ada Lovelace", "Alan Turing"], evidence(answer=42))
    evil = (["Ada Lovelace", "Alan Turing"], evidence(answer=0, ratio=0.5))
    files = {"Ada Lovelace_1_assignsubmission_file/lovelace_turing_lab_07.ipynb": honest,
             "Alan Turing_2_assignsubmission_file/lovelace_turing_lab_07.ipynb": honest,
             ("Aaron Eve" if hostile_first else "Zed Eve")
             + "_3_assignsubmission_file/lovelace_turing_lab_07.ipynb": evil}
    return graded(tmp_path / "out", tiny_lab, files)


def test_a_group_cell_does_not_take_another_groups_manual_points_or_report(tmp_path, tiny_lab):
    out = moodle_class(tmp_path, tiny_lab)
    manual = tmp_path / "m.csv"
    manual.write_text("group,question,points,comment\nlovelace_turing,why,3,well argued\n")
    rows = rescore(out, tiny_lab, manual)
    g = read_grades(out)
    eve = "Aaron Eve_3_assignsubmission_file/lovelace_turing_lab_07.ipynb"
    ada = "Ada Lovelace_1_assignsubmission_file/lovelace_turing_lab_07.ipynb"
    assert g[ada]["why"] == "3" and g[ada]["total"] == "6"       # backed by its uploaders
    assert g[eve]["why"] == "0" and g[eve]["total"] == "0"
    assert "claims the same member" in g[eve]["flags"] and "claims the same member" in g[ada]["flags"]
    index = json.loads((out / "feedback" / "index.json").read_text())
    ids = {r["submission"]["file"]: str(r["submission"]["id"]) for r in rows}
    assert index[ids[ada]] == "lovelace_turing_lab_07.pdf"
    assert index[ids[eve]].startswith("lovelace_turing_lab_07_") and index[ids[eve]] != index[ids[ada]]
    # Both reports say so, without naming the other notebook's file.
    from pypdf import PdfReader

    for f, other in ((ada, "Aaron Eve"), (eve, "Ada Lovelace_1")):
        text = " ".join(" ".join((p.extract_text() or "").split())
                        for p in PdfReader(str(out / "feedback" / index[ids[f]])).pages)
        assert "another notebook also claims a member of this group" in text
        assert other not in text                     # the other upload is not named


def test_two_unbacked_claims_of_one_group_get_neither_manual_score(tmp_path, tiny_lab):
    """No uploader known (a folder): the row fits two notebooks, neither gets it."""
    files = {"a/lovelace_lab_07.ipynb": (["Ada Lovelace"], evidence()),
             "b/lovelace_lab_07.ipynb": (["Ada Lovelace"], evidence(answer="7"))}
    out = graded(tmp_path / "out", tiny_lab, files)
    manual = tmp_path / "m.csv"
    manual.write_text("group,question,points\nLovelace,why,3\n")
    r = CliRunner().invoke(main, ["rescore", str(out), "--manual", str(manual)])
    assert r.exit_code == 1
    assert "line 2" in r.output and "fits 2 different notebooks" in r.output
    assert {row["why"] for row in read_grades(out).values()} == {"0"}


# ---------------------------------------------------------------- 8. figures

def test_report_pixels_are_bounded_and_figures_downscaled(tmp_path, tiny_lab):
    from PIL import Image
    from pypdf import PdfReader

    from grader.assignment import load_assignment
    import numpy as np

    def png(side):
        ramp = (np.add.outer(np.arange(side), np.arange(side)) * 9).astype(np.uint16)
        buf = io.BytesIO()
        Image.fromarray(ramp).save(buf, format="PNG")          # 16-bit grey
        return base64.b64encode(buf.getvalue()).decode()

    big, huge = png(3000), png(5000)
    figures = [{"cell": i, "png": huge if i % 4 == 0 else big} for i in range(12)]
    ev = evidence(extra={"figures": figures})
    out = graded(tmp_path / "out", tiny_lab, {"lovelace_lab_07.ipynb": (["Ada Lovelace"], ev)})
    with Store(out) as db:
        sub = db.submissions()[0]
    rows = [r for r in rescore(out, tiny_lab)]
    lab = load_assignment(tiny_lab)
    data = feedback_data(rows[0], lab, {}, "now")
    assert len(data["figures"]) == MAX_REPORT_PIXELS // 9_000_000 >= 1    # 3000x3000 each
    assert data["figures_skipped"] == 12 - len(data["figures"])
    t0 = time.perf_counter()
    [pdf] = render_feedback(rows, lab, {}, tmp_path / "again")
    seconds = time.perf_counter() - t0
    images = [im for p in PdfReader(str(pdf)).pages for im in p.images]
    assert images and all(max(im.image.size) <= 1600 for im in images)
    assert seconds < 10
    print(f"report with 12 figures of 3000x3000 and 5000x5000 16-bit: {seconds:.1f} s, "
          f"{len(images)} figure(s) kept, {pdf.stat().st_size / 1e6:.1f} MB")
    assert sub["file"] == "lovelace_lab_07.ipynb"


# ---------------------------------------------------------------- 9. manual rows that match nothing

def test_rescore_reports_every_manual_row_that_matches_nothing(tmp_path, tiny_lab):
    out = graded(tmp_path / "out", tiny_lab, {
        "lovelace_turing_lab_07.ipynb": (["Ada Lovelace", "Alan Turing"], evidence()),
        "hopper_lab_07.ipynb": (["Grace Hopper"], evidence())})
    manual = tmp_path / "m.csv"
    manual.write_text("group,question,points,comment\n"
                      "lovelace_turing,why,2,fine\n"
                      "lovelace_turnig,why,3,typo in the group\n"
                      "hopper,why,99,typo in the points\n"
                      "hopper,how,1,no such question\n")
    r = CliRunner().invoke(main, ["rescore", str(out), "--manual", str(manual)])
    assert r.exit_code == 1, r.output
    out_text = " ".join(r.output.split())
    assert f"{manual.resolve()}: line 3: group 'lovelace_turnig' matches no submission" in out_text
    assert "closest: 'lovelace_turing'" in out_text
    assert "line 4: 99 points for 'why', outside 0..3" in out_text
    assert "line 5: question 'how' is not one of this lab's" in out_text
    g = read_grades(out)
    assert g["lovelace_turing_lab_07.ipynb"]["why"] == "2"       # what matched is given
    assert g["hopper_lab_07.ipynb"]["why"] == "0"                 # 99 is not clamped to 3
    with Store(out) as db:                                        # nothing typed is lost
        assert [(m.group, m.points, m.line) for m in db.manual()] == [
            ("lovelace_turing", 2, 2), ("lovelace_turnig", 3, 3), ("hopper", 99, 4), ("hopper", 1, 5)]
    r = CliRunner().invoke(main, ["rescore", str(out), "--allow-unmatched"])
    assert r.exit_code == 0, r.output
    assert "line 3" in r.output                                   # still reported


# ---------------------------------------------------------------- properties (hypothesis)

def hostile_text(max_size=30):
    piece = st.one_of(st.text(max_size=6), st.sampled_from(HOSTILE),
                      st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF))
    return st.lists(piece, max_size=max_size // 3).map("".join)


@st.composite
def submissions(draw):
    n = draw(st.integers(1, 4))
    out = []
    for i in range(n):
        members = draw(st.lists(hostile_text(), max_size=3))
        name = draw(hostile_text(20))
        answer = draw(st.one_of(hostile_text(), st.integers(), st.floats(allow_nan=True)))
        ev = {"status": draw(st.sampled_from(["ok", "errors", "timeout", "dead", "grader-error",
                                              "\ud800[/]"])),
              "message": draw(st.one_of(st.none(), hostile_text())),
              "seconds": 1.0, "isolation": draw(hostile_text()),
              "answers": {"answer": answer, "ratio": draw(hostile_text())},
              "texts": {"why": draw(hostile_text(60))},
              "errors": [{"cell_index": 1, "ename": draw(hostile_text()),
                          "evalue": draw(hostile_text()), "traceback": draw(hostile_text(60))}],
              "outputs": draw(hostile_text()), "figures": [], "measurements": {}}
        out.append((i, members, name, ev))
    return out


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(subs=submissions(), manual=st.lists(st.tuples(hostile_text(), hostile_text(8)), max_size=3))
def test_any_text_graded_rescored_and_exported(tmp_path_factory, tiny_lab, subs, manual):
    """Arbitrary text (surrogates, markup, formulas) in group cells, file names, answers,
    free texts, outputs and tracebacks: ingest, store, rescore (PDFs), the console summary
    and the Moodle export never crash; grades.csv is always written, formula-free."""
    root = tmp_path_factory.mktemp("prop")
    folder = root / "subs"
    folder.mkdir()
    evidences = {}
    for i, members, name, ev in subs:
        raw = name.encode("utf-8", "surrogatepass").replace(b"/", b"_").replace(b"\0", b"_")[:120]
        fname = os.path.join(os.fsencode(folder), b"%d_%s_lab_07.ipynb" % (i, raw))
        nb = new_notebook(cells=[new_code_cell(f"GROUP = {members!r}"),
                                 new_markdown_cell(name), new_code_cell(f"answer = {i}")])
        with open(fname, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(nb))        # JSON escapes every surrogate
        evidences[i] = ev
    batch = ingest(folder, 7)
    out = root / "out"
    with Store(out / "grader.db", 7) as db:
        db.set_meta("lab", str(tiny_lab))
        db.add_submissions(batch)
        for s in batch.unique():
            if not s.problem:
                db.put_evidence(s.sha256, evidences[int(os.fsencode(Path(s.name).name).split(b"_")[0])])
    csv_path = root / "m.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:   # an instructor's file:
        w = csv.writer(fh)                                           # UTF-8, no NUL
        w.writerow(["group", "question", "points", "comment"])
        for g, c in manual:
            w.writerow([clean_text(x).replace("\0", "") for x in (g, "why", "1", c)])
    try:
        rows = rescore(out, tiny_lab, csv_path if manual else None, allow_unmatched=True, jobs=1)
    except Exception as exc:  # only a malformed manual CSV may stop it, naming the file
        assert type(exc).__name__ == "StoreError" and str(csv_path) in str(exc), exc
        rows = rescore(out, tiny_lab, jobs=1)
    assert len(read_grades(out)) == len(batch)
    assert formula_cells(out / "grades.csv") == []
    _summary(Console(file=io.StringIO(), width=120), rows, out)
    paths = export(out, max_grade=20)
    assert formula_cells(paths["worksheet"]) == []
    assert len(list((out / "feedback").glob("*.pdf"))) == len(feedback_files(rows))


def test_a_contested_claim_gets_manual_points_only_when_named_by_its_report():
    """A folder (no uploaders): Eve's cell claims Ada, whom the real group's cell names too.
    Neither the real group's name nor Eve's own key gives points to a contested notebook;
    its report name does."""
    from grader.manual import ManualScore, match_manual
    from grader.moodle import flag_claims
    from grader.ingest import Batch, Submission

    real = Submission(Path("/x/a.ipynb"), "lovelace_turing_lab_07.ipynb", "a" * 64,
                      members=("Ada Lovelace", "Alan Turing"))
    eve = Submission(Path("/x/e.ipynb"), "eve_lab_07.ipynb", "e" * 64, members=("Ada Lovelace",))
    other = Submission(Path("/x/h.ipynb"), "hopper_lab_07.ipynb", "f" * 64, members=("Grace Hopper",))
    batch = Batch(Path("/x"), 7, [real, eve, other])
    flag_claims(batch)
    subs = [dict(s.as_dict(), id=i, feedback=s.feedback_name(7)) for i, s in enumerate(batch)]
    names = {s["id"]: f"{s['feedback']}.pdf" for s in subs}
    rows = [ManualScore("Lovelace Turing", "why", 2, "", 2), ManualScore("lovelace", "why", 3, "", 3),
            ManualScore("hopper", "why", 1, "", 4),
            ManualScore("lovelace_turing_lab_07.pdf", "answer", 1, "", 5)]
    given, problems = match_manual(rows, subs, {"why": 3, "answer": 2}, names)
    assert given == {"f" * 64: {"why": (1.0, "")}, "a" * 64: {"answer": (1.0, "")}}
    assert [p.split(":")[0] for p in problems] == ["line 2", "line 3"]
    assert all("claims a member that another notebook claims too" in p for p in problems)
