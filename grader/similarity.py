"""``grader similarity``: which graded groups' work looks alike, and the evidence.

Copying shows in three places of a lab where most code is given and seeded numbers agree:

* **text**: the free-text answers, compared as runs of :data:`SHINGLE` words after
  folding case, spacing and punctuation (a reflowed or re-cased copy is the same text);
* **code beyond the hand-out**: every code cell tokenised with :mod:`tokenize`, comments
  and layout dropped, every name folded to one token (renamed variables change nothing),
  hashed in runs of :data:`K` tokens and *winnowed* (Schleimer, Wilkerson, Aiken 2003, as
  MOSS): a copied run of at least ``K + W - 1`` tokens always shares a fingerprint.  Each
  cell is fingerprinted alone, so reordered cells change nothing.  Every run found in the
  released hand-out or in the reference solution is boilerplate and never evidence;
* **shared wrong answers**: two groups giving the same wrong value on questions that
  few others got wrong that way.  Their weight is the expected number of pairs of the
  class that would share them by chance if groups erred independently at the class's
  rates: ``pairs * prod((c - 1) / (n - 1))`` for wrong values given by ``c`` of ``n`` groups.

Members who appear in two groups' notebooks are listed too.  Nothing here accuses:
the report says "similar" and shows why; the instructor decides.

Pairs are found through inverted indexes (a run, a fingerprint or a rare wrong value ->
the groups that have it), so only groups that share something are compared: the cost
grows with the class, not with its square (see :func:`candidates`: only a group's rarest
runs are looked up, as many as a pair above the threshold must share one of).  Runs and
fingerprints found in more than :data:`COMMON_SHARE` of the groups (and more than
:data:`COMMON_MIN` groups) are common idiom and not evidence.  The core (:func:`find_similar`) is pure; :func:`load_works` reads the
store and the notebooks of ``OUT``; nothing is executed.

Example::

    from grader.similarity import similarity
    report = similarity("out/")          # {"pairs": [...], "members": [...], ...}
"""
from __future__ import annotations

import hashlib
import io
import json
import keyword
import math
import re
import tokenize
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from difflib import SequenceMatcher
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

from .assignment import Assignment, SimilarityThresholds

SHINGLE = 5          # words per text run
K = 12               # tokens per hashed code run
W = 8                # winnowing window: a shared run of K + W - 1 = 19 tokens is always seen
COMMON_SHARE = 0.05  # a run in more than this share of the groups is common idiom...
COMMON_MIN = 5       # ... when it is also in more than this many groups
#: Question kinds whose wrong values are compared (a metric or text differs anyway).
VALUE_KINDS = ("integer", "number", "tuple", "choice", "multi")
MAX_PASSAGES = 6     # per pair and side, on the page
MAX_CODE_LINES = 24
CONTEXT_WORDS = 8

_WORD = re.compile(r"\w+", re.UNICODE)
_SOLUTION = re.compile(r"^[ \t]*### (BEGIN|END) SOLUTION[^\n]*\n?", re.M)
_SKIP_TOKENS = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                tokenize.DEDENT, tokenize.ENDMARKER, tokenize.ENCODING}


# ============================================================================ one group's work

@dataclass
class Work:
    """What one graded group handed in, as far as similarity goes."""
    key: str                                   # unique: group key and notebook hash
    label: str                                 # the members, for the page
    family_names: tuple[str, ...] = ()
    texts: dict[str, str] = field(default_factory=dict)       # question -> markdown
    cells: list[str] = field(default_factory=list)            # code cells' sources
    wrong: dict[str, str] = field(default_factory=dict)       # question -> wrong value shown
    code_missing: bool = False                 # its notebook could not be read


def _h(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def words(text: str) -> list[tuple[str, int, int]]:
    """``(folded word, start, end)`` of every word: case, spacing and punctuation gone.

    >>> [w for w, _, _ in words("The CNN -- best,\\n  by far!")]
    ['the', 'cnn', 'best', 'by', 'far']
    """
    return [(m.group().casefold(), m.start(), m.end()) for m in _WORD.finditer(text)]


def shingles(ws: list[str], n: int = SHINGLE) -> set[int]:
    return {_h(" ".join(ws[i:i + n])) for i in range(len(ws) - n + 1)}


def code_tokens(source: str) -> list[tuple[str, int]]:
    """``(normalised token, line)`` of a code cell: no comments, no layout, every name
    one token ``N`` (keywords kept), strings by their value, IPython magics dropped.

    >>> [t for t, _ in code_tokens("total = a+b  # sum")] == [t for t, _ in code_tokens("s=(x\\n+y)")]
    False
    >>> [t for t, _ in code_tokens("total = a + b  # sum")] == [t for t, _ in code_tokens("s =  x+y")]
    True
    """
    lines = [ln if not ln.lstrip().startswith(("%", "!")) else "" for ln in source.splitlines()]
    out: list[tuple[str, int]] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO("\n".join(lines) + "\n").readline):
            if tok.type in _SKIP_TOKENS:
                continue
            text = tok.string
            if tok.type == tokenize.NAME and not keyword.iskeyword(text):
                text = "N"
            elif tok.type == tokenize.STRING:
                text = "S" + _string_value(text)
            out.append((text, tok.start[0]))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        # Not Python (a half-typed cell): its words and symbols still count.
        out = [("N" if t[0].isalpha() or t[0] == "_" else t, i + 1)
               for i, ln in enumerate(lines)
               for t in re.findall(r"\w+|[^\w\s]", ln)]
    return out


def _string_value(literal: str) -> str:
    """A string literal by its value; an f-string by its text with every ``{...}`` emptied
    (the names inside are renamed with the variables)."""
    import ast

    prefix = re.match(r"[A-Za-z]*", literal).group()
    if "f" in prefix.lower():
        return "f" + re.sub(r"\{[^{}]*\}", "{}", literal[len(prefix):])
    try:
        return repr(ast.literal_eval(literal))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return literal


def kgrams(tokens: list[tuple[str, int]], k: int = K) -> list[tuple[int, int]]:
    """``(hash, first line)`` of every run of ``k`` tokens."""
    return [(_h("\x1f".join(t for t, _ in tokens[i:i + k])), tokens[i][1])
            for i in range(len(tokens) - k + 1)]


def winnow(grams: list[tuple[int, int]], w: int = W) -> list[tuple[int, int]]:
    """The rightmost smallest hash of every window of ``w`` runs, each position once.

    >>> winnow([(5, 1), (3, 1), (4, 2), (9, 2)], w=2)
    [(3, 1), (4, 2)]
    """
    if len(grams) <= w:
        return [min(grams, key=lambda g: g[0])] if grams else []
    picked: dict[int, tuple[int, int]] = {}
    for i in range(len(grams) - w + 1):
        j = min(range(i, i + w), key=lambda x: (grams[x][0], -x))
        picked[j] = grams[j]
    return [picked[j] for j in sorted(picked)]


@dataclass(frozen=True)
class Boilerplate:
    """What every group was given: runs of the hand-out and of the reference solution."""
    code: frozenset[int]                    # hashes of every K-token run
    text: frozenset[int]                    # hashes of every text run
    text_lines: frozenset[str]              # folded lines of the hand-out's markdown


def boilerplate_of(notebooks: Iterable[Mapping]) -> Boilerplate:
    """From notebooks as dicts (the hand-out, the reference solution)."""
    code, text, lines = set(), set(), set()
    for nb in notebooks:
        for cell in nb.get("cells", []):
            src = _source(cell)
            if cell.get("cell_type") == "code":
                code.update(h for h, _ in kgrams(code_tokens(src)))
            elif cell.get("cell_type") == "markdown":
                text.update(shingles([w for w, _, _ in words(src)]))
                lines.update(" ".join(w for w, _, _ in words(ln)) for ln in src.splitlines())
    lines.discard("")
    return Boilerplate(frozenset(code), frozenset(text), frozenset(lines))


def _source(cell: Mapping) -> str:
    src = cell.get("source", "")
    src = "".join(src) if isinstance(src, list) else str(src)
    return _SOLUTION.sub("", src)


# ============================================================================ features (pure)

@dataclass
class _Features:
    text_words: dict[str, list[tuple[str, int, int]]]     # question -> own words, spans
    text_runs: set[int]
    fingerprints: dict[int, list[tuple[int, int]]]        # hash -> [(cell, line)]


def _own_text(text: str, bp: Boilerplate) -> str:
    """The answer without the hand-out's lines (``*Your answer:*``)."""
    keep = [ln for ln in text.splitlines()
            if " ".join(w for w, _, _ in words(ln)) not in bp.text_lines]
    return "\n".join(keep).strip()


def features(work: Work, bp: Boilerplate) -> _Features:
    text_words, runs = {}, set()
    for q, text in sorted(work.texts.items()):
        ws = words(_own_text(str(text or ""), bp))
        text_words[q] = ws
        runs |= shingles([w for w, _, _ in ws]) - bp.text
    fps: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for i, src in enumerate(work.cells):
        for h, line in _cell_fingerprints(src):
            if h not in bp.code:
                fps[h].append((i, line))
    return _Features(text_words, runs, dict(fps))


@lru_cache(maxsize=1 << 16)
def _cell_fingerprints(source: str) -> tuple[tuple[int, int], ...]:
    """Winnowed fingerprints of one cell; the given cells, the same in every notebook,
    are tokenised once."""
    return tuple(winnow(kgrams(code_tokens(source))))


# ============================================================================ pairs (pure)

@dataclass
class Pair:
    a: str
    b: str
    text: float = 0.0           # share of the shorter own text found in the other
    code: float = 0.0           # share of the smaller own code found in the other
    wrong: list[str] = field(default_factory=list)   # questions with the same wrong value
    wrong_expected: float | None = None    # pairs of the class sharing them by chance
    strength: float = 0.0       # max over the reasons of value / threshold (>= 1: listed)
    reasons: list[str] = field(default_factory=list)


def candidates(sets: Mapping[str, Iterable[int]], threshold: float, n: int
               ) -> tuple[dict[str, set[int]], set[tuple[str, str]]]:
    """``(sets without common items, pairs that may reach threshold)``: prefix filtering.

    Items in more than ``max(COMMON_MIN, COMMON_SHARE * n)`` groups are common idiom,
    dropped.  A pair with ``|A & B| >= threshold * |A|``, ``A`` the smaller set, shares
    one of A's ``|A| - ceil(threshold * |A|) + 1`` rarest items: only those are looked
    up in the index (item -> groups), so a group meets only the few others that share
    its rare items, never the whole class.  No pair above the threshold is missed.
    """
    freq: dict[int, int] = defaultdict(int)
    for items in sets.values():
        for it in items:
            freq[it] += 1
    cap = max(COMMON_MIN, COMMON_SHARE * n)
    clean = {k: {it for it in items if freq[it] <= cap} for k, items in sets.items()}
    postings: dict[int, list[str]] = defaultdict(list)
    for k, items in clean.items():
        for it in items:
            postings[it].append(k)
    found: set[tuple[str, str]] = set()
    for k, items in clean.items():
        if not items:
            continue
        rarest = sorted(items, key=lambda it: (freq[it], it))
        for it in rarest[:len(items) - math.ceil(threshold * len(items)) + 1]:
            for other in postings[it]:
                # probed from the smaller set only (ties: the smaller key)
                if (len(clean[other]), other) > (len(items), k):
                    found.add((k, other) if k < other else (other, k))
    return clean, found


def find_similar(works: list[Work], bp: Boilerplate,
                 thresholds: SimilarityThresholds = SimilarityThresholds(),
                 stats: dict | None = None) -> list[Pair]:
    """Every pair of groups above a threshold, most similar first.  Pure.  ``stats``
    gets ``candidates``: the pairs the indexes found sharing something (the rest of the
    class's pairs are never compared)."""
    n = len(works)
    if n < 2:
        return []
    feats = {w.key: features(w, bp) for w in works}
    pairs: dict[tuple[str, str], Pair] = {}

    def pair(a: str, b: str) -> Pair:
        a, b = (a, b) if a < b else (b, a)
        return pairs.setdefault((a, b), Pair(a, b))

    # text: shared runs over the shorter text's runs
    runs, found = candidates({k: f.text_runs for k, f in feats.items()}, thresholds.text, n)
    for a, b in found:
        words_a = sum(len(x) for x in feats[a].text_words.values())
        words_b = sum(len(x) for x in feats[b].text_words.values())
        if min(words_a, words_b) >= thresholds.min_text_words:
            pair(a, b).text = len(runs[a] & runs[b]) / min(len(runs[a]), len(runs[b]))
    # code: shared fingerprints over the smaller code's
    fps, found = candidates({k: f.fingerprints.keys() for k, f in feats.items()},
                            thresholds.code, n)
    for a, b in found:
        size = min(len(fps[a]), len(fps[b]))
        if size >= thresholds.min_code_fingerprints:
            pair(a, b).code = len(fps[a] & fps[b]) / size
    # wrong answers: pairs sharing a rare wrong value; all their shared ones weigh in
    by_value: dict[tuple[str, str], list[str]] = defaultdict(list)
    for w in works:
        for q, v in w.wrong.items():
            by_value[q, v].append(w.key)
    wrong_of = {w.key: w.wrong for w in works}
    n_pairs = n * (n - 1) / 2
    cap = max(COMMON_MIN, COMMON_SHARE * n)
    for keys in by_value.values():
        if len(keys) > cap:
            continue
        for i, a in enumerate(keys):
            for b in keys[i + 1:]:
                p = pair(a, b)
                if p.wrong_expected is not None:
                    continue
                qs = sorted(q for q, v in wrong_of[p.a].items() if wrong_of[p.b].get(q) == v)
                chance = n_pairs * math.prod((len(by_value[q, wrong_of[p.a][q]]) - 1) / (n - 1)
                                             for q in qs)
                p.wrong, p.wrong_expected = qs, chance
    if stats is not None:
        stats["candidates"] = len(pairs)
    out = []
    for p in pairs.values():
        ratios = {"text": p.text / thresholds.text, "code": p.code / thresholds.code}
        if p.wrong_expected is not None and p.wrong_expected < 1:
            ratios["wrong answers"] = (math.log(p.wrong_expected) / math.log(thresholds.wrong_answers)
                                       if p.wrong_expected > 0 else math.inf)
        p.strength = max(ratios.values())
        p.reasons = [r for r, v in sorted(ratios.items(), key=lambda kv: -kv[1]) if v >= 1]
        if p.reasons:
            out.append(p)
    out.sort(key=lambda p: (-p.strength, p.a, p.b))
    return out


def shared_members(works: list[Work]) -> list[dict]:
    """Family names found in two or more groups' notebooks (ingest flags them too)."""
    by_name: dict[str, list[Work]] = defaultdict(list)
    for w in works:
        for name in dict.fromkeys(w.family_names):
            by_name[name].append(w)
    return [{"name": name, "groups": [w.label for w in ws]}
            for name, ws in sorted(by_name.items()) if len(ws) > 1]


# ============================================================================ evidence (pure)

def _segments(text: str, spans: list[tuple[int, int]]) -> list[dict]:
    """``text`` cut into ``{"text", "hit"}`` pieces, the spans marked."""
    out, pos = [], 0
    for s, e in sorted(spans):
        if s > pos:
            out.append({"text": text[pos:s], "hit": False})
        if e > max(s, pos):
            out.append({"text": text[max(s, pos):e], "hit": True})
        pos = max(pos, e)
    if pos < len(text):
        out.append({"text": text[pos:], "hit": False})
    return out


def text_passages(wa: list[tuple[str, int, int]], ta: str,
                  wb: list[tuple[str, int, int]], tb: str) -> list[dict]:
    """Aligned matching passages of two texts: each ``{"a": segments, "b": segments,
    "words": n}``, the shared words highlighted, a few words of context around."""
    sm = SequenceMatcher(None, [w for w, _, _ in wa], [w for w, _, _ in wb], autojunk=False)
    out = []
    for m in sm.get_matching_blocks():
        if m.size < SHINGLE:
            continue
        sides = []
        for ws, text, start in ((wa, ta, m.a), (wb, tb, m.b)):
            lo = ws[max(0, start - CONTEXT_WORDS)][1]
            hi = ws[min(len(ws), start + m.size + CONTEXT_WORDS) - 1][2]
            s, e = ws[start][1], ws[start + m.size - 1][2]
            piece = text[lo:hi]
            segs = _segments(piece, [(s - lo, e - lo)])
            if lo > 0:
                segs.insert(0, {"text": "… ", "hit": False})
            if _WORD.search(text[hi:]):
                segs.append({"text": " …", "hit": False})
            sides.append(segs)
        out.append({"a": sides[0], "b": sides[1], "words": m.size})
    out.sort(key=lambda p: -p["words"])
    return out[:MAX_PASSAGES]


def _code_side(work: Work, fps: Mapping[int, list[tuple[int, int]]], shared: set[int]) -> list[dict]:
    """The cells holding shared fingerprints: lines, the shared ones marked."""
    hit_lines: dict[int, set[int]] = defaultdict(set)
    for h in shared:
        for cell, line in fps.get(h, []):
            # a run of K tokens spans a few lines: mark the line it starts on and the next
            hit_lines[cell].update((line, line + 1))
    out, budget = [], MAX_CODE_LINES
    for cell in sorted(hit_lines):
        lines = work.cells[cell].splitlines()
        rows = [{"n": i, "text": ln, "hit": i in hit_lines[cell]}
                for i, ln in enumerate(lines, start=1) if ln.strip()]
        rows = rows[:budget]
        budget -= len(rows)
        out.append({"cell": cell, "lines": rows})
        if budget <= 0:
            break
    return out


def evidence(p: Pair, works: Mapping[str, Work], bp: Boilerplate) -> dict:
    """What the page shows for one pair, side by side.  Pure."""
    wa, wb = works[p.a], works[p.b]
    fa, fb = features(wa, bp), features(wb, bp)
    texts = []
    for q in sorted(set(fa.text_words) & set(fb.text_words)):
        ta, tb = _own_text(wa.texts[q], bp), _own_text(wb.texts[q], bp)
        passages = text_passages(fa.text_words[q], ta, fb.text_words[q], tb)
        if passages:
            texts.append({"question": q, "passages": passages})
    shared = set(fa.fingerprints) & set(fb.fingerprints)
    code = None
    if shared and p.code:
        side_a = _code_side(wa, fa.fingerprints, shared)
        side_b = {c["cell"]: c for c in _code_side(wb, fb.fingerprints, shared)}
        # each of a's cells beside the cell of b it shares most fingerprints with (cells
        # may have been reordered)
        rows = []
        for c in side_a:
            hs = {h for h in shared if any(cell == c["cell"] for cell, _ in fa.fingerprints[h])}
            best = max(side_b, default=None, key=lambda cb: (sum(
                any(cell == cb for cell, _ in fb.fingerprints[h]) for h in hs), -cb))
            rows.append({"a": c, "b": side_b.pop(best) if best is not None else None})
        rows += [{"a": None, "b": c} for c in side_b.values()]
        code = {"rows": rows, "shared": len(shared)}
    wrong = [{"question": q, "value": wa.wrong[q]} for q in p.wrong]
    return {"a": wa.label, "b": wb.label, "strength": p.strength, "reasons": p.reasons,
            "text": p.text, "code": p.code, "wrong_expected": p.wrong_expected,
            "texts": texts if "text" in p.reasons else [],
            "code_evidence": code if "code" in p.reasons else None,
            "wrong": wrong if "wrong answers" in p.reasons else []}


def report(works: list[Work], bp: Boilerplate,
           thresholds: SimilarityThresholds = SimilarityThresholds()) -> dict:
    """Pairs above a threshold with their evidence, and the members in two groups.  Pure."""
    by_key = {w.key: w for w in works}
    stats: dict = {}
    pairs = find_similar(works, bp, thresholds, stats)
    return {"groups": len(works), "candidates": stats["candidates"],
            "thresholds": asdict(thresholds),
            "pairs": [evidence(p, by_key, bp) for p in pairs],
            "members": shared_members(works),
            "not_read": sorted(w.label for w in works if w.code_missing)}


# ============================================================================ the shell: store, files

def _read_nb(path: Path) -> dict | None:
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return nb if isinstance(nb, dict) and isinstance(nb.get("cells"), list) else None


def _notebook_of(out: Path, files: Iterable[str]) -> dict | None:
    """The group's notebook: its upload as extracted under OUT/submissions, else the
    executed copy in OUT/executed (named like the upload)."""
    for f in files:
        for path in (out / "submissions" / f, out / "executed" / Path(f).name):
            if path.is_file():
                nb = _read_nb(path)
                if nb is not None:
                    return nb
    return None


def _code_cells(nb: Mapping) -> list[str]:
    """Code cells but the group cell (names, not work)."""
    return [_source(c) for c in nb.get("cells", [])
            if isinstance(c, Mapping) and c.get("cell_type") == "code"
            and not (isinstance(c.get("metadata", {}).get("grader"), Mapping)
                     and c["metadata"]["grader"].get("group"))]


def _label(sub: Mapping) -> str:
    names = list(sub.get("members") or []) or [n.capitalize() for n in sub.get("family_names") or []]
    return ", ".join(names) or f"(unknown: {sub.get('group_key')})"


def works_from(groups: Iterable[tuple[Mapping, Mapping, Iterable[Any], list[str]]],
               assignment: Assignment, out: Path) -> list[Work]:
    """``(submission, evidence, question scores, files)`` per graded group -> works.
    A score is a :class:`grader.score.QuestionScore` or a store row (a dict)."""
    kinds = {q.id: q.kind for q in assignment.questions}
    works = []
    for sub, ev, scores, files in groups:
        wrong = {}
        for s in scores:
            get = s.get if isinstance(s, Mapping) else (lambda k, s=s: getattr(s, k, None))
            qid = get("id") or get("question")
            if kinds.get(qid) in VALUE_KINDS and get("verdict") == "wrong" and get("answer") is not None:
                wrong[qid] = str(get("answer"))
        nb = _notebook_of(out, files)
        works.append(Work(
            key=f"{sub.get('group_key')}@{str(sub.get('sha256'))[:12]}", label=_label(sub),
            family_names=tuple(sub.get("family_names") or ()),
            texts={k: str(v) for k, v in ((ev or {}).get("texts") or {}).items()},
            cells=_code_cells(nb) if nb else [], wrong=wrong, code_missing=nb is None))
    return works


def works_of_rows(rows: Iterable[Mapping], assignment: Assignment, out: str | Path) -> list[Work]:
    """From the scored rows of :func:`grader.grade.rescore` (one work per group and
    notebook; unreadable submissions left out)."""
    groups: dict[tuple[str, str], list[Mapping]] = {}
    for r in rows:
        s = r["submission"]
        if s.get("problem"):
            continue
        groups.setdefault((str(s.get("group_key")), str(s.get("sha256"))), []).append(r)
    return works_from(((rs[0]["submission"], rs[0].get("evidence") or {},
                        rs[0]["result"].questions, [x["submission"]["file"] for x in rs])
                       for rs in groups.values()), assignment, Path(out))


def load_works(out: str | Path, assignment: Assignment) -> list[Work]:
    """From ``OUT/grader.db`` (submissions, evidence, scores) and the notebooks of OUT."""
    from .store import Store

    out = Path(out)
    with Store(out / "grader.db") as store:
        subs = [s for s in store.submissions() if not s.get("problem")]
        scores: dict[int, list[dict]] = defaultdict(list)
        for row in store.scores():
            scores[row["submission_id"]].append(row)
        groups: dict[tuple[str, str], list[dict]] = {}
        for s in subs:
            groups.setdefault((s["group_key"], s["sha256"]), []).append(s)
        items = []
        for (_, sha), ss in groups.items():
            items.append((ss[0], store.evidence(sha) or {}, scores.get(ss[0]["id"], []),
                          [s["file"] for s in ss]))
    return works_from(items, assignment, out)


def assignment_boilerplate(assignment: Assignment) -> Boilerplate:
    """The hand-out (:func:`grader.release.student_notebook`) and the reference solution."""
    from .release import student_notebook

    handout = student_notebook(assignment)
    reference = _read_nb(assignment.notebook_path) or {"cells": []}
    return boilerplate_of([handout, reference])


def similarity(out: str | Path, lab: str | Path | None = None, *, rows=None) -> dict:
    """The similarity report of the class graded in ``out`` (see :func:`report`).
    ``rows``: the scored rows of a rescore just made (else read from the store)."""
    from .assignment import load_assignment
    from .store import Store

    out = Path(out)
    if not (out / "grader.db").is_file():
        raise ValueError(f"{out}: no grader.db here (grade the class into this folder first)")
    if lab is None:
        with Store(out / "grader.db") as store:
            lab = store.meta().get("lab")
        if not lab:
            raise ValueError(f"{out / 'grader.db'}: no lab recorded; pass --lab")
    assignment = load_assignment(lab)
    works = (works_of_rows(rows, assignment, out) if rows is not None
             else load_works(out, assignment))
    return report(works, assignment_boilerplate(assignment), assignment.similarity)
