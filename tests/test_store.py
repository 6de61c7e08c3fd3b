"""Store: idempotent, resumable after a kill, scores replaced, manual CSV."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from grader.ingest import ingest
from grader.store import ManualScore, Store, StoreError, read_manual_csv

ROOT = Path(__file__).resolve().parents[1]


def make_class(folder: Path, n: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cell = new_code_cell(f"GROUP = ['Student Name{i}']", metadata={"grader": {"group": True}})
        (folder / f"name{i}_lab_01.ipynb").write_text(
            nbformat.writes(new_notebook(cells=[cell])))
    (folder / "broken_lab_01.ipynb").write_text("{not json")
    return folder


def test_add_is_idempotent(tmp_path):
    batch = ingest(make_class(tmp_path / "in"), 1)
    with Store(tmp_path / "out", lab_number=1) as db:
        ids = db.add_submissions(batch)
        assert db.path == tmp_path / "out" / "grader.db"
        assert db.add_submissions(ingest(tmp_path / "in", 1)) == ids
        rows = db.submissions()
        assert len(rows) == 5
        assert db.meta()["assignment"] == "1" and "created" in db.meta()
        broken = next(r for r in rows if r["file"] == "broken_lab_01.ipynb")
        assert "broken_lab_01.ipynb" in broken["problem"]
        good = next(r for r in rows if r["file"] == "name0_lab_01.ipynb")
        assert good["members"] == ["Student Name0"] and good["group_key"] == "name0"
        assert good["feedback"] == "name0_lab_01" and good["flags"] == []
        # the broken file is never executed
        assert len(db.pending_hashes()) == 4


def test_resubmission_replaces_row(tmp_path):
    folder = make_class(tmp_path / "in", 1)
    with Store(tmp_path / "out") as db:
        (old,) = db.add_submissions([s for s in ingest(folder, 1) if not s.problem])
        db.put_scores(old, [{"question": "q1", "points": 1, "max_points": 1}])
        (folder / "name0_lab_01.ipynb").write_text(
            (folder / "name0_lab_01.ipynb").read_text() + "\n")
        (new,) = db.add_submissions([s for s in ingest(folder, 1) if not s.problem])
        assert new != old and len(db.submissions()) == 1
        assert db.scores() == []


def test_other_lab_refused(tmp_path):
    with Store(tmp_path / "out", lab_number=1):
        pass
    with pytest.raises(StoreError, match="lab 01"):
        Store(tmp_path / "out", lab_number=2)


def test_pending_after_partial_evidence(tmp_path):
    batch = ingest(make_class(tmp_path / "in"), 1)
    with Store(tmp_path / "out.db") as db:
        db.add_submissions(batch)
        pending = db.pending_hashes()
        db.put_evidence(pending[0], {"status": "ok", "seconds": 1.5, "answers": {"q": (1, 2)}})
        assert db.pending_hashes() == pending[1:]
        assert db.evidence(pending[0]) == {"status": "ok", "seconds": 1.5, "answers": {"q": [1, 2]}}
        assert db.evidence(pending[1]) is None
        db.put_evidence(pending[0], {"status": "timeout"})
        assert db.evidence(pending[0]) == {"status": "timeout"}
        assert [r["status"] for r in db.evidence_rows()] == ["timeout"]


KILLER = r"""
import os, sys
from grader.store import Store
with Store(sys.argv[1]) as db:
    for i, sha in enumerate(db.pending_hashes()):
        if i == 2:
            db._db.execute("BEGIN IMMEDIATE")          # a transaction that never commits
            db._db.execute("INSERT INTO evidence VALUES (?, '{}', 'half', 0, 'now')", (sha,))
            os.kill(os.getpid(), 9)
        db.put_evidence(sha, {"status": "ok", "n": i})
"""


def test_kill_keeps_exactly_the_committed_rows(tmp_path):
    batch = ingest(make_class(tmp_path / "in", 5), 1)
    db_path = tmp_path / "out" / "grader.db"
    with Store(db_path, lab_number=1) as db:
        db.add_submissions(batch)
        pending = db.pending_hashes()
    assert len(pending) == 5
    proc = subprocess.run([sys.executable, "-c", KILLER, str(db_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    with Store(db_path, lab_number=1) as db:
        assert [r["sha256"] for r in db.evidence_rows()] == pending[:2] or \
            sorted(r["sha256"] for r in db.evidence_rows()) == sorted(pending[:2])
        assert db.evidence(pending[0]) == {"status": "ok", "n": 0}
        assert db.evidence(pending[2]) is None
        assert db.pending_hashes() == pending[2:]
        assert len(db.submissions()) == 6          # nothing duplicated
        # resuming: run the rest, then nothing is pending
        db.add_submissions(ingest(tmp_path / "in", 1))
        for sha in db.pending_hashes():
            db.put_evidence(sha, {"status": "ok"})
        assert db.pending_hashes() == []
        assert len(db.evidence_rows()) == 5


def test_scores_replaced_not_duplicated(tmp_path):
    batch = ingest(make_class(tmp_path / "in", 2), 1)
    with Store(tmp_path / "out") as db:
        a, b, _ = db.add_submissions(batch)
        first = [{"question": "q1", "points": 1, "max_points": 2, "verdict": "partial",
                  "feedback": "close", "answer": [1, 2], "expected": 0.5},
                 {"question": "q2", "points": 0, "max_points": 1, "verdict": "wrong"}]
        db.put_scores(a, first)
        db.put_scores(b, first[:1])
        db.put_scores(a, [{"question": "q1", "points": 2, "max_points": 2, "verdict": "right"}])
        rows = db.scores(a)
        assert len(rows) == 1 and rows[0]["points"] == 2 and rows[0]["verdict"] == "right"
        assert db.scores(b)[0]["answer"] == [1, 2] and db.scores(b)[0]["expected"] == 0.5
        # score.QuestionScore as a dict: id for question, extra keys kept
        db.put_scores(b, [{"id": "q3", "kind": "text", "exercise": "af", "points": 1,
                           "max_points": 1, "verdict": "right", "feedback": "",
                           "comment": "nice"}])
        (row,) = db.scores(b)
        assert (row["question"], row["id"], row["kind"], row["comment"]) == \
            ("q3", "q3", "text", "nice")
        db.put_scores(b, first[:1])
        assert len(db.scores()) == 2
        with pytest.raises(ValueError):
            db.put_scores(a, [{"points": 1}])            # no question: nothing replaced
        assert len(db.scores(a)) == 1
        db.replace_scores({a: [], b: first})
        assert db.scores(a) == [] and len(db.scores(b)) == 2


def test_manual_csv_and_table(tmp_path):
    csv_path = tmp_path / "manual.csv"
    csv_path.write_text(
        "group,question,points,comment\n"
        "lovelace_turing,q_text,2.5,\"clear, well argued\"\n"
        "Turing_Lovelace_lab_01.pdf,q_other,1,\n"
        "\n"
        "Müller-Lüdenscheidt,q_text,0,\n", encoding="utf-8")
    rows = read_manual_csv(csv_path)
    # kept as typed (matched to a notebook at scoring time), with their lines
    assert rows == [ManualScore("lovelace_turing", "q_text", 2.5, "clear, well argued"),
                    ManualScore("Turing_Lovelace_lab_01.pdf", "q_other", 1.0, ""),
                    ManualScore("Müller-Lüdenscheidt", "q_text", 0.0, "")]
    assert [r.line for r in rows] == [2, 3, 5]
    assert [r.group_key for r in rows] == ["lovelace_turing", "lovelace_turing",
                                           "mullerludenscheidt"]
    with Store(tmp_path / "out") as db:
        db.set_manual(rows)
        db.set_manual(rows)                       # replaced, not duplicated
        assert db.manual() == rows and [r.line for r in db.manual()] == [2, 3, 5]
        db.set_manual(rows[:1])
        assert db.manual() == rows[:1]


def test_manual_csv_semicolons_and_decimal_comma(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("group;question;points\nlovelace;q1;1,5\n", encoding="utf-8-sig")
    assert read_manual_csv(path) == [ManualScore("lovelace", "q1", 1.5, "")]


@pytest.mark.parametrize("text, where, what", [
    ("group,question,points,grade\n", 1, "unknown column 'grade'"),
    ("group,points\n", 1, "missing column 'question'"),
    ("group,question,points,comment\nlovelace,q1,1,\nturing,q1,abc,\n", 3, "'abc' is not a number"),
    ("group,question,points\nlovelace,q1,\n", 2, "is not a number"),
    ("group,question,points\n,q1,1\n", 2, "group is empty"),
    ("group,question,points\nlovelace,q1,1\nLovelace,q1,2\n", 3, "already given on line 2"),
    ("group,question,points\nlovelace,q1,1,extra\n", 2, "fields"),
])
def test_manual_csv_errors(tmp_path, text, where, what):
    path = tmp_path / "manual.csv"
    path.write_text(text)
    with pytest.raises(StoreError) as err:
        read_manual_csv(path)
    assert f"{path}:{where}:" in str(err.value) and what in str(err.value)
