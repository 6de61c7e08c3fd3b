"""Training loop, prediction, evaluation, devices and profiles on synthetic windows."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reference.data import Split, Windows
from reference.models import build_model
from reference.training import (
    PROFILES, History, evaluate, fit, pick_device, predict_proba, profile_settings, set_seed,
    train,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is as fast and immune to a busy CPU."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def synthetic_windows(n_train=1200, n_val=300, n_test=300, window=30, channels=1,
                      n_classes=2, task="af", seed=0, per_subject=20) -> Windows:
    """Class-dependent random sequences: class c has standard deviation 1 + c and a
    mean shift of 0.3 c, so a short training run separates the classes.
    Consecutive windows of one class share a subject id (``per_subject`` windows each)."""
    rng = np.random.default_rng(seed)

    def split(n, prefix):
        y = np.sort(rng.integers(0, n_classes, n))
        X = rng.normal(size=(n, window, channels)) * (1.0 + y)[:, None, None]
        X += 0.3 * y[:, None, None]
        groups = np.array([f"{prefix}{c}-{i // per_subject}" for i, c in enumerate(y)])
        return X, y.astype(np.int64), groups

    parts = {name: split(n, name) for name, n in
             [("train", n_train), ("val", n_val), ("test", n_test)]}
    mean = parts["train"][0].mean(axis=(0, 1))
    std = parts["train"][0].std(axis=(0, 1))
    splits = {name: Split(((X - mean) / std).astype(np.float32), y, g)
              for name, (X, y, g) in parts.items()}
    return Windows(task=task, classes=[f"c{i}" for i in range(n_classes)],
                   mean=mean, std=std, **splits)


@pytest.fixture(scope="module")
def af_like():
    return synthetic_windows()


@pytest.fixture(scope="module")
def gait_like():
    return synthetic_windows(n_train=600, n_val=200, n_test=200, window=20, channels=12,
                             n_classes=4, task="gait_4class")


# --------------------------------------------------------------------------- devices
def test_pick_device_cpu():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(torch.device("cpu")).type == "cpu"


def test_pick_device_default():
    dev = pick_device()
    if torch.cuda.is_available():
        assert dev.type == "cuda"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        assert dev.type == "mps"
    else:
        assert dev == torch.device("cpu")


def test_pick_device_cuda_unavailable_raises():
    if torch.cuda.is_available():
        assert pick_device("cuda:0").type == "cuda"
    else:
        with pytest.raises(RuntimeError, match="CUDA"):
            pick_device("cuda")


# --------------------------------------------------------------------------- training
@pytest.mark.parametrize("name,epochs", [("mlp", 6), ("cnn", 5), ("lstm", 6)])
def test_short_training_beats_chance(af_like, name, epochs):
    set_seed(0)
    model = build_model(name, af_like.window, af_like.channels, af_like.n_classes)
    hist = fit(model, af_like, epochs=epochs, batch_size=64, lr=3e-3, seed=0, device="cpu")
    assert hist.epochs == epochs
    assert not model.training
    m = evaluate(model, af_like.test, af_like.n_classes)
    assert m["balanced_accuracy"] > 0.8, m
    assert m["roc_auc"] > 0.85


def test_gait_like_four_classes(gait_like):
    set_seed(0)
    model = build_model("cnn", gait_like.window, gait_like.channels, gait_like.n_classes)
    fit(model, gait_like, epochs=8, batch_size=64, lr=3e-3, seed=0, device="cpu")
    m = evaluate(model, gait_like.test, gait_like.n_classes, by_subject=True)
    assert m["balanced_accuracy"] > 0.6        # chance 0.25
    assert np.array(m["confusion_matrix"]).shape == (4, 4)
    assert 0.0 <= m["subject_accuracy"] <= 1.0
    assert m["subject_balanced_accuracy"] >= m["balanced_accuracy"] - 0.2


def test_same_seed_same_history(af_like):
    def run(seed):
        set_seed(seed)
        model = build_model("cnn", af_like.window, af_like.channels, af_like.n_classes)
        hist = fit(model, af_like, epochs=2, batch_size=128, seed=seed, device="cpu")
        return hist, predict_proba(model, af_like.test.X)

    h1, p1 = run(1)
    h2, p2 = run(1)
    h3, _ = run(2)
    for key in ("train_loss", "val_loss", "train_metric", "val_metric"):
        assert getattr(h1, key) == getattr(h2, key)
    np.testing.assert_array_equal(p1, p2)
    assert h1.train_loss != h3.train_loss


def test_train_helper_is_reproducible(gait_like):
    m1, h1 = train("gru", gait_like, "quick", seed=3, epochs=2, device="cpu")
    m2, h2 = train("gru", gait_like, "quick", seed=3, epochs=2, device="cpu")
    assert h1.train_loss == h2.train_loss and h1.val_loss == h2.val_loss
    assert m1.rnn.hidden_size == profile_settings("quick", "gait_4class", "gru")["model"]["hidden"]


def test_early_stopping_restores_best(af_like):
    set_seed(0)
    model = build_model("mlp", af_like.window, af_like.channels, af_like.n_classes,
                        hidden=(256, 256), dropout=0.0)
    # a large learning rate on tiny data overfits fast, so val loss rises after a few epochs
    hist = fit(model, af_like, epochs=60, batch_size=32, lr=1e-2, patience=3, seed=0,
               device="cpu", class_weight=None)
    assert hist.stopped_early and hist.epochs < 60
    assert hist.best_epoch == int(np.argmin(hist.val_loss))
    assert hist.epochs == hist.best_epoch + 1 + 3
    # the model holds the best epoch's weights: its validation loss is the best one
    probs = predict_proba(model, af_like.val.X)
    val_loss = -np.mean(np.log(probs[np.arange(len(af_like.val)), af_like.val.y]))
    assert val_loss == pytest.approx(hist.val_loss[hist.best_epoch], rel=1e-4)
    assert val_loss < hist.val_loss[-1]


def test_without_patience_runs_all_epochs(gait_like):
    set_seed(0)
    model = build_model("mlp", gait_like.window, gait_like.channels, gait_like.n_classes)
    hist = fit(model, gait_like, epochs=4, seed=0, device="cpu", optimizer="sgd", lr=0.05)
    assert hist.epochs == 4 and not hist.stopped_early
    assert len(hist.train_loss) == len(hist.val_metric) == 4
    assert 0 <= hist.best_epoch < 4


def test_history_to_dict_is_json_safe(gait_like):
    set_seed(0)
    model = build_model("lstm", gait_like.window, gait_like.channels, gait_like.n_classes)
    hist = fit(model, gait_like, epochs=2, seed=0, device="cpu", num_threads=1)
    d = hist.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["device"] == "cpu" and d["amp"] is False and d["metric"] == "balanced_accuracy"
    assert d["epochs"] == 2 and d["seconds"] > 0
    assert isinstance(hist, History)


def test_balanced_class_weights_change_the_loss(af_like):
    # an imbalanced training set: keep all of class 0 and a fifth of class 1
    tr = af_like.train
    keep = (tr.y == 0) | (np.arange(len(tr.y)) % 5 == 0)
    w = Windows(task="af", classes=af_like.classes,
                train=Split(tr.X[keep], tr.y[keep], tr.groups[keep]),
                val=af_like.val, test=af_like.test, mean=af_like.mean, std=af_like.std)
    losses = {}
    for cw in ("balanced", None):
        set_seed(0)
        model = build_model("mlp", w.window, w.channels, w.n_classes)
        losses[cw] = fit(model, w, epochs=1, seed=0, device="cpu", class_weight=cw).train_loss[0]
    assert losses["balanced"] != losses[None]


def test_amp_on_cpu_warns_and_is_off(gait_like):
    model = build_model("mlp", gait_like.window, gait_like.channels, gait_like.n_classes)
    with pytest.warns(UserWarning, match="amp"):
        hist = fit(model, gait_like, epochs=1, device="cpu", amp=True)
    assert hist.amp is False


# --------------------------------------------------------------------------- predict / evaluate
def test_predict_proba_shape_and_rows_sum_to_one(gait_like):
    model = build_model("bigru", gait_like.window, gait_like.channels, gait_like.n_classes)
    p = predict_proba(model, gait_like.test.X, batch_size=37)
    assert p.shape == (len(gait_like.test), 4) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    assert not model.training


def test_evaluate_keys(af_like):
    model = build_model("mlp", af_like.window, af_like.channels, af_like.n_classes)
    m = evaluate(model, af_like.test, af_like.n_classes)
    assert set(m) == {"accuracy", "balanced_accuracy", "f1", "sensitivity", "specificity",
                      "roc_auc", "confusion_matrix"}
    m = evaluate(model, af_like.test, by_subject=True)
    assert {"subject_accuracy", "subject_balanced_accuracy"} <= set(m)
    json.dumps(m)


# --------------------------------------------------------------------------- profiles
@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("task", ["af", "gait_binary", "gait_4class"])
@pytest.mark.parametrize("name", ["mlp", "cnn", "lstm", "gru", "bilstm", "bigru"])
def test_profile_settings_build_and_fit_kwargs(profile, task, name):
    s = profile_settings(profile, task, name)
    assert set(s) == {"model", "fit"}
    for key in ("epochs", "batch_size", "lr", "patience"):
        assert key in s["fit"]
    shape = (30, 1, 2) if task == "af" else (20, 12, 4 if task == "gait_4class" else 2)
    model = build_model(name, *shape, **s["model"])
    assert model(torch.randn(2, shape[0], shape[1])).shape == (2, shape[2])
    s["fit"]["epochs"] = -1                       # copies: the profile is unchanged
    assert profile_settings(profile, task, name)["fit"]["epochs"] > 0


def test_profile_settings_unknown():
    with pytest.raises(ValueError):
        profile_settings("medium", "af", "mlp")
    with pytest.raises(ValueError):
        profile_settings("quick", "ecg", "mlp")
    with pytest.raises(ValueError):
        profile_settings("quick", "af", "resnet")
