"""The reference bench: its JSON, and --jobs giving the serial run's figures."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from reference.bench import combine, folds_of


def _part(fold, acc, seconds, task="gait_binary"):
    return {"task": task, "model": "cnn", "fold": fold, "params": 100, "device": "cpu",
            "seconds": seconds, "metrics": {"accuracy": acc, "balanced_accuracy": acc, "f1": acc,
                                            "subject_balanced_accuracy": None}}


def test_combine_averages_folds_and_sums_seconds():
    r = combine([_part(1, 0.6, 2.0), _part(0, 0.8, 1.0)])
    assert r["folds"] == 2
    assert r["metrics"]["accuracy"] == pytest.approx(0.7)
    assert r["seconds"] == pytest.approx(3.0)
    assert "subject_balanced_accuracy" not in r["metrics"]  # no fold had it


def test_af_has_one_split_gait_five_folds():
    assert folds_of("af") == [0]
    assert folds_of("gait_4class") == [0, 1, 2, 3, 4]


def _bench(tmp_path, name, *extra):
    out = tmp_path / f"{name}.json"
    subprocess.run([sys.executable, "-m", "reference.bench", "--profile", "quick",
                    "--tasks", "gait_binary", "--models", "mlp", "--json", str(out), *extra],
                   check=True, capture_output=True, text=True, timeout=600)
    return json.loads(out.read_text())


def test_parallel_bench_gives_the_serial_figures(physionet, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADER_DATA", str(physionet))
    serial = _bench(tmp_path, "serial")
    parallel = _bench(tmp_path, "parallel", "--jobs", "2")
    assert [(r["task"], r["model"]) for r in parallel] == [("gait_binary", "mlp")]
    row = parallel[0]
    assert {"task", "model", "params", "device", "seconds", "metrics"} <= set(row)
    assert row["folds"] == 5
    for key in ("accuracy", "balanced_accuracy", "f1", "subject_accuracy",
                "subject_balanced_accuracy"):
        assert row["metrics"][key] == pytest.approx(serial[0]["metrics"][key], abs=1e-9), key
