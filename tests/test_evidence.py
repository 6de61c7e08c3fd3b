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


# ---------------------------------------------------------------- what a stopped run keeps

STOP_TOML = '''
[lab]
number = 9
title = "stops"
notebook = "tiny.ipynb"

[[question]]
id = "answer"
points = 2
kind = "integer"
prompt = "six times seven"
answer = "answer"

[[question]]
id = "ratio"
points = 1
kind = "number"
prompt = "a ratio"
answer = "ratio"

[[question]]
id = "later"
points = 1
kind = "integer"
prompt = "set after the crash"
answer = "later"

[[question]]
id = "acc"
points = 2
kind = "metric"
prompt = "accuracy"
model = "model"
task = "af"
metric = "accuracy"

[[question]]
id = "acc2"
points = 2
kind = "metric"
prompt = "accuracy of a model never made"
model = "model2"
task = "af"
metric = "accuracy"
'''

STOP_KEY = {"questions": {"answer": {"expected": 42}, "ratio": {"expected": 0.25},
                          "later": {"expected": 1}, "acc": {"full": 1.0, "zero": 0.0},
                          "acc2": {"full": 1.0, "zero": 0.0}}}


def _stop_lab(tmp_path):
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "assignment.toml").write_text(STOP_TOML)
    return load_assignment(tmp_path / "lab")


def _run_cells(tmp_path, lab, *sources, limits=None, cache=None):
    cells = [new_code_cell('GROUP = ["Ada Lovelace"]')]
    cells[0].metadata["grader"] = {"group": True}
    cells += [new_code_cell(s) for s in sources]
    work = tmp_path / "work"
    result = execute_notebook(new_notebook(cells=cells), workdir=work, isolation=resolve("none"),
                              limits=limits or Limits(cell_timeout=60, notebook_timeout=120),
                              snapshot=epilogue_code(lab), data_dir=os.environ.get("GRADER_DATA"),
                              env={"GRADER_CACHE": cache or os.environ["GRADER_CACHE"]})
    return result, work, collect(result, work, lab)


MODEL_CELL = """
import torch
from reference.models import build_model
torch.manual_seed(0)
model = build_model("mlp", 30, 1, 2)
answer = 42
"""


def test_crash_keeps_answers_and_model_as_at_the_last_finished_cell(tmp_path):
    """The crashing cell changes an answer and zeroes the model's weights in place, then
    dies: both are graded as they were after the cell before; what came later is not
    reached."""
    import torch
    from reference.models import build_model

    lab = _stop_lab(tmp_path)
    result, work, ev = _run_cells(
        tmp_path, lab, MODEL_CELL, "import time\ntime.sleep(0.2)\nratio = 0.25",
        "with torch.no_grad():\n    for p in model.parameters():\n        p.zero_()\n"
        "answer = 7\nimport os\nos._exit(1)", "later = 1")
    assert result.status == "dead" and result.stopped_cell == 3
    assert ev["answers"] == {"answer": 42, "ratio": 0.25}
    assert ev["stopped"] == {"cell": 3, "snapshot_cell": 2, "why": "kernel died"}
    pt = work / MODELS_DIR / "model.pt"
    assert set(ev["models"]["model"]) == {"state", "config"}
    # the weights after cell 1, written once: cell 2 changed nothing, so no rewrite
    assert pt.stat().st_mtime_ns < (work / EVIDENCE_FILE).stat().st_mtime_ns - 100_000_000
    torch.manual_seed(0)
    fresh = build_model("mlp", 30, 1, 2).state_dict()
    saved = torch.load(pt, weights_only=True)
    assert saved.keys() == fresh.keys()
    assert all(torch.equal(saved[k], fresh[k]) for k in fresh)
    ev["measurements"] = {}
    r = score(lab, ev, STOP_KEY)
    assert r.question("answer").points == 2 and r.question("ratio").points == 1
    for qid in ("later", "acc2"):
        q = r.question(qid)
        assert q.points == 0 and q.verdict == "missing"
        assert q.feedback == "Not reached: the notebook stopped in cell 3 (kernel died).", q
    assert "stopped in cell 3" in result.message


def test_timeout_keeps_answers_before_the_cell(tmp_path):
    lab = _stop_lab(tmp_path)
    result, work, ev = _run_cells(tmp_path, lab, "answer = 42", "ratio = 0.25",
                                  "answer = 0\nwhile True:\n    pass", "later = 1",
                                  limits=Limits(cell_timeout=3, notebook_timeout=60))
    assert result.status == "timeout"
    assert ev["answers"] == {"answer": 42, "ratio": 0.25}
    r = score(lab, ev, STOP_KEY)
    assert r.total == 3
    assert r.question("later").feedback == "Not reached: the notebook stopped in cell 3 (timeout)."
    assert r.question("acc").feedback == "Not reached: the notebook stopped in cell 3 (timeout)."


HOSTILE_TOML = STOP_TOML + '''
[[question]]
id = "f_sub"
points = 1
kind = "number"
prompt = "a float subclass"
answer = "f_sub"

[[question]]
id = "t_sub"
points = 1
kind = "number"
prompt = "a tensor subclass"
answer = "t_sub"

[[question]]
id = "np_sub"
points = 1
kind = "number"
prompt = "a numpy scalar subclass"
answer = "np_sub"

[[question]]
id = "t_plain"
points = 1
kind = "number"
prompt = "a plain tensor"
answer = "t_plain"
'''


def test_collection_calls_no_method_of_the_groups_objects(tmp_path):
    """#27: the collection reads values and weights through torch's and Python's own
    functions: a replaced state_dict, a float/tensor/numpy subclass and a torch function
    mode left active never run (each would leave a file behind)."""
    import torch
    from reference.models import build_model

    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "assignment.toml").write_text(HOSTILE_TOML)
    lab = load_assignment(tmp_path / "lab")
    spy = "lambda *a, **k: (open('CALLED-' + str(len(a)), 'w').close(), __import__('time').sleep(20))"
    result, work, ev = _run_cells(tmp_path, lab, MODEL_CELL, f"""
import numpy as np
from torch.overrides import TorchFunctionMode
model.state_dict = {spy}
type(model).state_dict = {spy}
type(model)._save_to_state_dict = {spy}
class F(float):
    def __float__(self): open('CALLED-float', 'w').close(); return 1.0
    def __add__(self, o): open('CALLED-add', 'w').close(); return 1.0
class T(torch.Tensor):
    pass
class N(np.float64):
    def item(self): open('CALLED-np', 'w').close(); return 1.0
f_sub = F(0.25)
t_sub = torch.tensor(0.5).as_subclass(T)
np_sub = N(0.5)
t_plain = torch.tensor(0.75)
class Spy(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        open('CALLED-mode', 'w').close()
        return func(*args, **(kwargs or {{}}))
Spy().__enter__()
torch.ones(1) + 1
import os
assert os.path.exists('CALLED-mode')
os.remove('CALLED-mode')
""")
    assert result.status == "ok", result.errors
    assert result.epilogue_error is None, result.epilogue_error
    assert sorted(p.name for p in work.glob("CALLED-*")) == []
    a = ev["answers"]
    assert a["f_sub"] == 0.25 and a["t_plain"] == 0.75
    assert a["t_sub"]["why"] == "a subclass of torch.Tensor"
    assert a["np_sub"]["why"] == "a subclass of a numpy scalar"
    torch.manual_seed(0)
    fresh = torch.nn.Module.state_dict(build_model("mlp", 30, 1, 2))
    saved = torch.load(work / MODELS_DIR / "model.pt", weights_only=True)
    assert saved.keys() == fresh.keys() and all(torch.equal(saved[k], fresh[k]) for k in fresh)


def test_a_model_with_a_tensor_subclass_is_refused(tmp_path):
    lab = _stop_lab(tmp_path)
    result, work, ev = _run_cells(tmp_path, lab, MODEL_CELL, """
class T(torch.Tensor):
    pass
model.register_buffer("odd", torch.zeros(3).as_subclass(T))
""")
    assert result.status == "ok", result.errors
    assert "'model' cannot be exported: the buffer odd is not a plain tensor" in ev["models"]["model"]["error"]


KIND_TOML = '''
[lab]
number = 9
title = "kinds"
notebook = "tiny.ipynb"

[[question]]
id = "rnn_acc"
points = 2
kind = "metric"
prompt = "accuracy of an RNN"
model = "rnn_af"
task = "af"
metric = "accuracy"
requires = "recurrent"

[[question]]
id = "rnn_reported"
points = 1
kind = "consistency"
prompt = "its accuracy as reported"
answer = "rnn_reported"
model = "rnn_af"
task = "af"
metric = "accuracy"
requires = "recurrent"
tolerance = { abs = 0.001 }

[[question]]
id = "cnn_acc"
points = 2
kind = "metric"
prompt = "accuracy of a CNN"
model = "cnn_af"
task = "af"
metric = "accuracy"
requires = "convolutional"

[[question]]
id = "mlp_acc"
points = 2
kind = "metric"
prompt = "accuracy of an MLP"
model = "mlp_af"
task = "af"
metric = "accuracy"
requires = "mlp"
'''


def test_a_cnn_handed_in_where_an_rnn_is_required_scores_zero(tmp_path, physionet):
    """The kind is told from the network the grader rebuilt (its layers), not from the
    name the group gave it: a CNN in `rnn_af` gets 0 for the RNN's questions, with what
    was found; the right kinds get their points."""
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "assignment.toml").write_text(KIND_TOML)
    lab = load_assignment(tmp_path / "lab")
    result, work, ev = _run_cells(tmp_path, lab, """
import torch
from reference.models import build_model
from reference.data import load_task
from reference.training import evaluate
torch.manual_seed(0)
rnn_af = build_model("cnn", 30, 1, 2, filters=(4, 8), kernel_size=3)
cnn_af = build_model("cnn", 30, 1, 2, filters=(4, 8), kernel_size=3)
mlp_af = build_model("mlp", 30, 1, 2, hidden=(8,))
rnn_af.eval()
rnn_reported = float(evaluate(rnn_af, load_task("af").test, 2, device="cpu")["accuracy"])
""")
    assert result.status == "ok", result.errors
    ev["measurements"] = measure_models(work, lab, physionet, timeout=300)
    key = {"questions": {q: {"full": 0.0, "zero": -1.0} for q in ("rnn_acc", "cnn_acc", "mlp_acc")}
           | {"rnn_reported": {}}}
    r = score(lab, ev, key)
    assert r.question("cnn_acc").points == 2 and r.question("mlp_acc").points == 2
    rnn = r.question("rnn_acc")
    assert rnn.points == 0
    assert rnn.feedback == ("No points: 'rnn_af' is convolutional (Conv1d, Linear), but this "
                            "question requires a recurrent model.")
    assert r.question("rnn_reported").points == 0
    assert "requires a recurrent model" in r.question("rnn_reported").feedback
    assert ev["measurements"]["rnn_af|af|0"]["kinds"] == ["convolutional"]
    assert ev["measurements"]["mlp_af|af|0"]["kinds"] == ["mlp"]


def test_model_kinds_from_the_layers():
    import torch
    from reference.models import build_model

    from grader.measure import model_kinds

    class CnnLstm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv1d(1, 4, 3)
            self.lstm = torch.nn.LSTM(4, 8, batch_first=True)
            self.fc = torch.nn.Linear(8, 2)

    assert model_kinds(build_model("bigru", 30, 1, 2, hidden=8)) == (["recurrent"], "GRU, Linear")
    assert model_kinds(build_model("lstm", 30, 1, 2, hidden=8))[0] == ["recurrent"]
    assert model_kinds(build_model("cnn", 30, 1, 2))[0] == ["convolutional"]
    assert model_kinds(build_model("mlp", 30, 1, 2)) == (["mlp"], "Linear")
    assert model_kinds(CnnLstm()) == (["recurrent", "convolutional"], "Conv1d, LSTM, Linear")


# ---------------------------------------------------------------- any module, as ONNX

ANY_TOML = '''
[lab]
number = 9
title = "any module"
notebook = "tiny.ipynb"

[[question]]
id = "lstm_acc"
points = 2
kind = "metric"
prompt = "accuracy of the lecture's RnnModel"
model = "lstm_model"
task = "af"
metric = "accuracy"
requires = "recurrent"

[[question]]
id = "seq_acc"
points = 2
kind = "metric"
prompt = "accuracy of a Sequential MLP"
model = "seq_model"
task = "gait_binary"
metric = "subject_balanced_accuracy"
requires = "mlp"

[[question]]
id = "cnn_as_rnn"
points = 2
kind = "metric"
prompt = "a hand-written CNN where an RNN is asked"
model = "cnn_model"
task = "af"
metric = "accuracy"
requires = "recurrent"

[[question]]
id = "branchy_acc"
points = 2
kind = "metric"
prompt = "control flow on a tensor"
model = "branchy"
task = "af"
metric = "accuracy"

[[question]]
id = "reported_lstm"
points = 1
kind = "number"
prompt = "the notebook's own accuracy of lstm_model"
answer = "reported_lstm"

[[question]]
id = "reported_seq"
points = 1
kind = "number"
prompt = "the notebook's own figure of seq_model"
answer = "reported_seq"
'''

ANY_CELL = """
import torch
from torch import nn
from reference.data import load_task
from reference.training import evaluate
torch.manual_seed(0)

class RnnModel(nn.Module):            # the lecture's RNN slide
    def __init__(self, input_size=1, hidden_size=16, num_classes=2):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out[:, -1, :])

class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3)
        self.fc = nn.Linear(4 * 28, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x.transpose(1, 2))).flatten(1))

class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(30, 2)

    def forward(self, x):
        if x.mean() > 0:
            return self.fc(x.flatten(1))
        return -self.fc(x.flatten(1))

lstm_model = RnnModel()
seq_model = nn.Sequential(nn.Flatten(), nn.Linear(20 * 12, 16), nn.ReLU(), nn.Linear(16, 2))
cnn_model = Cnn()
branchy = Branchy()
af, gait = load_task("af"), load_task("gait_binary")
opt = torch.optim.Adam(lstm_model.parameters(), lr=1e-2)
X, y = torch.as_tensor(af.train.X[:2048]), torch.as_tensor(af.train.y[:2048])
for _ in range(20):
    opt.zero_grad()
    nn.functional.cross_entropy(lstm_model(X), y).backward()
    opt.step()
reported_lstm = float(evaluate(lstm_model, af.test)["accuracy"])
reported_seq = float(evaluate(seq_model, gait.test, by_subject=True)["subject_balanced_accuracy"])
"""


@pytest.fixture(scope="module")
def any_run(tmp_path_factory, physionet):
    tmp = tmp_path_factory.mktemp("any")
    (tmp / "lab").mkdir()
    (tmp / "lab" / "assignment.toml").write_text(ANY_TOML)
    lab = load_assignment(tmp / "lab")
    result, work, ev = _run_cells(tmp, lab, ANY_CELL,
                                  cache=str(tmp_path_factory.getbasetemp() / "cache"))
    return lab, result, work, ev


def test_hand_written_modules_are_measured_from_their_onnx_export(any_run, physionet):
    """The lecture's RnnModel (nn.LSTM + nn.Linear, trained) and an nn.Sequential MLP are
    measured by the grader from their ONNX files, never from the group's code; the
    grader's figures equal the notebook's own evaluation of the same weights."""
    lab, result, work, ev = any_run
    assert result.status == "ok", result.errors
    assert set(ev["models"]["lstm_model"]) == {"onnx"} and set(ev["models"]["seq_model"]) == {"onnx"}
    m = measure_models(work, lab, physionet, timeout=300)
    lstm, seq = m["lstm_model|af|0"], m["seq_model|gait_binary|0"]
    assert lstm["kinds"] == ["recurrent"] and "LSTM" in lstm["layers"], lstm
    assert seq["kinds"] == ["mlp"], seq
    # onnxruntime on the exported graph gives what torch gave on the module, as trained
    assert abs(lstm["metrics"]["accuracy"] - ev["answers"]["reported_lstm"]) < 1e-3
    assert abs(seq["metrics"]["subject_balanced_accuracy"] - ev["answers"]["reported_seq"]) < 1e-9
    ev["measurements"] = m
    key = {"questions": {q.id: {"full": 0.0, "zero": -1.0} for q in lab.questions
                         if q.kind == "metric"}}
    r = score(lab, ev, key)
    assert r.question("lstm_acc").points == 2 and r.question("seq_acc").points == 2
    cnn = r.question("cnn_as_rnn")
    assert cnn.points == 0
    assert cnn.feedback == ("No points: 'cnn_model' is convolutional (Conv, Gemm), but this "
                            "question requires a recurrent model.")
    branchy = r.question("branchy_acc")
    assert branchy.points == 0
    assert "an `if` or `while` on a tensor's value" in branchy.feedback
    assert "torch.where" in branchy.feedback


def test_a_tampered_export_is_refused_and_never_run(any_run, physionet, tmp_path):
    """Export files changed after the notebook ran: a pickle in place of the ONNX file, an
    ONNX file whose weights point at another file (the key), a pickle in place of the
    weights: each is refused with its reason, and nothing in them runs."""
    import shutil

    import onnx

    lab, result, work, ev = any_run
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    models = copy / MODELS_DIR
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import pickle
    (models / "lstm_model.onnx").write_bytes(pickle.dumps(Payload()))
    proto = onnx.load(str(models / "seq_model.onnx"))
    secret = tmp_path / "key.json"
    secret.write_bytes(b"\0" * 4096)
    init = proto.graph.initializer[0]
    init.ClearField("raw_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    init.external_data.add(key="location", value=str(secret))
    onnx.save(proto, str(models / "seq_model.onnx"))
    m = measure_models(copy, lab, physionet, timeout=300)
    assert "lstm_model.onnx is not a valid ONNX model" in m["lstm_model|af|0"]["error"]
    assert "seq_model.onnx refers to external data" in m["seq_model|gait_binary|0"]["error"]
    assert not marker.exists()


def test_export_leaves_each_modules_mode_as_it_was(tmp_path):
    """The ONNX trace runs in eval mode; afterwards every submodule has its own flag back
    (a group that froze one part in eval mode keeps it so)."""
    lab = _stop_lab(tmp_path)
    result, work, ev = _run_cells(tmp_path, lab, """
import torch
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(30, 8), torch.nn.Dropout(0.5),
                            torch.nn.Linear(8, 2))
model.train()
model[2].eval()
""", "modes = [m.training for m in model.modules()]\nassert modes == [True, True, True, False, True], modes")
    assert result.status == "ok", result.errors
    assert set(ev["models"]["model"]) == {"onnx"}


def test_a_forward_that_trains_during_the_export_is_refused(tmp_path):
    """#27: the export runs a hand-written forward; one that changes the weights then
    (training past the notebook's time) is refused, and no export file is left."""
    lab = _stop_lab(tmp_path)
    result, work, ev = _run_cells(tmp_path, lab, """
import torch
class Sneaky(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(30, 2)
        self.calls = 0
    def forward(self, x):
        self.calls += 1
        if self.calls > 1:            # the notebook's own call is honest
            with torch.no_grad():
                self.fc.weight.add_(1.0)
        return self.fc(x.flatten(1))
model = Sneaky()
model(torch.zeros(1, 30, 1))
""")
    assert result.status == "ok", result.errors
    assert "its forward changed the model's weights" in ev["models"]["model"]["error"]
    assert not (work / MODELS_DIR / "model.onnx").exists()
