"""Seconds per notebook: plain nbclient, `grader grade -j 1`, `-j 2`, rescore of 100 groups.

    python benchmarks/grade_bench.py [-n 24] [--repeat 3] [--sandbox auto]
                                     [--nbgrader PATH/TO/nbgrader]

N distinct copies of one small PyTorch notebook (each with its own group, so none is
deduplicated) are graded against a one-question lab. Plain nbclient, ``grade -j 1`` and
``grade -j 2`` run in interleaved rounds and the table shows each one's median (a shared
VM's speed drifts by tens of percent from one minute to the next); each round's line
goes to stderr. Prints a table; writes nothing outside a temporary folder. A figure to
quote, not a test.

With ``--nbgrader``, ``nbgrader autograde`` also runs on the same N notebooks. nbgrader is
not a dependency of this project: install it in a side venv, e.g.

    python3 -m venv /work/nbg-venv && /work/nbg-venv/bin/pip install nbgrader
    python benchmarks/grade_bench.py --nbgrader /work/nbg-venv/bin/nbgrader

Its kernels run this interpreter (the one with torch), through a ``python3`` kernelspec put
first on ``JUPYTER_PATH`` in the temporary folder; the autograded notebooks are checked
afterwards (every code cell ran, no error output), so a kernel without torch fails the run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

TOML = """
[lab]
number = 9
title = "bench"
notebook = "lab09.ipynb"

[[question]]
id = "answer"
points = 1
kind = "integer"
prompt = "p"
answer = "answer"
"""
CELLS = [
    "import torch\nx = torch.randn(256, 32)",
    "w = torch.nn.Linear(32, 2)\nloss = torch.nn.functional.cross_entropy(w(x), torch.zeros(256, dtype=torch.long))\nloss.backward()",
    "answer = 42",
]


def make(root: Path, n: int) -> tuple[Path, Path]:
    lab, subs = root / "lab09", root / "subs"
    lab.mkdir()
    subs.mkdir()
    (lab / "assignment.toml").write_text(TOML)
    nbformat.write(new_notebook(cells=[new_code_cell(c) for c in CELLS]), lab / "lab09.ipynb")
    (lab / "key.json").write_text(json.dumps({"questions": {"answer": {"expected": 42}}}))
    for i in range(n):
        group = new_code_cell(f"GROUP = ['Student Number{i}']")
        group.metadata["grader"] = {"group": True}
        nb = new_notebook(cells=[group] + [new_code_cell(c) for c in CELLS])
        nbformat.write(nb, subs / f"number{i}_lab_09.ipynb")
    return lab, subs


def plain_nbclient(subs: Path) -> float:
    from nbclient import NotebookClient

    t = time.perf_counter()
    for p in sorted(subs.glob("*.ipynb")):
        nb = nbformat.read(p, as_version=4)
        NotebookClient(nb, timeout=600, kernel_name="python3").execute()
    return time.perf_counter() - t


def grade_cli(lab: Path, subs: Path, out: Path, jobs: int, sandbox: str) -> float:
    return _timed([sys.executable, "-m", "grader.cli", "grade", str(subs), "--lab", str(lab),
                   "--out", str(out), "-j", str(jobs), "--sandbox", sandbox])


def _rescore(out: Path, *extra: str) -> float:
    return _timed([sys.executable, "-m", "grader.cli", "rescore", str(out), *extra])


def _timed(cmd: list[str]) -> float:
    """Seconds that :func:`_run` of ``cmd`` took."""
    t = time.perf_counter()
    _run(cmd)
    return time.perf_counter() - t


def _run(cmd: list[str]) -> None:
    """Run a grader command; on failure show what it said (the bench hides its output)."""
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode:
        sys.exit(f"grade_bench: {' '.join(cmd[2:5])} ... failed (exit {r.returncode}):\n"
                 + r.stderr[-2000:])


def rescore_100(lab: Path, out: Path, root: Path) -> list[tuple[str, float]]:
    """Copy the evidence of one graded notebook to 100 more groups, then time `grader
    rescore` three times: every report new; one manual score changed (one report to
    render); a key change that moves every group's points (every report to render)."""
    from grader.ingest import ingest
    from grader.store import Store

    many = root / "many"
    many.mkdir()
    src = next((root / "subs").glob("*.ipynb"))
    for i in range(100):
        nb = nbformat.read(src, as_version=4)
        nb.cells[0].source = f"GROUP = ['Student Many{i}']"
        nbformat.write(nb, many / f"many{i}_lab_09.ipynb")
    db = out / "grader.db"
    with Store(db) as store:
        evidence = store.evidence(store.submissions()[0]["sha256"])
        batch = ingest(many, 9)
        store.add_submissions(batch)
        for s in batch:
            store.put_evidence(s.sha256, evidence)
    first = _rescore(out)
    manual = root / "manual.csv"
    manual.write_text("group,question,points,comment\nmany7,answer,0.5,half a point by hand\n")
    one = _rescore(out, "--manual", str(manual))
    key = json.loads((lab / "key.json").read_text())
    key["questions"]["answer"]["expected"] = 41
    (lab / "key.json").write_text(json.dumps(key))
    every = _rescore(out)
    return [("grader rescore, 100 groups, all reports new (s in all)", first),
            ("grader rescore, 100 groups, 1 manual score changed (s in all)", one),
            ("grader rescore, 100 groups, key changed for all (s in all)", every)]


class NbgraderError(RuntimeError):
    """nbgrader is missing, is not nbgrader, or one of its steps failed."""


def nbgrader_version(exe: str) -> tuple[str, str]:
    """The absolute path and version of the nbgrader executable ``exe`` (a path, or a name on
    PATH), or :class:`NbgraderError`."""
    found = shutil.which(exe) if os.sep not in exe else None
    path = Path(found or exe).expanduser().absolute()
    if not path.is_file() or not os.access(path, os.X_OK):
        raise NbgraderError(f"--nbgrader {exe}: no such executable file (install nbgrader in a "
                            "side venv: python3 -m venv VENV && VENV/bin/pip install nbgrader, "
                            "then pass VENV/bin/nbgrader)")
    try:
        r = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=120)
    except OSError as e:
        raise NbgraderError(f"--nbgrader {exe}: cannot run it: {e}") from None
    except subprocess.TimeoutExpired:
        raise NbgraderError(f"--nbgrader {exe}: `--version` did not answer in 120 s") from None
    m = re.search(r"nbgrader version\s+(\S+)", r.stdout + r.stderr)
    if r.returncode != 0 or not m:
        raise NbgraderError(f"--nbgrader {exe}: not an nbgrader executable (`{exe} --version` "
                            f"exited {r.returncode} and printed no 'nbgrader version': "
                            f"{(r.stdout + r.stderr).strip()[:120]!r})")
    return str(path), m.group(1)


def _nbg(exe: str, args: list[str], course: Path, env: dict, log: Path) -> None:
    """Run ``nbgrader ARGS`` in the course folder; its output goes to ``log``."""
    with log.open("a") as f:
        f.write(f"$ nbgrader {' '.join(args)}\n")
        f.flush()
        r = subprocess.run([exe, *args], cwd=course, env=env, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        tail = log.read_text()[-3000:]
        raise NbgraderError(f"`nbgrader {' '.join(args)}` exited {r.returncode}:\n{tail}")


def _has_flag(exe: str, sub: list[str], flag: str, course: Path, env: dict) -> bool:
    r = subprocess.run([exe, *sub, "--help"], cwd=course, env=env, capture_output=True, text=True)
    return re.search(rf"^{re.escape(flag)}\b", r.stdout, re.MULTILINE) is not None


def nbgrader_autograde(exe: str, lab: Path, subs: Path, root: Path) -> float:
    """Build an nbgrader course (source, release, submitted/<student>/lab09), time
    `nbgrader autograde lab09`, then check that every notebook really ran."""
    from grader.ingest import CONVENTION

    course = root / "nbgrader"
    (course / "source" / "lab09").mkdir(parents=True)
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        "c.CourseDirectory.course_id = 'bench'\n"
        f"c.CourseDirectory.root = {str(course)!r}\n"
        # the default is 30 s per cell; a loaded machine must not turn into a failed run
        "c.ExecutePreprocessor.timeout = 600\n")
    shutil.copy(lab / "lab09.ipynb", course / "source" / "lab09" / "lab09.ipynb")
    # The kernels nbgrader starts must import torch: a `python3` kernelspec running this
    # interpreter, found first on JUPYTER_PATH (before the side venv's own ipykernel spec).
    spec = root / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (grader venv, bench)", "language": "python"}))
    # nbgrader runs `alembic` (and its other tools) from PATH: its venv's bin/ goes first.
    path = os.pathsep.join([str(Path(exe).parent), os.environ.get("PATH", "")])
    env = dict(os.environ, PATH=path, JUPYTER_PATH=str(root / "jupyter"),
               JUPYTER_CONFIG_DIR=str(root / "jupyter-config"),  # no ~/.jupyter config
               JUPYTER_RUNTIME_DIR=str(root / "jupyter-runtime"))
    env.pop("JUPYTER_DATA_DIR", None)
    log = root / "nbgrader.log"
    # nbgrader >= 0.6 adds the assignment to the db by itself; adding it first works with all.
    _nbg(exe, ["db", "assignment", "add", "lab09"], course, env, log)
    _nbg(exe, ["generate_assignment", "lab09"], course, env, log)
    students = []
    for p in sorted(subs.glob("*.ipynb")):
        m = CONVENTION.match(p.name)
        student = m.group("names") if m else re.sub(r"[^A-Za-z0-9_-]", "_", p.stem)
        dest = course / "submitted" / student / "lab09"
        dest.mkdir(parents=True)
        shutil.copy(p, dest / "lab09.ipynb")
        students.append(student)
    args = ["autograde", "lab09"]
    if _has_flag(exe, ["autograde"], "--create", course, env):
        args.append("--create")  # deprecated (the default) since nbgrader 0.6, kept for older ones
    t = time.perf_counter()
    _nbg(exe, args, course, env, log)
    elapsed = time.perf_counter() - t
    # Check it really executed the notebooks, with torch: no error, every code cell ran.
    for student in students:
        out = course / "autograded" / student / "lab09" / "lab09.ipynb"
        if not out.is_file():
            raise NbgraderError(f"nbgrader autograde wrote no {out}; "
                                f"log:\n{log.read_text()[-3000:]}")
        nb = nbformat.read(out, as_version=4)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            if errors:
                e = errors[0]
                raise NbgraderError(f"nbgrader's kernel failed in {out}, cell {i}: "
                                    f"{e.get('ename')}: {e.get('evalue')}")
            if cell.get("execution_count") is None:
                raise NbgraderError(f"nbgrader did not execute {out}, cell {i}")
    return elapsed


def machine() -> str:
    """Cores and CPU model (from /proc/cpuinfo where there is one)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = f"{os.cpu_count()} cores" + (f" ({usable} usable)" if usable != os.cpu_count() else "")
    return f"{cores}, {model}, {platform.system()} {platform.release()}"


def versions(nbgrader: str | None) -> str:
    import nbclient
    import torch

    out = (f"python {platform.python_version()}, torch {torch.__version__}, "
           f"nbclient {nbclient.__version__}")
    return out + (f", nbgrader {nbgrader}" if nbgrader else "")


def rounds(subs: Path, lab: Path, root: Path, n: int, repeat: int, sandbox: str,
           say=print) -> dict[str, list[float]]:
    """Seconds per notebook of plain nbclient, ``grade -j 1`` and ``grade -j 2``, ``repeat``
    times each, interleaved (one of each per round), so that a machine that gets slower or
    faster meanwhile (a VM's neighbours) weighs on all three alike."""
    times: dict[str, list[float]] = {"plain": [], "j1": [], "j2": []}
    for r in range(repeat):
        times["plain"].append(plain_nbclient(subs) / n)
        for jobs in (1, 2):
            out = root / f"out{jobs}"
            shutil.rmtree(out, ignore_errors=True)
            times[f"j{jobs}"].append(grade_cli(lab, subs, out, jobs, sandbox) / n)
        say(f"round {r + 1}/{repeat}: plain {times['plain'][-1]:.2f}, -j 1 {times['j1'][-1]:.2f}, "
            f"-j 2 {times['j2'][-1]:.2f} s per notebook; "
            f"-j 2 speed-up {times['j1'][-1] / times['j2'][-1]:.2f}x")
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=24,
                    help="notebooks per run (default 24, a class of about 70 students)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds of plain / -j 1 / -j 2, interleaved; medians are shown (default 3)")
    ap.add_argument("--sandbox", default="auto")
    ap.add_argument("--nbgrader", default=None, help="an nbgrader executable in a side venv (optional)")
    args = ap.parse_args()
    if args.n < 1 or args.repeat < 1:
        ap.error("-n and --repeat must be at least 1")
    nbg_exe = nbg_version = None
    if args.nbgrader:
        try:  # before the other benches: fail fast on a wrong path
            nbg_exe, nbg_version = nbgrader_version(args.nbgrader)
        except NbgraderError as e:
            ap.error(str(e))
    root = Path(tempfile.mkdtemp(prefix="grade-bench-"))
    try:
        lab, subs = make(root, args.n)
        say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
        times = rounds(subs, lab, root, args.n, args.repeat, args.sandbox, say)
        med = {k: statistics.median(v) for k, v in times.items()}
        spread = {k: f"{min(v):.2f}-{max(v):.2f}" if len(v) > 1 else "" for k, v in times.items()}
        rows = [("plain nbclient, in sequence", med["plain"], spread["plain"]),
                ("grader grade -j 1", med["j1"], spread["j1"]),
                ("grader grade -j 2", med["j2"], spread["j2"])]
        rows.extend((name, sec, "") for name, sec in rescore_100(lab, root / "out2", root))
        if nbg_exe:
            try:
                sec = nbgrader_autograde(nbg_exe, lab, subs, root)
            except NbgraderError as e:
                print(f"grade_bench: nbgrader: {e}", file=sys.stderr)
                return 1
            rows.append(("nbgrader autograde (sequential)", sec / args.n, ""))
        print(f"machine: {machine()}")
        print(f"versions: {versions(nbg_version)}")
        print(f"{args.n} notebooks, sandbox {args.sandbox}, median of {args.repeat} round(s)")
        print(f"{'what':62s} {'s per notebook':>15s} {'min-max':>11s}")
        for name, v, rng in rows:
            print(f"{name:62s} {v:15.2f} {rng:>11s}")
        ratios = [a / b for a, b in zip(times["j1"], times["j2"])]
        print(f"-j 1 vs plain nbclient: {100 * (med['j1'] / med['plain'] - 1):+.0f}%;  "
              f"-j 2 speed-up over -j 1: {med['j1'] / med['j2']:.2f}x "
              f"(per round: {', '.join(f'{x:.2f}' for x in ratios)})")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
