"""``reference.paths``: where the data folder is, and the error when a file is missing."""
from __future__ import annotations

from pathlib import Path

import platformdirs
import pytest

from reference.paths import (ENV_CACHE, ENV_DATA, MissingDataError, cache_dir, data_dir,
                             require)


def test_data_dir_argument_beats_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_DATA, str(tmp_path / "env"))
    assert data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert data_dir(str(tmp_path / "arg")) == tmp_path / "arg"


def test_data_dir_environment_beats_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_DATA, str(tmp_path / "env"))
    assert data_dir() == tmp_path / "env"
    assert data_dir(None) == tmp_path / "env"


def test_data_dir_falls_back_to_the_user_cache(monkeypatch):
    monkeypatch.delenv(ENV_DATA, raising=False)
    expected = Path(platformdirs.user_cache_dir("grader")) / "physionet"
    assert data_dir() == expected
    monkeypatch.setenv(ENV_DATA, "")                  # set but empty: not a folder
    assert data_dir() == expected


def test_data_dir_expands_home(monkeypatch):
    monkeypatch.setenv(ENV_DATA, "~/physionet")
    assert data_dir() == Path.home() / "physionet"
    assert data_dir("~/other") == Path.home() / "other"


def test_cache_dir_environment_beats_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_CACHE, str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv(ENV_CACHE)
    assert cache_dir() == Path(platformdirs.user_cache_dir("grader")) / "arrays"


def test_require_returns_an_existing_path(tmp_path):
    path = tmp_path / "afdb" / "RECORDS"
    path.parent.mkdir()
    path.write_text("04015\n")
    assert require(path) == path


def test_require_names_the_data_folder_and_the_fetch_command(tmp_path):
    missing = tmp_path / "afdb" / "04015.atr"

    with pytest.raises(MissingDataError) as err:
        require(missing)

    msg = str(err.value)
    assert "04015.atr" in msg and str(missing) in msg
    assert f"data folder {tmp_path} " in msg          # the folder above afdb/
    assert f"grader data fetch --data-dir {tmp_path}" in msg
    assert "GRADER_DATA" in msg
    assert isinstance(err.value, FileNotFoundError)   # callers may catch either


def test_require_outside_a_database_folder_names_its_parent(tmp_path):
    with pytest.raises(MissingDataError, match="grader data fetch") as err:
        require(tmp_path / "notes.txt")
    assert f"data folder {tmp_path} " in str(err.value)
