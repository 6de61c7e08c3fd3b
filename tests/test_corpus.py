"""The corpus of bad submissions (tests/corpus), graded in one batch with good ones.

One `grader grade -j 2` run, small limits (tests/corpus LAB_TOML: cell 10 s, notebook
30 s, 2 GiB, 64 processes); then, per file, the status and total of grades.csv, and
the batch-wide promises: good groups get their grade, no connection reached the
listener, no secret leaked, the data folder is untouched, nothing was written outside,
no process or temporary folder is left behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
import pytest

from conftest import formula_cells, processes_matching, processes_with_env, read_grades
from corpus import (AF_SHAPE, GOOD_SECRET, KEY_SECRET, SEED, SOLUTION_SECRET, Context,
                    write_corpus, write_lab)

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- helpers of this file
# (read_grades and the /proc scans, shared with test_grade, are in conftest)

def tree_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()} | {
        p.relative_to(folder).as_posix() + "/": "dir" for p in folder.rglob("*") if p.is_dir()}


def outputs_text(nb_path: Path) -> str:
    """Every output of an executed notebook, as text."""
    node = nbformat.read(nb_path, as_version=4)
    return json.dumps([c.get("outputs", []) for c in node.cells])


class Listener:
    """A TCP listener on 127.0.0.1 that records every connection it accepts."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.connections: list = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                conn, addr = self.sock.accept()
                self.connections.append(addr)
                conn.close()
            except OSError:
                continue

    def close(self):
        self._stop.set()
        self.thread.join(5)
        self.sock.close()


def honest_accuracy(data: Path) -> float:
    """Accuracy of the corpus's seeded untrained MLP on the af test set, computed here."""
    import torch
    from reference.data import load_task
    from reference.models import build_model
    from reference.training import evaluate

    torch.manual_seed(SEED)
    model = build_model("mlp", AF_SHAPE["window"], AF_SHAPE["channels"], AF_SHAPE["n_classes"])
    model.eval()
    task = load_task("af", data_dir=data)
    assert (task.window, task.channels, task.n_classes) == tuple(AF_SHAPE.values())
    with torch.no_grad():
        return float(evaluate(model, task.test, task.n_classes, device="cpu")["accuracy"])


@pytest.fixture
def small_data(tmp_path, physionet) -> Path:
    """A private copy of the data the lab needs (the kernels get it read-only)."""
    data = tmp_path / "data"
    for db in ("afdb", "gaitndd"):
        shutil.copytree(physionet / db, data / db)
    return data


# ---------------------------------------------------------------- the corpus batch

def test_corpus_batch(tmp_path, small_data):
    lab = write_lab(tmp_path / "lab07")
    lab_before = tree_hashes(lab)
    data_before = tree_hashes(small_data)
    subs, out = tmp_path / "subs", tmp_path / "out"
    listener = Listener()
    # The grader's temporary folders go here (TMPDIR), so that they can be counted
    # even when other grader runs share the machine; short: kernel sockets live there.
    tmp = Path(tempfile.mkdtemp(prefix="gc-", dir="/tmp"))
    try:
        ctx = Context(subs=subs, lab=lab, out=out, data=small_data, port=listener.port)
        cases = write_corpus(ctx)
        subs_before = tree_hashes(subs)
        assert len([c for c in cases if not c.good]) >= 25
        assert (subs / "huge_lab_07.ipynb").stat().st_size > 100 * 2**20

        env = dict(os.environ, TMPDIR=str(tmp), GRADER_DATA=str(small_data))
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "grader.cli", "grade", str(subs), "--lab",
                            str(lab), "--out", str(out), "-j", "2", "--data-dir", str(small_data)],
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
        seconds = time.monotonic() - t0
        assert r.returncode == 0, r.stderr[-5000:]
        print(f"corpus batch: {len(cases)} notebooks in {seconds:.0f} s")
        time.sleep(0.5)
        listener.close()

        # -------- per file
        g = read_grades(out)
        assert set(g) == {c.file for c in cases}
        acc = honest_accuracy(small_data)
        assert 0 <= acc < 1
        problems = []
        for c in cases:
            row = g[c.file]
            want = c.total + (2 * acc if c.model else 0)
            status = row["status"]
            if not status.startswith(c.status):
                problems.append(f"{c.file}: status {status!r}, expected {c.status!r}")
            if abs(float(row["total"]) - want) > 0.006:
                problems.append(f"{c.file}: total {row['total']}, expected {want:.2f} ({status})")
            for word in c.says:
                if word.lower() not in status.lower():
                    problems.append(f"{c.file}: status {status!r} does not say {word!r}")
            for word in c.flags:
                if word.lower() not in row["flags"].lower():
                    problems.append(f"{c.file}: flags {row['flags']!r} do not say {word!r}")
            if c.status != "ok" and ":" not in status:
                problems.append(f"{c.file}: status {status!r} carries no message")
            assert row["maximum"] == "5"
        assert not problems, "\n".join(problems)

        # -------- every failed run explains itself in its evidence
        db = sqlite3.connect(out / "grader.db")
        evidence = {}
        for file, sha in db.execute("SELECT file, sha256 FROM submissions"):
            row = db.execute("SELECT json FROM evidence WHERE sha256 = ?", (sha,)).fetchone()
            evidence[file] = json.loads(row[0]) if row else None
        for c in cases:
            ev = evidence[c.file]
            if c.status in ("timeout", "dead"):
                assert ev["message"] and ev["errors"], (c.file, ev)
            if c.status == "errors":
                assert ev["errors"] and all(e["ename"] for e in ev["errors"]), (c.file, ev)

        # -------- a stopped run: what came before is graded, the rest is not reached
        from grader.assignment import load_assignment
        from grader.score import score
        spec, key = load_assignment(lab), json.loads((lab / "key.json").read_text())
        hang = score(spec, evidence["hangaftertwo_lab_07.ipynb"], key)
        assert [q.points for q in hang.questions] == [2, 1, 0]
        assert hang.question("acc").feedback == "Not reached: the notebook stopped in cell 3 (timeout)."
        assert evidence["crashaftertwo_lab_07.ipynb"]["stopped"]["cell"] == 4
        loop = score(spec, evidence["infiniteloop_lab_07.ipynb"], key)
        assert loop.question("ratio").feedback == "Not reached: the notebook stopped in cell 2 (timeout)."

        # -------- the grader measured, not the notebook
        measured = {c.file: evidence[c.file]["measurements"].get("model|af|0")
                    for c in cases if evidence[c.file]}
        for c in cases:   # unreadable files never ran, and never were stored as run
            assert (evidence[c.file] is None) == (c.status == "invalid"), c.file
        honest = measured["agood_lab_07.ipynb"]["metrics"]["accuracy"]
        assert abs(honest - acc) < 1e-9
        for name in ("zgood", "monkeypatch", "modelintrainmodewithhooks", "crashaftertwo"):
            assert measured[f"{name}_lab_07.ipynb"]["metrics"]["accuracy"] == honest, name
        assert "'accuracy': 1.0" in outputs_text(out / "executed" / "monkeypatch_lab_07.ipynb")  # it lied
        assert "not exported" in measured["notexportable_lab_07.ipynb"]["error"]
        assert "torch.onnx.export failed" in evidence["notexportable_lab_07.ipynb"]["models"]["model"]["error"]
        for name in ("sequentialmlp", "hostileforward"):   # ONNX, onnxruntime: within float noise
            assert abs(measured[f"{name}_lab_07.ipynb"]["metrics"]["accuracy"] - honest) < 1e-3, name
        assert "hidden=1000000000" in measured["forgedconfig_lab_07.ipynb"]["error"]
        assert "not exported" in measured["alwaysequal_lab_07.ipynb"]["error"]

        # -------- output capped
        big = (out / "executed" / "bigoutput_lab_07.ipynb").stat().st_size
        assert big < 3 * 2**20
        assert "output truncated by grader" in (out / "executed" / "bigoutput_lab_07.ipynb").read_text()

        # -------- no connection, no secret, nothing changed or written outside
        assert listener.connections == []
        net = outputs_text(out / "executed" / "network_lab_07.ipynb")
        assert "CONNECTED" not in net and "refused 127.0.0.1" in net
        for path in [*out.rglob("*")]:
            if path.is_file():
                blob = path.read_bytes()
                for secret in (KEY_SECRET, SOLUTION_SECRET):
                    assert secret.encode() not in blob, (secret, path)
        goods = {c.file for c in cases if c.good}
        for nb_path in (out / "executed").rglob("*.ipynb"):
            if nb_path.relative_to(out / "executed").as_posix() not in goods:
                assert GOOD_SECRET not in outputs_text(nb_path), nb_path

        # -------- issue 27: nothing a group wrote misleads
        assert formula_cells(out / "grades.csv") == []
        assert g["formula_lab_07.ipynb"]["members"].startswith("'=HYPERLINK")
        assert g["surrogategroup_lab_07.ipynb"]["members"] == "Case Surrogate\ufffdgroup"
        for twin in ("one", "two"):      # same file name, two folders: two executed notebooks
            assert f"I am twin {twin}" in outputs_text(out / "executed" / twin / "twin_lab_07.ipynb")
        index = json.loads((out / "feedback" / "index.json").read_text())
        assert "mgood_lab_07.pdf" not in index.values()   # claimed by two notebooks: no one's
        assert "claims the same member" in g["mgood_lab_07.ipynb"]["flags"]
        from pypdf import PdfReader

        ids = dict(db.execute("SELECT file, id FROM submissions"))
        report = out / "feedback" / index[str(ids["hugefigures_lab_07.ipynb"])]
        images = [im for p in PdfReader(str(report)).pages for im in p.images]
        assert 1 <= len(images) < 12 and all(max(im.image.size) <= 1600 for im in images)
        for cmd in (["rescore", str(out)], ["moodle", "export", str(out)]):
            r2 = subprocess.run([sys.executable, "-m", "grader.cli", *cmd], capture_output=True,
                                text=True, env=env, cwd=ROOT, timeout=300)
            assert r2.returncode == 0, (cmd, r2.stderr[-3000:])
        assert tree_hashes(small_data) == data_before
        assert tree_hashes(lab) == lab_before
        assert tree_hashes(subs) == subs_before
        for folder in (lab, subs, out, small_data, ROOT, Path("/root"), Path("/etc"), tmp_path):
            assert not (folder / "PWNED-by-writeoutside").exists(), folder

        # -------- nothing left behind
        assert processes_with_env(f"GRADER_DATA={small_data}") == []
        assert processes_matching(b"sleep\x00613") == []
        assert list(tmp.iterdir()) == []
    finally:
        listener.close()
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- many small submissions

TINY_TOML = """
[lab]
number = 7
title = "tiny"
notebook = "lab07.ipynb"

[limits]
cell_timeout = 20
notebook_timeout = 60

[[question]]
id = "answer"
points = 1
kind = "integer"
prompt = "a number"
answer = "answer"
"""


def test_many_small_submissions_leave_nothing_behind(tmp_path, small_data):
    n = 200
    lab = tmp_path / "lab07"
    lab.mkdir()
    (lab / "assignment.toml").write_text(TINY_TOML)
    (lab / "key.json").write_text(json.dumps({"questions": {"answer": {"expected": 7}}}))
    subs = tmp_path / "subs"
    subs.mkdir()
    for i in range(n):
        node = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"GROUP = ['S G{i}']"),
                                               nbformat.v4.new_code_cell(f"answer = {i % 10}")])
        node.cells[0].metadata["grader"] = {"group": True}
        nbformat.write(node, subs / f"g{i}_lab_07.ipynb")
    tmp = Path(tempfile.mkdtemp(prefix="gm-", dir="/tmp"))
    kernels_before = len(processes_matching(b"ipykernel"))
    try:
        env = dict(os.environ, TMPDIR=str(tmp), GRADER_DATA=str(small_data))
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "grader.cli", "grade", str(subs), "--lab",
                            str(lab), "--out", str(tmp_path / "out"), "-j", "2", "--data-dir",
                            str(small_data)], capture_output=True, text=True, env=env, cwd=ROOT,
                           timeout=900)
        print(f"{n} small notebooks in {time.monotonic() - t0:.0f} s")
        assert r.returncode == 0, r.stderr[-3000:]
        g = read_grades(tmp_path / "out")
        assert len(g) == n
        assert sum(row["total"] == "1" for row in g.values()) == n // 10
        assert all(row["status"] == "ok" for row in g.values())
        assert processes_with_env(f"GRADER_DATA={small_data}") == []
        assert len(processes_matching(b"ipykernel")) <= kernels_before
        assert list(tmp.iterdir()) == []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
