"""``grader validate``: prove the lab holds together, end to end.

Checks, each printed as a row, any failure making the command exit non-zero:

1. key.json matches assignment.toml (every automatic question has its entry);
2. every question of assignment.toml is answered somewhere in the source notebook
   (a variable assigned in a code cell, or a markdown cell tagged for a text question);
3. the reference solution, graded through the whole pipeline (execution, sandbox,
   evidence, the grader's own measurements, scoring), gets every automatic point;
4. the student hand-out, graded exactly as released, gets 0 automatic points and no
   grader error.

Example::

    grader validate assignments/lab01
"""
from __future__ import annotations

import ast
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nbformat

from .assignment import Assignment, SpecError, load_assignment


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def assigned_names(source: str) -> set[str]:
    """Names a code cell assigns at any level (``x = ...``, ``x += ...``, ``for x in``).

    >>> sorted(assigned_names("a = 1\\nb, c = 2, 3\\nfor i in range(2): d = i"))
    ['a', 'b', 'c', 'd', 'i']
    """
    lines = [l for l in source.splitlines() if not l.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return set()
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def unanswered(assignment: Assignment) -> list[str]:
    """Questions the source notebook gives no place to answer."""
    nb = nbformat.read(assignment.notebook_path, as_version=4)
    names: set[str] = set()
    tags: set[str] = set()
    for cell in nb.cells:
        if cell.cell_type == "code":
            names |= assigned_names(cell.source)
        elif cell.cell_type == "markdown":
            tag = cell.metadata.get("grader", {}).get("answer")
            if tag:
                tags.add(tag)
    missing = []
    for q in assignment.questions:
        if q.answer and q.answer not in names:
            missing.append(f"{q.id} (no cell assigns `{q.answer}`)")
        if q.model and q.model not in names:
            missing.append(f"{q.id} (no cell assigns the model `{q.model}`)")
        if q.kind == "text" and q.cell not in tags:
            missing.append(f"{q.id} (no markdown cell tagged grader.answer = {q.cell!r})")
    return missing


def validate(folder: str | Path, *, jobs: int = 2, sandbox: str = "auto", data_dir=None,
             keep: str | Path | None = None, console=None) -> list[Check]:
    from rich.console import Console

    from .grade import grade
    from .release import release

    console = console or Console(stderr=True)
    checks: list[Check] = []
    try:
        assignment = load_assignment(folder)
        key = assignment.load_key()
        checks.append(Check("key.json matches assignment.toml", True,
                            f"{len(key['questions'])} entries for {len(assignment.questions)} questions"))
    except SpecError as exc:
        return [Check("assignment.toml and key.json", False, str(exc))]
    missing = unanswered(assignment)
    checks.append(Check("every question answered in the notebook", not missing,
                        "; ".join(missing) or f"{len(assignment.questions)} questions"))

    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="grader-validate-"))
    try:
        subs, handout = root / "submissions", root / "handout"
        subs.mkdir(parents=True, exist_ok=True)
        nn = f"{assignment.number:02d}"
        ref_name, blank_name = f"reference_solution_lab_{nn}.ipynb", f"handout_blank_lab_{nn}.ipynb"
        shutil.copy(assignment.notebook_path, subs / ref_name)
        release(assignment.folder, handout)
        shutil.copy(handout / assignment.notebook, subs / blank_name)
        rows = grade(subs, assignment.folder, root / "out", jobs=jobs, sandbox=sandbox,
                     data_dir=data_dir, console=console)
        by_file = {r["submission"]["file"]: r for r in rows}
        auto_max = sum(q.points for q in assignment.questions if q.automatic)

        ref = by_file[ref_name]
        auto = [q for q in ref["result"].questions if q.kind != "text"]
        lost = [f"{q.id}: {q.feedback}" for q in auto if q.points < q.max_points]
        got = sum(q.points for q in auto)
        checks.append(Check("reference solution gets every automatic point",
                            ref["evidence"].get("status") == "ok" and not lost,
                            f"{got:g} / {auto_max:g}; status {ref['evidence'].get('status')}"
                            + (f"; lost: {'; '.join(lost)}" if lost else "")))

        blank = by_file[blank_name]
        status = blank["evidence"].get("status")
        earned = [f"{q.id} ({q.points:g})" for q in blank["result"].questions
                  if q.kind != "text" and q.points > 0]
        checks.append(Check("hand-out as released gets 0 automatic points, no grader error",
                            status in ("ok", "errors") and not earned,
                            f"status {status}; points {blank['result'].total:g}"
                            + (f"; earned: {', '.join(earned)}" if earned else "")))
    except Exception as exc:  # report, never a traceback for a failed check
        checks.append(Check("grading the reference and the hand-out", False,
                            f"{type(exc).__name__}: {exc}"))
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return checks


def print_checks(checks: list[Check], console) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title="grader validate")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for c in checks:
        table.add_row(c.name, "PASS" if c.ok else "FAIL", Text(str(c.detail)))  # paths: not markup
    console.print(table)
