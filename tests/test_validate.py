"""`grader validate`'s static checks (the end-to-end run is in .ci/run)."""
from __future__ import annotations

import shutil
from pathlib import Path

import nbformat

from grader.assignment import load_assignment
from grader.validate import unanswered

LAB = Path(__file__).resolve().parents[1] / "assignments" / "lab01"


def test_lab01_answers_every_question():
    assert unanswered(load_assignment(LAB)) == []


def test_a_question_the_notebook_never_answers_is_reported(tmp_path):
    lab = tmp_path / "lab01"
    shutil.copytree(LAB, lab)
    nb = nbformat.read(lab / "lab01.ipynb", as_version=4)
    for cell in nb.cells:
        cell.source = cell.source.replace("mlp_params =", "n_params =")
        if cell.metadata.get("grader", {}).get("answer") == "best_model":
            del cell.metadata["grader"]
    nbformat.write(nb, lab / "lab01.ipynb")
    missing = unanswered(load_assignment(lab))
    assert any(m.startswith("mlp_params") for m in missing)
    assert any(m.startswith("best_model") for m in missing)
