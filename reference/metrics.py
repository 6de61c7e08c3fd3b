"""Classification metrics for the lab, window level and subject level.

Every number comes from :mod:`sklearn.metrics`; this module only picks the
averaging conventions the lab uses and returns plain Python values (``float``,
``int``, ``list`` and ``None``), so that the result can go straight into JSON.

Conventions
-----------
Binary tasks (2 classes, class 1 = the positive class: AF, disease):

* ``f1``: F1 of class 1;
* ``sensitivity``: recall of class 1; ``specificity``: recall of class 0;
* ``roc_auc``: from the probability of class 1.

Multi-class tasks:

* ``f1``: macro F1 (scikit-learn's default label set: classes present in
  ``y_true`` or ``y_pred``);
* ``sensitivity``: macro recall (same label set);
* ``specificity``: mean over classes of the one-vs-rest specificity
  ``TN / (TN + FP)``, over the classes for which it is defined;
* ``roc_auc``: one-vs-rest, macro average.

A metric that is undefined on the data (``roc_auc`` when ``y_true`` holds one
class only, ``sensitivity`` when there is no positive window, ...) is ``None``.

Example
-------
>>> from reference.metrics import classification_metrics
>>> m = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1],
...                            y_score=[0.1, 0.6, 0.8, 0.9])
>>> m["accuracy"], m["sensitivity"], m["specificity"], m["roc_auc"]
(0.75, 1.0, 0.5, 1.0)
>>> m["confusion_matrix"]
[[1, 1], [0, 2]]
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn import metrics as skm

#: Keys of the dictionaries that :func:`classification_metrics` and
#: :func:`by_subject` return, in that order.
METRIC_KEYS = (
    "accuracy",
    "balanced_accuracy",
    "f1",
    "sensitivity",
    "specificity",
    "roc_auc",
    "confusion_matrix",
)


def _labels(y: Any, name: str) -> np.ndarray:
    """``y`` as a 1-D int64 array; raise on non-integral values."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integer class indices")
    elif arr.dtype.kind not in "iub" and arr.size:
        raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _scores(y_score: Any, n: int, n_classes: int | None) -> np.ndarray:
    """``y_score`` as an ``(n, n_classes)`` float64 array of probabilities.

    A 1-D array is taken as the probability of class 1 of a binary task.
    """
    s = np.asarray(y_score, dtype=np.float64)
    if s.ndim == 1:
        if n_classes not in (None, 2):
            raise ValueError("a 1-D y_score is the probability of class 1 of a binary task")
        s = np.stack([1.0 - s, s], axis=1)
    if s.ndim != 2 or s.shape[0] != n:
        raise ValueError(f"y_score must have shape (n, n_classes) with n={n}, got {s.shape}")
    return s


def _infer_n_classes(y_true: np.ndarray, y_pred: np.ndarray, scores: np.ndarray | None) -> int:
    k = 2
    if y_true.size:
        k = max(k, int(y_true.max()) + 1)
    if y_pred.size:
        k = max(k, int(y_pred.max()) + 1)
    if scores is not None:
        k = max(k, scores.shape[1])
    return k


def _float(x: Any) -> float | None:
    x = float(x)
    return None if not np.isfinite(x) else x


def balanced_accuracy(y_true: Any, y_pred: Any) -> float:
    """Balanced accuracy (mean recall over the classes present in ``y_true``).

    scikit-learn's :func:`~sklearn.metrics.balanced_accuracy_score`, without its
    warning when ``y_pred`` holds a class that ``y_true`` does not.

    >>> balanced_accuracy([0, 0, 0, 1], [0, 0, 1, 1])
    0.8333333333333333
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(skm.balanced_accuracy_score(y_true, y_pred))


def _roc_auc(y_true: np.ndarray, scores: np.ndarray, n_classes: int) -> float | None:
    present = np.unique(y_true)
    if present.size < 2:
        return None
    if n_classes == 2:
        return _float(skm.roc_auc_score(y_true, scores[:, 1]))
    if present.size < n_classes:
        # One-vs-rest AUC of an absent class is undefined; scikit-learn refuses.
        return None
    # scikit-learn insists the rows sum to 1 (float32 softmax may be a hair off).
    p = np.clip(scores, 0.0, None)
    total = p.sum(axis=1, keepdims=True)
    p = np.divide(p, total, out=np.full_like(p, 1.0 / n_classes), where=total > 0)
    return _float(skm.roc_auc_score(y_true, p, multi_class="ovr", average="macro",
                                    labels=np.arange(n_classes)))


def classification_metrics(
    y_true: Any,
    y_pred: Any,
    y_score: Any = None,
    n_classes: int | None = None,
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, F1, sensitivity, specificity, ROC AUC, confusion matrix.

    Parameters
    ----------
    y_true, y_pred:
        Class indices, shape ``(n,)``.
    y_score:
        Class probabilities, shape ``(n, n_classes)`` (e.g. a softmax output), or
        for a binary task shape ``(n,)`` with the probability of class 1.
        Without it ``roc_auc`` is ``None``.
    n_classes:
        Number of classes; default: inferred from the labels and ``y_score``
        (at least 2). It fixes the rows and columns of the confusion matrix
        (labels ``0 .. n_classes-1``) and whether the binary or the multi-class
        conventions apply.

    Returns
    -------
    dict
        ``accuracy``, ``balanced_accuracy``, ``f1``, ``sensitivity``,
        ``specificity``, ``roc_auc`` (floats, or ``None`` where undefined) and
        ``confusion_matrix`` (list of lists of int, rows = true class, columns =
        predicted class). See the module docstring for the averaging rules.

    Examples
    --------
    Binary, 2x2 confusion matrix ``[[TN, FP], [FN, TP]] = [[3, 1], [2, 4]]``:

    >>> m = classification_metrics([0, 0, 0, 0, 1, 1, 1, 1, 1, 1],
    ...                            [0, 0, 0, 1, 0, 0, 1, 1, 1, 1])
    >>> m["confusion_matrix"], m["sensitivity"], m["specificity"]
    ([[3, 1], [2, 4]], 0.6666666666666666, 0.75)
    >>> m["roc_auc"] is None   # no scores given
    True

    Multi-class, with probabilities:

    >>> import numpy as np
    >>> p = np.array([[.8, .1, .1], [.2, .7, .1], [.1, .2, .7], [.5, .4, .1]])
    >>> m = classification_metrics([0, 1, 2, 1], p.argmax(1), p)
    >>> m["accuracy"], round(m["balanced_accuracy"], 3), m["confusion_matrix"]
    (0.75, 0.833, [[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    """
    yt = _labels(y_true, "y_true")
    yp = _labels(y_pred, "y_pred")
    if yt.shape != yp.shape:
        raise ValueError(f"y_true and y_pred differ in length: {yt.size} != {yp.size}")
    if yt.size == 0:
        raise ValueError("no samples")
    scores = None if y_score is None else _scores(y_score, yt.size, n_classes)
    if n_classes is None:
        n_classes = _infer_n_classes(yt, yp, scores)
    n_classes = int(n_classes)
    if scores is not None and scores.shape[1] != n_classes:
        raise ValueError(f"y_score has {scores.shape[1]} columns for {n_classes} classes")
    if max(yt.max(), yp.max()) >= n_classes or min(yt.min(), yp.min()) < 0:
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")

    labels = np.arange(n_classes)
    cm = skm.confusion_matrix(yt, yp, labels=labels)

    if n_classes == 2:
        f1 = skm.f1_score(yt, yp, pos_label=1, average="binary", zero_division=0)
        sens = (skm.recall_score(yt, yp, pos_label=1, average="binary", zero_division=0)
                if np.any(yt == 1) else None)
        spec = (skm.recall_score(yt, yp, pos_label=0, average="binary", zero_division=0)
                if np.any(yt == 0) else None)
    else:
        f1 = skm.f1_score(yt, yp, average="macro", zero_division=0)
        sens = skm.recall_score(yt, yp, average="macro", zero_division=0)
        mcm = skm.multilabel_confusion_matrix(yt, yp, labels=labels)  # [[TN, FP], [FN, TP]]
        tn, fp = mcm[:, 0, 0], mcm[:, 0, 1]
        defined = (tn + fp) > 0
        spec = float(np.mean(tn[defined] / (tn[defined] + fp[defined]))) if defined.any() else None

    return {
        "accuracy": float(skm.accuracy_score(yt, yp)),
        "balanced_accuracy": balanced_accuracy(yt, yp),
        "f1": float(f1),
        "sensitivity": None if sens is None else float(sens),
        "specificity": None if spec is None else float(spec),
        "roc_auc": None if scores is None else _roc_auc(yt, scores, n_classes),
        "confusion_matrix": cm.astype(int).tolist(),
    }


def aggregate_by_group(
    groups: Any,
    y_true: Any,
    y_score_or_pred: Any,
    n_classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Collapse windows to one row per group (subject or record).

    Returns ``(group_ids, y_true, y_pred, y_score)``, with groups in sorted
    order. A group's true label is the majority of its windows' labels (for
    the gait tasks all of a subject's windows share one label). A 2-D
    ``y_score_or_pred`` is taken as class probabilities and averaged over the
    group's windows (``y_pred`` = arg max of the mean, ``y_score`` = the mean);
    a 1-D one as predicted labels, decided by majority vote (``y_score`` is
    ``None``). Ties go to the lowest class index.

    >>> g, t, p, s = aggregate_by_group(["a", "a", "a", "b", "b"],
    ...                                 [1, 1, 1, 0, 0], [1, 0, 1, 0, 1])
    >>> g.tolist(), t.tolist(), p.tolist(), s
    (['a', 'b'], [1, 0], [1, 0], None)
    """
    groups = np.asarray(groups)
    yt = _labels(y_true, "y_true")
    arr = np.asarray(y_score_or_pred)
    if groups.ndim != 1 or groups.shape[0] != yt.shape[0] or arr.shape[0] != yt.shape[0]:
        raise ValueError("groups, y_true and y_score_or_pred must have the same length")
    ids, inverse = np.unique(groups, return_inverse=True)
    inverse = inverse.reshape(-1)
    n_groups = ids.size

    if arr.ndim == 2:
        scores = _scores(arr, yt.size, n_classes)
        k = max(n_classes or 0, scores.shape[1], _infer_n_classes(yt, yt, None))
        sums = np.zeros((n_groups, scores.shape[1]))
        np.add.at(sums, inverse, scores)
        counts = np.bincount(inverse, minlength=n_groups)[:, None]
        g_score = sums / counts
        g_pred = g_score.argmax(axis=1)
    else:
        yp = _labels(arr, "y_pred")
        k = max(n_classes or 0, _infer_n_classes(yt, yp, None))
        votes = np.zeros((n_groups, k), dtype=np.int64)
        np.add.at(votes, (inverse, yp), 1)
        g_pred = votes.argmax(axis=1)
        g_score = None

    true_votes = np.zeros((n_groups, k), dtype=np.int64)
    np.add.at(true_votes, (inverse, yt), 1)
    g_true = true_votes.argmax(axis=1)
    return ids, g_true.astype(np.int64), g_pred.astype(np.int64), g_score


def by_subject(
    groups: Any,
    y_true: Any,
    y_score_or_pred: Any,
    n_classes: int | None = None,
) -> dict[str, Any]:
    """Subject-level metrics: one vote per subject (or record) instead of per window.

    ``y_score_or_pred`` is either class probabilities of shape
    ``(n_windows, n_classes)`` (mean probability over the subject's windows,
    then arg max; ``roc_auc`` from the mean probabilities) or predicted labels
    of shape ``(n_windows,)`` (majority vote, ties to the lowest class index;
    ``roc_auc`` is ``None``). A subject's true label is the majority of its
    windows' labels. Returns the same keys as :func:`classification_metrics`.

    Example: subject ``a`` (class 1) has 2 of 3 windows right, subject ``b``
    (class 0) 1 of 2 -- a tie, which goes to class 0:

    >>> m = by_subject(["a", "a", "a", "b", "b"], [1, 1, 1, 0, 0], [1, 0, 1, 0, 1])
    >>> m["accuracy"], m["confusion_matrix"]
    (1.0, [[1, 0], [0, 1]])
    """
    _, g_true, g_pred, g_score = aggregate_by_group(groups, y_true, y_score_or_pred, n_classes)
    return classification_metrics(g_true, g_pred, g_score, n_classes=n_classes)
