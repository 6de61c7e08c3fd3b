"""assignment.toml: the lab's spec loads, and a bad spec is refused with the place named."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from grader.assignment import KINDS, SpecError, load_assignment

LAB = Path(__file__).resolve().parents[1] / "assignments" / "lab01"


def test_lab01_spec_covers_every_kind_and_twenty_questions():
    lab = load_assignment(LAB)
    assert lab.number == 1 and lab.notebook_path.exists()
    assert len(lab.questions) >= 20
    assert {q.kind for q in lab.questions} == set(KINDS)
    assert lab.max_points == sum(q.points for q in lab.questions)
    assert ("cnn_af", "af", 0) in lab.measurements
    assert lab.limits.cell_timeout >= 600  # long enough for training on a laptop


def _spec_with(tmp_path, text: str) -> Path:
    folder = tmp_path / "lab"
    folder.mkdir(parents=True)
    (folder / "assignment.toml").write_text(
        '[lab]\nnumber = 2\ntitle = "t"\nnotebook = "lab02.ipynb"\n' + text)
    return folder


@pytest.mark.parametrize("question, message", [
    ('id = "q1"\npoints = 1\nkind = "float"\nprompt = "p"\nanswer = "x"', "question 'q1': field 'kind'"),
    ('id = "q1"\npoints = 0\nkind = "integer"\nprompt = "p"\nanswer = "x"', "question 'q1': field 'points'"),
    ('id = "q1"\npoints = 1\nkind = "choice"\nprompt = "p"\nanswer = "x"', "question 'q1': kind 'choice' needs field 'choices'"),
    ('id = "q1"\npoints = 1\nkind = "metric"\nprompt = "p"\nmodel = "m"\ntask = "af"\nmetric = "recall"', "question 'q1': field 'metric'"),
    ('id = "q1"\npoints = 1\nkind = "integer"\nprompt = "p"\nanswer = "x"\ncolour = 3', "question 'q1': unknown field 'colour'"),
    ('id = "q 1"\npoints = 1\nkind = "integer"\nprompt = "p"\nanswer = "x"', "question 'q 1': field 'id'"),
    ('id = "q1"\npoints = 1\nkind = "number"\nprompt = "p"\nanswer = "x"\ntolerance = { abs = -1 }', "question 'q1': field 'tolerance'"),
])
def test_invalid_question_is_refused_naming_question_and_field(tmp_path, question, message):
    folder = _spec_with(tmp_path, "[[question]]\n" + question + "\n")
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        load_assignment(folder)


def test_duplicate_ids_and_bad_sizes_are_refused(tmp_path):
    q = '[[question]]\nid = "q1"\npoints = 1\nkind = "integer"\nprompt = "p"\nanswer = "x"\n'
    with pytest.raises(SpecError, match="'id' is used twice"):
        load_assignment(_spec_with(tmp_path, q + q))
    with pytest.raises(SpecError, match="memory"):
        load_assignment(_spec_with(tmp_path / "b", '[limits]\nmemory = "lots"\n' + q))


def test_missing_key_points_to_calibrate(tmp_path):
    folder = tmp_path / "lab01"
    shutil.copytree(LAB, folder)
    (folder / "key.json").unlink(missing_ok=True)
    with pytest.raises(SpecError, match="grader calibrate"):
        load_assignment(folder).load_key()
