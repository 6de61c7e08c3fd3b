"""``grader check``: the students' own look at their notebook, before submitting.

It runs the notebook with the same runner and limits as grading (or, with
``--no-run``, reads it as saved) and reports on the form only: the file name
convention, the group cell, every question answered with an answer of the right
type and form, choices among the allowed ones, plausible ranges, cells that must
stay unchanged left unchanged, the run time against the grading limit, errors by
cell. It reads the question spec, never a key: the hand-out carries none.

Students run it from the hand-out, which they never install: ``grader/`` and
``reference/`` are folders beside their notebook. So the check's kernel gets those
folders and the notebook's own on its import path (a kernel in Jupyter finds them
through its working folder), uses the best sandbox the machine has and runs without one
where there is none (macOS, Windows, a Linux without bubblewrap), with a note saying so.

Example::

    grader check lovelace_turing_lab_01.ipynb --lab .
"""
from __future__ import annotations

import ast
import math
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .assignment import Assignment, Question, load_assignment
from .evidence import decode_value
from .execute import load_notebook
from .ingest import Submission, read_submission
from .release import source_hash
from .sandbox import Isolation
from .score import form_problem


@dataclass
class Row:
    what: str
    ok: bool
    detail: str
    costs_points: bool = True


def answer_form(q: Question, value: Any) -> str | None:
    """Why ``value`` has not the form ``q`` needs (None: it has). Pure; knows no key.

    What scoring refuses (:func:`grader.score.form_problem`), and what scores 0 although
    the form is right: no answer yet, a number that is not finite, a rate outside [0, 1],
    a pick that is not one of the choices.

    >>> from grader.assignment import Question
    >>> answer_form(Question("c", 1, "choice", "p", answer="c", choices=("A", "B")), "E")
    "'E' is not one of the choices (A, B)."
    """
    if value is None:
        return "still None: no answer yet"
    why = form_problem(q, value)
    if why is not None:
        return why
    if q.kind in ("number", "consistency") and not math.isfinite(value):
        return f"expected a finite number, got {value!r}"
    if q.kind == "consistency" and not 0.0 <= value <= 1.0:
        return f"a rate lies between 0 and 1, got {value!r}"
    if q.kind == "multi":
        bad = [v for v in value if v.strip().casefold() not in {c.casefold() for c in q.choices}]
        if bad:
            return f"{bad[0]!r} is not one of the choices ({', '.join(q.choices)})."
    return None


def _grader_meta(cell) -> dict:
    """The cell's ``metadata.grader`` (``{}`` when absent or malformed: the runner
    repairs notebooks that nbformat's strict reader refuses)."""
    md = cell.get("metadata")
    meta = md.get("grader") if isinstance(md, dict) else None
    return meta if isinstance(meta, dict) else {}


def static_rows(path: Path, assignment: Assignment, nb,
                sub: Submission | None = None) -> list[Row]:
    """What can be told without running: name, group, locked cells, placeholders.
    ``sub``: the file as ingest reads it (read here when not given)."""
    rows: list[Row] = []
    if sub is None:
        sub = read_submission(path, path.name, assignment.number)
    nn = f"{assignment.number:02d}"
    name_flags = [f for f in sub.flags if "file name" in f or "lab number" in f]
    rows.append(Row("file name", not name_flags,
                    "; ".join(name_flags) or f"{path.name} follows name1_name2_name3_lab_{nn}.ipynb"))
    group_flags = [f for f in sub.flags if "group cell" in f or "member" in f]
    rows.append(Row("group cell", bool(sub.members) and not group_flags,
                    "; ".join(group_flags) or ", ".join(sub.members) or "no member named"))
    changed = []
    for i, cell in enumerate(nb.cells):
        meta = _grader_meta(cell)
        if meta.get("locked") and meta.get("locked_sha256") and \
                source_hash(cell.source) != meta["locked_sha256"]:
            changed.append(str(i))
    rows.append(Row("given cells unchanged", not changed,
                    f"cells {', '.join(changed)} were changed: restore them" if changed
                    else "all given cells as handed out"))
    tags = {_grader_meta(c).get("answer"): c.source for c in nb.cells
            if c.cell_type == "markdown"}
    for q in assignment.questions:
        if q.kind == "text":
            text = tags.get(q.cell)
            empty = text is None or "Write your answer here" in text or \
                len(text.replace("*Your answer:*", "").strip()) < 20
            rows.append(Row(f"{q.id} (text)", not empty,
                            "no answer written yet" if empty else f"{len(text.split())} words"))
    return rows


def check_notebook(path: str | Path, lab: str | Path | None = None, *, run: bool = True,
                   data_dir=None, sandbox: str = "auto") -> list[Row]:
    """Every row of the check; never reads a key.

    The file is read as grading reads it: what ingest refuses (a PDF renamed, an old
    notebook format) fails here too, and what the runner repairs and runs passes."""
    path = Path(path).resolve()
    lab = Path(lab) if lab else default_lab(path)
    assignment = load_assignment(lab)
    sub = read_submission(path, path.name, assignment.number)
    if sub.problem:
        return [Row("notebook", False, sub.problem)]
    nb, problem = load_notebook(path)
    if nb is None:
        return [Row("notebook", False, problem or f"{path.name}: not a readable notebook")]
    rows = static_rows(path, assignment, nb, sub)
    if not run:
        rows += saved_rows(nb, assignment)
        return rows
    return rows + run_rows(path, assignment, data_dir, sandbox)


def default_lab(notebook: Path) -> Path:
    """The notebook's folder; when it holds no assignment.toml, the hand-out that this
    ``grader`` came with (a notebook kept in a folder of its own, say)."""
    here = notebook.parent
    handout = package_parents()[0]
    if not (here / "assignment.toml").exists() and (handout / "assignment.toml").exists():
        return handout
    return here


def package_parents() -> list[Path]:
    """The folders that hold the running ``grader`` and ``reference``: the hand-out's
    folder, where students never install them."""
    import reference

    import grader

    return list(dict.fromkeys(Path(m.__file__).resolve().parent.parent
                              for m in (grader, reference)))


def kernel_env_paths(notebook: Path) -> dict[str, str]:
    """The check kernel's import path, as Jupyter's: the notebook's own folder (where
    Jupyter starts its kernel, so that ``from reference ...`` beside it works), then the
    folders of the running ``grader`` and ``reference``. ``PYTHONPATH`` lets the kernel
    start as ``python -m grader.kernel_launcher``; ``GRADER_KERNEL_PATH`` tells it where
    Jupyter would have these folders (see :mod:`grader.kernel_launcher`)."""
    parents = package_parents()
    paths = list(dict.fromkeys([notebook.parent, *parents]))
    return {"PYTHONPATH": os.pathsep.join(map(str, parents)),
            "GRADER_KERNEL_PATH": os.pathsep.join(map(str, paths))}


def holds_secrets(folder: Path) -> bool:
    """Whether ``folder`` holds a lab's key: a ``key.json`` of its own, or it is (or lies
    in) an instructor's checkout, whose ``assignments/<lab>/key.json`` it would show. Such
    a folder is never shown to the check's kernel; a hand-out folder, which holds none, is.

    >>> holds_secrets(Path(__file__).resolve().parents[1])   # this project's checkout
    True
    """
    if (folder / "key.json").exists():
        return True
    return any(next((f / "assignments").glob("*/key.json"), None) is not None
               for f in (folder, *folder.parents))


def check_isolation(choice: str) -> Isolation:
    """The sandbox of the check's run. ``auto``: the best one that works here, else none,
    with a note (a student's own notebook on the student's own machine: it runs unisolated
    in Jupyter anyway). A mode asked for by name must work, except that ``none`` runs
    without resource limits where ``prlimit`` is missing (macOS, Windows)."""
    from dataclasses import replace

    from .sandbox import SandboxUnavailable, resolve

    if choice != "auto":
        try:
            return resolve(choice)
        except SandboxUnavailable as exc:
            if choice != "none":
                raise
            return Isolation("none", requested="none", rlimits=False,
                             notes=(f"no resource limits ({exc})",))
    for mode in ("bwrap", "unshare"):
        try:
            return replace(resolve(mode), requested="auto", degraded=mode != "bwrap")
        except SandboxUnavailable:
            continue
    try:
        iso = resolve("none")
    except SandboxUnavailable as exc:
        iso = Isolation("none", rlimits=False, notes=(f"no resource limits ({exc})",))
    return replace(iso, requested="auto", degraded=True)


def kernel_fix(tail: str) -> str:
    """One sentence on the likely fix, from the last lines of a kernel that did not start."""
    missing = re.findall(r"No module named '?([\w.]+)", tail)
    if missing:
        return (f"The kernel's Python cannot import `{missing[-1]}`: run the check with the "
                "Python of the environment made from the hand-out's requirements.txt "
                "(`python -m pip install -r requirements.txt` in it), and keep the hand-out's "
                "`grader/` and `reference/` folders as they came.")
    return ("The notebook was not run, so no answer was checked: fix what the kernel's last "
            "lines above say (or try `--sandbox none`), or check the saved notebook with "
            "`--no-run`.")


def saved_rows(nb, assignment: Assignment) -> list[Row]:
    """From the saved notebook: errors in its outputs, answer variables still None."""
    errors = [f"cell {i}: {o.get('ename')}" for i, c in enumerate(nb.cells) if c.cell_type == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    rows = [Row("errors in saved outputs", not errors, "; ".join(errors) or "none",
                costs_points=False)]
    assigned: dict[str, str] = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    if isinstance(t, ast.Name):
                        assigned[t.id] = ast.unparse(node.value)
    for q in assignment.questions:
        if q.kind == "text" or not q.answer:
            continue
        src = assigned.get(q.answer)
        ok = src is not None and src != "None"
        rows.append(Row(f"{q.id} ({q.kind})", ok,
                        "still None: no answer yet" if src == "None" else
                        "no cell assigns it" if src is None else "answered (run to check its form)"))
    return rows


def run_rows(path: Path, assignment: Assignment, data_dir, sandbox: str) -> list[Row]:
    from jupyter_client.kernelspec import NoSuchKernel
    from reference.paths import MissingDataError, cache_dir
    from reference.paths import data_dir as resolve_data_dir

    from .evidence import collect, epilogue_code
    from .execute import execute_notebook
    from .grade import warm_data_cache
    from .sandbox import package_roots, python_roots

    lim = assignment.limits
    data_dir = resolve_data_dir(data_dir)
    try:
        warm_data_cache(data_dir)   # parsed once here; the kernel reads it, as in grading
    except MissingDataError:
        pass                        # the notebook's own cell reports the missing file
    cache = cache_dir()
    isolation = check_isolation(sandbox)
    paths = kernel_env_paths(path)
    # What a hiding sandbox must show the kernel: its Python, wherever the venv lies, and
    # the folders it imports from, read-only; never a folder that holds a key.
    shown = [p for p in [*python_roots(), *package_roots(),
                         *paths["GRADER_KERNEL_PATH"].split(os.pathsep)]
             if not holds_secrets(Path(p))]
    work = Path(tempfile.mkdtemp(prefix="grader-check-"))
    os.chmod(work, 0o755)
    try:
        try:
            result = execute_notebook(
                path, workdir=work, isolation=isolation, data_dir=data_dir,
                limits=lim.to_sandbox(), readonly=[cache, *shown],
                env={"GRADER_CACHE": str(cache), **paths},
                snapshot=epilogue_code(assignment), threads=os.cpu_count() or 1)
        except NoSuchKernel as exc:  # ipykernel missing from this Python
            return [Row("kernel", False, f"no Jupyter kernel `{exc.name}` for {sys.executable}. "
                        + kernel_fix("No module named 'ipykernel'"))]
        ev = collect(result, work, assignment)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [Row("run", result.status in ("ok", "errors"),
                f"{result.status} in {result.seconds:.0f} s (grading allows "
                f"{lim.notebook_timeout:.0f} s){': ' + result.message if result.message else ''}")]
    if isolation.mode != "bwrap":
        rows.append(Row("sandbox", False, f"{isolation.mode}, not bubblewrap"
                        f"{'' if isolation.rlimits else ', no resource limits'}: the notebook "
                        "ran with your rights, as in Jupyter (grading runs it in bubblewrap)",
                        costs_points=False))
    start = [e for e in result.errors if e.ename == "KernelStartError"]
    if start:
        # No cell ran: one row with the kernel's own words, not one FIX per question.
        tail = start[0].traceback.strip() or "(the kernel wrote nothing)"
        rows.append(Row("kernel", False, f"its last lines:\n{tail}\n{kernel_fix(tail)}"))
        return rows
    errs = [f"cell {e.cell_index}: {e.ename}: {e.evalue}" for e in result.errors]
    rows.append(Row("errors by cell", not errs, "; ".join(errs) or "none", costs_points=False))
    for q in assignment.questions:
        if q.kind == "text":
            continue
        if q.kind == "metric":
            model = ev.get("models", {}).get(q.model)
            ok = bool(model) and "error" not in model
            rows.append(Row(f"{q.id} (model {q.model})", ok,
                            "exported for the grader's measurement" if ok else
                            (model or {}).get("error", f"no model in `{q.model}`")))
            continue
        if q.answer not in ev.get("answers", {}):
            rows.append(Row(f"{q.id} ({q.kind})", False, f"no variable `{q.answer}`"))
            continue
        why = answer_form(q, decode_value(ev["answers"][q.answer]))
        rows.append(Row(f"{q.id} ({q.kind})", why is None, why or "answered, right form"))
    return rows


def exit_code(rows: list[Row]) -> int:
    return 1 if any(not r.ok and r.costs_points for r in rows) else 0
