"""Ingest: naming convention, group cell, broken files, identical uploads."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from grader.ingest import (Batch, family_name, feedback_name, fold, group_key_of, ingest,
                           read_submission)


def make_nb(members=("Ada Lovelace", "Alan Turing"), tagged=True, extra="") -> str:
    cells = [new_markdown_cell("# Lab 01")]
    if members is not None:
        src = "GROUP = [\n" + "".join(f"    {m!r},\n" for m in members) + "]\n"
        cell = new_code_cell(src)
        if tagged:
            cell.metadata["grader"] = {"group": True}
        cells.append(cell)
    cells.append(new_code_cell("x = 1" + extra))
    return nbformat.writes(new_notebook(cells=cells))


def write(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def only(batch: Batch, name: str):
    (sub,) = [s for s in batch if s.name == name]
    return sub


def test_fold_and_names():
    assert family_name("Zoë Müller-Lüdenscheidt") == "Müller-Lüdenscheidt"
    assert fold(family_name("Zoë Müller-Lüdenscheidt")) == "mullerludenscheidt"
    assert fold("O'Brien") == fold("O’Brien") == "obrien"
    assert fold("Van der Berg") == "vanderberg"
    assert fold("Straße") == "strasse"
    assert feedback_name(["Müller-Lüdenscheidt", "Çelik", "O'Brien"], 1) == \
        "mullerludenscheidt_celik_obrien_lab_01"
    assert feedback_name(["Turing", "Lovelace"], 12) == "turing_lovelace_lab_12"
    assert group_key_of("Turing_Lovelace_lab_01.pdf") == "lovelace_turing"
    assert group_key_of("Lovelace turing") == "lovelace_turing"


def test_convention_parsed(tmp_path):
    write(tmp_path, "lovelace_turing_lab_01.ipynb", make_nb())
    batch = ingest(tmp_path, 1)
    (sub,) = batch.submissions
    assert sub.name == "lovelace_turing_lab_01.ipynb"
    assert sub.file_names == ("lovelace", "turing") and sub.file_lab == 1
    assert sub.members == ("Ada Lovelace", "Alan Turing")
    assert sub.flags == [] and sub.problem is None
    assert sub.group_key == "lovelace_turing"
    assert sub.feedback_name(1) == "lovelace_turing_lab_01"
    assert len(sub.sha256) == 64


def test_accented_names_agree(tmp_path):
    write(tmp_path, "mullerludenscheidt_obrien_lab_01.ipynb",
          make_nb(["Zoë Müller-Lüdenscheidt", "Seán O'Brien"]))
    (sub,) = ingest(tmp_path, 1).submissions
    assert sub.flags == []
    assert sub.family_names == ("mullerludenscheidt", "obrien")
    assert sub.feedback_name(1) == "mullerludenscheidt_obrien_lab_01"


def test_order_of_names_may_differ(tmp_path):
    write(tmp_path, "turing_lovelace_lab_01.ipynb", make_nb())
    (sub,) = ingest(tmp_path, 1).submissions
    assert sub.flags == []
    assert sub.feedback_name(1) == "lovelace_turing_lab_01"   # the group cell's order


def test_off_convention_flagged(tmp_path):
    write(tmp_path, "Lovelace-Turing Lab1.ipynb", make_nb())
    write(tmp_path, "my notebook.ipynb", make_nb())
    batch = ingest(tmp_path, 1)
    sloppy = only(batch, "Lovelace-Turing Lab1.ipynb")
    assert any("off the convention" in f for f in sloppy.flags)
    assert sloppy.file_names == ("lovelace", "turing") and sloppy.file_lab == 1
    assert not any("disagree" in f for f in sloppy.flags)
    other = only(batch, "my notebook.ipynb")
    assert any("off the convention" in f for f in other.flags)
    assert other.file_names == ()
    assert other.group_key == "lovelace_turing"               # from the group cell


def test_wrong_lab_flagged(tmp_path):
    write(tmp_path, "lovelace_turing_lab_02.ipynb", make_nb())
    (sub,) = ingest(tmp_path, 1).submissions
    assert any("lab 02" in f and "lab 01" in f for f in sub.flags)


def test_disagreement_flagged(tmp_path):
    write(tmp_path, "lovelace_hopper_lab_01.ipynb", make_nb())
    (sub,) = ingest(tmp_path, 1).submissions
    (flag,) = sub.flags
    assert "disagree" in flag and "hopper" in flag and "Alan Turing" in flag


def test_group_cell_missing_or_untagged(tmp_path):
    write(tmp_path, "a_lab_01.ipynb", make_nb(members=None))
    write(tmp_path, "lovelace_turing_lab_01.ipynb", make_nb(tagged=False))
    write(tmp_path, "b_lab_01.ipynb", make_nb(members=()))
    batch = ingest(tmp_path, 1)
    assert any("group cell missing" in f for f in only(batch, "a_lab_01.ipynb").flags)
    assert only(batch, "a_lab_01.ipynb").group_key == "a"        # the file name's names
    untagged = only(batch, "lovelace_turing_lab_01.ipynb")
    assert untagged.members == ("Ada Lovelace", "Alan Turing") and untagged.flags == []
    assert any("no members" in f for f in only(batch, "b_lab_01.ipynb").flags)


def test_group_cell_is_never_executed(tmp_path):
    nb = new_notebook(cells=[new_code_cell(
        "import os\nGROUP = [os.system('touch pwned'), 'Ada Lovelace']",
        metadata={"grader": {"group": True}})])
    write(tmp_path, "lovelace_lab_01.ipynb", nbformat.writes(nb))
    (sub,) = ingest(tmp_path, 1).submissions
    assert not (Path.cwd() / "pwned").exists()
    assert sub.members == () and any("not a literal" in f for f in sub.flags)


def test_broken_files_become_problems(tmp_path):
    good = make_nb()
    v3 = json.dumps({"nbformat": 3, "nbformat_minor": 0, "metadata": {}, "worksheets": []})
    cases = {
        "empty_lab_01.ipynb": b"",
        "truncated_lab_01.ipynb": good[: len(good) // 2],
        "notjson_lab_01.ipynb": "hello, this is not JSON",
        "pdf_lab_01.ipynb": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n",
        "old_lab_01.ipynb": v3,
        "list_lab_01.ipynb": "[1, 2, 3]",
    }
    for name, text in cases.items():
        write(tmp_path, name, text)
    batch = ingest(tmp_path, 1)
    assert len(batch) == len(cases)
    for sub in batch:
        assert sub.problem and sub.name in sub.problem, sub
    assert "empty" in only(batch, "empty_lab_01.ipynb").problem
    assert "truncated" in only(batch, "truncated_lab_01.ipynb").problem
    assert "PDF" in only(batch, "pdf_lab_01.ipynb").problem
    assert "format 3" in only(batch, "old_lab_01.ipynb").problem
    # still named by the convention, so the 0 reaches the right group
    assert only(batch, "pdf_lab_01.ipynb").feedback_name(1) == "pdf_lab_01"


def test_huge_file_is_a_problem(tmp_path, monkeypatch):
    import grader.ingest as ingest_mod
    monkeypatch.setattr(ingest_mod, "MAX_BYTES", 1000)
    path = write(tmp_path, "lovelace_lab_01.ipynb", make_nb(extra="\n#" + "x" * 2000))
    sub = read_submission(path, "lovelace_lab_01.ipynb", 1)
    assert "larger than" in sub.problem and "lovelace_lab_01.ipynb" in sub.problem


def test_identical_notebooks_deduped(tmp_path):
    text = make_nb()
    # Moodle: every member uploads the same file, one folder each
    write(tmp_path, "Ada Lovelace_101_assignsubmission_file/lovelace_turing_lab_01.ipynb", text)
    write(tmp_path, "Alan Turing_102_assignsubmission_file/lovelace_turing_lab_01.ipynb", text)
    write(tmp_path, "hopper_lab_01.ipynb", make_nb(["Grace Hopper"]))
    write(tmp_path, ".ipynb_checkpoints/hopper_lab_01-checkpoint.ipynb", "junk")
    write(tmp_path, "__MACOSX/._hopper_lab_01.ipynb", b"\x00\x05\x16\x07")
    write(tmp_path, "lovelace_turing_lab_01.pdf", b"%PDF-1.7")
    batch = ingest(tmp_path, 1)
    assert len(batch) == 3
    assert len(batch.unique()) == 2
    assert batch.ignored == ["lovelace_turing_lab_01.pdf"]
    for sub in batch:
        assert sub.flags == [], sub.flags
    ada = only(batch, "Ada Lovelace_101_assignsubmission_file/lovelace_turing_lab_01.ipynb")
    assert (ada.moodle_name, ada.moodle_id) == ("Ada Lovelace", "101")


def test_identical_bytes_from_different_groups_flagged(tmp_path):
    text = make_nb()
    write(tmp_path, "lovelace_turing_lab_01.ipynb", text)
    write(tmp_path, "hopper_knuth_lab_01.ipynb", text)
    batch = ingest(tmp_path, 1)
    assert len(batch.unique()) == 1
    write(tmp_path, "copy.ipynb", text)                  # off convention, sorts first
    batch = ingest(tmp_path, 1)
    # fewest flags first (hopper_knuth also disagrees with its group cell), then by name
    assert [s.name for s in batch.unique()] == ["lovelace_turing_lab_01.ipynb"]
    copy = only(batch, "hopper_knuth_lab_01.ipynb")
    assert any(f.startswith("identical to") and "lovelace_turing_lab_01.ipynb" in f for f in copy.flags)
    orig = only(batch, "lovelace_turing_lab_01.ipynb")
    assert any("identical to hopper_knuth_lab_01.ipynb" in f for f in orig.flags)


def test_moodle_flat_prefix(tmp_path):
    write(tmp_path, "Ada Lovelace_101_assignsubmission_file_lovelace_turing_lab_01.ipynb",
          make_nb())
    (sub,) = ingest(tmp_path, 1).submissions
    assert sub.flags == [] and sub.moodle_id == "101"
    assert sub.file_names == ("lovelace", "turing")


def test_zip_extracted_again_drops_the_old_files(tmp_path):
    import zipfile

    a, b = tmp_path / "a.zip", tmp_path / "b.zip"
    with zipfile.ZipFile(a, "w") as z:
        z.writestr("Ada Lovelace_101_assignsubmission_file/lovelace_turing_lab_01.ipynb",
                   make_nb())
        z.writestr("Grace Hopper_103_assignsubmission_file/hopper_lab_01.ipynb",
                   make_nb(["Grace Hopper"]))
    with zipfile.ZipFile(b, "w") as z:       # a later download: Grace's file is gone
        z.writestr("Ada Lovelace_101_assignsubmission_file/lovelace_turing_lab_01.ipynb",
                   make_nb(extra="\ny = 2"))
    dest = tmp_path / "out" / "submissions"
    assert len(ingest(a, 1, extract_to=dest)) == 2
    batch = ingest(b, 1, extract_to=dest)
    assert [s.name for s in batch] == [
        "Ada Lovelace_101_assignsubmission_file/lovelace_turing_lab_01.ipynb"]
    assert "y = 2" in batch.submissions[0].path.read_text(encoding="utf-8")
    assert sorted(p.name for p in dest.rglob("*.ipynb")) == ["lovelace_turing_lab_01.ipynb"]


def test_hash_is_of_the_raw_bytes(tmp_path, monkeypatch):
    import hashlib

    import grader.ingest as ingest_mod

    good = write(tmp_path, "lovelace_lab_01.ipynb", make_nb())
    assert read_submission(good, good.name, 1).sha256 == \
        hashlib.sha256(good.read_bytes()).hexdigest()
    monkeypatch.setattr(ingest_mod, "MAX_BYTES", 10)      # too large: hashed by streaming
    sub = read_submission(good, good.name, 1)
    assert sub.problem and sub.sha256 == hashlib.sha256(good.read_bytes()).hexdigest()
