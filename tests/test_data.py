"""The loaders on the real PhysioNet files."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from reference import data
from reference.paths import MissingDataError


def test_af_reads_all_25_records(physionet):
    beats = data.load_af_beats(physionet)
    assert len(beats) == 25
    total = sum(len(rr) for rr, _ in beats.values())
    # The README counts 1,221,559 beats; each record loses its first (no RR before it).
    assert total == 1_221_559 - 25
    rr, af = beats["07162"]
    assert (af[af >= 0] == 1).all()          # AF from start to end
    assert 0.2 < float(np.median(rr)) < 2.0  # seconds, not samples


def test_af_windows_and_split(physionet):
    af = data.load_af(window=30, data_dir=physionet)
    assert af.classes == ["non-AF", "AF"]
    for split in (af.train, af.val, af.test):
        assert split.X.shape[1:] == (30, 1) and split.X.dtype == np.float32
        assert len(split.X) == len(split.y) == len(split.groups)
    records = {name: set(getattr(af, name).groups) for name in ("train", "val", "test")}
    assert not records["train"] & records["test"]
    assert not records["train"] & records["val"]
    assert not records["val"] & records["test"]
    assert records["test"] == set(data.AF_SPLIT["test"])
    # Every test record holds both classes.
    for r in records["test"]:
        assert set(af.test.y[af.test.groups == r]) == {0, 1}
    # Standardized with the training statistics.
    assert abs(float(af.train.X.mean())) < 1e-3
    assert abs(float(af.train.X.std()) - 1) < 1e-2


def test_af_window_length_is_configurable(physionet):
    af = data.load_af(window=100, data_dir=physionet)
    assert af.test.X.shape[1] == 100
    assert len(af.test) < len(data.load_af(window=30, data_dir=physionet).test)


def test_af_window_label_is_majority_of_beats():
    rr = np.full(8, 0.8, np.float32)
    af = np.array([-1, 0, 1, 1, 0, 0, 0, 1], np.int8)
    X, y = data.af_windows(rr, af, window=3, step=1)
    # The window holding the beat of unknown rhythm is dropped.
    assert y.tolist() == [1, 1, 0, 0, 0]
    assert X.shape == (5, 3)


def test_second_af_load_is_cached_and_fast(physionet, tmp_path):
    code = ("import time; from reference.data import load_af; t=time.time(); load_af(); "
            "print(time.time()-t)")
    env = {"GRADER_DATA": str(physionet), "GRADER_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"}
    run = lambda: float(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                       capture_output=True, text=True).stdout)
    run()                                     # parses the WFDB files, fills the cache
    assert list(tmp_path.glob("afdb-beats-*.npz"))
    assert run() < 1.0                        # a new process reads the cache


def test_gait_subjects_and_classes(physionet):
    records = data.gait_records(physionet)
    assert len(records) == 64
    counts = {g: sum(data.gait_class(r) == g for r in records) for g in data.GAIT_GROUPS}
    assert counts == {"control": 16, "hunt": 20, "park": 15, "als": 13}


@pytest.mark.parametrize("task, n_classes", [("binary", 2), ("4class", 4)])
def test_gait_folds_are_by_subject_and_stratified(physionet, task, n_classes):
    seen_test = set()
    for fold in range(5):
        g = data.load_gait(task, fold=fold, data_dir=physionet)
        assert g.train.X.shape[1:] == (20, 12)
        subjects = {n: set(getattr(g, n).groups) for n in ("train", "val", "test")}
        assert not subjects["train"] & subjects["test"]
        assert not subjects["train"] & subjects["val"]
        assert not subjects["val"] & subjects["test"]
        assert len(subjects["train"] | subjects["val"] | subjects["test"]) == 64
        assert set(g.test.y) == set(range(n_classes))  # every class in every test fold
        seen_test |= subjects["test"]
    assert len(seen_test) == 64                     # each subject tested exactly once


def test_gait_outlier_strides_are_dropped(physionet):
    table = data.read_gait_record("als1", physionet)
    assert table.shape == (194, 13)
    kept = data.drop_outlier_strides(table)
    assert 0 < len(table) - len(kept) < 0.2 * len(table)
    assert kept[:, 1].max() < table[:, 1].max()


def test_unknown_task_and_bad_fold_are_refused(physionet):
    with pytest.raises(ValueError, match="gait task"):
        data.load_gait("3class", data_dir=physionet)
    with pytest.raises(ValueError, match="fold 7"):
        data.load_gait("binary", fold=7, data_dir=physionet)


def test_missing_data_names_folder_and_fetch_command(tmp_path):
    with pytest.raises(MissingDataError, match="grader data fetch") as err:
        data.load_af(data_dir=tmp_path)
    assert str(tmp_path) in str(err.value)
