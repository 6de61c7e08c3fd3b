"""The hand-out: runnable notebook, no solution, nothing of the key."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from click.testing import CliRunner

from grader.cli import main
from grader.release import strip_code, strip_markdown

LAB = Path(__file__).resolve().parents[1] / "assignments" / "lab01"


@pytest.fixture(scope="module")
def handout(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("handout")
    result = CliRunner().invoke(main, ["release", str(LAB), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_handout_files(handout):
    assert {p.name for p in handout.iterdir()} >= {"lab01.ipynb", "reference", "requirements.txt", "README.md"}
    assert (handout / "reference" / "data.py").exists() and (handout / "grader" / "check.py").exists()
    assert not list(handout.rglob("key.json"))
    spec = (handout / "assignment.toml").read_text()     # for the self-check
    assert "[[question]]" in spec and "tolerance =" not in spec
    reqs = (handout / "requirements.txt").read_text()
    for pkg in ("torch", "wfdb", "jupyterlab", "matplotlib", "scikit-learn"):
        assert pkg in reqs
    assert "torch==" not in reqs
    assert "lab_01.ipynb" in (handout / "README.md").read_text()


def test_handout_has_no_solution_and_no_output(handout):
    nb = nbformat.read(handout / "lab01.ipynb", as_version=4)
    text = json.dumps(nb)
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    assert "Ada Lovelace" not in text                       # the reference's group
    assert "filters=(32, 64), kernel_size=5)" not in text    # a solution line
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
            compile(cell.source.replace("%matplotlib", "#"), "<cell>", "exec")  # still valid Python


def test_handout_carries_no_value_of_the_key(handout):
    key = json.loads((LAB / "key.json").read_text())["questions"]
    # What the release writes from the solution: the notebook and the README. The library
    # travels as the public course code, unchanged.
    blob = (handout / "README.md").read_text() + (handout / "lab01.ipynb").read_text() + \
        (handout / "assignment.toml").read_text()
    for pkg in ("reference", "grader"):
        library = Path(__file__).resolve().parents[1] / pkg
        for p in (handout / pkg).rglob("*.py"):
            assert p.read_bytes() == (library / p.relative_to(handout / pkg)).read_bytes()
    from grader.assignment import load_assignment

    public = {q.id for q in load_assignment(LAB).questions if q.kind in ("choice", "multi")}
    checked = 0
    for qid, entry in key.items():
        value = entry.get("expected")
        if value is None or qid in public:   # the options of a choice are printed in the question
            continue
        forms = {json.dumps(value), str(value)}
        if isinstance(value, list):
            forms |= {str(tuple(value)), ", ".join(map(str, value))}
        if isinstance(value, float):
            forms |= {f"{value:.3f}", f"{value:.4f}"}
        for form in forms:
            if len(form) >= 4:                      # "1", "B": too short to mean anything
                assert form not in blob, f"{qid}: expected value {form!r} is in the hand-out"
                checked += 1
    assert checked >= 8


def test_locked_cells_carry_their_hash(handout):
    nb = nbformat.read(handout / "lab01.ipynb", as_version=4)
    locked = [c for c in nb.cells if c.metadata.get("grader", {}).get("locked")]
    assert len(locked) >= 5
    assert all(len(c.metadata["grader"]["locked_sha256"]) == 64 for c in locked)


def test_placeholders():
    assert strip_code("a = 1\n### BEGIN SOLUTION\nb, c = 2, 3\n### END SOLUTION\n") == \
        "a = 1\nb = None  # YOUR ANSWER HERE\nc = None  # YOUR ANSWER HERE\n"
    body = "def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n"
    assert "    raise NotImplementedError" in strip_code(body)
    assert strip_markdown("*Your answer:*\n### BEGIN SOLUTION\nbecause\n### END SOLUTION\n") == \
        "*Your answer:*\n_Write your answer here._\n"


def test_handout_notebook_runs_without_grader_error(handout, physionet, tmp_path):
    """The blank hand-out executes to the end (cells may fail on placeholders, nothing hangs)."""
    from grader.execute import execute_notebook
    from grader.sandbox import Limits, resolve

    nb = nbformat.read(handout / "lab01.ipynb", as_version=4)
    work = tmp_path / "work"
    work.mkdir()
    result = execute_notebook(nb, workdir=work, isolation=resolve("none"), data_dir=physionet,
                              limits=Limits(cell_timeout=300, notebook_timeout=600),
                              env={"PYTHONPATH": str(handout)})
    assert result.status in ("ok", "errors"), result.message
    # Placeholders left as None make the model cells fail, but nothing trains a model.
    assert any(e.ename in ("AttributeError", "TypeError", "NotImplementedError") for e in result.errors)
