"""grader.score: pure scoring rules, one kind at a time."""
from __future__ import annotations

from pathlib import Path

import pytest

from grader.assignment import Assignment, Limits, Question, load_assignment
from grader.score import PENDING_FEEDBACK, display, score


def Q(id, kind, points=2.0, **kw):
    if kind in ("metric", "consistency"):
        kw.setdefault("model", "m")
        kw.setdefault("task", "af")
        kw.setdefault("metric", "accuracy")
    if kind == "text":
        kw.setdefault("cell", id)
    elif kind != "metric":
        kw.setdefault("answer", id)
    return Question(id=id, points=points, kind=kind, prompt="?", exercise=kw.pop("exercise", "E"), **kw)


def lab(*questions):
    return Assignment(folder=Path("."), number=1, title="t", course="", notebook="x.ipynb",
                      questions=tuple(questions), limits=Limits())


def one(question, answer=..., key_entry=None, evidence=None, manual=None):
    ev = dict(evidence or {})
    if answer is not ...:
        ev.setdefault("answers", {})[question.answer] = answer
    key = {"questions": {question.id: key_entry} if key_entry is not None else {}}
    return score(lab(question), ev, key, manual).questions[0]


# ---------------------------------------------------------------- integer

@pytest.mark.parametrize("answer, verdict", [
    (15, "correct"), (15.0, "correct"), (16, "wrong"), (15.5, "invalid"), (True, "wrong"),
    ("15", "invalid"), ({"float": "nan"}, "invalid"), ({"float": "inf"}, "invalid"),
    ({"tuple": [15]}, "invalid"), (None, "invalid"),
])
def test_integer(answer, verdict):
    s = one(Q("n", "integer"), answer, {"expected": 15})
    assert s.verdict == verdict
    assert s.points == (2.0 if verdict == "correct" else 0.0)


def test_bool_is_zero_or_one():
    """A perceptron that returns `z >= 0` gives booleans where 0/1 is asked: accepted."""
    assert one(Q("n", "integer"), True, {"expected": 1}).verdict == "correct"
    assert one(Q("n", "integer"), False, {"expected": 1}).verdict == "wrong"
    bools = {"tuple": [False, False, False, True]}
    assert one(Q("t", "tuple"), bools, {"expected": [0, 0, 0, 1]}).verdict == "correct"
    assert one(Q("t", "tuple"), [False, True, True, True], {"expected": [0, 0, 0, 1]}).verdict == "wrong"


@pytest.mark.parametrize("kind, answer, verdict, says", [
    ("fraction", 0.454, "correct", "Correct"),
    ("fraction", 45.4, "invalid", "45.4 looks like a percent (give 0.454)"),
    ("fraction", -0.2, "invalid", "expected a fraction between 0 and 1, got -0.2"),
    ("fraction", 1.0, "wrong", "Not within"),
    ("number", 45.4, "wrong", "Not within"),            # no `fraction`: any number is a number
    ("consistency", 91.0, "invalid", "91 looks like a percent (give 0.91)"),
    ("consistency", 0.91, "correct", "consistent"),
])
def test_a_percent_where_a_fraction_is_asked_is_refused(kind, answer, verdict, says):
    if kind == "consistency":
        s = one(Q("c", "consistency"), answer, evidence={"measurements": {"m|af|0": {
            "metrics": {"accuracy": 0.91}}}})
    else:
        s = one(Q("f", "number", fraction=kind == "fraction", tolerance={"abs": 0.001}), answer,
                {"expected": 0.454})
    assert s.verdict == verdict and says in s.feedback, s
    assert s.points == (2.0 if verdict == "correct" else 0.0)


def test_missing_answer():
    s = one(Q("n", "integer"), ..., {"expected": 15})
    assert (s.verdict, s.points, s.feedback) == ("missing", 0.0, "No answer found.")


def test_refused_answer():
    s = one(Q("n", "integer"), {"refused": "__main__.Always"}, {"expected": 15})
    assert s.verdict == "invalid" and s.points == 0
    assert "not a plain value (a __main__.Always)" in s.feedback


def test_malformed_encoded_answer_is_not_a_crash():
    s = one(Q("n", "integer"), {"weird": 1, "x": 2}, {"expected": 15})
    assert s.verdict == "invalid" and s.points == 0


# ---------------------------------------------------------------- number

@pytest.mark.parametrize("answer, verdict", [
    (0.5, "correct"), (0.5009, "correct"), (0.502, "wrong"), (1, "wrong"),
    ({"float": "nan"}, "wrong"), ({"float": "inf"}, "wrong"), ({"float": "-inf"}, "wrong"),
    (False, "invalid"), ("0.5", "invalid"),
])
def test_number_with_spec_floor(answer, verdict):
    q = Q("x", "number", tolerance={"abs": 0.001})
    assert one(q, answer, {"expected": 0.5}).verdict == verdict


def test_number_key_widens_and_relative():
    q = Q("x", "number", tolerance={"abs": 0.001})
    assert one(q, 0.52, {"expected": 0.5, "abs_tol": 0.03}).verdict == "correct"
    q = Q("x", "number", tolerance={"rel": 0.01})
    assert one(q, 1005.0, {"expected": 1000.0}).verdict == "correct"
    assert one(q, 1011.0, {"expected": 1000.0}).verdict == "wrong"


def test_number_exact_without_tolerance():
    q = Q("x", "number")
    assert one(q, 0.25, {"expected": 0.25}).verdict == "correct"
    assert one(q, 0.2500001, {"expected": 0.25}).verdict == "wrong"


# ---------------------------------------------------------------- tuple

@pytest.mark.parametrize("answer, verdict", [
    ({"tuple": [8, 30, 64]}, "correct"), ([8, 30, 64], "correct"),
    ({"tuple": [8.0, 30, 64]}, "correct"), ({"tuple": [8, 64, 30]}, "wrong"),
    ({"tuple": [8, 30]}, "wrong"), ({"tuple": [8, 30, 64, 1]}, "wrong"),
    ({"tuple": [True, 30, 64]}, "wrong"), ({"tuple": ["8", 30, 64]}, "invalid"),
    (64, "invalid"), ({"set": [8, 30, 64]}, "invalid"),
])
def test_tuple(answer, verdict):
    s = one(Q("t", "tuple", reveal=True), answer, {"expected": [8, 30, 64]})
    assert s.verdict == verdict
    assert s.expected == "(8, 30, 64)"


def test_expected_hidden_unless_reveal():
    assert one(Q("t", "tuple"), [1], {"expected": [2]}).expected is None


# ---------------------------------------------------------------- choice

@pytest.mark.parametrize("answer, verdict", [
    ("B", "correct"), ("b", "correct"), (" B ", "correct"), ("A", "wrong"),
    ("E", "invalid"), (2, "invalid"), (["B"], "invalid"),
])
def test_choice(answer, verdict):
    s = one(Q("c", "choice", choices=("A", "B", "C", "D")), answer, {"expected": "B"})
    assert s.verdict == verdict
    if verdict == "invalid" and isinstance(answer, str):
        assert "not one of the choices" in s.feedback


def test_choice_words_case_insensitive():
    q = Q("c", "choice", choices=("underfitting", "overfitting", "good fit"))
    assert one(q, "Overfitting", {"expected": "overfitting"}).verdict == "correct"


# ---------------------------------------------------------------- multi

CH = ("sigmoid", "tanh", "relu", "leaky_relu")


@pytest.mark.parametrize("picked, points, verdict", [
    (["sigmoid", "tanh"], 2.0, "correct"),
    (["tanh", "sigmoid"], 2.0, "correct"),
    (["sigmoid"], 1.0, "partial"),
    (["sigmoid", "tanh", "relu"], 1.0, "partial"),
    (["sigmoid", "relu"], 0.0, "wrong"),
    (["sigmoid", "relu", "leaky_relu"], 0.0, "wrong"),
    ([], 0.0, "wrong"),
    (["SIGMOID", "Tanh"], 2.0, "correct"),
    (["sigmoid", "tanh", "softmax"], 1.0, "partial"),
])
def test_multi_partial_credit(picked, points, verdict):
    s = one(Q("m", "multi", choices=CH), {"set": picked}, {"expected": ["sigmoid", "tanh"]})
    assert (s.points, s.verdict) == (points, verdict)


def test_multi_accepts_list_and_refuses_non_strings():
    q = Q("m", "multi", choices=CH)
    assert one(q, ["sigmoid", "tanh"], {"expected": ["sigmoid", "tanh"]}).verdict == "correct"
    assert one(q, {"set": [1, 2]}, {"expected": ["sigmoid"]}).verdict == "invalid"
    assert one(q, "sigmoid", {"expected": ["sigmoid"]}).verdict == "invalid"


# ---------------------------------------------------------------- metric

def mev(value=None, error=None, metric="accuracy"):
    entry = {"error": error} if error else {"metrics": {metric: value}}
    return {"measurements": {"m|af|0": entry}}


@pytest.mark.parametrize("value, points, verdict", [
    (0.95, 3.0, "correct"), (0.9, 3.0, "correct"), (0.8, 1.5, "partial"),
    (0.7, 0.0, "wrong"), (0.5, 0.0, "wrong"), (0.899, 2.985, "partial"),
])
def test_metric_band(value, points, verdict):
    s = one(Q("k", "metric", points=3.0), ..., {"full": 0.9, "zero": 0.7}, mev(value))
    assert s.points == pytest.approx(points) and s.verdict == verdict
    assert "Measured accuracy" in s.feedback


def test_metric_errors_give_zero_with_reason():
    q = Q("k", "metric", points=3.0)
    s = one(q, ..., {"full": 0.9, "zero": 0.7}, mev(error="the weights file cannot be loaded"))
    assert s.points == 0 and "weights file cannot be loaded" in s.feedback
    s = one(q, ..., {"full": 0.9, "zero": 0.7},
            {"models": {"m": {"error": "no variable 'm' at the end of the notebook"}}})
    assert s.points == 0 and "no variable 'm'" in s.feedback
    s = one(q, ..., {"full": 0.9, "zero": 0.7}, {})
    assert s.points == 0 and s.verdict == "wrong"
    assert one(q, ..., {"full": 0.9, "zero": 0.7}, mev(None)).points == 0


def test_metric_ignores_student_reported_values():
    q = Q("k", "metric", points=3.0)
    ev = {"answers": {"m": 1.0, "accuracy": 1.0}}
    assert one(q, ..., {"full": 0.9, "zero": 0.7}, ev).points == 0


def test_missing_key_entry_is_ungraded():
    assert one(Q("n", "integer"), 3).verdict == "ungraded"
    assert one(Q("k", "metric"), ..., None, mev(0.9)).verdict == "ungraded"


def test_malformed_key_entry_is_ungraded():
    assert one(Q("n", "number"), 3, {"expected": "abc"}).verdict == "ungraded"


# ---------------------------------------------------------------- consistency

@pytest.mark.parametrize("reported, verdict", [
    (0.912, "correct"), (0.916, "correct"), (0.92, "wrong"), (91.2, "invalid"),
    ({"float": "nan"}, "wrong"), (True, "invalid"), ("0.912", "invalid"),
])
def test_consistency(reported, verdict):
    q = Q("c", "consistency", points=1.0, tolerance={"abs": 0.005})
    s = one(q, reported, {}, mev(0.912))
    assert s.verdict == verdict
    if verdict == "wrong" and reported == 0.92:
        assert "0.92" in s.feedback and "0.912" in s.feedback


def test_consistency_key_widens_and_missing_measurement():
    q = Q("c", "consistency", points=1.0, tolerance={"abs": 0.005})
    assert one(q, 0.93, {"abs_tol": 0.02}, mev(0.912)).verdict == "correct"
    assert one(q, 0.93, None, mev(0.912)).verdict == "wrong"  # no key entry: spec floor
    s = one(q, 0.9, {}, mev(error="model not exported"))
    assert s.points == 0 and "model not exported" in s.feedback
    assert one(q, ..., {}, mev(0.9)).verdict == "missing"


# ---------------------------------------------------------------- text and manual

def test_text_is_manual_until_scored():
    q = Q("essay", "text", points=3.0)
    s = one(q, ..., None, {"texts": {"essay": "Because."}})
    assert (s.verdict, s.points, s.answer) == ("manual", 0.0, "Because.")
    assert one(q, ..., None, {"texts": {}}).verdict == "missing"
    assert one(q, ..., None, {"texts": {"essay": "  \n"}}).verdict == "missing"
    s = one(q, ..., None, {"texts": {"essay": "Because."}}, {"essay": (2.5, "good, short")})
    assert (s.verdict, s.points, s.feedback, s.comment) == ("manual", 2.5, "good, short", "good, short")


def test_unmarked_text_feedback_is_the_pending_constant_reports_look_for():
    from grader.render import _verdict_key

    s = one(Q("essay", "text"), ..., None, {"texts": {"essay": "Because."}})
    assert s.feedback == PENDING_FEEDBACK and _verdict_key(s) == "pending"
    marked = one(Q("essay", "text"), ..., None, {"texts": {"essay": "Because."}},
                 {"essay": (1, "ok")})
    assert _verdict_key(marked) == "manual"


@pytest.mark.parametrize("given, points", [(5, 2.0), (-1, 0.0), (1.5, 1.5), (float("nan"), 0.0),
                                           ("x", 0.0)])
def test_manual_override_is_clamped(given, points):
    s = one(Q("n", "integer"), 16, {"expected": 15}, manual={"n": (given, None)})
    assert s.points == points and s.verdict == "manual" and s.feedback == "Scored by hand."


def test_manual_overrides_an_automatic_verdict():
    s = one(Q("n", "integer"), 15, {"expected": 15}, manual={"n": (0.5, "copied")})
    assert s.points == 0.5 and s.comment == "copied"


# ---------------------------------------------------------------- totals and the real lab

def test_totals_per_exercise():
    a = lab(Q("a", "integer", points=1, exercise="One"), Q("b", "integer", points=2, exercise="Two"),
            Q("c", "integer", points=3, exercise="Two"))
    key = {"questions": {"a": {"expected": 1}, "b": {"expected": 2}, "c": {"expected": 3}}}
    r = score(a, {"answers": {"a": 1, "b": 2, "c": 0}}, key)
    assert (r.total, r.max) == (3.0, 6.0)
    assert r.exercises == {"One": {"points": 1.0, "max": 1.0}, "Two": {"points": 2.0, "max": 5.0}}
    assert r.to_dict()["questions"][0]["id"] == "a"


def test_empty_evidence_scores_zero_on_lab01():
    lab01 = load_assignment(Path(__file__).resolve().parents[1] / "assignments" / "lab01")
    r = score(lab01, {}, {"questions": {}})
    assert r.total == 0 and r.max == lab01.max_points
    assert {q.verdict for q in r.questions} <= {"missing", "ungraded", "wrong"}


def test_display():
    assert display((8, 30, 64)) == "(8, 30, 64)"
    assert display(frozenset({"b", "a"})) == "{'a', 'b'}"
    assert display(float("nan")) == "nan" and display(0.123456789) == "0.123457"
    assert len(display("x" * 1000)) == 200
