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
- Ørsted, Noether, Lamarr: hands in the blank hand-out;
- Pearson, Nightingale: hands in Lovelace's group's work with every variable of its own
  code renamed, the text answers reflowed and two cells swapped (the summary's "Similar
  work" section shows it).
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
    "copy": (["Karl Pearson", "Florence Nightingale"], "copy"),
}

# The right group's own work beyond the hand-out (its texts and two cells of its own), and
# the copy of it: the same work, renamed, reflowed and reordered.
OWN_TEXTS = {
    "best_model": "The CNN wins on every test metric we printed, and it needs far fewer weights "
                  "than the GRU. Its filters slide over consecutive RR intervals and pick up the "
                  "local irregularity that marks atrial fibrillation, wherever it appears in the "
                  "window. The GRU is close but trains several times longer; the MLP trails both.",
    "gait_interpretation": "With 64 people in all, a fold learns from fewer than forty of them, so "
                           "the network memorises how each person walks instead of the disease: the "
                           "training loss keeps dropping while the validation loss climbs. We would "
                           "first shrink the model and add dropout and weight decay.",
}
OWN_CELLS = [
    """sizes = {}
for label, model in [("MLP", mlp_af), ("CNN", cnn_af), ("GRU", rnn_af)]:
    sizes[label] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"{label:4s} {sizes[label]:7d} trainable weights")
ratio = sizes["GRU"] / sizes["CNN"]
print(f"the GRU has {ratio:.1f} times the weights of the CNN")""",
    """recall = cm.diagonal() / np.maximum(cm.sum(axis=1), 1)
for name, value in zip(af.classes, recall):
    print(f"recall of {name}: {value:.3f}")
worst = af.classes[int(recall.argmin())]
print("weakest class:", worst)""",
]
COPIED_CELLS = [
    """# model sizes
n_w = {}
for nm, net in [("MLP", mlp_af), ("CNN", cnn_af), ("GRU", rnn_af)]:
    n_w[nm] = sum(w.numel()   for w in net.parameters() if w.requires_grad)
    print(f"{nm:4s} {n_w[nm]:7d} trainable weights")
r = n_w["GRU"]/n_w["CNN"]
print(f"the GRU has {r:.1f} times the weights of the CNN")""",
    """# per-class recall
rec = cm.diagonal()/np.maximum(cm.sum(axis=1), 1)
for cls, v in zip(af.classes, rec):
    print(f"recall of {cls}: {v:.3f}")
w = af.classes[int(rec.argmin())]
print("weakest class:", w)""",
]


def _own_work(nb, texts: dict[str, str], cells: list[str]) -> None:
    """Put a group's own answers in its text cells and its own cells after the GRU's."""
    from nbformat.v4 import new_code_cell

    for cell in nb.cells:
        tag = cell.metadata.get("grader", {}).get("answer")
        if tag in texts:
            cell.source = "*Your answer:*\n\n" + texts[tag]
    at = next(i for i, c in enumerate(nb.cells) if "history_rnn = fit(" in c.source) + 1
    nb.cells[at:at] = [new_code_cell(c) for c in cells]


def _reflow(text: str, width: int = 9) -> str:
    ws = text.split()
    return "\n".join(" ".join(ws[i:i + width]) for i in range(0, len(ws), width))


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
    if how == "right":
        _own_work(nb, OWN_TEXTS, OWN_CELLS)
    elif how == "copy":
        _own_work(nb, {k: _reflow(v) for k, v in OWN_TEXTS.items()}, COPIED_CELLS[::-1])
    elif how == "weaker":
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
