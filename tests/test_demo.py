"""grader demo's crashing and hanging groups, graded as the demo grades them."""
from __future__ import annotations

import io
from pathlib import Path

import nbformat
from rich.console import Console

from conftest import read_grades
from grader.assignment import load_assignment
from grader.demo import GROUPS, variant
from grader.grade import grade
from grader.ingest import family_name, fold

ROOT = Path(__file__).resolve().parents[1]
WARM_UP = ("perceptron_and", "vanishing", "classification_losses", "conv_len",
           "conv_len_dilated", "lstm_out_shape", "lstm_hn_shape")


def test_demo_crash_and_hang_groups_keep_their_warm_up_points(tmp_path, physionet):
    """The group whose kernel dies at the CNN (os._exit) and the one whose gait cell never
    ends keep every warm-up point (9) and what they answered before; the questions after
    the stop are not reached."""
    lab = load_assignment(ROOT / "assignments" / "lab01")
    subs = tmp_path / "subs"
    rows = {}
    # the crash ends the run by itself; the hang is cut at 60 s, well after the warm-up
    for label, timeout in (("crash", 1800), ("hang", 60)):
        members, how = GROUPS[label]
        file = "_".join(fold(family_name(m)) for m in members) + "_lab_01.ipynb"
        (subs / label).mkdir(parents=True)
        nbformat.write(variant(lab, how, members), subs / label / file)
        grade(subs / label, lab.folder, tmp_path / label, jobs=1, timeout=timeout,
              data_dir=physionet, console=Console(file=io.StringIO()))
        rows[label] = read_grades(tmp_path / label)[file]
    warm = sum(q.points for q in lab.questions if q.id in WARM_UP)
    assert warm == 9
    crash, hang = rows["crash"], rows["hang"]
    assert crash["status"].startswith("dead: stopped in cell"), crash["status"]
    assert hang["status"].startswith("timeout: stopped in cell"), hang["status"]
    for row in (crash, hang):
        assert sum(float(row[q]) for q in WARM_UP) == warm, row
    # the AF answers before the crash count too; the CNN was never made
    assert float(crash["af_train_windows"]) == 1 and float(crash["mlp_params"]) == 2
    assert float(crash["cnn_af_accuracy"]) == 0
    assert float(crash["total"]) > warm
