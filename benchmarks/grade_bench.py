"""Seconds per notebook: plain nbclient, `grader grade -j 1`, `-j 2`, rescore of 100 groups.

    python benchmarks/grade_bench.py [-n 8] [--sandbox auto] [--nbgrader PATH/TO/nbgrader]

N distinct copies of one small PyTorch notebook (each with its own group, so none is
deduplicated) are graded against a one-question lab. Prints a table; writes nothing
outside a temporary folder. A figure to quote, not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
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
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "grader.cli", "grade", str(subs), "--lab", str(lab),
                    "--out", str(out), "-j", str(jobs), "--sandbox", sandbox],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def rescore_100(lab: Path, out: Path, root: Path) -> float:
    """Copy the evidence of one graded notebook to 100 groups, then time `grader rescore`."""
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
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "grader.cli", "rescore", str(out)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--sandbox", default="auto")
    ap.add_argument("--nbgrader", default=None, help="an nbgrader executable in a side venv (optional)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="grade-bench-"))
    try:
        lab, subs = make(root, args.n)
        rows = [("plain nbclient, in sequence", plain_nbclient(subs) / args.n)]
        rows.append(("grader grade -j 1", grade_cli(lab, subs, root / "out1", 1, args.sandbox) / args.n))
        rows.append(("grader grade -j 2", grade_cli(lab, subs, root / "out2", 2, args.sandbox) / args.n))
        rows.append(("grader rescore, 100 groups (s in all)", rescore_100(lab, root / "out2", root)))
        if args.nbgrader:
            rows.append(("nbgrader autograde", float("nan")))  # see README: run by hand
        print(f"{args.n} notebooks, {os.cpu_count()} cores, sandbox {args.sandbox}")
        print(f"{'what':45s} {'s per notebook':>15s}")
        for name, v in rows:
            print(f"{name:45s} {v:15.2f}")
        base, j1, j2 = rows[0][1], rows[1][1], rows[2][1]
        print(f"-j 1 vs plain nbclient: {100 * (j1 / base - 1):+.0f}%;  -j 2 speed-up over -j 1: {j1 / j2:.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
