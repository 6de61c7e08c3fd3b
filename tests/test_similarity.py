"""Similar work: on a class built from lab 01's reference solution and written into a real
store (see tests/similarity_class.py), the copy and the pair sharing unusual wrong answers
are the two pairs found, no honest pair is, and the given code never makes a pair similar."""
from __future__ import annotations

import json
import random
import re

import pytest
from click.testing import CliRunner

from grader.assignment import SimilarityThresholds, SpecError, load_assignment
from grader.cli import main
from grader.release import student_notebook
from grader.similarity import (Work, assignment_boilerplate, boilerplate_of, find_similar,
                               load_works, report, similarity)

from similarity_class import IDIOMS, LAB, build_class, reflow, rename_all, write_idiom, write_text


@pytest.fixture(scope="module")
def lab():
    return load_assignment(LAB)


@pytest.fixture(scope="module")
def bp(lab):
    return assignment_boilerplate(lab)


@pytest.fixture(scope="module")
def klass(tmp_path_factory):
    out = tmp_path_factory.mktemp("class")
    return out, build_class(out)


def _pair(p) -> frozenset:
    return frozenset((p["a"], p["b"]))


def test_copy_and_shared_wrong_answers_are_the_top_two_and_no_honest_pair(klass):
    out, info = klass
    rep = similarity(out)
    assert rep["groups"] == 14
    pairs = [_pair(p) for p in rep["pairs"]]
    assert set(pairs[:2]) == {frozenset(info["copy"]), frozenset(info["wrong"])}
    assert len(pairs) == 2, f"honest pairs listed: {pairs[2:]}"
    by = {_pair(p): p for p in rep["pairs"]}
    copy, wrong = by[frozenset(info["copy"])], by[frozenset(info["wrong"])]
    assert set(copy["reasons"]) == {"text", "code"}
    assert copy["text"] > 0.9 and copy["code"] > 0.9
    assert wrong["reasons"] == ["wrong answers"]
    assert sorted(w["question"] for w in wrong["wrong"]) == [
        "conv_len_dilated", "gait_test_subjects", "mlp_params", "perceptron_and"]


def test_defaults_leave_a_margin_on_this_class(klass, lab, bp):
    """Every pair's scores, with no threshold: honest pairs stay well under the defaults,
    the copy and the shared wrong answers well above (the defaults' justification)."""
    out, info = klass
    works = load_works(out, lab)
    label = {w.key: w.label for w in works}
    every = find_similar(works, bp, SimilarityThresholds(text=1e-6, code=1e-6, wrong_answers=0.999))
    special = {frozenset(info["copy"]), frozenset(info["wrong"])}
    honest = [p for p in every if frozenset((label[p.a], label[p.b])) not in special]
    d = SimilarityThresholds()
    assert honest, "honest groups share nothing at all: the class is too easy"
    assert max(p.text for p in honest) < d.text / 2
    assert max(p.code for p in honest) < d.code
    assert min(p.wrong_expected for p in honest if p.wrong_expected is not None) > 10 * d.wrong_answers
    copy = next(p for p in every if frozenset((label[p.a], label[p.b])) == frozenset(info["copy"]))
    assert copy.text >= 2 * d.text and copy.code >= 1.5 * d.code


def test_cli_lists_the_pairs(klass):
    out, info = klass
    res = CliRunner().invoke(main, ["similarity", str(out)])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if re.match(r"\s*\d+\. ", ln)]
    assert len(lines) == 2
    assert all(name in lines[0] + lines[1] for name in info["copy"] + info["wrong"])
    assert "14 group(s) compared; 2 similar pair(s)" in res.output
    as_json = json.loads(CliRunner().invoke(main, ["similarity", str(out), "--json"]).output)
    assert len(as_json["pairs"]) == 2


def _given_works(lab, n: int) -> list[Work]:
    """n groups handing in the hand-out's and the solution's code, unchanged."""
    ref = json.loads(lab.notebook_path.read_text())
    handout = student_notebook(lab)
    cells = ([c["source"] if isinstance(c["source"], str) else "".join(c["source"])
              for c in ref["cells"] if c["cell_type"] == "code"]
             + [c.source for c in handout.cells if c.cell_type == "code"])
    cells = [re.sub(r"^[ \t]*### (BEGIN|END) SOLUTION[^\n]*\n?", "", c, flags=re.M) for c in cells]
    return [Work(key=f"g{i}", label=f"group {i}", cells=list(cells)) for i in range(n)]


def test_the_given_code_alone_never_makes_a_pair(lab, bp):
    assert find_similar(_given_works(lab, 6), bp) == []
    two = _given_works(lab, 2)   # two: too few for the same code to count as common idiom
    assert find_similar(two, bp) == []
    # without the hand-out and the solution as boilerplate the same code is "similar":
    # the test can fail
    assert find_similar(two, boilerplate_of([])), "boilerplate removal is what keeps them apart"


def test_code_fingerprints_ignore_names_layout_comments_and_cell_order(lab, bp):
    rng = random.Random(3)
    own = [write_idiom(t, rng) for t in IDIOMS[:4]]
    keep = {"af", "gait", "runs", "cm", "np", "plt", "history_gait", "mlp_af", "cnn_af", "rnn_af"}
    copied = ["# tidied up\n" + rename_all(c, rng, keep).replace(" = ", "  =  ") for c in own]
    copied[0], copied[2] = copied[2], copied[0]
    other = [write_idiom(t, random.Random(99)) for t in IDIOMS[4:]]
    works = [Work("a", "A", cells=own), Work("b", "B", cells=copied), Work("c", "C", cells=other)]
    pairs = find_similar(works, bp)
    assert [(p.a, p.b) for p in pairs] == [("a", "b")]
    assert pairs[0].code == 1.0
    ev = report(works, bp)["pairs"][0]["code_evidence"]
    assert ev["shared"] > 10 and any(ln["hit"] for row in ev["rows"] for ln in row["a"]["lines"])


def test_text_compared_after_case_spacing_and_punctuation(bp):
    rng = random.Random(5)
    text = write_text("best_model", rng)
    copied = reflow(text).replace(".", " ;").replace(",", "")
    honest = write_text("best_model", random.Random(6))
    works = [Work("a", "A", texts={"best_model": text}), Work("b", "B", texts={"best_model": copied}),
             Work("c", "C", texts={"best_model": honest})]
    rep = report(works, bp)
    assert [(p["a"], p["b"]) for p in rep["pairs"]] == [("A", "B")]
    p = rep["pairs"][0]
    assert p["text"] == 1.0
    passage = p["texts"][0]["passages"][0]
    hit_a = "".join(s["text"] for s in passage["a"] if s["hit"])
    hit_b = "".join(s["text"] for s in passage["b"] if s["hit"])
    assert len(hit_a.split()) >= 20
    assert hit_a.casefold().split()[:3] == hit_b.casefold().split()[:3]
    assert "Your answer" not in hit_a  # the hand-out's words are not evidence


def test_members_in_two_groups_are_listed(bp):
    works = [Work("a", "Ada Lovelace, Alan Turing", family_names=("lovelace", "turing")),
             Work("b", "Alan Turing, Grace Hopper", family_names=("turing", "hopper")),
             Work("c", "Emmy Noether", family_names=("noether",))]
    assert report(works, bp)["members"] == [
        {"name": "turing", "groups": ["Ada Lovelace, Alan Turing", "Alan Turing, Grace Hopper"]}]


def test_thresholds_from_assignment_toml(tmp_path):
    folder = tmp_path / "lab"
    folder.mkdir()
    text = (LAB / "assignment.toml").read_text()
    (folder / "assignment.toml").write_text(text + "\n[similarity]\ncode = 0.8\nwrong_answers = 0.01\n")
    a = load_assignment(folder)
    assert a.similarity.code == 0.8 and a.similarity.wrong_answers == 0.01
    assert a.similarity.text == SimilarityThresholds().text
    (folder / "assignment.toml").write_text(text + "\n[similarity]\ncode = -1\n")
    with pytest.raises(SpecError, match=r"assignment.toml: \[similarity\] code = -1"):
        load_assignment(folder)
    (folder / "assignment.toml").write_text(text + "\n[similarity]\nwrong_answers = 2\n")
    with pytest.raises(SpecError, match=r"wrong_answers = 2: a number of pairs"):
        load_assignment(folder)
    (folder / "assignment.toml").write_text(text + "\n[similarity]\ncolour = 1\n")
    with pytest.raises(SpecError, match="unknown field 'colour'"):
        load_assignment(folder)


def test_rescore_writes_the_section_in_the_summary(tmp_path):
    """After a rescore, summary.pdf (read back) has the section and the copied pair."""
    from pypdf import PdfReader

    from grader.grade import rescore

    info = build_class(tmp_path, honest=3, copy_of=0, wrong_with=None)
    rescore(tmp_path, jobs=1)
    text = " ".join(p.extract_text() for p in PdfReader(tmp_path / "summary.pdf").pages)
    text = " ".join(text.split())
    assert "Similar work" in text
    a, b = info["copy"]
    assert f"1. Similar: {b} ~ {a}" in text or f"1. Similar: {a} ~ {b}" in text
    assert "2. Similar" not in text
    assert "code beyond the hand-out" in text


def test_the_index_misses_no_pair_above_the_threshold():
    """Prefix filtering against comparing every pair, on random sets with planted overlaps."""
    from itertools import combinations

    from grader.similarity import candidates

    rng = random.Random(1)
    sets = {f"g{i}": {rng.randrange(5000) for _ in range(rng.randint(5, 60))} for i in range(60)}
    for i in range(0, 60, 6):   # some pairs share a lot
        sets[f"g{i + 1}"] |= set(rng.sample(sorted(sets[f"g{i}"]), len(sets[f"g{i}"]) * 3 // 4))
        sets[f"g{i + 2}"] |= sets[f"g{i}"]
    for t in (0.3, 0.5, 0.6, 0.9):
        clean, found = candidates(sets, t, len(sets))
        every = {(a, b) for a, b in combinations(sorted(clean), 2)
                 if clean[a] and clean[b]
                 and len(clean[a] & clean[b]) >= t * min(len(clean[a]), len(clean[b]))}
        assert every, "no pair above the threshold: the check would prove nothing"
        assert every <= found
        assert len(found) < len(list(combinations(sets, 2))) / 2


def test_300_groups_in_seconds_through_the_index(tmp_path):
    import time

    info = build_class(tmp_path, honest=298, seed=11)
    t0 = time.perf_counter()
    rep = similarity(tmp_path)
    seconds = time.perf_counter() - t0
    assert seconds <= 30, f"{seconds:.1f} s for 300 groups"
    assert rep["candidates"] < 300 * 299 / 2 / 4, "most pairs were compared in full"
    assert {_pair(p) for p in rep["pairs"][:2]} == {frozenset(info["copy"]), frozenset(info["wrong"])}


def test_cli_says_what_is_missing(tmp_path):
    res = CliRunner().invoke(main, ["similarity", str(tmp_path)])
    assert res.exit_code == 1
    assert f"{tmp_path}: no grader.db here" in res.output
    assert not (tmp_path / "grader.db").exists()


def test_the_demo_class_holds_one_copied_pair(lab, bp):
    """The demo's notebooks as handed in (not run): the copy and its source are the one
    similar pair; the groups made from the reference solution are not similar."""
    from grader.demo import GROUPS, variant
    from grader.evidence import _texts
    from grader.similarity import _code_cells

    works = []
    for label, (members, how) in GROUPS.items():
        nb = variant(lab, how, members)
        works.append(Work(label, label, texts=_texts(nb, lab), cells=_code_cells(nb)))
    rep = report(works, bp)
    assert [(p["a"], p["b"]) for p in rep["pairs"]] == [("copy", "right")]
    assert set(rep["pairs"][0]["reasons"]) == {"text", "code"}
