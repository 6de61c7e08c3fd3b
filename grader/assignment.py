"""An assignment: the lab's ``assignment.toml``, its source notebook and its key.

``assignment.toml`` says what is asked; ``key.json`` (made by ``grader calibrate``)
what is expected. :func:`load_assignment` reads and checks the first and refuses an
invalid spec with a message naming the question and the field.

Example
-------
>>> from grader.assignment import load_assignment
>>> lab = load_assignment("assignments/lab01")          # doctest: +SKIP
>>> lab.number, len(lab.questions), lab.max_points       # doctest: +SKIP
(1, 26, 40)
"""
from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .sandbox import Limits as SandboxLimits

#: Kinds of question and the fields each one needs besides id, points, prompt.
KINDS: dict[str, tuple[str, ...]] = {
    "integer": ("answer",),
    "number": ("answer",),
    "tuple": ("answer",),
    "choice": ("answer", "choices"),
    "multi": ("answer", "choices"),
    "metric": ("model", "task", "metric"),
    "consistency": ("answer", "model", "task", "metric"),
    "text": ("cell",),
}
TASKS = ("af", "gait_binary", "gait_4class")
#: Kinds of model a metric question may require (``requires``), told from the layers.
MODEL_KINDS = ("recurrent", "convolutional", "mlp")
METRICS = ("accuracy", "balanced_accuracy", "f1", "sensitivity", "specificity", "roc_auc",
           "subject_accuracy", "subject_balanced_accuracy")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*$", re.IGNORECASE)


class SpecError(ValueError):
    """assignment.toml or key.json is not valid; the message names the place."""


@dataclass(frozen=True)
class Question:
    id: str
    points: float
    kind: str
    prompt: str
    exercise: str = ""
    answer: str | None = None          # variable in the notebook's namespace
    cell: str | None = None            # grader.answer tag of a markdown cell (text)
    choices: tuple[str, ...] = ()
    model: str | None = None           # variable holding a reference model (metric, consistency)
    task: str | None = None
    fold: int = 0
    metric: str | None = None
    tolerance: dict[str, float] = field(default_factory=dict)  # floor: abs, rel
    reveal: bool = False
    fraction: bool = False             # number: a rate in [0, 1] (a percent is refused)
    requires: str | None = None        # metric, consistency: a kind of MODEL_KINDS

    @property
    def automatic(self) -> bool:
        return self.kind != "text"

    @property
    def measurement(self) -> tuple[str, str, int] | None:
        """(model variable, task, fold) the grader must measure for this question."""
        if self.kind in ("metric", "consistency"):
            return (self.model, self.task, self.fold)
        return None


@dataclass(frozen=True)
class Limits:
    cell_timeout: float = 900
    notebook_timeout: float = 1800
    memory: int = 6 * 2**30
    max_processes: int = 256
    max_file_size: int = 2**30
    output_cap: int = 10 * 2**20
    disk: int = 2 * 2**30           # the work dir as a whole
    measure_timeout: float = 300    # the grader's measurement of one notebook's models
    measure_memory: int = 2 * 2**30

    def to_sandbox(self, timeout: float | None = None, memory: int | None = None) -> SandboxLimits:
        """These limits as the runner's :class:`grader.sandbox.Limits`, every field carried.

        ``timeout`` (seconds) caps the notebook (and each cell), ``memory`` (bytes)
        replaces the memory limit; ``None`` keeps the spec's.
        """
        return SandboxLimits(
            cell_timeout=min(self.cell_timeout, timeout) if timeout else self.cell_timeout,
            notebook_timeout=timeout or self.notebook_timeout,
            memory=memory or self.memory, max_processes=self.max_processes,
            max_file_size=self.max_file_size, output_cap=self.output_cap, disk=self.disk)

    def to_measure(self) -> SandboxLimits:
        """The limits of the grader's measurement process (see :mod:`grader.measure`)."""
        return SandboxLimits(
            cell_timeout=self.measure_timeout, notebook_timeout=self.measure_timeout,
            memory=self.measure_memory, max_processes=64, max_file_size=64 * 2**20)


@dataclass(frozen=True)
class SimilarityThresholds:
    """``[similarity]`` of assignment.toml: when two groups' work is listed as similar
    (see :mod:`grader.similarity`; the defaults are the ones ``tests/test_similarity.py``
    checks on a class of honest groups, a copy and a pair sharing wrong answers)."""
    text: float = 0.5            # share of the shorter text's 5-word runs found in the other
    code: float = 0.6            # share of the smaller code's fingerprints found in the other
    wrong_answers: float = 0.05  # at most this many pairs of the class would share them by chance
    min_text_words: int = 12     # fewer words of own text than this: text not compared
    min_code_fingerprints: int = 6   # fewer own fingerprints than this: code not compared


@dataclass(frozen=True)
class Assignment:
    folder: Path
    number: int
    title: str
    course: str
    notebook: str
    questions: tuple[Question, ...]
    limits: Limits
    helpers: tuple[str, ...] = ()
    similarity: SimilarityThresholds = field(default_factory=SimilarityThresholds)

    @property
    def notebook_path(self) -> Path:
        return self.folder / self.notebook

    @property
    def key_path(self) -> Path:
        return self.folder / "key.json"

    @property
    def max_points(self) -> float:
        return sum(q.points for q in self.questions)

    @property
    def answer_variables(self) -> list[str]:
        return sorted({q.answer for q in self.questions if q.answer})

    @property
    def measurements(self) -> list[tuple[str, str, int]]:
        """Every distinct (model variable, task, fold) to measure, in question order."""
        return list(dict.fromkeys(q.measurement for q in self.questions if q.measurement))

    def load_key(self) -> dict[str, Any]:
        """key.json, checked against the questions (see :func:`check_key`)."""
        if not self.key_path.exists():
            raise SpecError(f"{self.key_path}: no key yet; make it with "
                            f"`grader calibrate {self.folder}`")
        try:
            key = json.loads(self.key_path.read_text())
        except json.JSONDecodeError as exc:
            raise SpecError(f"{self.key_path}: not valid JSON ({exc})") from None
        check_key(self, key)
        return key


def parse_size(value: int | str, where: str) -> int:
    """``"6GiB"`` -> bytes. Plain integers are bytes.

    >>> parse_size("6GiB", "x"), parse_size("512M", "x"), parse_size(1024, "x")
    (6442450944, 536870912, 1024)
    """
    if isinstance(value, int):
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise SpecError(f"{where}: {value!r} is not a size like '6GiB' or '512MiB'")
    unit = m.group(2).upper().rstrip("B").rstrip("I")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(unit or " "))


def _question(raw: dict, n: int, reveal_kinds: set[str], where: str) -> Question:
    qid = raw.get("id")
    label = f"{where}: question {qid!r}" if qid else f"{where}: question #{n + 1}"
    if not isinstance(qid, str) or not _IDENT.match(qid):
        raise SpecError(f"{label}: field 'id' must be an identifier (letters, digits, _)")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise SpecError(f"{label}: field 'kind' is {kind!r}; choose one of {', '.join(KINDS)}")
    points = raw.get("points")
    if not isinstance(points, (int, float)) or isinstance(points, bool) or points <= 0:
        raise SpecError(f"{label}: field 'points' must be a positive number, not {points!r}")
    if not isinstance(raw.get("prompt", ""), str) or not raw.get("prompt"):
        raise SpecError(f"{label}: field 'prompt' is missing")
    for name in KINDS[kind]:
        if raw.get(name) in (None, "", []):
            raise SpecError(f"{label}: kind {kind!r} needs field {name!r}")
    known = {"id", "kind", "points", "prompt", "exercise", "answer", "cell", "choices", "model",
             "task", "fold", "metric", "tolerance", "reveal", "fraction", "requires"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SpecError(f"{label}: unknown field {unknown[0]!r}")
    for name in ("answer", "model"):
        if raw.get(name) is not None and not _IDENT.match(str(raw[name])):
            raise SpecError(f"{label}: field {name!r} must be a variable name, not {raw[name]!r}")
    if raw.get("task") is not None and raw["task"] not in TASKS:
        raise SpecError(f"{label}: field 'task' is {raw['task']!r}; choose one of {', '.join(TASKS)}")
    if raw.get("metric") is not None and raw["metric"] not in METRICS:
        raise SpecError(f"{label}: field 'metric' is {raw['metric']!r}; choose one of {', '.join(METRICS)}")
    if str(raw.get("metric", "")).startswith("subject_") and raw.get("task") == "af":
        raise SpecError(f"{label}: field 'metric': by-subject metrics are for the gait tasks")
    tol = raw.get("tolerance", {})
    if not isinstance(tol, dict) or set(tol) - {"abs", "rel"} or any(
            not isinstance(v, (int, float)) or v < 0 for v in tol.values()):
        raise SpecError(f"{label}: field 'tolerance' must be a table with 'abs' and/or 'rel' >= 0")
    choices = raw.get("choices", [])
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise SpecError(f"{label}: field 'choices' must be a list of strings")
    if not isinstance(raw.get("fraction", False), bool):
        raise SpecError(f"{label}: field 'fraction' must be true or false")
    if raw.get("fraction") and kind != "number":
        raise SpecError(f"{label}: field 'fraction' is for kind 'number' (a consistency "
                        f"question is always a rate)")
    if raw.get("requires") is not None:
        if kind not in ("metric", "consistency"):
            raise SpecError(f"{label}: field 'requires' is for kinds 'metric' and 'consistency'")
        if raw["requires"] not in MODEL_KINDS:
            raise SpecError(f"{label}: field 'requires' is {raw['requires']!r}; choose one of "
                            f"{', '.join(MODEL_KINDS)}")
    fold = raw.get("fold", 0)
    if not isinstance(fold, int) or fold < 0:
        raise SpecError(f"{label}: field 'fold' must be a whole number >= 0")
    return Question(
        id=qid, points=float(points), kind=kind, prompt=raw["prompt"],
        exercise=str(raw.get("exercise", "")), answer=raw.get("answer"), cell=raw.get("cell"),
        choices=tuple(choices), model=raw.get("model"), task=raw.get("task"), fold=fold,
        metric=raw.get("metric"), tolerance={k: float(v) for k, v in tol.items()},
        reveal=bool(raw.get("reveal", kind in reveal_kinds)), fraction=raw.get("fraction", False),
        requires=raw.get("requires"),
    )


def load_assignment(folder: str | Path) -> Assignment:
    """Read and check ``<folder>/assignment.toml``."""
    folder = Path(folder)
    path = folder / "assignment.toml"
    if not path.exists():
        raise SpecError(f"{folder}: no assignment.toml (is this an assignment folder?)")
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))  # TOML is UTF-8 (Windows too)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML ({exc})") from None
    lab = spec.get("lab", {})
    for name, typ in (("number", int), ("title", str), ("notebook", str)):
        if not isinstance(lab.get(name), typ):
            raise SpecError(f"{path}: [lab] field {name!r} is missing or not a {typ.__name__}")
    reveal_kinds = set(spec.get("feedback", {}).get("reveal_kinds", []))
    raw_questions = spec.get("question", [])
    if not raw_questions:
        raise SpecError(f"{path}: no [[question]]")
    questions = tuple(_question(q, i, reveal_kinds, str(path)) for i, q in enumerate(raw_questions))
    seen: set[str] = set()
    for q in questions:
        if q.id in seen:
            raise SpecError(f"{path}: question {q.id!r}: field 'id' is used twice")
        seen.add(q.id)
    lim = spec.get("limits", {})
    defaults = Limits()
    try:
        limits = Limits(
            cell_timeout=float(lim.get("cell_timeout", defaults.cell_timeout)),
            notebook_timeout=float(lim.get("notebook_timeout", defaults.notebook_timeout)),
            memory=parse_size(lim.get("memory", defaults.memory), f"{path}: [limits] memory"),
            max_processes=int(lim.get("max_processes", defaults.max_processes)),
            max_file_size=parse_size(lim.get("max_file_size", defaults.max_file_size),
                                     f"{path}: [limits] max_file_size"),
            output_cap=parse_size(lim.get("output_cap", defaults.output_cap),
                                  f"{path}: [limits] output_cap"),
            disk=parse_size(lim.get("disk", defaults.disk), f"{path}: [limits] disk"),
            measure_timeout=float(lim.get("measure_timeout", defaults.measure_timeout)),
            measure_memory=parse_size(lim.get("measure_memory", defaults.measure_memory),
                                      f"{path}: [limits] measure_memory"),
        )
    except (TypeError, ValueError) as exc:
        if isinstance(exc, SpecError):
            raise
        raise SpecError(f"{path}: [limits]: {exc}") from None
    return Assignment(folder=folder, number=lab["number"], title=lab["title"],
                      course=str(lab.get("course", "")), notebook=lab["notebook"],
                      questions=questions, limits=limits, helpers=tuple(lab.get("helpers", [])),
                      similarity=_similarity(spec.get("similarity", {}), path))


def _similarity(raw: Any, path: Path) -> SimilarityThresholds:
    """``[similarity]``: every field optional, each a positive number."""
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: [similarity] must be a table")
    defaults = SimilarityThresholds()
    values = {}
    for name, value in raw.items():
        if not hasattr(defaults, name):
            raise SpecError(f"{path}: [similarity]: unknown field {name!r} (the fields are "
                            f"{', '.join(SimilarityThresholds.__dataclass_fields__)})")
        typ = type(getattr(defaults, name))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 \
                or (typ is int and value != int(value)):
            raise SpecError(f"{path}: [similarity] {name} = {value!r}: a positive "
                            f"{'whole number' if typ is int else 'number'} is expected")
        if name in ("text", "code") and value > 1:
            raise SpecError(f"{path}: [similarity] {name} = {value!r}: a share, at most 1")
        if name == "wrong_answers" and value >= 1:
            raise SpecError(f"{path}: [similarity] wrong_answers = {value!r}: a number of pairs "
                            "expected by chance, below 1 (e.g. 0.05)")
        values[name] = typ(value)
    return SimilarityThresholds(**values)


def check_key(assignment: Assignment, key: dict) -> None:
    """Every automatic question has what its kind needs in ``key['questions']``."""
    where = str(assignment.key_path)
    entries = key.get("questions")
    if not isinstance(entries, dict):
        raise SpecError(f"{where}: no 'questions' table")
    for q in assignment.questions:
        if not q.automatic:
            continue
        entry = entries.get(q.id)
        if not isinstance(entry, dict):
            raise SpecError(f"{where}: question {q.id!r} has no entry (run `grader calibrate`)")
        need = ("full", "zero") if q.kind == "metric" else () if q.kind == "consistency" else ("expected",)
        for name in need:
            if name not in entry:
                raise SpecError(f"{where}: question {q.id!r}: field {name!r} is missing")
    extra = sorted(set(entries) - {q.id for q in assignment.questions})
    if extra:
        raise SpecError(f"{where}: question {extra[0]!r} is not in assignment.toml")
