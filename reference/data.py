"""PhysioNet data for the lab: AF from RR intervals, gait from stride intervals.

Two tasks, each loaded in one call, windows already split by record or subject
(never by window: windows of one person in both train and test inflate every
metric) and standardized with the training split's statistics.

Example
-------
Needs the data, so not run as a doctest::

    from reference.data import load_af, load_gait
    af = load_af()
    af.train.X.shape, af.classes
    ((26930, 30, 1), ['non-AF', 'AF'])
    gait = load_gait("binary", fold=0)
    gait.test.X.shape
    (272, 20, 12)

Atrial fibrillation (afdb)
--------------------------
Beats come from the ``.qrs`` annotations, rhythm from the ``.atr`` annotations
(read with :func:`wfdb.rdann`). The RR interval of beat *i* is the time from
beat *i-1* to beat *i*, in seconds. A beat takes the rhythm of the last rhythm
annotation at or before it; beats before a record's first rhythm annotation are
dropped. RR intervals are clipped to [0.2, 3.0] s: the ``.qrs`` beats are
unverified detector output, and a missed or doubled beat would otherwise give
an absurd interval. Windows are consecutive runs of ``window`` beats (default
30, a new window every ``step`` beats, default ``window``: no overlap), labelled
AF when more than half of their beats lie in ``(AFIB``; ``(AFL``, ``(J`` and
``(N`` count as non-AF.

The split is fixed, by record (:data:`AF_SPLIT`): test and validation records
were chosen so that each holds both classes in substantial amounts.

Gait (gaitndd)
--------------
The 64 ``.ts`` stride series, 12 interval channels (columns 2-13 of the file:
stride, swing, stance intervals left and right, in seconds and % of stride,
and double support). The class comes from the record name (``control``,
``hunt``, ``park``, ``als``), never from ``subject-description.txt``, whose
GROUP column says ``subjects`` for ALS and which breaks the ``hunt20`` row over
two lines. The series are not filtered (PhysioNet): strides whose left or right
stride interval lies more than 3 scaled MADs from the subject's median, mostly
turns at the ends of the hallway, are dropped before windowing. Windows hold
``window`` consecutive remaining strides (default 20, a new one every ``step``
strides, default 10).

Subjects are dealt into ``n_folds`` folds stratified by class (:func:`gait_folds`):
for fold *k*, the test subjects are fold *k*, the validation subjects fold
*k+1*, and training takes the rest. Tasks: ``binary`` (control vs disease) and
``4class`` (control, Huntington's, Parkinson's, ALS).
"""
from __future__ import annotations

import functools
import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .paths import cache_dir, data_dir as resolve_data_dir, require

FS_AF = 250
AF_LABEL = "(AFIB"
RR_CLIP = (0.2, 3.0)

#: Fixed record-wise split of afdb. Every test and validation record holds
#: both rhythms in substantial amounts. The records that are AF from start to
#: end (07162, 07859) train, and so does 08219, whose normal rhythm is full of
#: ectopic beats: a model that never saw that irregular-but-not-AF pattern
#: calls it AF.
AF_SPLIT = {
    "test": ["04043", "04746", "05121", "06995", "08378"],
    "val": ["04908", "04936", "07879"],
}
AF_CLASSES = ["non-AF", "AF"]

GAIT_GROUPS = ["control", "hunt", "park", "als"]
GAIT_CLASS_NAMES = {
    "binary": ["control", "disease"],
    "4class": ["control", "Huntington's", "Parkinson's", "ALS"],
}
GAIT_CHANNELS = [
    "left stride (s)", "right stride (s)", "left swing (s)", "right swing (s)",
    "left swing (%)", "right swing (%)", "left stance (s)", "right stance (s)",
    "left stance (%)", "right stance (%)", "double support (s)", "double support (%)",
]
GAIT_FOLD_SEED = 2024


@dataclass
class Split:
    """Windows of one split.

    ``X`` has shape ``(n_windows, window, channels)``, float32, standardized with
    the training split's statistics; ``y`` holds int64 class indices; ``groups``
    the record (AF) or subject (gait) each window comes from.
    """

    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Windows:
    """Train, validation and test windows of one task, split by record/subject."""

    task: str                      # "af", "gait_binary" or "gait_4class"
    classes: list[str]             # class names, index = label
    train: Split
    val: Split
    test: Split
    mean: np.ndarray = field(repr=False)   # per channel, of the raw training windows
    std: np.ndarray = field(repr=False)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def window(self) -> int:
        return self.train.X.shape[1]

    @property
    def channels(self) -> int:
        return self.train.X.shape[2]


# ---------------------------------------------------------------- files

def _records(folder: Path) -> list[str]:
    return require(folder / "RECORDS").read_text().split()


def _fingerprint(files: list[Path]) -> str:
    """Cache key: resolved paths, sizes and mtimes of the source files."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _cached(name: str, files: list[Path], build) -> dict[str, np.ndarray]:
    """Arrays from the cache if their source files are unchanged, else built and saved.

    The cache is best effort: a read-only or missing cache folder (a sandbox)
    only costs the parse.
    """
    path = cache_dir() / f"{name}-{_fingerprint(files)}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError):
        pass
    arrays = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    except OSError:
        pass
    return arrays


# ---------------------------------------------------------------- AF

def af_records(data_dir: str | os.PathLike | None = None) -> list[str]:
    """Names of the afdb records in the data folder (``RECORDS``)."""
    return _records(resolve_data_dir(data_dir) / "afdb")


def _parse_af_record(folder: Path, record: str) -> tuple[np.ndarray, np.ndarray]:
    import wfdb  # slow import, only needed on a cache miss

    base = str(folder / record)
    with warnings.catch_warnings():
        # wfdb's own use of a pandas API that pandas deprecates: not the reader's concern.
        warnings.simplefilter("ignore")
        beats = wfdb.rdann(base, "qrs").sample.astype(np.int64)
        atr = wfdb.rdann(base, "atr")
    rhythm_at = np.asarray(atr.sample, dtype=np.int64)
    is_af = np.array([note.strip("\x00") == AF_LABEL for note in atr.aux_note])
    # Rhythm of each beat: the last rhythm annotation at or before it (-1: none yet).
    idx = np.searchsorted(rhythm_at, beats, side="right") - 1
    af = np.where(idx >= 0, is_af[np.clip(idx, 0, None)].astype(np.int8), -1).astype(np.int8)
    rr = np.diff(beats) / FS_AF
    return rr.astype(np.float32), af[1:]


def load_af_beats(data_dir: str | os.PathLike | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """RR intervals (s) and AF flag per beat, by record: ``{record: (rr, af)}``.

    ``af`` is 1 for a beat in ``(AFIB``, 0 for any other rhythm and -1 before
    the record's first rhythm annotation. Parsed once, then read from the cache.
    """
    folder = resolve_data_dir(data_dir) / "afdb"
    records = _records(folder)
    files = [require(folder / f"{r}.{ext}") for r in records for ext in ("qrs", "atr")]
    return _af_beats_cached(str(folder), tuple(records), _fingerprint(files))


@functools.lru_cache(maxsize=4)
def _af_beats_cached(folder: str, records: tuple[str, ...], _key: str):
    folder_p = Path(folder)
    files = [folder_p / f"{r}.{ext}" for r in records for ext in ("qrs", "atr")]

    def build():
        out = {}
        for r in records:
            rr, af = _parse_af_record(folder_p, r)
            out[f"rr_{r}"], out[f"af_{r}"] = rr, af
        return out

    arrays = _cached("afdb-beats", files, build)
    return {r: (arrays[f"rr_{r}"], arrays[f"af_{r}"]) for r in records}


def af_windows(rr: np.ndarray, af: np.ndarray, window: int = 30, step: int | None = None):
    """Cut one record's beats into windows: ``(X, y)`` with X ``(n, window)`` in seconds.

    A window is kept only when all its beats have a known rhythm; it is AF when
    more than half of its beats are.

    >>> import numpy as np
    >>> X, y = af_windows(np.ones(6, np.float32), np.array([0, 0, 1, 1, 1, 1]), window=3)
    >>> X.shape, y.tolist()
    ((2, 3), [0, 1])
    """
    step = step or window
    n = (len(rr) - window) // step + 1
    if n <= 0:
        return np.zeros((0, window), np.float32), np.zeros(0, np.int64)
    starts = np.arange(n) * step
    idx = starts[:, None] + np.arange(window)[None, :]
    flags = af[idx]
    keep = (flags >= 0).all(axis=1)
    X = np.clip(rr[idx[keep]], *RR_CLIP).astype(np.float32)
    y = (flags[keep].sum(axis=1) * 2 > window).astype(np.int64)
    return X, y


def load_af(window: int = 30, step: int | None = None,
            data_dir: str | os.PathLike | None = None) -> Windows:
    """AF windows of RR intervals, split by record (:data:`AF_SPLIT`).

    Example (needs the data)::

        af = load_af(window=30)
        af.train.X.shape[1:]
        (30, 1)
    """
    beats = load_af_beats(data_dir)
    held_out = set(AF_SPLIT["test"]) | set(AF_SPLIT["val"])
    names = {"train": [r for r in beats if r not in held_out], **AF_SPLIT}
    raw = {}
    for split, records in names.items():
        Xs, ys, gs = [], [], []
        for r in records:
            X, y = af_windows(*beats[r], window=window, step=step)
            Xs.append(X), ys.append(y), gs.append(np.full(len(y), r))
        raw[split] = (np.concatenate(Xs)[:, :, None], np.concatenate(ys), np.concatenate(gs))
    return _standardized("af", AF_CLASSES, raw)


# ---------------------------------------------------------------- gait

def gait_class(record: str) -> str:
    """Group of a gaitndd record from its name: ``control``, ``hunt``, ``park`` or ``als``.

    >>> gait_class("hunt20")
    'hunt'
    """
    group = record.rstrip("0123456789")
    if group not in GAIT_GROUPS:
        raise ValueError(f"gaitndd record {record!r}: name does not start with one of {GAIT_GROUPS}")
    return group


def gait_records(data_dir: str | os.PathLike | None = None) -> list[str]:
    """Names of the 64 gaitndd records (``RECORDS``)."""
    return _records(resolve_data_dir(data_dir) / "gaitndd")


def read_gait_record(record: str, data_dir: str | os.PathLike | None = None) -> np.ndarray:
    """One subject's ``.ts`` file: ``(strides, 13)``, elapsed time then the 12 channels."""
    path = require(resolve_data_dir(data_dir) / "gaitndd" / f"{record}.ts")
    try:
        table = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise ValueError(f"{path}: not a 13-column stride table ({exc})") from None
    if table.shape[1] != 13:
        raise ValueError(f"{path}: expected 13 tab-separated columns, found {table.shape[1]}")
    return table


def drop_outlier_strides(table: np.ndarray, k: float = 3.0) -> np.ndarray:
    """Drop strides whose left or right stride interval is > ``k`` scaled MADs off the median.

    >>> import numpy as np
    >>> t = np.ones((10, 13)); t[:, 1:3] = 1.0 + 0.01 * np.arange(10)[:, None]; t[4, 1] = 5.0
    >>> len(drop_outlier_strides(t))
    9
    """
    stride = table[:, 1:3]
    med = np.median(stride, axis=0)
    mad = 1.4826 * np.median(np.abs(stride - med), axis=0)
    keep = (np.abs(stride - med) <= k * np.maximum(mad, 1e-6)).all(axis=1)
    return table[keep]


def gait_windows(table: np.ndarray, window: int = 20, step: int = 10) -> np.ndarray:
    """Windows of ``window`` consecutive strides over the 12 channels: ``(n, window, 12)``."""
    channels = table[:, 1:].astype(np.float32)
    n = (len(channels) - window) // step + 1
    if n <= 0:
        return np.zeros((0, window, channels.shape[1]), np.float32)
    idx = np.arange(n)[:, None] * step + np.arange(window)[None, :]
    return channels[idx]


def gait_folds(records: list[str], n_folds: int = 5) -> dict[str, int]:
    """Subject-wise folds stratified by class: ``{record: fold}``.

    Each class's records, in a fixed shuffled order (seed :data:`GAIT_FOLD_SEED`),
    are dealt round-robin, continuing where the previous class stopped so that
    fold sizes differ by at most one.
    """
    rng = np.random.default_rng(GAIT_FOLD_SEED)
    folds, turn = {}, 0
    for group in GAIT_GROUPS:
        members = sorted((r for r in records if gait_class(r) == group),
                         key=lambda r: int(r[len(group):]))
        for r in rng.permutation(members):
            folds[str(r)] = turn % n_folds
            turn += 1
    return folds


@functools.lru_cache(maxsize=4)
def _gait_tables(folder: str, records: tuple[str, ...], _key: str) -> dict[str, np.ndarray]:
    folder_p = Path(folder)
    files = [folder_p / f"{r}.ts" for r in records]
    arrays = _cached("gaitndd-ts", files,
                     lambda: {r: read_gait_record(r, folder_p.parent) for r in records})
    return {r: arrays[r] for r in records}


def load_gait_tables(data_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Every subject's stride table, outliers kept: ``{record: (strides, 13)}``."""
    folder = resolve_data_dir(data_dir) / "gaitndd"
    records = _records(folder)
    files = [require(folder / f"{r}.ts") for r in records]
    return _gait_tables(str(folder), tuple(records), _fingerprint(files))


def load_gait(task: str = "binary", fold: int = 0, n_folds: int = 5, window: int = 20,
              step: int = 10, data_dir: str | os.PathLike | None = None) -> Windows:
    """Gait windows for ``task`` (``"binary"`` or ``"4class"``), split by subject.

    Example (needs the data)::

        g = load_gait("4class", fold=2)
        g.classes
        ['control', "Huntington's", "Parkinson's", 'ALS']
    """
    if task not in GAIT_CLASS_NAMES:
        raise ValueError(f"gait task {task!r}: choose one of {sorted(GAIT_CLASS_NAMES)}")
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold {fold} out of range for {n_folds} folds")
    tables = load_gait_tables(data_dir)
    folds = gait_folds(list(tables), n_folds)
    which = {"test": fold, "val": (fold + 1) % n_folds}
    raw = {}
    for split in ("train", "val", "test"):
        Xs, ys, gs = [], [], []
        for r, table in tables.items():
            f = folds[r]
            in_split = f == which[split] if split != "train" else f not in which.values()
            if not in_split:
                continue
            group = GAIT_GROUPS.index(gait_class(r))
            label = group if task == "4class" else int(group > 0)
            X = gait_windows(drop_outlier_strides(table), window, step)
            Xs.append(X), ys.append(np.full(len(X), label)), gs.append(np.full(len(X), r))
        raw[split] = (np.concatenate(Xs), np.concatenate(ys).astype(np.int64), np.concatenate(gs))
    return _standardized(f"gait_{task}", GAIT_CLASS_NAMES[task], raw)


# ---------------------------------------------------------------- both

def _standardized(task: str, classes: list[str], raw: dict) -> Windows:
    X_train = raw["train"][0]
    mean = X_train.mean(axis=(0, 1)).astype(np.float32)
    std = X_train.std(axis=(0, 1)).astype(np.float32) + 1e-6
    splits = {k: Split(((X - mean) / std).astype(np.float32), y, g) for k, (X, y, g) in raw.items()}
    return Windows(task, list(classes), splits["train"], splits["val"], splits["test"], mean, std)


def load_task(task: str, fold: int = 0, data_dir: str | os.PathLike | None = None, **kw) -> Windows:
    """Any task by name: ``af``, ``gait_binary`` or ``gait_4class``."""
    if task == "af":
        return load_af(data_dir=data_dir, **kw)
    if task.startswith("gait_"):
        return load_gait(task.removeprefix("gait_"), fold=fold, data_dir=data_dir, **kw)
    raise ValueError(f"unknown task {task!r}: choose af, gait_binary or gait_4class")
