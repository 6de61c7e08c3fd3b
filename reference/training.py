"""Training and evaluation loop for the reference models.

The data sets are small (tens of thousands of windows of 30x1 or 20x12), so
:func:`fit` moves each split to the device once, as tensors, and draws shuffled
mini-batches by indexing -- no ``DataLoader``, no worker processes.

Example
-------
Needs the data, so not run as a doctest::

    from reference.data import load_af
    from reference.models import build_model
    from reference.training import fit, evaluate, profile_settings, set_seed
    w = load_af()
    s = profile_settings("quick", w.task, "lstm")
    set_seed(0)
    model = build_model("lstm", w.window, w.channels, w.n_classes, **s["model"])
    history = fit(model, w, seed=0, **s["fit"])
    evaluate(model, w.test, w.n_classes, by_subject=True)["balanced_accuracy"]

or in one call: ``model, history = train("lstm", w, profile="quick", seed=0)``.
"""
from __future__ import annotations

import copy
import math
import os
import random
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import metrics as M
from .models import build_model

__all__ = [
    "pick_device", "set_seed", "History", "fit", "predict_proba", "evaluate",
    "PROFILES", "profile_settings", "train",
]


# --------------------------------------------------------------------------- #
# Device and seeds
# --------------------------------------------------------------------------- #
def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The device to train on.

    ``device`` if given (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or a
    :class:`torch.device`), else CUDA if available, then Apple MPS, then CPU.
    Asking for CUDA or MPS where there is none raises :class:`RuntimeError`.

    >>> pick_device("cpu")
    device(type='cpu')
    """
    if device is not None and device != "":
        dev = torch.device(device)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError(f"device {str(dev)!r} asked for, but CUDA is not available")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise RuntimeError(f"device {str(dev)!r} asked for, but there are only "
                                   f"{torch.cuda.device_count()} CUDA devices")
        if dev.type == "mps" and not _mps_available():
            raise RuntimeError("device 'mps' asked for, but MPS is not available")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and all GPUs).

    With ``deterministic=True`` also ask torch for deterministic algorithms
    (``torch.use_deterministic_algorithms(True, warn_only=True)``), turn off
    cuDNN autotuning (``cudnn.benchmark = False``, ``cudnn.deterministic =
    True``) and set ``CUBLAS_WORKSPACE_CONFIG`` if unset (cuBLAS needs it for
    reproducible results; it only takes effect if CUDA is not initialised yet).
    ``deterministic=False`` leaves those switches as they are.
    """
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)                       # seeds every CUDA device too
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


# --------------------------------------------------------------------------- #
# History
# --------------------------------------------------------------------------- #
@dataclass
class History:
    """What :func:`fit` did, one list entry per epoch run.

    ``train_loss`` / ``val_loss`` are the (class-weighted, if ``class_weight``
    was ``"balanced"``) mean cross-entropy; ``train_metric`` / ``val_metric``
    are balanced accuracies (``metric == "balanced_accuracy"``). The training
    entries are accumulated over the epoch's mini-batches, in training mode
    (dropout on, weights moving), as Keras reports them; the validation entries
    come from a pass in eval mode after the epoch. Validation entries are
    ``None`` if the validation split is empty.

    ``best_epoch`` is the 0-based index (into these lists) of the epoch whose
    weights the model holds at the end: the lowest validation loss (the last
    epoch without validation data or with ``restore_best=False``).
    ``epochs`` is the number of epochs run (fewer than asked if early stopping
    fired, ``stopped_early``); ``seconds`` the wall time of :func:`fit`.
    """

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float | None] = field(default_factory=list)
    train_metric: list[float] = field(default_factory=list)
    val_metric: list[float | None] = field(default_factory=list)
    metric: str = "balanced_accuracy"
    best_epoch: int = -1
    epochs: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    device: str = "cpu"
    amp: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dict (NaN/inf become ``None``)."""
        def clean(v: Any) -> Any:
            if isinstance(v, list):
                return [clean(x) for x in v]
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, (np.floating, np.integer)):
                return clean(v.item())
            return v
        return {k: clean(v) for k, v in asdict(self).items()}


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #
def _as_tensor(x: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype)
    return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype).to(device)


def _class_weights(y: np.ndarray, n_classes: int, mode: Any) -> np.ndarray | None:
    """``"balanced"``: ``n / (n_classes * count_c)`` (scikit-learn's rule);
    absent classes get weight 0. A sequence is used as given; ``None``: no weights."""
    if mode is None:
        return None
    if isinstance(mode, str):
        if mode != "balanced":
            raise ValueError(f"class_weight must be 'balanced', None or a sequence, got {mode!r}")
        counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes).astype(np.float64)
        w = np.zeros(n_classes)
        present = counts > 0
        w[present] = counts.sum() / (present.sum() * counts[present])
        return w
    w = np.asarray(mode, dtype=np.float64)
    if w.shape != (n_classes,):
        raise ValueError(f"class_weight needs {n_classes} entries, got {w.shape}")
    return w


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@torch.no_grad()
def _logits(model: nn.Module, X: torch.Tensor, batch_size: int) -> torch.Tensor:
    model.eval()
    if X.shape[0] == 0:
        return torch.empty(0, 0, device=X.device)
    return torch.cat([model(X[i:i + batch_size]).float()
                      for i in range(0, X.shape[0], batch_size)])


def fit(
    model: nn.Module,
    windows: Any,
    *,
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 1e-3,
    optimizer: str = "adam",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    class_weight: Any = "balanced",
    patience: int | None = None,
    restore_best: bool = True,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    seed: int | None = None,
    deterministic: bool = False,
    progress: bool = False,
    num_threads: int | None = None,
    eval_batch_size: int = 4096,
) -> History:
    """Train ``model`` on ``windows.train``, validating on ``windows.val`` after each epoch.

    Parameters
    ----------
    model:
        Takes ``(B, window, channels)`` floats, returns ``(B, n_classes)`` logits.
    windows:
        A :class:`reference.data.Windows` (anything with ``train`` and ``val``
        splits holding ``X``, ``y``, and ``n_classes``).
    epochs, batch_size, lr:
        Epochs at most, mini-batch size (the last batch of an epoch may be
        smaller), learning rate.
    optimizer:
        ``"adam"`` (:class:`torch.optim.Adam`) or ``"sgd"`` (with ``momentum``);
        ``weight_decay`` goes to either.
    class_weight:
        ``"balanced"``: cross-entropy weights ``n / (n_classes * count_c)`` from
        the training labels; ``None``: unweighted; or one weight per class.
        Validation loss uses the same weights.
    patience:
        Stop after this many epochs without a lower validation loss; ``None``
        runs all ``epochs``.
    restore_best:
        At the end load the weights of the epoch with the lowest validation loss
        (also without ``patience``).
    device:
        See :func:`pick_device`; the model is moved there.
    amp:
        Mixed precision (``torch.autocast`` float16 + ``GradScaler``); default
        on for CUDA, and it is ignored (with a warning) elsewhere.
    seed:
        If given, :func:`set_seed` (``seed``, ``deterministic``) is called first
        (this reseeds the global generators, i.e. dropout) and the batch order
        comes from a ``torch.Generator`` seeded with ``seed``. Seed the model's
        initialisation yourself before building it (or use :func:`train`).
    progress:
        Print one line per epoch.
    num_threads:
        ``torch.set_num_threads`` during training (restored afterwards).

    Returns
    -------
    History
        The model is left in eval mode, on ``device``, with the best weights.
    """
    t0 = time.perf_counter()
    dev = pick_device(device)
    use_amp = (dev.type == "cuda") if amp is None else bool(amp)
    if use_amp and dev.type != "cuda":
        warnings.warn("amp=True only applies on CUDA; training in float32", stacklevel=2)
        use_amp = False
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    if epochs < 0 or batch_size < 1:
        raise ValueError("epochs must be >= 0 and batch_size >= 1")

    old_threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(int(num_threads))
    try:
        if seed is not None:
            set_seed(seed, deterministic=deterministic)
        gen = torch.Generator()
        gen.manual_seed(int(seed) if seed is not None
                        else int(torch.randint(0, 2**62, (1,)).item()))

        n_classes = int(windows.n_classes)
        train, val = windows.train, windows.val
        Xtr = _as_tensor(train.X, torch.float32, dev)
        ytr = _as_tensor(train.y, torch.long, dev)
        has_val = val is not None and len(val.y) > 0
        if has_val:
            Xva = _as_tensor(val.X, torch.float32, dev)
            yva = _as_tensor(val.y, torch.long, dev)
            yva_np = np.asarray(val.y, dtype=np.int64)
        n = Xtr.shape[0]
        if n == 0:
            raise ValueError("the training split is empty")

        w = _class_weights(np.asarray(train.y), n_classes, class_weight)
        weight = None if w is None else torch.as_tensor(w, dtype=torch.float32, device=dev)

        model.to(dev)
        if optimizer == "adam":
            opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        else:
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                  weight_decay=weight_decay)
        scaler = torch.amp.GradScaler("cuda") if use_amp else None

        hist = History(device=str(dev), amp=use_amp)
        best_loss, best_state, since_best = math.inf, None, 0

        for epoch in range(epochs):
            model.train()
            perm = torch.randperm(n, generator=gen).to(dev)
            loss_sum = torch.zeros((), device=dev)
            weight_sum = torch.zeros((), device=dev)
            preds = []
            for i in range(0, n, batch_size):
                idx = perm[i:i + batch_size]
                xb, yb = Xtr[idx], ytr[idx]
                with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=use_amp):
                    logits = model(xb)
                losses = F.cross_entropy(logits.float(), yb, weight=weight, reduction="none")
                wb = weight[yb] if weight is not None else torch.ones_like(losses)
                denom = wb.sum()
                loss = losses.sum() / denom.clamp_min(1e-12)
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
                loss_sum += losses.detach().sum()
                weight_sum += denom.detach()
                preds.append(logits.detach().argmax(dim=1))
            train_loss = (loss_sum / weight_sum.clamp_min(1e-12)).item()
            train_pred = torch.cat(preds).cpu().numpy()
            train_metric = M.balanced_accuracy(ytr[perm].cpu().numpy(), train_pred)

            if has_val:
                lv = _logits(model, Xva, eval_batch_size)
                val_loss = F.cross_entropy(lv, yva, weight=weight).item()
                val_metric = M.balanced_accuracy(yva_np, lv.argmax(dim=1).cpu().numpy())
            else:
                val_loss, val_metric = None, None

            hist.train_loss.append(float(train_loss))
            hist.train_metric.append(float(train_metric))
            hist.val_loss.append(val_loss)
            hist.val_metric.append(val_metric)
            hist.epochs = epoch + 1

            monitor = val_loss if has_val else None
            if monitor is not None and math.isfinite(monitor) and monitor < best_loss:
                best_loss, since_best, hist.best_epoch = monitor, 0, epoch
                if restore_best:
                    best_state = copy.deepcopy(model.state_dict())
            else:
                since_best += 1
            if not has_val or not restore_best:
                hist.best_epoch = epoch

            if progress:
                vl = "-" if val_loss is None else f"{val_loss:.4f}"
                vm = "-" if val_metric is None else f"{val_metric:.3f}"
                print(f"epoch {epoch + 1:3d}/{epochs}  train_loss {train_loss:.4f}  "
                      f"train_bacc {train_metric:.3f}  val_loss {vl}  val_bacc {vm}  "
                      f"{time.perf_counter() - t0:6.1f}s", file=sys.stdout, flush=True)

            if has_val and patience is not None and since_best >= patience:
                hist.stopped_early = epoch + 1 < epochs
                break

        if restore_best and best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        hist.seconds = time.perf_counter() - t0
        return hist
    finally:
        if num_threads:
            torch.set_num_threads(old_threads)


# --------------------------------------------------------------------------- #
# Prediction and evaluation
# --------------------------------------------------------------------------- #
def predict_proba(model: nn.Module, X: Any, batch_size: int = 4096,
                  device: str | torch.device | None = None) -> np.ndarray:
    """Softmax probabilities, shape ``(n, n_classes)`` float32, for ``X`` of shape
    ``(n, window, channels)``.

    Runs on ``device`` if given (the model is moved there), else where the
    model's parameters are. The model is left in eval mode.
    """
    dev = pick_device(device) if device is not None else _model_device(model)
    model.to(dev)
    Xt = _as_tensor(X, torch.float32, dev)
    if Xt.shape[0] == 0:
        return np.zeros((0, int(getattr(model, "n_classes", 0))), dtype=np.float32)
    with torch.inference_mode():
        probs = torch.softmax(_logits(model, Xt, batch_size), dim=1)
    return probs.cpu().numpy().astype(np.float32)


def evaluate(model: nn.Module, split: Any, n_classes: int | None = None, *,
             by_subject: bool = False, batch_size: int = 4096,
             device: str | torch.device | None = None) -> dict[str, Any]:
    """:func:`reference.metrics.classification_metrics` of ``model`` on ``split``.

    Predictions are the arg max of :func:`predict_proba`; ``roc_auc`` uses the
    probabilities. With ``by_subject=True`` adds ``subject_accuracy`` and
    ``subject_balanced_accuracy``: the windows' probabilities are averaged per
    ``split.groups`` entry (subject or record) and the arg max compared with the
    group's (majority) label, see :func:`reference.metrics.by_subject`.
    ``n_classes`` defaults to the width of the model's output.
    """
    probs = predict_proba(model, split.X, batch_size=batch_size, device=device)
    k = int(n_classes) if n_classes is not None else probs.shape[1]
    y = np.asarray(split.y, dtype=np.int64)
    out = M.classification_metrics(y, probs.argmax(axis=1), probs, n_classes=k)
    if by_subject:
        sub = M.by_subject(split.groups, y, probs, n_classes=k)
        out["subject_accuracy"] = sub["accuracy"]
        out["subject_balanced_accuracy"] = sub["balanced_accuracy"]
    return out


# --------------------------------------------------------------------------- #
# Profiles
# --------------------------------------------------------------------------- #
_RNN_NAMES = ("lstm", "gru", "bilstm", "bigru")

#: Training settings per profile and task. ``"fit"``: keyword arguments of
#: :func:`fit`; ``"model"``: keyword arguments of :func:`build_model` per model
#: family (``"rnn"`` covers lstm, gru, bilstm, bigru); ``"fit_by_model"``:
#: per-family overrides of ``"fit"``. ``"quick"`` targets a 2-core CPU
#: (minutes for all models of a task), ``"full"`` a GPU.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        "af": {
            "fit": dict(epochs=15, batch_size=256, lr=2e-3, patience=4, weight_decay=0.0),
            "model": {
                "mlp": dict(hidden=(64, 32), dropout=0.2),
                "cnn": dict(filters=(32, 64), kernel_size=5, pool=2, dropout=0.2),
                "rnn": dict(hidden=32, layers=1, dropout=0.0),
            },
            # A recurrent step costs far more than a convolution on a CPU: fewer, larger batches.
            "fit_by_model": {"rnn": dict(epochs=6, batch_size=512, lr=3e-3, patience=3)},
        },
        "gait_binary": {
            "fit": dict(epochs=40, batch_size=64, lr=1e-3, patience=8, weight_decay=1e-4),
            "model": {
                "mlp": dict(hidden=(64, 32), dropout=0.3),
                "cnn": dict(filters=(16, 32), kernel_size=3, pool=2, dropout=0.3),
                "rnn": dict(hidden=32, layers=1, dropout=0.2),
            },
            "fit_by_model": {},
        },
        "gait_4class": {
            "fit": dict(epochs=40, batch_size=64, lr=1e-3, patience=8, weight_decay=1e-4),
            "model": {
                "mlp": dict(hidden=(64, 32), dropout=0.3),
                "cnn": dict(filters=(16, 32), kernel_size=3, pool=2, dropout=0.3),
                "rnn": dict(hidden=32, layers=1, dropout=0.2),
            },
            "fit_by_model": {},
        },
    },
    "full": {
        "af": {
            "fit": dict(epochs=40, batch_size=512, lr=1e-3, patience=8, weight_decay=1e-5),
            "model": {
                "mlp": dict(hidden=(256, 128, 64), dropout=0.3),
                "cnn": dict(filters=(32, 64, 128), kernel_size=5, pool=2, dropout=0.3),
                "rnn": dict(hidden=64, layers=2, dropout=0.2),
            },
            "fit_by_model": {},
        },
        "gait_binary": {
            "fit": dict(epochs=150, batch_size=64, lr=1e-3, patience=25, weight_decay=1e-4),
            "model": {
                "mlp": dict(hidden=(128, 64), dropout=0.4),
                "cnn": dict(filters=(32, 64, 64), kernel_size=3, pool=2, dropout=0.4),
                "rnn": dict(hidden=64, layers=2, dropout=0.3),
            },
            "fit_by_model": {},
        },
        "gait_4class": {
            "fit": dict(epochs=150, batch_size=64, lr=1e-3, patience=25, weight_decay=1e-4),
            "model": {
                "mlp": dict(hidden=(128, 64), dropout=0.4),
                "cnn": dict(filters=(32, 64, 64), kernel_size=3, pool=2, dropout=0.4),
                "rnn": dict(hidden=64, layers=2, dropout=0.3),
            },
            "fit_by_model": {},
        },
    },
}


def _family(model_name: str) -> str:
    key = model_name.lower()
    if key in _RNN_NAMES:
        return "rnn"
    if key in ("mlp", "cnn"):
        return key
    raise ValueError(f"unknown model {model_name!r}; choose from mlp, cnn, {', '.join(_RNN_NAMES)}")


def profile_settings(profile: str, task: str, model_name: str) -> dict[str, dict[str, Any]]:
    """Settings of ``profile`` for ``task`` and ``model_name``.

    Returns ``{"model": <kwargs of build_model>, "fit": <kwargs of fit>}``
    (fresh copies, safe to modify).

    >>> s = profile_settings("quick", "af", "bilstm")
    >>> s["model"]["hidden"], s["fit"]["epochs"]
    (32, 6)
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    tasks = PROFILES[profile]
    if task not in tasks:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(tasks)}")
    entry = tasks[task]
    fam = _family(model_name)
    fit_kw = copy.deepcopy(entry["fit"])
    fit_kw.update(copy.deepcopy(entry.get("fit_by_model", {}).get(fam, {})))
    return {"model": copy.deepcopy(entry["model"][fam]), "fit": fit_kw}


def train(model_name: str, windows: Any, profile: str = "quick", *, seed: int | None = 0,
          device: str | torch.device | None = None, model_kwargs: dict | None = None,
          **fit_kwargs) -> tuple[nn.Module, History]:
    """Build ``model_name`` with the ``profile``'s settings for ``windows.task`` and fit it.

    Seeds (:func:`set_seed`) before building, so the same ``seed`` gives the same
    initial weights and, on CPU, the same history. ``model_kwargs`` and
    ``fit_kwargs`` override the profile's settings.
    """
    s = profile_settings(profile, windows.task, model_name)
    s["model"].update(model_kwargs or {})
    s["fit"].update(fit_kwargs)
    if seed is not None:
        set_seed(seed, deterministic=s["fit"].get("deterministic", False))
    model = build_model(model_name, windows.window, windows.channels, windows.n_classes,
                        **s["model"])
    history = fit(model, windows, seed=seed, device=device, **s["fit"])
    return model, history
