"""grader.render: the per-group feedback PDFs and the instructor's summary.

Rows are built as ``grader.grade.rescore`` builds them: a store row, realistic evidence
and the real ``score()`` of the real lab 01 assignment and key.  The PDFs are read back
with pypdf.
"""
from __future__ import annotations

import base64
import io
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pypdf import PdfReader

from grader.assignment import load_assignment
from grader.render import (band_chart, feedback_data, feedback_files, png_ok, public_isolation,
                           render_all, render_feedback, render_summary, student_flags,
                           summary_data)
from grader.score import score

LAB = Path(__file__).resolve().parent.parent / "assignments" / "lab01"
WHEN = datetime(2026, 12, 1, 14, 30, tzinfo=timezone.utc)
ISOLATION = ("bubblewrap (no network, own uid); hidden paths: /home/prof/assignments/lab01, "
             "/home/prof/.git; limits: 900 s per cell, 1800 s per notebook, memory 6 GiB")


@pytest.fixture(scope="module")
def lab():
    return load_assignment(LAB)


@pytest.fixture(scope="module")
def key(lab):
    return lab.load_key()


def _png(kind: str = "curve") -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3))
    ax = fig.add_subplot()
    if kind == "curve":
        ax.plot([1.0, 0.6, 0.4, 0.35, 0.33], label="train")
        ax.plot([1.0, 0.7, 0.6, 0.62, 0.66], label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend()
    else:
        ax.imshow([[950, 40], [35, 880]], cmap="Blues")
        ax.set_title("confusion matrix")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return base64.b64encode(buf.getvalue()).decode()


def _measure(cnn=0.9512, rnn=0.9433, gait=0.62) -> dict:
    return {"cnn_af|af|0": {"metrics": {"accuracy": cnn, "balanced_accuracy": cnn - 0.01,
                                        "sensitivity": 0.9321, "specificity": 0.9655}},
            "rnn_af|af|0": {"metrics": {"accuracy": rnn, "balanced_accuracy": rnn}},
            "gait_model|gait_binary|1": {"metrics": {"subject_balanced_accuracy": gait}}}


def _right_answers(key) -> dict:
    enc = {"perceptron_and": "tuple", "lstm_out_shape": "tuple", "lstm_hn_shape": "tuple",
           "gait_window_shape": "tuple", "vanishing": "set", "classification_losses": "set"}
    answers = {}
    for qid, entry in key["questions"].items():
        if "expected" in entry:
            v = entry["expected"]
            answers[qid] = {enc[qid]: v} if qid in enc else v
    answers.update(cnn_af_test_accuracy=0.9512, cnn_af_sensitivity=0.9321,
                   cnn_af_specificity=0.9655, gait_subject_balanced_accuracy=0.62)
    return answers


def _sub(id, members, feedback, file, sha, flags=(), problem=None) -> dict:
    from grader.ingest import fold, family_name

    fam = [fold(family_name(m)) for m in members]
    return {"id": id, "file": file, "sha256": sha, "group_key": "_".join(sorted(fam)) or "#" + sha[:12],
            "feedback": feedback, "members": list(members), "family_names": fam,
            "file_names": fam, "flags": list(flags), "problem": problem,
            "moodle_name": None, "moodle_id": None}


def _row(lab, key, sub, evidence, manual=None) -> dict:
    return {"submission": sub, "evidence": evidence,
            "result": score(lab, evidence, key, manual or {})}


@pytest.fixture(scope="module")
def rows(lab, key):
    good = {"status": "ok", "message": None, "seconds": 212.4, "isolation": ISOLATION,
            "errors": [], "answers": _right_answers(key),
            "texts": {"best_model": "The bidirectional GRU: it sees the rhythm both ways; "
                                    "the CNN is close but misses short episodes.",
                      "gait_interpretation": "Few subjects, so the model overfits."},
            "figures": [{"cell": 31, "png": _png("curve")}, {"cell": 35, "png": _png("cm")}],
            "measurements": _measure()}
    bad = {"status": "errors", "message": None, "seconds": 95.0, "isolation": ISOLATION,
           "errors": [{"cell_index": 27, "execution_count": 14, "ename": "RuntimeError",
                       "evalue": "mat1 and mat2 shapes cannot be multiplied (8x30 and 20x64)",
                       "traceback": "Cell In[14], line 3\n----> 3 out = model(x)\n"
                                    "File torch/nn/modules/linear.py:125, in Linear.forward\n"
                                    "RuntimeError: mat1 and mat2 shapes cannot be multiplied "
                                    "(8x30 and 20x64)"}],
           "answers": {"perceptron_and": {"tuple": [0, 1, 1, 1]}, "conv_len": 14,
                       "af_test_fraction": 0.61, "vanishing": {"set": ["sigmoid", "relu"]},
                       "cnn_af_test_accuracy": 0.99, "split_reason": "A"},
           "texts": {}, "figures": [],
           "measurements": {"cnn_af|af|0": {"metrics": {"accuracy": 0.71, "sensitivity": 0.5,
                                                        "specificity": 0.9}},
                            "rnn_af|af|0": {"error": "rnn_af was never defined"},
                            "gait_model|gait_binary|1": {"error": "gait_model was never defined"}}}
    invalid = {"status": "invalid", "message": "not a notebook: the file is a PDF renamed .ipynb",
               "answers": {}, "texts": {}, "errors": [], "measurements": {}}
    same = dict(good, answers={**good["answers"], "conv_len": 16}, figures=[])
    a = _sub(1, ["Ada Lovelace", "Alan Turing", "Zoë Müller"], "lovelace_turing_muller_lab_01",
             "lovelace_turing_muller_lab_01.ipynb", "a" * 64)
    a2 = dict(a, id=2, file="Alan Turing_12_assignsubmission_file/lovelace_turing_muller_lab_01.ipynb")
    b = _sub(3, ["Grace Hopper", "Émile Borel"], "hopper_borel_lab_01", "hopper borel.ipynb",
             "b" * 64, flags=["file name off the convention: 'hopper borel.ipynb', expected a name "
                              "like 'hopper_borel_lab_01.ipynb'",
                              "identical to secret_group_lab_01.ipynb (handed in by a different group)"])
    c = _sub(4, [], "groupcccccccc_lab_01", "report.ipynb", "c" * 64,
             flags=["group cell missing: no code cell assigns GROUP = [\"Full Name\", ...]"],
             problem="not a notebook: the file is a PDF renamed .ipynb")
    d = _sub(5, ["Grace Hopper", "Émile Borel"], "hopper_borel_lab_01", "hopper_borel_lab_01.ipynb",
             "d" * 64)
    return [_row(lab, key, a, good, {"best_model": (2.5, "Good, but no timings.")}),
            _row(lab, key, a2, good, {"best_model": (2.5, "Good, but no timings.")}),
            _row(lab, key, b, bad), _row(lab, key, c, invalid), _row(lab, key, d, same)]


@pytest.fixture(scope="module")
def rendered(rows, lab, key, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    t0 = time.perf_counter()
    paths = render_all(rows, lab, key, out)
    return out, paths, time.perf_counter() - t0


def _text(path: Path) -> str:
    """The PDF's text, white space collapsed (table cells wrap)."""
    return " ".join(" ".join(p.extract_text() or "" for p in PdfReader(str(path)).pages).split())


def _images(path: Path) -> int:
    return sum(len(p.images) for p in PdfReader(str(path)).pages)


# ---------------------------------------------------------------- names

def test_names_follow_the_convention_and_never_overwrite(rendered):
    out, paths, _ = rendered
    names = sorted(p.name for p in paths["feedback"])
    # two uploads of one notebook: one report; same name, different notebook: each its
    # hash (neither uploader is known, so neither takes the plain name)
    assert names == ["groupcccccccc_lab_01.pdf", "hopper_borel_lab_01_bbbbbbbb.pdf",
                     "hopper_borel_lab_01_dddddddd.pdf",
                     "lovelace_turing_muller_lab_01.pdf"]
    assert all(p.parent == out / "feedback" and p.stat().st_size > 1000 for p in paths["feedback"])
    assert "muller" in names[-1]          # accents folded
    index = (out / "feedback" / "index.json").read_text()
    assert '"2": "lovelace_turing_muller_lab_01.pdf"' in index
    assert '"5": "hopper_borel_lab_01_dddddddd.pdf"' in index


def test_feedback_files_is_pure_and_stable(rows):
    a = [n for n, _ in feedback_files(rows)]
    assert a == [n for n, _ in feedback_files(rows)]
    assert [len(rs) for _, rs in feedback_files(rows)] == [2, 1, 1, 1]


# ---------------------------------------------------------------- content

def test_good_group_report(rendered):
    out, _, _ = rendered
    pdf = out / "feedback" / "lovelace_turing_muller_lab_01.pdf"
    text = _text(pdf)
    assert len(PdfReader(str(pdf)).pages) >= 1
    for s in ("Ada Lovelace", "Alan Turing", "Zoë Müller", "Deep Learning", "lab 01",
              "a" * 64, datetime.now(timezone.utc).strftime("%Y-%m-%d"), "Atrial fibrillation", "Gait", "perceptron_and",
              "Shape of h_n of the same LSTM.", "Good, but no timings.", "correct", "page 1 of"):
        assert s in text, s
    assert "/home/prof" not in text        # the grader's paths stay private
    # two band charts... three metric questions + two figures of the notebook
    assert _images(pdf) >= 5


def test_total_and_exercise_scores(rendered, rows):
    out, _, _ = rendered
    text = _text(out / "feedback" / "lovelace_turing_muller_lab_01.pdf")
    res = rows[0]["result"]
    assert f"{round(res.total, 2):g} / {res.max:g} points" in text
    for name, e in res.exercises.items():
        assert name in text


def test_wrong_group_report_shows_errors_and_hides_the_key(rendered, key):
    out, _, _ = rendered
    text = _text(out / "feedback" / "hopper_borel_lab_01_bbbbbbbb.pdf")
    assert "Grace Hopper" in text and "Émile Borel" in text
    assert "cell 27: RuntimeError" in text
    assert "mat1 and mat2 shapes cannot be multiplied" in text
    assert "wrong" in text and "no answer" in text
    # revealed kinds show the expected value; a number question does not
    assert "(0, 0, 0, 1)" in text
    exp = key["questions"]["af_test_fraction"]["expected"]
    assert str(exp) not in text and f"{exp:.4g}" not in text and f"{exp:.3f}" not in text
    # nor the reference runs of a metric (drawn, never written)
    for r in key["questions"]["cnn_af_accuracy"]["reference"]:
        assert f"{r:g}" not in text
    # flags about their own file, never another group's file name
    assert "file name off the convention" in text
    assert "secret_group" not in text


def test_invalid_submission_gets_a_report_with_the_message(rendered, lab):
    out, _, _ = rendered
    text = _text(out / "feedback" / "groupcccccccc_lab_01.pdf")
    assert "could not be graded" in text
    assert "not a notebook: the file is a PDF renamed .ipynb" in text
    assert f"0 / {lab.max_points:g} points" in text
    assert "Conv1d output length" in text


def test_summary(rendered, rows):
    out, paths, _ = rendered
    assert paths["summary"] == out / "summary.pdf"
    text = _text(paths["summary"])
    for s in ("Grades", "Ada Lovelace, Alan Turing, Zoë Müller", "Grace Hopper, Émile Borel",
              "lovelace_turing_muller_lab_01.pdf", "hopper_borel_lab_01_dddddddd.pdf",
              "Per question", "cnn_af_accuracy", "Score distribution",
              "cell 27: RuntimeError", "not a notebook", "identical to secret_group_lab_01.ipynb",
              "group cell missing"):
        assert s in text, s
    assert f"{round(rows[0]['result'].total, 2):g}" in text
    assert _images(paths["summary"]) >= 1


def test_unchanged_reports_are_kept_changed_ones_rendered(rows, lab, key, tmp_path):
    first = render_feedback(rows, lab, key, tmp_path)
    stamps = {p.name: p.stat().st_mtime_ns for p in first}
    again = render_feedback(rows, lab, key, tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in again} == stamps      # nothing re-rendered
    # One group's manual score changes: its report alone is rendered, with the new comment.
    changed = [_row(lab, key, rows[0]["submission"], rows[0]["evidence"],
                    {"best_model": (1.0, "Timings missing: 1 point off.")})] + rows[1:]
    third = render_feedback(changed, lab, key, tmp_path)
    moved = [p.name for p in third if p.stat().st_mtime_ns != stamps[p.name]]
    assert moved == ["lovelace_turing_muller_lab_01.pdf"]
    assert "Timings missing: 1 point off." in _text(tmp_path / "feedback" / moved[0])


def test_many_reports_render_in_processes_as_in_one(rows, lab, key, tmp_path, monkeypatch):
    monkeypatch.setattr("grader.render._now", lambda: WHEN)
    serial = render_all(rows, lab, key, tmp_path / "serial")
    monkeypatch.setattr("grader.render.REPORTS_PER_HELPER", 1)
    ticks = []
    parallel = render_all(rows, lab, key, tmp_path / "parallel", workers=3,
                          progress=lambda: ticks.append(1))
    assert [p.name for p in parallel["feedback"]] == [p.name for p in serial["feedback"]]
    assert len(ticks) == len(parallel["feedback"])
    for a, b in zip(serial["feedback"] + [serial["summary"]],
                    parallel["feedback"] + [parallel["summary"]]):
        assert _text(b) == _text(a)


def test_a_helper_process_that_fails_fails_the_render(rows, lab, key, tmp_path, monkeypatch):
    """A report a helper could not write is an error here, not a missing file."""
    monkeypatch.setattr("grader.render.REPORTS_PER_HELPER", 1)
    folder = tmp_path / "out"
    (folder / "feedback").mkdir(parents=True)
    blocked = feedback_files(rows)[-1][0]    # the helpers take from the back
    (folder / "feedback" / blocked).mkdir()  # a folder where its PDF must go
    with pytest.raises(OSError):
        render_all(rows, lab, key, folder, workers=2)


# ---------------------------------------------------------------- pure parts

def test_feedback_data_is_pure(rows, lab, key):
    a = feedback_data(rows[2], lab, key, WHEN)
    assert a == feedback_data(rows[2], lab, key, WHEN)
    q = {x["id"]: x for x in a["questions"]}
    assert q["af_test_fraction"]["expected"] is None and q["af_test_fraction"]["verdict"] == "wrong"
    assert q["conv_len"]["expected"] == "15"
    assert q["cnn_af_accuracy"]["band"]["value"] == pytest.approx(0.71)
    assert q["rnn_af_balanced_accuracy"]["band"]["value"] is None
    assert q["best_model"]["verdict"] == "missing"
    assert a["date"] == "2026-12-01 14:30 UTC"
    good = feedback_data(rows[0], lab, key, WHEN)
    assert {x["id"]: x for x in good["questions"]}["gait_interpretation"]["verdict"] == "pending"
    assert good["pending"] == 3


def test_summary_data(rows, lab, key):
    s = summary_data(rows, lab, key, WHEN)
    assert s["n_groups"] == 4 and s["n_uploads"] == 5
    q = {x["id"]: x for x in s["questions"]}
    assert q["conv_len"]["share_full"] == pytest.approx(1 / 3)   # invalid one left out
    assert {p["status"] for p in s["problems"]} == {"errors", "invalid"}


def test_summary_names_the_reports_index_json_names(lab, key, tmp_path, monkeypatch):
    """Two notebooks of one base name: each gets its hash (not the order of the rows);
    the summary (which groups the rows) names the same report as index.json."""
    ev = {"status": "ok", "answers": {}, "texts": {}, "errors": [], "measurements": {}}
    s1, s2 = "1" * 64, "2" * 64

    def sub(id, sha, feedback):
        return dict(_sub(id, ["Ann A", "Bob B"], feedback, f"u{id}/{feedback}.ipynb", sha),
                    group_key="a_b")

    rows = [_row(lab, key, sub(1, s1, "b_a_lab_01"), ev),
            _row(lab, key, sub(2, s2, "a_b_lab_01"), ev),
            _row(lab, key, sub(3, s1, "a_b_lab_01"), ev)]
    monkeypatch.setattr("grader.render._render_calls", lambda calls, workers=1, progress=None: None)
    render_feedback(rows, lab, key, tmp_path, graded_at=WHEN)
    index = json.loads((tmp_path / "feedback" / "index.json").read_text())
    assert index == {"1": "b_a_lab_01.pdf", "2": "a_b_lab_01_22222222.pdf",
                     "3": "a_b_lab_01_11111111.pdf"}
    table = summary_data(rows, lab, key, WHEN)["table"]
    assert len(table) == 2
    assert [t["report"] for t in table if t["files"] == ["u2/a_b_lab_01.ipynb"]] == \
        ["a_b_lab_01_22222222.pdf"]
    for t in table:   # each upload's own report, in row order
        assert t["report"].split(", ") == [index[str(r["submission"]["id"])] for r in rows
                                           if r["submission"]["file"] in t["files"]]


def test_untrusted_figures_are_checked():
    assert png_ok(_png())
    assert not png_ok(base64.b64encode(b"<svg onload='x'/>").decode())
    assert not png_ok("not base64!!")
    huge = b"\x89PNG\r\n\x1a\n" + b"\0\0\0\rIHDR" + (100000).to_bytes(4, "big") * 2 + b"\0" * 20
    assert not png_ok(base64.b64encode(huge).decode())


def test_helpers():
    assert public_isolation(ISOLATION) == ("bubblewrap (no network, own uid); limits: 900 s per "
                                           "cell, 1800 s per notebook, memory 6 GiB")
    assert student_flags(["identical to x.ipynb", "file name says lab 02, this is lab 01"]) == [
        "file name says lab 02, this is lab 01"]
    png = base64.b64decode(band_chart({"metric": "accuracy", "task": "af", "zero": 0.5,
                                       "full": 0.9, "reference": [0.95, 0.96], "value": None}))
    assert png.startswith(b"\x89PNG")
