"""Metrics against small hand-worked examples."""
from __future__ import annotations

import json

import numpy as np
import pytest

from reference.metrics import METRIC_KEYS, aggregate_by_group, by_subject, classification_metrics


def test_binary_hand_worked():
    # TN=3, FP=1, FN=2, TP=4
    y_true = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    y_pred = [0, 0, 0, 1, 0, 0, 1, 1, 1, 1]
    m = classification_metrics(y_true, y_pred)
    assert tuple(m) == METRIC_KEYS
    assert m["confusion_matrix"] == [[3, 1], [2, 4]]
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["sensitivity"] == pytest.approx(4 / 6)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["balanced_accuracy"] == pytest.approx((4 / 6 + 3 / 4) / 2)
    precision = 4 / 5
    recall = 4 / 6
    assert m["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert m["roc_auc"] is None
    json.dumps(m)   # plain python values


def test_binary_roc_auc_from_probabilities():
    y_true = [0, 0, 1, 1]
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    # pairs (neg, pos): (0.1,0.35) ok, (0.1,0.8) ok, (0.4,0.35) wrong, (0.4,0.8) ok -> 3/4
    m = classification_metrics(y_true, (p1 > 0.5).astype(int), np.stack([1 - p1, p1], 1))
    assert m["roc_auc"] == pytest.approx(0.75)
    m1d = classification_metrics(y_true, (p1 > 0.5).astype(int), p1)
    assert m1d["roc_auc"] == pytest.approx(0.75)
    assert all(isinstance(v, float) for k, v in m.items() if k != "confusion_matrix")


def test_single_class_undefined_metrics_are_none():
    m = classification_metrics([1, 1, 1], [1, 0, 1], [0.9, 0.4, 0.8])
    assert m["roc_auc"] is None
    assert m["specificity"] is None           # no class-0 window
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["confusion_matrix"] == [[0, 0], [1, 2]]


def test_multiclass_hand_worked():
    y_true = [0, 0, 1, 1, 2, 2, 2, 3]
    y_pred = [0, 1, 1, 1, 2, 0, 2, 3]
    m = classification_metrics(y_true, y_pred, n_classes=4)
    assert m["confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 0, 1]]
    recalls = [1 / 2, 2 / 2, 2 / 3, 1 / 1]
    assert m["sensitivity"] == pytest.approx(np.mean(recalls))
    assert m["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    # one-vs-rest specificity TN/(TN+FP) per class
    specs = [5 / 6, 5 / 6, 5 / 5, 7 / 7]
    assert m["specificity"] == pytest.approx(np.mean(specs))
    precisions = [1 / 2, 2 / 3, 2 / 2, 1 / 1]
    f1s = [2 * p * r / (p + r) for p, r in zip(precisions, recalls)]
    assert m["f1"] == pytest.approx(np.mean(f1s))
    assert m["accuracy"] == pytest.approx(6 / 8)


def test_multiclass_roc_auc():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 5)
    perfect = np.eye(4)[y] * 0.7 + 0.075
    m = classification_metrics(y, perfect.argmax(1), perfect.astype(np.float32))
    assert m["roc_auc"] == pytest.approx(1.0)
    noisy = rng.dirichlet(np.ones(4), size=y.size)
    m = classification_metrics(y, noisy.argmax(1), noisy)
    assert 0.0 <= m["roc_auc"] <= 1.0
    # a class absent from y_true: one-vs-rest AUC undefined
    keep = y != 3
    assert classification_metrics(y[keep], y[keep], perfect[keep], n_classes=4)["roc_auc"] is None


def test_confusion_matrix_covers_all_labels():
    m = classification_metrics([0, 0], [0, 0], n_classes=3)
    assert m["confusion_matrix"] == [[2, 0, 0], [0, 0, 0], [0, 0, 0]]


def test_bad_input_raises():
    with pytest.raises(ValueError):
        classification_metrics([0, 1], [0])
    with pytest.raises(ValueError):
        classification_metrics([0, 2], [0, 1], n_classes=2)
    with pytest.raises(ValueError):
        classification_metrics([0.5, 1], [0, 1])


def test_by_subject_majority_vote():
    groups = ["a", "a", "a", "b", "b", "b", "c", "c", "d"]
    y_true = [1, 1, 1, 0, 0, 0, 1, 1, 0]
    y_pred = [1, 1, 0, 1, 1, 0, 0, 0, 0]
    # a: 2 of 3 say 1 -> 1 (right); b: 2 of 3 say 1 -> 1 (wrong);
    # c: 0 -> wrong; d: 0 -> right
    m = by_subject(groups, y_true, y_pred)
    assert tuple(m) == METRIC_KEYS
    assert m["confusion_matrix"] == [[1, 1], [1, 1]]
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["sensitivity"] == pytest.approx(0.5)
    assert m["specificity"] == pytest.approx(0.5)
    assert m["roc_auc"] is None


def test_by_subject_tie_goes_to_lowest_class():
    _, t, p, _ = aggregate_by_group(["x", "x"], [1, 1], [0, 1])
    assert t.tolist() == [1] and p.tolist() == [0]


def test_by_subject_mean_probability():
    groups = np.array(["s1", "s1", "s2", "s2", "s3"])
    y_true = np.array([0, 0, 1, 1, 1])
    p1 = np.array([0.9, 0.0, 0.6, 0.6, 0.2])
    probs = np.stack([1 - p1, p1], 1)
    # window majority would give s1 -> 0 (tie); mean prob: s1 0.45 -> 0, s2 0.6 -> 1, s3 0.2 -> 0
    ids, t, p, s = aggregate_by_group(groups, y_true, probs)
    assert ids.tolist() == ["s1", "s2", "s3"]
    assert t.tolist() == [0, 1, 1]
    assert p.tolist() == [0, 1, 0]
    assert s[:, 1] == pytest.approx([0.45, 0.6, 0.2])
    m = by_subject(groups, y_true, probs)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["roc_auc"] == pytest.approx(0.5)   # negatives 0.45 vs positives 0.6, 0.2
    json.dumps(m)


def test_by_subject_true_label_is_majority_of_windows():
    # an AF record with some non-AF windows is an AF record if most windows are AF
    _, t, _, _ = aggregate_by_group(["r"] * 5, [1, 1, 1, 0, 0], [1] * 5)
    assert t.tolist() == [1]


def test_by_subject_multiclass():
    groups = ["a", "a", "b", "b", "c", "c", "d"]
    y_true = [0, 0, 1, 1, 2, 2, 3]
    y_pred = [0, 0, 1, 2, 2, 2, 1]
    m = by_subject(groups, y_true, y_pred, n_classes=4)
    # b ties 1 vs 2 -> 1 (right); d wrong
    assert m["confusion_matrix"] == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0]]
    assert m["accuracy"] == pytest.approx(3 / 4)
