"""assignment.toml: the lab's spec loads, and a bad spec is refused with the place named."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from grader.assignment import KINDS, SpecError, load_assignment

LAB = Path(__file__).resolve().parents[1] / "assignments" / "lab01"


def test_lab01_spec_covers_every_kind_and_twenty_questions():
    lab = load_assignment(LAB)
    assert lab.number == 1 and lab.notebook_path.exists()
    assert len(lab.questions) >= 20
    assert {q.kind for q in lab.questions} == set(KINDS)
    assert lab.max_points == sum(q.points for q in lab.questions)
    assert ("cnn_af", "af", 0) in lab.measurements
    # every metric question says which kind of model it measures (#16)
    assert {q.model: q.requires for q in lab.questions if q.kind == "metric"} == {
        "cnn_af": "convolutional", "rnn_af": "recurrent", "gait_model": "convolutional"}
    assert lab.limits.cell_timeout >= 600  # long enough for training on a laptop


def _spec_with(tmp_path, text: str) -> Path:
    folder = tmp_path / "lab"
    folder.mkdir(parents=True)
    (folder / "assignment.toml").write_text(
        '[lab]\nnumber = 2\ntitle = "t"\nnotebook = "lab02.ipynb"\n' + text)
    return folder


@pytest.mark.parametrize("question, message", [
    ('id = "q1"\npoints = 1\nkind = "float"\nprompt = "p"\nanswer = "x"', "question 'q1': field 'kind'"),
    ('id = "q1"\npoints = 0\nkind = "integer"\nprompt = "p"\nanswer = "x"', "question 'q1': field 'points'"),
    ('id = "q1"\npoints = 1\nkind = "choice"\nprompt = "p"\nanswer = "x"', "question 'q1': kind 'choice' needs field 'choices'"),
    ('id = "q1"\npoints = 1\nkind = "metric"\nprompt = "p"\nmodel = "m"\ntask = "af"\nmetric = "recall"', "question 'q1': field 'metric'"),
    ('id = "q1"\npoints = 1\nkind = "integer"\nprompt = "p"\nanswer = "x"\ncolour = 3', "question 'q1': unknown field 'colour'"),
    ('id = "q 1"\npoints = 1\nkind = "integer"\nprompt = "p"\nanswer = "x"', "question 'q 1': field 'id'"),
    ('id = "q1"\npoints = 1\nkind = "number"\nprompt = "p"\nanswer = "x"\ntolerance = { abs = -1 }', "question 'q1': field 'tolerance'"),
    ('id = "q1"\npoints = 1\nkind = "metric"\nprompt = "p"\nmodel = "m"\ntask = "af"\nmetric = "accuracy"\nrequires = "transformer"', "question 'q1': field 'requires' is 'transformer'; choose one of recurrent, convolutional, mlp"),
    ('id = "q1"\npoints = 1\nkind = "integer"\nprompt = "p"\nanswer = "x"\nrequires = "mlp"', "question 'q1': field 'requires' is for kinds"),
    ('id = "q1"\npoints = 1\nkind = "integer"\nprompt = "p"\nanswer = "x"\nfraction = true', "question 'q1': field 'fraction' is for kind 'number'"),
    ('id = "q1"\npoints = 1\nkind = "number"\nprompt = "p"\nanswer = "x"\nfraction = "yes"', "question 'q1': field 'fraction' must be true or false"),
])
def test_invalid_question_is_refused_naming_question_and_field(tmp_path, question, message):
    folder = _spec_with(tmp_path, "[[question]]\n" + question + "\n")
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        load_assignment(folder)


def test_duplicate_ids_and_bad_sizes_are_refused(tmp_path):
    q = '[[question]]\nid = "q1"\npoints = 1\nkind = "integer"\nprompt = "p"\nanswer = "x"\n'
    with pytest.raises(SpecError, match="'id' is used twice"):
        load_assignment(_spec_with(tmp_path, q + q))
    with pytest.raises(SpecError, match="memory"):
        load_assignment(_spec_with(tmp_path / "b", '[limits]\nmemory = "lots"\n' + q))


def test_missing_key_points_to_calibrate(tmp_path):
    folder = tmp_path / "lab01"
    shutil.copytree(LAB, folder)
    (folder / "key.json").unlink(missing_ok=True)
    with pytest.raises(SpecError, match="grader calibrate"):
        load_assignment(folder).load_key()


def test_limits_to_sandbox_carries_every_field():
    from grader.assignment import Limits
    from grader.sandbox import Limits as SandboxLimits

    lim = Limits(cell_timeout=100, notebook_timeout=300, memory=2**30, max_processes=64,
                 max_file_size=2**20, output_cap=2**16)
    got = lim.to_sandbox()
    assert isinstance(got, SandboxLimits)
    assert (got.cell_timeout, got.notebook_timeout, got.memory, got.max_processes,
            got.max_file_size, got.output_cap) == (100, 300, 2**30, 64, 2**20, 2**16)
    capped = lim.to_sandbox(timeout=50, memory=2**29)
    assert (capped.cell_timeout, capped.notebook_timeout, capped.memory) == (50, 50, 2**29)
    assert lim.to_sandbox(timeout=1000).cell_timeout == 100          # a cell never gets more
    assert capped.max_file_size == 2**20 and capped.output_cap == 2**16


def test_calibration_runs_with_the_full_limits_and_the_data_cache(tmp_path, monkeypatch):
    from reference.paths import cache_dir

    from grader.calibrate import run_reference

    seen = {}

    class Stop(Exception):
        pass

    def fake_execute(path, **kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr("grader.calibrate.execute_notebook", fake_execute)
    lab = load_assignment(LAB)
    with pytest.raises(Stop):
        run_reference(lab, 3, tmp_path, isolation=None)
    assert seen["env"]["LAB_SEED"] == "3" and seen["env"]["GRADER_CACHE"] == str(cache_dir())
    assert [str(p) for p in seen["readonly"]] == [str(cache_dir())]
    assert seen["limits"] == lab.limits.to_sandbox()
