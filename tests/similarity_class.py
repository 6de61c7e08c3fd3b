"""A synthetic class for the similarity tests and benchmark, built from lab 01's reference
solution and written into a real store (``OUT/grader.db``) as ``grader grade`` leaves it:
notebooks under ``OUT/submissions``, their executed copies under ``OUT/executed``,
evidence rows (texts, encoded answers) and scores from :func:`grader.score.score`.
No kernel runs: similarity reads only what grading stored.

Honest groups write independently: their own wording (every few words drawn from
synonyms), their own extra cells (idioms with their own names, messages and constants),
and a few of the class's common wrong answers.  ``copy_of``: the group copies another,
renaming every variable, reflowing the text, adding comments and swapping two cells.
``wrong_with``: the group writes honestly but shares 4 unusual wrong answers with another.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import asdict
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell

from grader.assignment import load_assignment
from grader.ingest import ingest
from grader.score import score
from grader.store import Store

LAB = Path(__file__).resolve().parents[1] / "assignments" / "lab01"

FAMILIES = ["Lovelace", "Turing", "Hopper", "Noether", "Curie", "Gauss", "Euler", "Fermi",
            "Bohr", "Planck", "Darwin", "Pascal", "Kepler", "Newton", "Dirac", "Born", "Hertz",
            "Ohm", "Volta", "Ampere", "Joule", "Watt", "Tesla", "Faraday", "Maxwell", "Raman"]
FIRST = ["Ada", "Alan", "Grace", "Emmy", "Marie", "Carl", "Leonhard", "Enrico", "Niels", "Max"]

#: question -> encoded wrong values many groups give (honest groups draw from these)
COMMON_WRONG = {
    "split_reason": "A", "conv_len": 16, "lstm_hn_shape": {"tuple": [8, 2, 32]},
    "gait_fit": "good fit", "output_loss": "A", "lr_too_large": "B",
    "classification_losses": {"set": ["cross_entropy", "mse"]},
}
#: wrong values nobody else gives: the pair that shares them
UNUSUAL_WRONG = {
    "perceptron_and": {"tuple": [0, 1, 1, 1]}, "conv_len_dilated": 26, "mlp_params": 4162,
    "gait_test_subjects": 12,
}

# Free text: every {a|b|c} is drawn per group; runs of 5 words rarely coincide by chance.
TEXTS = {
    "best_model": [
        "{The CNN|Our convolutional network|The 1-D CNN|The convolutional model|The conv net} "
        "{is the best|wins|comes out on top|performs best|is our pick} {because|since|as|given that} "
        "it {reaches|gets|achieves|obtains|has} the {highest|best|top|largest} {test accuracy|accuracy "
        "on held-out records|score on the test records|balanced accuracy}.",
        "{It also|Moreover it|On top of that it|In addition it|Besides, it} {needs|uses|has|keeps} "
        "{fewer|less|far fewer|a smaller number of} {parameters|weights|trainable weights} {than|compared "
        "with|compared to|next to} the {MLP|dense network|fully connected model|multilayer perceptron}.",
        "{Convolutions|Its filters|The kernels|Local filters|Shared filters} {see|capture|pick up|detect|"
        "look at} {local|short|nearby|neighbouring} {patterns|irregularities|variations|changes} "
        "{of|in|between} {successive|consecutive|adjacent|neighbouring} {RR intervals|beats|heartbeats|"
        "interbeat intervals}, {which|and this|something that|a property that} {is|matters|helps|counts} "
        "{for|in|when detecting|to spot} {AF|atrial fibrillation|irregular rhythm|arrhythmia}.",
        "{The GRU|The recurrent model|The bidirectional GRU|Our RNN|The RNN} {trains|learns|runs|fits} "
        "{slower|more slowly|for longer|at a higher cost} {and|but|yet|while it} {does not|fails to|"
        "cannot|could not} {beat|surpass|outperform|do better than} {it|the CNN|the convolutional one|"
        "that result}.",
    ],
    "gait_interpretation": [
        "{Gait|The gait task|Classifying gait|The stride data} {is harder|is more difficult|is tougher|"
        "is a harder problem} {because|since|as|given that} {there are|we have|the study has|one "
        "only has} {only|just|merely|no more than} {64|sixty-four|a few dozen|very few} "
        "{subjects|people|participants|patients}.",
        "{Each fold|Every fold|A fold|One fold} {trains|learns|fits} {on|from|with} {fewer than 40|"
        "under forty|less than 40|a handful of} {people|subjects|persons|individuals}, {so|thus|hence|"
        "therefore} the {model|network|classifier|CNN} {memorises|learns|fits|picks up} "
        "{individuals|the subjects|who walks|personal traits} {rather than|instead of|and not|more "
        "than} the {disease|pathology|condition|illness}.",
        "{First|To begin|As a first step|Before anything else} {we would|I would|one should|we could} "
        "{add|use|try|apply} {stronger|more|heavier|extra} {regularisation|dropout|weight decay|data "
        "augmentation} {and|or|plus|together with} {a smaller|a simpler|a tinier|a lighter} "
        "{model|network|architecture|CNN}.",
    ],
}


def write_text(question: str, rng: random.Random) -> str:
    """One group's own wording of a text answer (sentences in its own line breaks)."""
    out = []
    for sentence in TEXTS[question]:
        out.append(re.sub(r"\{([^}]*)\}", lambda m: rng.choice(m.group(1).split("|")), sentence))
    return "*Your answer:*\n\n" + "\n".join(out)


def reflow(text: str) -> str:
    """The same words, other line breaks, spacing and case: what a copier does."""
    head, _, body = text.partition("\n\n")
    ws = body.split()
    lines = [" ".join(ws[i:i + 7]) for i in range(0, len(ws), 7)]
    return head + "\n\n" + "\n".join("  " + ln.upper() if i % 3 == 0 else ln
                                     for i, ln in enumerate(lines))


# Extra code a group writes beyond the hand-out: idioms with the group's own names,
# messages and constants, in one of a few shapes.
IDIOMS = [
    """{a} = {{}}
for {b}, {c} in [("mlp", mlp_af), ("cnn", cnn_af), ("gru", rnn_af)][:{n1}]:
    {a}[{b}] = sum({d}.numel() for {d} in {c}.parameters()) / {n2}
    print("{msg}", {b}, {a}[{b}], {n3})
""",
    """{a} = np.array([{n1}, {n2}, {n3}]) / {n4}
{b} = {a}.argmax() + {n5}
print(f"{msg}: {{{b}}} ({{{a}[{b} - {n5}]:.{n5}f}})")
""",
    """def {a}({b}, {c}={n1}):
    {d} = [{b}[{e}:{e} + {c}].mean() * {n4} for {e} in range({n5}, len({b}) - {c}, {c})]
    return np.array({d})

{f} = {a}(af.train.X[:{n2}, :, 0].ravel())
print("{msg}", {f}.shape, {f}[:{n3}])
""",
    """{a}, {b} = plt.subplots(1, {n1}, figsize=({n2}, {n3}))
for {c}, ({d}, {e}) in enumerate(runs.items()):
    {b}[{c} % {n1}].plot({e}.val_loss[{n4}:], label={d}, alpha=0.{n5})
{b}[0].set_title("{msg}")
""",
    """{a} = cm.sum(axis={n3}) + {n4}
{b} = cm.diagonal() / np.maximum({a}, {n1})
for {c}, {d} in zip(af.classes[:{n5}], {b}):
    print("{msg}", {c}, round(float({d}), {n2}))
""",
    """{a} = [{n3}]
{b} = {n4}
while {b} < len(history_gait.train_loss):
    {a}.append(history_gait.train_loss[{b}] - history_gait.val_loss[{b}] * {n5})
    {b} += {n1}
print("{msg}", max({a}), min({a}), {n2})
""",
    """{a} = {{{b}: int((gait.train.y == {b}).sum()) * {n3} for {b} in range({n1})}}
{c} = sorted({a}.items(), key=lambda {d}: -{d}[1] + {n4})
print("{msg}", {c}[:{n2}], {n5})
""",
    """try:
    {a} = float(np.std([{b}.val_loss[-{n3}] for {b} in runs.values()])) + {n4}
except Exception as {c}:
    {a} = {n1}
print("{msg}", {a} * {n2}, {n5})
""",
]
MESSAGES = ["parameters", "sizes:", "the winner", "mean RR", "curves", "recall per class",
            "gap", "class counts", "spread", "check", "summary", "result", "here", "values",
            "what we see", "seen", "numbers", "per class", "debug", "ok"]
WORDS = ["x", "val", "tmp", "res", "out", "acc", "loss", "item", "row", "col", "data", "arr",
         "lst", "total", "count", "name", "model", "score", "i", "j", "k", "it", "buf", "cur"]


def write_idiom(template: str, rng: random.Random) -> str:
    names = rng.sample(WORDS, 6)
    names = [f"{n}_{rng.randint(0, 99)}" if rng.random() < 0.5 else n for n in names]
    slots = dict(zip("abcdef", names), msg=rng.choice(MESSAGES) + f" {rng.randint(1, 999)}",
                 **{f"n{i}": rng.randint(2, 30) for i in range(1, 6)})
    return template.format(**slots)


def rename_all(source: str, rng: random.Random, keep: set[str]) -> str:
    """Every variable the group made (assigned names, loop targets, parameters) renamed."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.arg)):
            names.add(node.name if isinstance(node, ast.FunctionDef) else node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    names -= keep
    for old in sorted(names, key=len, reverse=True):
        source = re.sub(rf"\b{re.escape(old)}\b", f"renamed_{old}_{rng.randint(100, 999)}", source)
    return source


def _base_notebook(assignment):
    nb = nbformat.read(assignment.notebook_path, as_version=4)
    for cell in nb.cells:
        cell.source = re.sub(r"^[ \t]*### (BEGIN|END) SOLUTION[^\n]*\n?", "", cell.source, flags=re.M)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def _members(i: int) -> list[str]:
    fams = [FAMILIES[i % len(FAMILIES)] + ("" if i < len(FAMILIES) else str(i // len(FAMILIES)))]
    fams.append(FAMILIES[(i * 7 + 3) % len(FAMILIES)] + f"x{i}")
    return [f"{FIRST[(i + j) % len(FIRST)]} {f}" for j, f in enumerate(fams)]


def _encoded_key(key: dict) -> dict:
    """The key's expected values as the kernel encodes them (tuples, sets)."""
    assignment = load_assignment(LAB)
    out = {}
    for q in assignment.questions:
        e = (key["questions"].get(q.id) or {}).get("expected")
        if e is None or not q.answer:
            continue
        out[q.answer] = ({"tuple": e} if q.kind == "tuple" else
                         {"set": sorted(e)} if q.kind == "multi" else e)
    return out


def build_class(out: Path, honest: int = 12, copy_of: int | None = 0,
                wrong_with: int | None = 2, seed: int = 7) -> dict:
    """Write the class into ``out``; returns ``{"copy": (label, label), "wrong": (...),
    "labels": [...]}``, labels as the similarity report names groups."""
    assignment = load_assignment(LAB)
    key = assignment.load_key()
    expected = _encoded_key(key)
    base = _base_notebook(assignment)
    group_cell = next(i for i, c in enumerate(base.cells) if c.metadata.get("grader", {}).get("group"))
    anchors = [i for i, c in enumerate(base.cells) if c.cell_type == "code"
               and not c.metadata.get("grader", {}).get("locked") and i != group_cell]
    plans = []   # (members, texts, extra cells [(after, source)], wrong {var: value})
    for g in range(honest):
        rng = random.Random(seed * 1000 + g)
        texts = {q: write_text(q, rng) for q in TEXTS}
        extra = [(rng.choice(anchors), write_idiom(t, rng)) for t in rng.sample(IDIOMS, 3)]
        wrong = dict(rng.sample(sorted(COMMON_WRONG.items(), key=str), rng.randint(0, 2)))
        plans.append([_members(g), texts, extra, wrong])
    result: dict = {}
    if copy_of is not None:
        rng = random.Random(seed + 99)
        src = plans[copy_of]
        texts = {q: reflow(t) for q, t in src[1].items()}
        keep = set(assignment.answer_variables) | {"af", "gait", "runs", "cm", "np", "plt",
                                                   "history_gait", "mlp_af", "cnn_af", "rnn_af"}
        extra = [(after, "# our own work\n" + rename_all(code, rng, keep).replace(" = ", "=")
                  .replace(", ", ",  ")) for after, code in src[2]]
        extra[0], extra[1] = (extra[1][0], extra[0][1]), (extra[0][0], extra[1][1])  # swapped
        plans.append([_members(len(plans)), texts, extra, dict(src[3])])
        result["copy"] = (len(plans) - 1, copy_of)
    if wrong_with is not None:
        g = len(plans)
        rng = random.Random(seed * 1000 + g)
        texts = {q: write_text(q, rng) for q in TEXTS}
        extra = [(rng.choice(anchors), write_idiom(t, rng)) for t in rng.sample(IDIOMS, 3)]
        plans.append([_members(g), texts, extra, dict(UNUSUAL_WRONG)])
        plans[wrong_with][3].update(UNUSUAL_WRONG)
        result["wrong"] = (g, wrong_with)
    subs = out / "submissions"
    executed = out / "executed"
    subs.mkdir(parents=True, exist_ok=True)
    executed.mkdir(parents=True, exist_ok=True)
    for members, texts, extra, _ in plans:
        nb = nbformat.from_dict(json.loads(json.dumps(base)))
        nb.cells[group_cell].source = "GROUP = [\n" + "".join(f"    {m!r},\n" for m in members) + "]"
        for c in nb.cells:
            tag = c.metadata.get("grader", {}).get("answer")
            if tag in texts:
                c.source = texts[tag]
        for after, code in sorted(extra, key=lambda e: -e[0]):
            nb.cells.insert(after + 1, new_code_cell(code))
        name = "_".join(m.split()[-1].lower() for m in members) + "_lab_01.ipynb"
        nbformat.write(nb, subs / name)
        nbformat.write(nb, executed / name)
    batch = ingest(subs, assignment.number)
    by_name = {s.name: s for s in batch}
    with Store(out / "grader.db", assignment.number) as store:
        store.set_meta("lab", str(LAB))
        ids = store.add_submissions(batch)
        labels = []
        for (members, texts, _, wrong) in plans:
            name = "_".join(m.split()[-1].lower() for m in members) + "_lab_01.ipynb"
            sub = by_name[name]
            evidence = {"status": "ok", "message": None, "texts": texts, "errors": [],
                        "measurements": {}, "answers": {**expected, **wrong}}
            store.put_evidence(sub.sha256, evidence)
            res = score(assignment, evidence, key)
            store.put_scores(ids[list(batch).index(sub)], [asdict(s) for s in res.questions])
            labels.append(", ".join(members))
    result["labels"] = labels
    result = {k: (tuple(labels[i] for i in v) if k in ("copy", "wrong") else v)
              for k, v in result.items()}
    return result
