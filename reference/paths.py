"""Where the PhysioNet data and the parsed-array cache live.

The data folder is, in order: the ``data_dir`` argument (``--data-dir`` on the
command line), the ``GRADER_DATA`` environment variable, else a per-user cache
folder. It holds one sub-folder per database, laid out as PhysioNet serves them::

    <data_dir>/afdb/RECORDS, 04015.atr, 04015.qrs, 04015.hea, ...
    <data_dir>/gaitndd/RECORDS, als1.ts, ..., subject-description.txt

Example
-------
>>> from reference.paths import data_dir
>>> data_dir("/tmp/physionet")
PosixPath('/tmp/physionet')
"""
from __future__ import annotations

import os
from pathlib import Path

import platformdirs

ENV_DATA = "GRADER_DATA"
ENV_CACHE = "GRADER_CACHE"

#: PhysioNet databases the lab uses, with the version served.
DATABASES = {"afdb": "1.0.0", "gaitndd": "1.0.0"}


class MissingDataError(FileNotFoundError):
    """A data file the lab needs is not in the data folder."""


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The data folder: ``path``, else ``$GRADER_DATA``, else the per-user cache."""
    if path:
        return Path(path).expanduser()
    env = os.environ.get(ENV_DATA)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("grader")) / "physionet"


def cache_dir() -> Path:
    """Folder for parsed arrays (``$GRADER_CACHE`` or the per-user cache)."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("grader")) / "arrays"


def require(path: Path) -> Path:
    """Return ``path`` if it exists, else raise one clear :class:`MissingDataError`."""
    if not path.exists():
        folder = path.parent.parent if path.parent.name in DATABASES else path.parent
        raise MissingDataError(
            f"{path.name} is missing from the data folder {folder} "
            f"(expected {path}). Fetch the PhysioNet data with "
            f"`grader data fetch --data-dir {folder}`, or point GRADER_DATA at a "
            "folder that holds afdb/ and gaitndd/."
        )
    return path
