"""Scoring: a pure function of (assignment, evidence, key, manual scores).  No I/O.

``evidence`` is what :func:`grader.evidence.collect` returns, with the grader's own
measurements (:func:`grader.measure.measure_models`) under ``evidence["measurements"]``.
``key`` is ``key.json``: ``key["questions"][qid]`` holds

* integer, tuple, choice, multi, number: ``{"expected": value}`` (tuple and set as
  lists); number may add ``"abs_tol"`` (and ``"rel_tol"``), widening the spec's floor;
* metric: ``{"full": x, "zero": y}``: full points at ``>= full``, none at ``<= zero``,
  linear in between;
* consistency: optional ``{"abs_tol": x}`` (widens the spec's ``tolerance.abs``).

``manual``: ``{qid: (points, comment)}`` overrides or completes any question (clamped
to ``[0, max]``).

Example::

    result = score(lab, evidence, key, manual={"best_model": (2.5, "good, but no timings")})
    result.total, result.max, [q.verdict for q in result.questions]
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from .evidence import Refused, decode_value, stopped_note
from .measure import measurement_key

#: The feedback of a text answer that awaits the instructor's mark (reports show it as pending).
PENDING_FEEDBACK = "To be graded by hand."
_MISSING = object()


@dataclass(frozen=True)
class QuestionScore:
    id: str
    kind: str
    exercise: str
    points: float
    max_points: float
    verdict: str
    feedback: str
    answer: str | None = None        # display string of what the group gave
    expected: str | None = None      # display string, only when the question reveals it
    comment: str | None = None       # the manual grader's comment, if any


@dataclass(frozen=True)
class Result:
    questions: tuple[QuestionScore, ...]
    total: float
    max: float
    exercises: dict[str, dict[str, float]] = field(default_factory=dict)

    def question(self, qid: str) -> QuestionScore:
        for q in self.questions:
            if q.id == qid:
                return q
        raise KeyError(qid)

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "max": self.max, "exercises": self.exercises,
                "questions": [asdict(q) for q in self.questions]}


# --------------------------------------------------------------------------
# Display
# --------------------------------------------------------------------------

def display(v: Any, limit: int = 200) -> str:
    """A short, readable string of a decoded value."""
    def fmt(x: Any) -> str:
        if isinstance(x, Refused):
            return f"<{x.type_name}>"
        if isinstance(x, bool) or x is None:
            return repr(x)
        if isinstance(x, float):
            if math.isnan(x):
                return "nan"
            if math.isinf(x):
                return "inf" if x > 0 else "-inf"
            return f"{x:.6g}"
        if isinstance(x, tuple):
            return "(" + ", ".join(fmt(y) for y in x) + ("," if len(x) == 1 else "") + ")"
        if isinstance(x, list):
            return "[" + ", ".join(fmt(y) for y in x) + "]"
        if isinstance(x, frozenset):
            return "{" + ", ".join(sorted(fmt(y) for y in x)) + "}" if x else "set()"
        if isinstance(x, dict):
            return "{" + ", ".join(f"{k!r}: {fmt(y)}" for k, y in x.items()) + "}"
        return repr(x)
    text = fmt(v)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(x: float) -> str:
    return f"{x:.4g}"


# --------------------------------------------------------------------------
# Value checks
# --------------------------------------------------------------------------

def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _as_int(v: Any) -> int | None:
    """``v`` as a whole number (15, 15.0, or True/False as 1/0: a perceptron's
    ``z >= 0``), else None."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return int(v)
    return None


def _type_word(v: Any) -> str:
    if isinstance(v, bool):
        return "True/False"
    if isinstance(v, frozenset):
        return "a set"
    return {int: "a whole number", float: "a number", str: "a text", tuple: "a tuple",
            list: "a list", dict: "a dict", type(None): "None"}.get(type(v), type(v).__name__)


def form_problem(q, a: Any) -> str | None:
    """Why the decoded answer ``a`` cannot be compared for question ``q`` (it then scores 0,
    verdict "invalid"), else None. Pure; knows no key: ``grader check`` tells students the
    same, before they submit.

    >>> from grader.assignment import Question
    >>> form_problem(Question("s", 1, "tuple", "p", answer="s"), (2.0, 3)) is None
    True
    >>> form_problem(Question("c", 1, "choice", "p", answer="c", choices=("A", "B")), 1)
    'expected one of the choices (A, B), got a whole number.'
    """
    if isinstance(a, Refused):
        return f"The answer is not a plain value (a {a.type_name})."
    if q.kind == "integer" and _as_int(a) is None:
        return f"expected a whole number, got {_type_word(a)}."
    if q.kind in ("number", "consistency") and not _is_number(a):
        return f"expected a number, got {_type_word(a)}."
    if (q.kind == "consistency" or getattr(q, "fraction", False)) and math.isfinite(a) \
            and not 0.0 <= a <= 1.0:
        if 1.0 < a <= 100.0:
            return (f"expected a fraction between 0 and 1; {display(a)} looks like a percent "
                    f"(give {display(a / 100)}).")
        return f"expected a fraction between 0 and 1, got {display(a)}."
    if q.kind == "tuple":
        if not isinstance(a, (tuple, list)):
            return f"expected a tuple of whole numbers, got {_type_word(a)}."
        bad = [x for x in a if _as_int(x) is None]
        if bad:
            return f"expected a tuple of whole numbers; it holds {_type_word(bad[0])}."
    if q.kind == "choice":
        if not isinstance(a, str):
            return f"expected one of the choices ({', '.join(q.choices)}), got {_type_word(a)}."
        if a.strip().casefold() not in {c.casefold() for c in q.choices}:
            return f"{a!r} is not one of the choices ({', '.join(q.choices)})."
    if q.kind == "multi":
        if not isinstance(a, (frozenset, set, list, tuple)):
            return f"expected a set of choices ({', '.join(q.choices)}), got {_type_word(a)}."
        if not all(isinstance(x, str) for x in a):
            return "expected a set of names (strings)."
    return None


# --------------------------------------------------------------------------
# Per kind, for an answer of the right form (see form_problem):
# (fraction of points, verdict, feedback)
# --------------------------------------------------------------------------

def _integer(q, a, entry):
    n = _as_int(a)
    return (1.0, "correct", "Correct.") if n == entry["expected"] else \
        (0.0, "wrong", "Not the expected number.")


def _number(q, a, entry):
    exp = float(entry["expected"])
    a = float(a)
    if not math.isfinite(a):
        return 0.0, "wrong", f"{display(a)} is not a finite number."
    abs_tol = max(q.tolerance.get("abs", 0.0), float(entry.get("abs_tol", 0.0)))
    rel_tol = max(q.tolerance.get("rel", 0.0), float(entry.get("rel_tol", 0.0)))
    tol = max(abs_tol, rel_tol * abs(exp))
    if abs(a - exp) <= tol:
        return 1.0, "correct", "Correct (within tolerance)."
    return 0.0, "wrong", "Not within the tolerance of the expected value."


def _tuple(q, a, entry):
    exp = [int(x) for x in entry["expected"]]
    items = [_as_int(x) for x in a]
    if len(items) != len(exp):
        return 0.0, "wrong", f"expected {len(exp)} values, got {len(items)}."
    return (1.0, "correct", "Correct.") if items == exp else (0.0, "wrong", "Not the expected values.")


def _choice(q, a, entry):
    if a.strip().casefold() == str(entry["expected"]).strip().casefold():
        return 1.0, "correct", "Correct."
    return 0.0, "wrong", "Not the expected choice."


def _multi(q, a, entry):
    picked = {x.strip().casefold() for x in a}
    exp = {str(x).strip().casefold() for x in entry["expected"]}
    unknown = sorted(picked - {c.casefold() for c in q.choices})
    right, wrong = len(picked & exp), len(picked - exp)
    frac = max(0.0, (right - wrong) / len(exp)) if exp else (1.0 if not picked else 0.0)
    frac = min(frac, 1.0)
    note = f" ({', '.join(map(repr, unknown))} not among the choices)" if unknown else ""
    if picked == exp:
        return 1.0, "correct", "Correct."
    missed = len(exp - picked)
    text = f"{right} right, {wrong} wrong, {missed} missing{note}."
    return frac, ("partial" if frac > 0 else "wrong"), text


def _measured(q, evidence) -> tuple[float | None, str | None]:
    entry = (evidence.get("measurements") or {}).get(measurement_key(q.model, q.task, q.fold))
    models = evidence.get("models") or {}
    # Why the kernel could not export the model says more than "no file to measure".
    export_error = (models.get(q.model) or {}).get("error") if isinstance(models.get(q.model), dict) else None
    if not isinstance(entry, dict):
        return None, export_error or f"the grader has no measurement of {q.model!r}"
    if "error" in entry:
        return None, str(export_error or entry["error"])
    requires = getattr(q, "requires", None)
    if requires:
        kinds = entry.get("kinds")   # absent in measurements of graders before `requires`
        if isinstance(kinds, list) and requires not in kinds:
            found = " and ".join(str(k) for k in kinds) or "of no known kind"
            layers = f" ({entry['layers']})" if isinstance(entry.get("layers"), str) and entry["layers"] else ""
            return None, (f"{q.model!r} is {found}{layers}, but this question requires a "
                          f"{requires} model")
    value = (entry.get("metrics") or {}).get(q.metric)
    if not _is_number(value) or not math.isfinite(value):
        return None, f"the metric {q.metric!r} could not be computed for {q.model!r}"
    return float(value), None


def _metric(q, evidence, entry):
    value, why = _measured(q, evidence)
    if value is None and why.startswith("not reached"):
        return 0.0, "missing", f"{why[0].upper()}{why[1:]}.", None
    if value is None:
        return 0.0, "wrong", f"No points: {why}.", None
    full, zero = float(entry["full"]), float(entry["zero"])
    if value >= full:
        frac = 1.0
    elif value <= zero or full <= zero:
        frac = 0.0
    else:
        frac = (value - zero) / (full - zero)
    verdict = "correct" if frac >= 1 else "wrong" if frac <= 0 else "partial"
    text = (f"Measured {q.metric} {_num(value)} on the {q.task} test set "
            f"(full points from {_num(full)}, none at or below {_num(zero)}).")
    return frac, verdict, text, _num(value)


def _consistency(q, a, evidence, entry):
    value, why = _measured(q, evidence)
    if value is None:
        return 0.0, "wrong", f"Cannot be checked: {why}."
    a = float(a)
    tol = max(q.tolerance.get("abs", 0.0), float((entry or {}).get("abs_tol", 0.0)),
              q.tolerance.get("rel", 0.0) * abs(value))
    if math.isfinite(a) and abs(a - value) <= tol:
        return 1.0, "correct", f"Reported {_num(a)}, the grader measured {_num(value)}: consistent."
    return 0.0, "wrong", (f"Reported {display(a)}, but the grader measured {_num(value)} "
                          f"(tolerance {_num(tol)}).")


# --------------------------------------------------------------------------
# score
# --------------------------------------------------------------------------

def _one(q, evidence: Mapping, entries: Mapping) -> QuestionScore:
    def make(frac, verdict, feedback, answer=None, expected=None):
        pts = round(max(0.0, min(1.0, frac)) * q.points, 4)
        return QuestionScore(q.id, q.kind, q.exercise, pts, q.points, verdict, feedback,
                             answer, expected if q.reveal else None)

    if q.kind == "text":
        text = (evidence.get("texts") or {}).get(q.cell)
        if not isinstance(text, str) or not text.strip():
            return make(0, "missing", "No answer found.")
        return make(0, "manual", PENDING_FEEDBACK, text)

    entry = entries.get(q.id)
    if q.kind != "consistency" and not isinstance(entry, dict):
        return make(0, "ungraded", "Not graded: the key has no entry for this question.")
    if q.kind == "consistency" and entry is not None and not isinstance(entry, dict):
        entry = None
    expected = None
    if isinstance(entry, dict) and "expected" in entry:
        exp = entry["expected"]
        expected = display(tuple(exp) if q.kind == "tuple" else frozenset(exp) if q.kind == "multi"
                           else exp)

    if q.kind == "metric":
        frac, verdict, text, shown = _metric(q, evidence, entry)
        return make(frac, verdict, text, shown)

    answers = evidence.get("answers") or {}
    raw = answers.get(q.answer, _MISSING)
    if raw is _MISSING:
        note = stopped_note(evidence)
        return make(0, "missing", f"{note[0].upper()}{note[1:]}." if note else "No answer found.",
                    None, expected)
    try:
        a = decode_value(raw)
    except Exception:  # evidence not validated by collect(): treat as unreadable
        a = Refused("unreadable")
    shown = display(a)
    why = form_problem(q, a)
    if why is not None:
        return make(0, "invalid", why, shown, expected)
    try:
        if q.kind == "integer":
            r = _integer(q, a, entry)
        elif q.kind == "number":
            r = _number(q, a, entry)
        elif q.kind == "tuple":
            r = _tuple(q, a, entry)
        elif q.kind == "choice":
            r = _choice(q, a, entry)
        elif q.kind == "multi":
            r = _multi(q, a, entry)
        elif q.kind == "consistency":
            r = _consistency(q, a, evidence, entry)
        else:
            r = (0.0, "ungraded", f"Unknown kind {q.kind!r}.")
    except (KeyError, TypeError, ValueError) as exc:  # a malformed key entry
        r = (0.0, "ungraded", f"Not graded: the key entry is malformed ({type(exc).__name__}).")
    frac, verdict, text = r
    return make(frac, verdict, text, shown, expected)


def score(assignment, evidence: Mapping, key: Mapping,
          manual: Mapping[str, tuple[float, str | None]] | None = None) -> Result:
    """Score every question of ``assignment``; see the module doc.  Pure, never raises
    for bad evidence (a malformed key entry gives verdict ``ungraded``)."""
    entries = (key or {}).get("questions") or {}
    manual = manual or {}
    scores = []
    for q in assignment.questions:
        s = _one(q, evidence or {}, entries)
        if q.id in manual:
            pts, comment = manual[q.id]
            try:
                pts = float(pts)
            except (TypeError, ValueError):
                pts = 0.0
            pts = round(max(0.0, min(q.points, pts if math.isfinite(pts) else 0.0)), 4)
            feedback = comment if comment else "Scored by hand."
            s = QuestionScore(s.id, s.kind, s.exercise, pts, s.max_points, "manual", feedback,
                              s.answer, s.expected, comment or None)
        scores.append(s)
    exercises: dict[str, dict[str, float]] = {}
    for s in scores:
        e = exercises.setdefault(s.exercise, {"points": 0.0, "max": 0.0})
        e["points"] = round(e["points"] + s.points, 4)
        e["max"] = round(e["max"] + s.max_points, 4)
    return Result(tuple(scores), round(sum(s.points for s in scores), 4),
                  round(sum(s.max_points for s in scores), 4), exercises)
