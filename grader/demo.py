"""``grader demo``: a sample class graded end to end, the newcomer's first command.

It builds a class from the reference solution as Moodle's "Download all submissions"
zip (every member uploads the group's notebook) with the grading worksheet Moodle
hands out, grades it, writes the feedback PDFs, the class summary, grades.csv, the
filled-in worksheet and the feedback zip, and prints where each lies.

The groups:

- Lovelace, Turing, Núñez: complete and right;
- Müller-Lüdenscheidt, O'Brien: several wrong answers and a weaker CNN;
- Curie: the kernel crashes halfway (``os._exit``);
- Châtelet, Hopper: a cell that never ends (graded until the time limit);
- Ørsted, Noether, Lamarr: hands in the blank hand-out.
"""
from __future__ import annotations

import csv
import io
import re
import shutil
import time
import zipfile
from pathlib import Path

import nbformat

from .assignment import load_assignment
from .moodle import ENGLISH_HEADERS, export
from .release import student_notebook

#: group label -> (members, how the notebook is changed)
GROUPS = {
    "right": (["Ada Lovelace", "Alan Turing", "José Núñez"], "right"),
    "weaker": (["Zoë Müller-Lüdenscheidt", "Siobhán O'Brien"], "weaker"),
    "crash": (["Marie Curie"], "crash"),
    "hang": (["Émilie du Châtelet", "Grace Hopper"], "hang"),
    "blank": (["Hans Christian Ørsted", "Emmy Noether", "Hedy Lamarr"], "blank"),
}


def _set_group(nb, members: list[str]) -> None:
    for cell in nb.cells:
        if cell.metadata.get("grader", {}).get("group"):
            cell.source = "GROUP = [\n" + "".join(f"    {m!r},\n" for m in members) + "]"
            return


def _replace(nb, old: str, new: str) -> None:
    hits = [c for c in nb.cells if old in c.source]
    if not hits:
        raise ValueError(f"demo: the reference notebook no longer holds {old!r}")
    for c in hits:
        c.source = c.source.replace(old, new)


def variant(assignment, how: str, members: list[str]):
    """The reference notebook changed the way one demo group got it wrong."""
    if how == "blank":
        nb = student_notebook(assignment)
        _set_group(nb, members)
        return nb
    nb = nbformat.read(assignment.notebook_path, as_version=4)
    for cell in nb.cells:  # what a group hands in carries no solution markers
        cell.source = re.sub(r"^[ \t]*### (BEGIN|END) SOLUTION[^\n]*\n?", "", cell.source, flags=re.M)
    _set_group(nb, members)
    if how == "weaker":
        _replace(nb, "conv_len = (30 + 2 * 2 - 1 * (5 - 1) - 1) // 2 + 1", "conv_len = 30 // 2 + 2")
        _replace(nb, 'split_reason = "B"', 'split_reason = "A"')
        _replace(nb, 'classification_losses = {"cross_entropy", "bce"}',
                 'classification_losses = {"cross_entropy", "mse"}')
        _replace(nb, "filters=(32, 64), kernel_size=5)", "filters=(2, 2), kernel_size=3)")
        _replace(nb, "lstm_hn_shape = (2, 8, 32)", "lstm_hn_shape = (8, 2, 32)")
    elif how == "crash":
        _replace(nb, "cnn_af = build_model(", "import os; os._exit(1)\ncnn_af = build_model(")
    elif how == "hang":
        _replace(nb, "gait_model = build_model(", "while True:\n    pass\ngait_model = build_model(")
    return nb


def build_class(assignment, folder: Path) -> tuple[Path, Path]:
    """Moodle's submissions zip and grading worksheet for the demo class."""
    folder.mkdir(parents=True, exist_ok=True)
    nn = f"{assignment.number:02d}"
    zpath = folder / f"DL-Lab{nn}-{assignment.number}-submissions.zip"
    rows, pid = [], 1000
    from .ingest import family_name, fold

    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
        for label, (members, how) in GROUPS.items():
            nb = variant(assignment, how, members)
            fname = "_".join(fold(family_name(m)) for m in members) + f"_lab_{nn}.ipynb"
            data = nbformat.writes(nb).encode()
            for m in members:
                pid += 1
                z.writestr(f"{m}_{pid}_assignsubmission_file/{fname}", data)
                rows.append([f"Participant {pid}", m, f"{fold(m)}@example.edu",
                             "Submitted for grading - Graded", "", "100.00", "Yes",
                             "Friday, 20 November 2026, 9:41 AM", "-", ""])
    wpath = folder / f"Grades-DL-Lab{nn}-{assignment.number}.csv"
    with open(wpath, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(ENGLISH_HEADERS)
        w.writerows(rows)
    return zpath, wpath


def demo(out: str | Path = "demo-out", lab: str | Path | None = None, *, jobs: int | None = None,
         timeout: float = 180, data_dir=None, console=None) -> dict:
    from rich.console import Console

    from .grade import grade

    console = console or Console(stderr=True)
    t0 = time.perf_counter()
    lab = Path(lab) if lab else Path(__file__).resolve().parents[1] / "assignments" / "lab01"
    assignment = load_assignment(lab)
    out = Path(out).resolve()
    if (out / "grader.db").exists():
        shutil.rmtree(out)  # the demo starts afresh each time
    zpath, wpath = build_class(assignment, out / "moodle-download")
    console.print(f"sample class: {zpath} ({sum(len(m) for m, _ in GROUPS.values())} students, "
                  f"{len(GROUPS)} groups) and its worksheet {wpath}")
    grade(zpath, lab, out, jobs=jobs, timeout=timeout, data_dir=data_dir, console=console)
    paths = {"grades": out / "grades.csv", "store": out / "grader.db",
             "executed notebooks": out / "executed"}
    exported = export(out, worksheet=wpath)
    paths.update({f"moodle {k}": v for k, v in dict(exported).items()})
    if (out / "feedback").exists():
        paths["feedback PDFs"] = out / "feedback"
    if (out / "summary.pdf").exists():
        paths["class summary"] = out / "summary.pdf"
    for name, p in paths.items():
        console.print(f"  {name:20s} {p}")
    console.print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return paths
