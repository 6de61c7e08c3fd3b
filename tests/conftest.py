"""Shared fixtures: the real PhysioNet files named by GRADER_DATA."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


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
