"""grader.evidence and grader.measure on a real kernel, a real model and the real data."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from grader.assignment import load_assignment
from grader.evidence import (
    EVIDENCE_FILE,
    MODELS_DIR,
    Refused,
    collect,
    decode_value,
    epilogue_code,
    validate_answer,
)
from grader.execute import execute_notebook
from grader.measure import check_config, measure_models
from grader.sandbox import Limits, resolve
from grader.score import score

TOML = '''
[lab]
number = 9
title = "tiny"
notebook = "tiny.ipynb"

[[question]]
id = "q_np"
points = 1
kind = "integer"
prompt = "numpy scalar"
answer = "a_np"

[[question]]
id = "q_shape"
points = 1
kind = "tuple"
prompt = "torch.Size"
answer = "a_shape"

[[question]]
id = "q_tensor"
points = 1
kind = "number"
prompt = "0-d tensor"
answer = "a_tensor"

[[question]]
id = "q_arr"
points = 1
kind = "tuple"
prompt = "array"
answer = "a_arr"

[[question]]
id = "q_set"
points = 2
kind = "multi"
prompt = "set"
answer = "a_set"
choices = ["x", "y", "z"]

[[question]]
id = "q_nan"
points = 1
kind = "number"
prompt = "nan"
answer = "a_nan"

[[question]]
id = "q_weird"
points = 1
kind = "integer"
prompt = "object with __eq__"
answer = "a_weird"

[[question]]
id = "q_missing"
points = 1
kind = "integer"
prompt = "never defined"
answer = "a_missing"

[[question]]
id = "q_dict"
points = 1
kind = "choice"
prompt = "a dict that looks like a marker"
answer = "a_dict"
choices = ["A", "B"]

[[question]]
id = "q_metric"
exercise = "Gait"
points = 3
kind = "metric"
prompt = "measured"
model = "gait_model"
task = "gait_binary"
metric = "subject_balanced_accuracy"

[[question]]
id = "q_reported"
exercise = "Gait"
points = 1
kind = "consistency"
prompt = "reported"
answer = "reported"
model = "gait_model"
task = "gait_binary"
metric = "balanced_accuracy"
tolerance = { abs = 0.005 }

[[question]]
id = "q_broken"
points = 1
kind = "metric"
prompt = "corrupted weights"
model = "broken"
task = "gait_binary"
metric = "accuracy"

[[question]]
id = "q_unknown"
points = 1
kind = "metric"
prompt = "config names an unknown model"
model = "unknown"
task = "gait_binary"
metric = "accuracy"

[[question]]
id = "q_notmodel"
points = 1
kind = "metric"
prompt = "not a model"
model = "notmodel"
task = "gait_binary"
metric = "accuracy"

[[question]]
id = "q_text"
points = 2
kind = "text"
prompt = "explain"
cell = "explain"
'''

CELLS = [
    ("code", 'GROUP = ["Ada  Lovelace", "Alan Turing"]', {"grader": {"group": True}}),
    ("code", """
import numpy as np
import torch
import matplotlib.pyplot as plt
from reference.data import load_gait
from reference.models import build_model
from reference.training import fit, evaluate, set_seed
set_seed(0)
list = 'students shadow builtins'   # the epilogue must survive this
json = None
a_np = np.int64(15)
a_shape = torch.zeros(8, 30, 64).shape
a_tensor = torch.tensor(0.25)
a_arr = np.array([0, 0, 0, 1])
a_set = {"x", "z"}
a_nan = float("nan")
a_dict = {"tuple": [1, 2]}
class Always:
    def __eq__(self, other):
        return True
a_weird = Always()
""", {}),
    ("code", """
gait = load_gait("binary", fold=0)
gait_model = build_model("cnn", gait.window, gait.channels, gait.n_classes, filters=(8, 16), kernel_size=3)
fit(gait_model, gait, epochs=2, batch_size=64, lr=1e-3)
reported = float(evaluate(gait_model, gait.test)["balanced_accuracy"])
broken = build_model("mlp", gait.window, gait.channels, gait.n_classes, hidden=(8,))
unknown = build_model("mlp", gait.window, gait.channels, gait.n_classes, hidden=(8,))
notmodel = "a string"
plt.plot([1, 2, 3]); plt.show()
""", {}),
    ("code", "1 / 0", {}),
    ("markdown", "Because it is.", {"grader": {"answer": "explain"}}),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory, physionet):
    root = tmp_path_factory.mktemp("evidence")
    (root / "lab").mkdir()
    (root / "lab" / "assignment.toml").write_text(TOML)
    lab = load_assignment(root / "lab")
    cells = []
    for kind, src, meta in CELLS:
        c = new_code_cell(src) if kind == "code" else new_markdown_cell(src)
        c.metadata.update(meta)
        cells.append(c)
    work = root / "work"
    work.mkdir()
    # a stale, forged evidence file must not survive the epilogue
    (work / EVIDENCE_FILE).write_text(json.dumps({"answers": {"a_missing": 3}}))
    result = execute_notebook(new_notebook(cells=cells), workdir=work, isolation=resolve("none"),
                              limits=Limits(cell_timeout=120, notebook_timeout=300),
                              data_dir=physionet,
                              epilogue=epilogue_code(lab) + "\nprint('LEFT', [k for k in globals() if 'grader' in k or k in ('main', 'conv', 'encode')], list)",
                              env={"GRADER_CACHE": str(tmp_path_factory.getbasetemp() / "cache")})
    return lab, work, result


def test_epilogue_exports_answers_and_models(run):
    lab, work, result = run
    assert result.status == "errors", result.errors
    assert result.epilogue_error is None, result.epilogue_error
    ev = collect(result, work, lab)
    json.dumps(ev, allow_nan=False)  # JSON-safe
    a = ev["answers"]
    assert a["a_np"] == 15
    assert a["a_shape"] == {"tuple": [8, 30, 64]}
    assert a["a_tensor"] == 0.25
    assert a["a_arr"] == [0, 0, 0, 1]
    assert a["a_set"] == {"set": ["x", "z"]}
    assert a["a_nan"] == {"float": "nan"}
    assert a["a_weird"]["refused"].endswith("Always")
    assert a["a_dict"] == {"dict": {"tuple": [1, 2]}}
    assert "a_missing" not in a
    assert ev["group"] == ["Ada Lovelace", "Alan Turing"]
    assert ev["texts"] == {"explain": "Because it is."}
    assert [e["ename"] for e in ev["errors"]] == ["ZeroDivisionError"]
    assert ev["errors"][0]["cell_index"] == 3
    assert len(ev["figures"]) == 1 and ev["figures"][0]["cell"] == 2
    assert len(ev["cell_seconds"]) == len(CELLS)
    assert (work / MODELS_DIR / "gait_model.pt").exists()
    assert set(ev["models"]["gait_model"]) == {"state", "config"}
    assert "not a model" in ev["models"]["notmodel"]["error"]


def test_epilogue_leaves_no_names_behind(run):
    lab, work, result = run
    assert result.epilogue_output.strip() == "LEFT [] students shadow builtins"
    compile(epilogue_code(load_assignment(Path(__file__).resolve().parents[1] / "assignments" / "lab01")), "<epilogue>", "exec")


def test_measure_models_and_errors(run, physionet):
    lab, work, result = run
    ev = collect(result, work, lab)
    models = work / MODELS_DIR
    (models / "broken.pt").write_bytes(b"this is not a torch file")
    cfg = json.loads((models / "unknown.json").read_text())
    cfg["name"] = "transformer"
    (models / "unknown.json").write_text(json.dumps(cfg))
    m = measure_models(work, lab, physionet, timeout=120)
    good = m["gait_model|gait_binary|0"]
    assert "metrics" in good, good
    assert 0 <= good["metrics"]["subject_balanced_accuracy"] <= 1
    assert "weights file cannot be loaded" in m["broken|gait_binary|0"]["error"]
    assert "unknown model" in m["unknown|gait_binary|0"]["error"]
    assert "not exported" in m["notmodel|gait_binary|0"]["error"]
    # the grader's own measurement agrees with what the notebook computed
    reported = ev["answers"]["reported"]
    assert abs(good["metrics"]["balanced_accuracy"] - reported) < 1e-6

    ev["measurements"] = m
    key = {"questions": {
        "q_np": {"expected": 15}, "q_shape": {"expected": [8, 30, 64]},
        "q_tensor": {"expected": 0.25}, "q_arr": {"expected": [0, 0, 0, 1]},
        "q_set": {"expected": ["x", "z"]}, "q_nan": {"expected": 0.5},
        "q_weird": {"expected": 3}, "q_missing": {"expected": 1}, "q_dict": {"expected": "A"},
        "q_metric": {"full": 0.0, "zero": -1.0}, "q_reported": {},
        "q_broken": {"full": 0.9, "zero": 0.5}, "q_unknown": {"full": 0.9, "zero": 0.5},
        "q_notmodel": {"full": 0.9, "zero": 0.5},
    }}
    r = score(lab, ev, key)
    v = {q.id: q.verdict for q in r.questions}
    assert v == {"q_np": "correct", "q_shape": "correct", "q_tensor": "correct",
                 "q_arr": "correct", "q_set": "correct", "q_nan": "wrong", "q_weird": "invalid",
                 "q_missing": "missing", "q_dict": "invalid", "q_metric": "correct",
                 "q_reported": "correct", "q_broken": "wrong", "q_unknown": "wrong",
                 "q_notmodel": "wrong", "q_text": "manual"}
    assert "unknown model" in r.question("q_unknown").feedback


def test_collect_without_evidence_file(tmp_path, run):
    lab, work, result = run
    ev = collect(result, tmp_path, lab)
    assert ev["answers"] == {} and "missing" in ev["evidence_error"]
    assert all("error" in e for e in ev["models"].values())


def test_collect_refuses_symlinked_evidence(tmp_path, run):
    lab, work, result = run
    (tmp_path / "elsewhere.json").write_text(json.dumps({"answers": {"a_np": 1}}))
    os.symlink(tmp_path / "elsewhere.json", tmp_path / EVIDENCE_FILE)
    ev = collect(result, tmp_path, lab)
    assert ev["answers"] == {} and "regular file" in ev["evidence_error"]


def test_validate_and_decode():
    assert validate_answer({"tuple": [1, 2]}) == {"tuple": [1, 2]}
    assert validate_answer({"x": 1})["refused"] == "unreadable"
    assert validate_answer({"float": "zero"})["refused"] == "unreadable"
    assert validate_answer(["a" * 2_000_000])["refused"] == "unreadable"
    assert decode_value({"tuple": [1, {"set": ["a"]}]}) == (1, frozenset({"a"}))
    assert math.isinf(decode_value({"float": "-inf"}))
    assert decode_value({"refused": "Foo"}) == Refused("Foo")
    assert decode_value({"dict": {"set": [1]}}) == {"set": [1]}


def test_check_config_rejects_huge_or_mismatched(physionet):
    from reference.data import load_task
    from grader.measure import MeasureError
    gait = load_task("gait_binary", fold=0)
    ok = {"name": "mlp", "window": gait.window, "channels": gait.channels,
          "n_classes": gait.n_classes, "kwargs": {"hidden": [8]}}
    assert check_config(ok, gait) is ok
    for bad in ({**ok, "kwargs": {"hidden": [10**9]}}, {**ok, "window": 999},
                {**ok, "name": "evil"}, {**ok, "kwargs": {"x": {"y": 1}}}, "nope"):
        with pytest.raises(MeasureError):
            check_config(bad, gait)


def test_empty_evidence():
    from grader.evidence import empty_evidence

    assert empty_evidence("invalid", "bad.ipynb: empty file") == {
        "status": "invalid", "message": "bad.ipynb: empty file", "answers": {}, "texts": {},
        "errors": [], "measurements": {}}
    a, b = empty_evidence("pending"), empty_evidence("pending")
    assert a["message"] is None and a == b and a["answers"] is not b["answers"]


def test_model_files_are_checked_before_reading(tmp_path):
    from grader.measure import MeasureError, _read_regular

    work = tmp_path / "work"
    models = work / MODELS_DIR
    models.mkdir(parents=True)
    (models / "ok.json").write_text("{}")
    assert _read_regular(models / "ok.json", work, 100, "config") == models / "ok.json"
    (tmp_path / "outside.json").write_text("{}")
    os.symlink(tmp_path / "outside.json", models / "link.json")
    (models / "big.pt").write_bytes(b"x" * 200)
    for name, what, says in (("missing.json", "config", "was not exported"),
                             ("link.json", "config", "cannot be read: not a regular file"),
                             ("big.pt", "weights", "cannot be read: 200 bytes, more than 100")):
        with pytest.raises(MeasureError) as err:
            _read_regular(models / name, work, 100, what)
        assert str(err.value).startswith(f"the {what} file {name} {says}"), str(err.value)
