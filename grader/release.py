"""The student hand-out: the notebook without solutions, the helper code, requirements.

``grader release assignments/lab01 --out handout/`` writes::

    handout/lab01.ipynb        solutions removed, outputs cleared
    handout/reference/         the course library the notebook imports
    handout/requirements.txt   what `pip install -r` needs for `jupyter lab`
    handout/README.md          how to run it, how to name and check the submission

Solution regions are marked in the source notebook by ``### BEGIN SOLUTION`` and
``### END SOLUTION`` lines. In a code cell a region becomes a placeholder that keeps
the notebook runnable: ``name = None`` for every variable it assigned, else a
``raise NotImplementedError``; in a markdown cell, a line asking for the answer.
Nothing of the key travels: the key is never read here.

Example
-------
>>> strip_code('x = 1\\n### BEGIN SOLUTION\\nanswer = 42\\n### END SOLUTION\\n')
'x = 1\\nanswer = None  # YOUR ANSWER HERE\\n'
"""
from __future__ import annotations

import ast
import hashlib
import re
import shutil
import textwrap
from pathlib import Path

import nbformat

from .assignment import Assignment, load_assignment

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
_REGION = re.compile(r"^([ \t]*)### BEGIN SOLUTION[^\n]*\n(.*?)^[ \t]*### END SOLUTION[^\n]*(\n|$)",
                     re.MULTILINE | re.DOTALL)
MARKDOWN_PLACEHOLDER = "_Write your answer here._\n"

REQUIREMENTS = """\
# python -m pip install -r requirements.txt ; then: python -m jupyter lab
torch>=2.2
numpy>=1.26
pandas>=2.1
scikit-learn>=1.3
wfdb>=4.1
matplotlib>=3.8
platformdirs>=4.0
rich>=13.7
jupyterlab>=4.0
ipykernel>=6.29
# for the self-check, `python -m grader check`
nbformat>=5.9
nbclient>=0.10
click>=8.1
jinja2>=3.1
weasyprint>=62
onnx>=1.15                # the check exports hand-written models as grading does
"""


def _placeholder(indent: str, body: str) -> str:
    """What replaces one code region."""
    try:
        tree = ast.parse(textwrap.dedent(body))
    except SyntaxError:
        # Not statements on their own (e.g. the items of a list literal).
        return f"{indent}# YOUR ANSWER HERE\n"
    names: list[str] = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
        for t in targets:
            for n in ast.walk(t):
                if isinstance(n, ast.Name) and n.id not in names:
                    names.append(n.id)
    if names:
        return "".join(f"{indent}{n} = None  # YOUR ANSWER HERE\n" for n in names)
    if all(isinstance(node, ast.Expr) for node in tree.body):
        # Values inside a literal (the members of the group list, say).
        return f"{indent}# YOUR ANSWER HERE\n"
    return f"{indent}# YOUR CODE HERE\n{indent}raise NotImplementedError(\"replace this line with your code\")\n"


def strip_code(source: str) -> str:
    """A code cell's source with every solution region replaced by its placeholder."""
    return _REGION.sub(lambda m: _placeholder(m.group(1), m.group(2)), source)


def strip_markdown(source: str) -> str:
    return _REGION.sub(lambda m: MARKDOWN_PLACEHOLDER, source)


def public_spec(path: Path) -> str:
    """assignment.toml as the self-check needs it: questions and limits, no tolerance."""
    lines = path.read_text().splitlines()
    keep = [l for l in lines if not re.match(r"\s*tolerance\s*=", l)]
    return "# The questions of the lab, for `grader check`. No expected answer is here.\n" + \
        "\n".join(keep) + "\n"


def source_hash(source: str) -> str:
    """Hash of a locked cell's source, so ``grader check`` can tell it was changed."""
    return hashlib.sha256(source.strip().encode()).hexdigest()


def student_notebook(assignment: Assignment) -> nbformat.NotebookNode:
    """The source notebook as handed out: no solution, no output, locked cells hashed."""
    nb = nbformat.read(assignment.notebook_path, as_version=4)
    for i, cell in enumerate(nb.cells):
        text = cell.source
        if BEGIN in text and END not in text or END in text and BEGIN not in text:
            raise ValueError(f"{assignment.notebook_path}: cell {i} has an unmatched solution marker")
        if cell.cell_type == "code":
            cell.source = strip_code(text)
            cell.outputs, cell.execution_count = [], None
        elif cell.cell_type == "markdown":
            cell.source = strip_markdown(text)
        if BEGIN in cell.source:
            raise ValueError(f"{assignment.notebook_path}: cell {i}: a solution marker is left "
                             "after stripping (nested or misplaced markers?)")
        meta = cell.metadata.get("grader", {})
        if meta.get("locked"):
            meta["locked_sha256"] = source_hash(cell.source)
    return nb


def release(folder: str | Path, out: str | Path) -> Path:
    """Write the hand-out of the assignment in ``folder`` into ``out``."""
    assignment = load_assignment(folder)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    nbformat.write(student_notebook(assignment), out / assignment.notebook)
    import reference  # the course library and the self-check, as source: no key in them

    import grader

    for pkg in (reference, grader):
        dest = out / pkg.__name__
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(Path(pkg.__file__).parent, dest,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (out / "assignment.toml").write_text(public_spec(assignment.folder / "assignment.toml"))
    (out / "requirements.txt").write_text(REQUIREMENTS)
    nn = f"{assignment.number:02d}"
    (out / "README.md").write_text(f"""\
# {assignment.course + ': ' if assignment.course else ''}Lab {nn} — {assignment.title}

## Set-up

In this folder (the one with this README), in a terminal:

    python -m venv venv
    source venv/bin/activate            # Windows: venv\\Scripts\\activate
    python -m pip install --upgrade pip
    python -m pip install -r requirements.txt
    python -m jupyter lab

The notebook `{assignment.notebook}` downloads nothing by itself: fetch the PhysioNet data once
(`python -c "from reference.fetch import fetch; fetch()"`), or set `GRADER_DATA` to a folder
that holds `afdb/` and `gaitndd/`. Keep `reference/` and `grader/` beside the notebook: the
notebook imports the first, the self-check is the second.

## Submitting

Work in groups of up to three. Fill in the group cell at the top (full names, as on Moodle),
answer every question, run the notebook from top to bottom, and save it as

    name1_name2_name3_lab_{nn}.ipynb

(your family names, lower case, no accents, spaces or hyphens). Every member uploads it on
Moodle. Cells marked as given must stay unchanged.

Before submitting, check the form of your answers. In this folder, with the venv active:

    python -m grader check name1_name2_name3_lab_{nn}.ipynb            # runs it as the grader will
    python -m grader check name1_name2_name3_lab_{nn}.ipynb --no-run   # reads it as saved

From any other folder, name this folder's `grader`: `python "path/to/this folder/grader" check
NOTEBOOK` (it reads this folder's `assignment.toml` when the notebook's folder has none).
In JupyterLab, the notebook's last cell runs the check on the saved notebook (set `RUN = True`
in it to run the notebook first).

It tells you about missing answers, answers of the wrong type or form, given cells you changed
and a file name off the convention, and exits non-zero when one of them would cost points. It
does not know the expected answers. The run takes as long as the notebook: it starts a fresh
kernel, in a sandbox where Linux has bubblewrap, else (macOS, Windows) as Jupyter does, and
says which. When that kernel cannot start, the check shows the kernel's own last lines.
It was tested on Linux; on macOS and Windows it has not been tried yet: if it fails there,
tell us what it printed.
""")
    return out
