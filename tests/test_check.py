"""`grader check`: the students' self-check knows the form, never the answer."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
from click.testing import CliRunner
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from grader.assignment import Question
from grader.check import answer_form, check_notebook
from grader.cli import main
from grader.score import score

LAB = Path(__file__).resolve().parents[1] / "assignments" / "lab01"


@pytest.fixture(scope="module")
def handout(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("handout")
    assert CliRunner().invoke(main, ["release", str(LAB), "--out", str(out)]).exit_code == 0
    return out


def run_check(*args) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["check", *map(str, args)], terminal_width=200)
    return r.exit_code, r.output


def test_blank_handout_fails_the_check(handout):
    nb = handout / "doe_lab_01.ipynb"
    shutil.copy(handout / "lab01.ipynb", nb)
    code, out = run_check(nb, "--no-run")
    assert code == 1
    assert "still None" in out and "group cell" in out


def test_reference_solution_passes_without_a_key(handout, tmp_path):
    nb = tmp_path / "lovelace_turing_lab_01.ipynb"
    shutil.copy(LAB / "lab01.ipynb", nb)
    assert not list(handout.glob("key.json"))
    code, out = run_check(nb, "--no-run", "--lab", handout)
    assert code == 0, out
    assert "ready to submit" in out


def test_bad_file_name_and_changed_given_cell_are_reported(handout, tmp_path):
    nb = nbformat.read(LAB / "lab01.ipynb", as_version=4)
    released = nbformat.read(handout / "lab01.ipynb", as_version=4)
    for mine, theirs in zip(nb.cells, released.cells):   # the hand-out's cell hashes
        mine.metadata = theirs.metadata
    locked = next(c for c in nb.cells if c.metadata.get("grader", {}).get("locked"))
    locked.source += "\nprint('changed')"
    path = tmp_path / "My Lab.ipynb"
    nbformat.write(nb, path)
    code, out = run_check(path, "--no-run", "--lab", handout)
    assert code == 1
    assert "file name" in out and "were changed" in out


def test_what_ingest_refuses_fails_the_check_with_its_reason(handout, tmp_path):
    nb = tmp_path / "lovelace_turing_lab_01.ipynb"
    nb.write_bytes(b"%PDF-1.7 not a notebook")
    [row] = check_notebook(nb, handout, run=False)
    assert row.what == "notebook" and not row.ok
    assert "a PDF document renamed .ipynb" in row.detail
    assert run_check(nb, "--no-run", "--lab", handout)[0] == 1


def test_what_grading_reads_the_check_reads(handout, tmp_path):
    """A byte-order mark: nbformat's strict reader refuses it, grading runs the notebook."""
    nb = tmp_path / "lovelace_turing_lab_01.ipynb"
    nb.write_bytes(b"\xef\xbb\xbf" + (LAB / "lab01.ipynb").read_bytes())
    rows = check_notebook(nb, handout, run=False)
    assert "notebook" not in [r.what for r in rows]
    code, out = run_check(nb, "--no-run", "--lab", handout)
    assert code == 0, out


def test_run_uses_the_full_limits_and_the_data_cache(handout, tmp_path, monkeypatch):
    from reference.paths import cache_dir

    from grader.assignment import load_assignment

    warmed, seen = [], {}

    class Stop(Exception):
        pass

    def fake_execute(path, **kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr("grader.grade.warm_data_cache", lambda d: warmed.append(d) or cache_dir())
    monkeypatch.setattr("grader.execute.execute_notebook", fake_execute)
    nb = tmp_path / "lovelace_turing_lab_01.ipynb"
    shutil.copy(LAB / "lab01.ipynb", nb)
    with pytest.raises(Stop):
        check_notebook(nb, handout, data_dir=tmp_path, sandbox="none")
    lim = load_assignment(handout).limits
    assert warmed == [tmp_path]
    assert seen["env"]["GRADER_CACHE"] == str(cache_dir())
    assert [str(p) for p in seen["readonly"]] == [str(cache_dir())]
    assert seen["limits"] == lim.to_sandbox()
    assert (seen["limits"].max_file_size, seen["limits"].output_cap) == (lim.max_file_size,
                                                                         lim.output_cap)


TOML = """
[lab]
number = 3
title = "t"
notebook = "lab03.ipynb"
[limits]
cell_timeout = 20
notebook_timeout = 60
[[question]]
id = "n"
points = 1
kind = "integer"
prompt = "p"
answer = "n"
[[question]]
id = "pick"
points = 1
kind = "choice"
prompt = "p"
answer = "pick"
choices = ["A", "B"]
[[question]]
id = "shape"
points = 1
kind = "tuple"
prompt = "p"
answer = "shape"
"""


def test_running_check_reports_form_of_each_answer(tmp_path, physionet):
    (tmp_path / "assignment.toml").write_text(TOML)
    group = new_code_cell('GROUP = ["Ada Lovelace"]')
    group.metadata["grader"] = {"group": True}
    nb = new_notebook(cells=[group, new_code_cell("n = 3.5\npick = 'E'\nshape = (2, 3)"),
                             new_code_cell("1/0")])
    path = tmp_path / "lovelace_lab_03.ipynb"
    nbformat.write(nb, path)
    code, out = run_check(path, "--data-dir", physionet, "--sandbox", "none")
    assert code == 1
    assert "expected a whole number" in out
    assert "'E' is not one of the choices (A, B)" in out
    assert "ZeroDivisionError" in out
    assert "answered, right form" in out                 # shape


@pytest.mark.parametrize("kind, value, ok", [
    ("integer", 4130, True), ("integer", True, True), ("integer", 15.0, True),
    ("consistency", 45.4, False), ("consistency", 0.454, True),
    ("number", float("nan"), False), ("number", 0.45, True), ("number", "0.45", False),
    ("consistency", 1.5, False), ("tuple", (8, 30, 64), True), ("tuple", (8.0, 30), True),
    ("tuple", (8.5, 30), False), ("choice", "ReLU ", True), ("choice", 1, False),
    ("multi", frozenset({"sigmoid", "tanh"}), True), ("multi", frozenset({"softmax"}), False),
    ("multi", frozenset(), True), ("multi", (1, 2), False), ("integer", None, False),
])
def test_answer_form(kind, value, ok):
    q = Question("q", 1, kind, "p", answer="q", choices=("sigmoid", "tanh", "relu"))
    assert (answer_form(q, value) is None) == ok


@pytest.mark.parametrize("kind, value", [
    ("integer", 15.0), ("integer", 3.5), ("integer", True), ("tuple", (8.0, 30)),
    ("tuple", (8.5, 30)), ("tuple", "8, 30"), ("choice", 1), ("choice", "softmax"),
    ("choice", " Tanh"), ("multi", frozenset()), ("multi", (1, 2)), ("multi", "tanh"),
    ("number", "0.45"), ("number", 0.45), ("fraction", 45.4), ("fraction", 0.45),
    ("consistency", 45.4),
])
def test_check_refuses_the_forms_scoring_refuses(kind, value):
    """For these forms, what `grader check` calls a wrong form is what scoring marks
    "invalid" (0 points), and the other way round: a student is never told a form is fine
    that then scores 0 as invalid, nor warned about a form that the grader compares."""
    q = Question("q", 1, "number" if kind == "fraction" else kind, "p", answer="q",
                 choices=("sigmoid", "tanh", "relu"), fraction=kind == "fraction",
                 model="m", task="af", metric="accuracy")
    expected = {"fraction": 0.45, "consistency": 0.45, "integer": 15, "tuple": [8, 30], "choice": "tanh", "multi": ["tanh"],
                "number": 0.45}[kind]
    verdict = score(SimpleNamespace(questions=[q]), {"answers": {"q": _encoded(value)}},
                    {"questions": {"q": {"expected": expected}}}).questions[0].verdict
    assert (answer_form(q, value) is None) == (verdict != "invalid"), verdict


def _encoded(v):
    """``v`` as the kernel's epilogue writes it into the evidence."""
    if isinstance(v, tuple):
        return {"tuple": [_encoded(x) for x in v]}
    if isinstance(v, frozenset):
        return {"set": sorted(_encoded(x) for x in v)}
    return v


MODEL_TOML = TOML + """
[[question]]
id = "seq_acc"
points = 1
kind = "metric"
prompt = "p"
model = "seq"
task = "af"
metric = "accuracy"
[[question]]
id = "branchy_acc"
points = 1
kind = "metric"
prompt = "p"
model = "branchy"
task = "af"
metric = "accuracy"
[[question]]
id = "rate"
points = 1
kind = "consistency"
prompt = "p"
answer = "rate"
model = "seq"
task = "af"
metric = "accuracy"
"""


def test_check_says_whether_each_model_can_be_measured(tmp_path, physionet):
    """#16: a Sequential is exported for the grader; a forward that branches on a tensor's
    value is not, with the construct named; a rate given as a percent is flagged."""
    (tmp_path / "assignment.toml").write_text(MODEL_TOML)
    group = new_code_cell('GROUP = ["Ada Lovelace"]')
    group.metadata["grader"] = {"group": True}
    nb = new_notebook(cells=[group, new_code_cell("""
import torch
n, pick, shape, rate = 3, "A", (2, 3), 45.4
seq = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(30, 2))
class Branchy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(30, 2)
    def forward(self, x):
        return self.fc(x.flatten(1)) if x.sum() > 0 else -self.fc(x.flatten(1))
branchy = Branchy()
""")])
    path = tmp_path / "lovelace_lab_03.ipynb"
    nbformat.write(nb, path)
    code, out = run_check(path, "--data-dir", physionet, "--sandbox", "none")
    assert code == 1
    flat = " ".join(out.replace("│", " ").split())   # the table wraps long details
    assert "seq_acc (model seq)" in flat and "exported for the grader's measurement" in flat
    assert "an `if` or `while` on a tensor's value" in flat and "torch.where" in flat
    assert "45.4 looks like a percent (give 0.454)" in flat
