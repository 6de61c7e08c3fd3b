"""Shared fixtures: the real PhysioNet files named by GRADER_DATA."""
from __future__ import annotations

import csv
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _no_process_left_behind():
    """The suite checks after itself that it leaves no kernel, sandbox or measurement
    running: every temporary folder of the session (each kernel's runtime dir, named in
    its command line) lies under one short folder, and when the session ends no process
    may still name it."""
    root = Path(tempfile.mkdtemp(prefix="gt-", dir="/tmp"))
    os.chmod(root, 0o755)
    saved = {k: os.environ.get(k) for k in ("TMPDIR", "GRADER_TEST_TMP")}
    os.environ["TMPDIR"] = os.environ["GRADER_TEST_TMP"] = str(root)
    tempfile.tempdir = None
    yield root
    deadline = time.monotonic() + 5
    while processes_matching(str(root).encode()) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = processes_matching(str(root).encode())
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    tempfile.tempdir = None
    shutil.rmtree(root, ignore_errors=True)
    assert not left, f"processes left running by the tests: {left}"


@pytest.fixture(scope="session")
def physionet() -> Path:
    """The data folder of the real PhysioNet files (``GRADER_DATA``).

    Tests that need data fail, not skip, without it: a green run must mean the
    loaders were exercised on the real files.
    """
    env = os.environ.get("GRADER_DATA")
    if not env:
        pytest.fail("GRADER_DATA is not set: run the tests with GRADER_DATA=../shared/data "
                    "(or `make test`, which sets it).")
    path = Path(env).resolve()
    if not (path / "afdb" / "RECORDS").exists() or not (path / "gaitndd" / "RECORDS").exists():
        pytest.fail(f"GRADER_DATA={env} does not hold afdb/ and gaitndd/ (run `grader data fetch`).")
    return path


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Parsed arrays go to a cache private to the test session."""
    monkeypatch.setenv("GRADER_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


# ---------------------------------------------------------------- a tiny lab (lab 07)

TINY_LAB_TOML = """
[lab]
number = 7
title = "tiny"
notebook = "lab07.ipynb"

[limits]
cell_timeout = 20
notebook_timeout = 60

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
id = "why"
points = 3
kind = "text"
prompt = "why"
cell = "why"
"""


def notebook(*sources: str, group=("Ada Lovelace", "Alan Turing")):
    """A submission: the group cell, then one code cell per source."""
    from nbformat.v4 import new_code_cell, new_notebook

    group_cell = new_code_cell(f"GROUP = {list(group)!r}")
    group_cell.metadata["grader"] = {"group": True}
    return new_notebook(cells=[group_cell, *[new_code_cell(s) for s in sources]])


@pytest.fixture
def tiny_lab(tmp_path) -> Path:
    """Lab 07 in ``tmp_path/lab07``: answer (2 points, 42), ratio (1, 0.25 +- 0.01), why (3, text)."""
    import json

    import nbformat

    lab = tmp_path / "lab07"
    lab.mkdir()
    (lab / "assignment.toml").write_text(TINY_LAB_TOML)
    nbformat.write(notebook("answer = 6 * 7", "ratio = 0.25"), lab / "lab07.ipynb")
    (lab / "key.json").write_text(json.dumps({"questions": {
        "answer": {"expected": 42}, "ratio": {"expected": 0.25, "abs_tol": 0.01}}}))
    return lab


# ---------------------------------------------------------------- helpers shared by test files

def read_grades(out: Path) -> dict[str, dict]:
    """The rows of ``out/grades.csv``, by file name."""
    with open(out / "grades.csv", newline="") as fh:
        return {row["file"]: row for row in csv.DictReader(fh)}


def formula_cells(path: Path) -> list[str]:
    """Cells of a CSV that a spreadsheet would evaluate (a leading = + - @, tab or
    carriage return), numbers aside."""
    bad = []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        for row in csv.reader(fh):
            for cell in row:
                if cell.startswith(("=", "+", "-", "@", "\t", "\r")) and cell != "-":
                    try:
                        float(cell.replace(",", "."))
                    except ValueError:
                        bad.append(cell)
    return bad


def processes_matching(needle: bytes) -> list[str]:
    """``"pid: command line"`` of live processes whose command line holds ``needle``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmd:
            found.append(pid + ": " + cmd.replace(b"\0", b" ").decode(errors="replace"))
    return found


def processes_with_env(marker: str) -> list[str]:
    """Command lines of live processes whose environment holds ``marker``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
            if marker.encode() in env.split(b"\0"):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append(f"{pid}: {cmd}")
        except OSError:
            continue
    return found
