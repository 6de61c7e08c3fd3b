"""`grader check`: the students' self-check knows the form, never the answer."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
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
    assert seen["readonly"][0] == cache_dir()
    # The kernel imports from the notebook's folder and the running grader's, as in Jupyter,
    # and a hiding sandbox shows it those folders read-only.
    import grader
    root = Path(grader.__file__).resolve().parents[1]
    assert seen["env"]["GRADER_KERNEL_PATH"].split(os.pathsep)[:2] == [str(tmp_path), str(root)]
    assert seen["env"]["PYTHONPATH"] == str(root)
    shown = {str(p) for p in seen["readonly"]}
    # the notebook's folder is shown; this checkout, which holds the labs' keys, is not
    # (its grader/ and reference/ folders are bound by the sandbox's allowlist anyway)
    assert str(tmp_path) in shown and str(root) not in shown and str(root / "grader") not in shown
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


def test_check_from_the_instructors_checkout_shows_no_key(tmp_path, physionet):
    """A TA checks a student's notebook from the project's checkout: the check's kernel
    may import the course packages, but never sees the labs' keys beside them."""
    repo = Path(__file__).resolve().parents[1]
    key = repo / "assignments" / "lab01" / "key.json"
    assert key.exists()
    (tmp_path / "assignment.toml").write_text(TOML)
    group = new_code_cell('GROUP = ["Ada Lovelace"]')
    group.metadata["grader"] = {"group": True}
    nb = new_notebook(cells=[group, new_code_cell(f"""
import reference.models
n, pick, shape = 3, "A", (2, 3)
try:
    open({str(key)!r}).read()
    raise RuntimeError("KEY-WAS-READABLE")
except FileNotFoundError:
    pass
""")])
    path = tmp_path / "lovelace_lab_03.ipynb"
    nbformat.write(nb, path)
    code, out = run_check(path, "--data-dir", physionet, "--sandbox", "bwrap")
    assert "KEY-WAS-READABLE" not in out and "ModuleNotFoundError" not in out, out
    assert code == 0, out


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


# --------------------------------------------- the hand-out alone, in a fresh venv

TOOLS = ("bwrap", "unshare", "prlimit")
# What Windows lacks: `import resource` fails in the check's process, as it would there.
BLOCK = """import sys
for _name in ("resource", "fcntl", "pwd"):
    sys.modules.pop(_name, None)
    sys.modules[_name] = None
"""
ROW = re.compile(r"^│\s*(ok|FIX|note)\s*│\s*(.*?)\s*│\s*(.*?)\s*│$", re.MULTILINE)


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> SimpleNamespace:
    """A student's machine: the hand-out in a folder with spaces, and in it a fresh venv
    made from the hand-out's requirements.txt only (torch from the machine's local wheel,
    as the Makefile takes it, never downloaded); the project is not installed in it."""
    from grader.release import release

    course = tmp_path_factory.mktemp("course") / "Deep Learning"
    handout = release(LAB, course / "lab 01")
    os.chmod(course.parent, 0o755)  # as a student's folders are (pytest makes them 0700)
    for d in (course, handout):
        os.chmod(d, 0o755)
    venv = handout / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    py = str(venv / "bin" / "python")
    torch = subprocess.run([py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "torch"],
                           capture_output=True, text=True)
    if torch.returncode:
        pytest.fail("no torch wheel on pip's find-links (the Makefile's way to get torch "
                    f"without downloading it):\n{torch.stderr[-2000:]}")
    pip = subprocess.run([py, "-m", "pip", "install", "-q", "-r", "requirements.txt"],
                         cwd=handout, capture_output=True, text=True, timeout=1800)
    assert pip.returncode == 0, pip.stderr[-3000:]
    blocker = course.parent / "no-posix"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK)
    shutil.copy(LAB / "lab01.ipynb", handout / "lovelace_turing_lab_01.ipynb")  # the reference
    return SimpleNamespace(course=course, handout=handout, bin=venv / "bin", blocker=blocker)


def as_student(student, *args, cwd, hide_tools=False, **extra) -> tuple[int, str]:
    """``python ARGS`` in ``cwd`` as after ``source venv/bin/activate``; ``hide_tools``: no
    bwrap, unshare or prlimit on PATH, and no resource, fcntl or pwd in the check's Python."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(VIRTUAL_ENV=str(student.bin.parent), COLUMNS="250", **extra)
    env["PATH"] = os.pathsep.join([str(student.bin), env["PATH"]])
    if hide_tools:
        env["PATH"] = str(student.bin)
        env["PYTHONPATH"] = str(student.blocker)
        assert not any(shutil.which(t, path=env["PATH"]) for t in TOOLS)
        probe = subprocess.run(["python", "-c", "import resource"], env=env, capture_output=True)
        assert probe.returncode != 0
    r = subprocess.run(["python", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=3600)
    return r.returncode, r.stdout + r.stderr


def rows(out: str) -> dict[str, tuple[str, str]]:
    """The check's table: what -> (ok | FIX | note, detail)."""
    return {what: (mark, detail) for mark, what, detail in ROW.findall(out)}


@pytest.mark.slow
def test_handout_venv_lacks_the_project(student, tmp_path):
    """The student's venv has what requirements.txt names, not the project: the check
    below runs from the hand-out's folders."""
    code, out = as_student(student, "-c", "import torch, nbclient, grader", cwd=tmp_path)
    assert code != 0 and "No module named 'grader'" in out


@pytest.mark.slow
def test_handout_check_passes_the_reference_from_another_folder(student, physionet):
    """From the parent folder, the notebook in a folder of its own: `python "lab 01/grader"`
    finds the hand-out as its lab; the kernel finds `reference` as in Jupyter."""
    mine = student.course / "my work"
    mine.mkdir()
    shutil.copy(student.handout / "lovelace_turing_lab_01.ipynb", mine)
    code, out = as_student(student, student.handout / "grader", "check",
                           mine / "lovelace_turing_lab_01.ipynb", cwd=student.course,
                           GRADER_DATA=str(physionet))
    assert code == 0, out
    table = rows(out)
    assert table["run"][0] == "ok" and table["errors by cell"] == ("ok", "none"), out
    assert not [w for w, (mark, _) in table.items() if mark == "FIX"], out
    assert "ready to submit" in out


@pytest.mark.slow
def test_handout_check_without_sandbox_tools_reports_the_blank_handout(student, physionet):
    """The README's command in the hand-out's folder, with no bwrap, unshare or prlimit and
    no POSIX-only module: the blank hand-out runs, every question is a FIX row."""
    from grader.assignment import load_assignment

    shutil.copy(student.handout / "lab01.ipynb", student.handout / "doe_lab_01.ipynb")
    code, out = as_student(student, "-m", "grader", "check", "doe_lab_01.ipynb",
                           cwd=student.handout, hide_tools=True, GRADER_DATA=str(physionet))
    assert code == 1, out
    table = rows(out)
    assert table["sandbox"][0] == "note" and "none, not bubblewrap, no resource limits" in \
        table["sandbox"][1]
    assert table["run"][0] == "ok", out    # it ran: errors in cells, not a dead kernel
    assert "NotImplementedError" in table["errors by cell"][1]
    fix = {w for w, (mark, _) in table.items() if mark == "FIX"}
    questions = {f"{q.id} ({q.kind if q.kind != 'metric' else 'model ' + q.model})"
                 for q in load_assignment(student.handout).questions}
    assert fix == questions | {"group cell"}, out
    assert table["file name"][0] == table["given cells unchanged"][0] == "ok"
    assert "still None: no answer yet" in table["vanishing (multi)"][1]


@pytest.mark.slow
def test_handout_check_without_sandbox_tools_passes_the_reference(student, physionet):
    """The same without the tools, from the parent folder with --lab."""
    code, out = as_student(student, student.handout / "grader", "check",
                           student.handout / "lovelace_turing_lab_01.ipynb",
                           "--lab", student.handout, cwd=student.course.parent,
                           hide_tools=True, GRADER_DATA=str(physionet))
    assert code == 0, out
    assert rows(out)["sandbox"][0] == "note" and "ready to submit" in out


@pytest.mark.slow
def test_handout_last_cell_checks_from_jupyter(student):
    """The hand-out's last cell, in a kernel started in the notebook's folder as JupyterLab
    starts it: it checks the notebook JupyterLab names in JPY_SESSION_NAME, not the first
    `*_lab_01.ipynb` of the folder."""
    shutil.copy(student.handout / "lab01.ipynb", student.handout / "aaa_lab_01.ipynb")
    script = ("import sys, nbformat\nfrom nbclient import NotebookClient\n"
              "nb = nbformat.read(sys.argv[1], as_version=4)\nnb.cells = nb.cells[-1:]\n"
              "NotebookClient(nb, resources={'metadata': {'path': sys.argv[2]}}).execute()\n"
              "print(''.join(o.get('text', '') for o in nb.cells[0].outputs))\n")
    nb = student.handout / "lovelace_turing_lab_01.ipynb"
    code, out = as_student(student, "-c", script, nb, student.handout, cwd=student.course,
                           JPY_SESSION_NAME=str(nb))
    assert code == 0, out
    assert "grader check lovelace_turing_lab_01.ipynb" in out and "ready to submit" in out, out


@pytest.mark.slow
def test_kernel_that_cannot_start_shows_its_error(student, tmp_path):
    """A hand-out copied without grader/kernel_launcher.py (an older hand-out's grader, say):
    the kernel's own ImportError and one sentence on the fix, not a FIX row per question."""
    broken = tmp_path / "old copy"
    shutil.copytree(student.handout, broken, ignore=shutil.ignore_patterns("venv"))
    (broken / "grader" / "kernel_launcher.py").unlink()
    code, out = as_student(student, broken / "grader", "check",
                           broken / "lovelace_turing_lab_01.ipynb", cwd=tmp_path)
    assert code == 1, out
    table = rows(out)
    assert table["kernel"][0] == "FIX", out
    assert "No module named grader.kernel_launcher" in out
    assert "keep the hand-out's `grader/` and `reference/` folders as they came" in out
    assert [w for w, (mark, _) in table.items() if mark == "FIX"] == ["run", "kernel"], out
    assert "could not be run" in out and "no variable" not in out
