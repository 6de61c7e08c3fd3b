"""Download the PhysioNet files the lab needs, verifying PhysioNet's checksums.

Two databases are fetched, in PhysioNet's URL layout
``<base_url>/files/<db>/<version>/<file>`` (versions in
:data:`reference.paths.DATABASES`):

* ``afdb`` 1.0.0: ``RECORDS`` and, for every record it lists, ``<rec>.hea``,
  ``<rec>.atr`` and ``<rec>.qrs`` (the annotations; the ``.dat`` ECG signals,
  about 600 MB, are not needed and not fetched);
* ``gaitndd`` 1.0.0: ``RECORDS``, ``<rec>.ts`` for every record and
  ``subject-description.txt``.

For each database ``SHA256SUMS.txt`` is fetched first and saved beside the
files; every file it lists is checked against it. Files already on disk and
intact are skipped, so an interrupted fetch resumes where it stopped.

Examples
--------
Needs the data, so not run as a doctest::

    from reference.fetch import fetch
    folder = fetch("~/physionet")
    sorted(p.name for p in folder.iterdir())
    ['afdb', 'gaitndd']

The same from the command line::

    grader data fetch --data-dir ~/physionet
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn)

from reference.paths import DATABASES, data_dir as resolve_data_dir

__all__ = ["FetchError", "fetch", "files_for", "parse_sha256sums"]

SUMS = "SHA256SUMS.txt"

#: Per-record file suffixes fetched for each database.
RECORD_SUFFIXES = {"afdb": (".hea", ".atr", ".qrs"), "gaitndd": (".ts",)}
#: Files fetched once per database, besides ``RECORDS`` and ``SHA256SUMS.txt``.
EXTRA_FILES = {"afdb": (), "gaitndd": ("subject-description.txt",)}

TIMEOUT = 30.0            # seconds per request (connect, and each read)
RETRIES = 2               # extra tries after a transient failure
BACKOFF = 1.0             # seconds before the first retry; doubles each time
_CHUNK = 1 << 16
# Statuses worth another try: the server or a proxy is busy, not the file missing.
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
# A record name becomes a file name: refuse anything that could leave the folder.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
_USER_AGENT = "grader-data-fetch (Python urllib)"


class FetchError(RuntimeError):
    """A file could not be downloaded, or its checksum did not match.

    The message names the file, its full URL and the reason.

    Attributes
    ----------
    url : str or None
        The URL that failed.
    status : int or None
        The HTTP status, when the server answered with an error (e.g. 404).
    """

    def __init__(self, message: str, *, url: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class _Transient(Exception):
    """A failure that another try may cure (time-out, reset, 503...)."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class _Stats:
    downloaded: int = 0
    skipped: int = 0
    unverified: int = 0


def parse_sha256sums(text: str) -> dict[str, str]:
    """Parse a ``sha256sum`` listing into ``{file name: hex digest}``.

    Accepts ``<sha256> <name>`` with one or two spaces (PhysioNet uses one,
    GNU ``sha256sum`` two) and the ``*`` binary-mode marker.

    Examples
    --------
    >>> sums = parse_sha256sums("ab" * 32 + " RECORDS\\n" + "cd" * 32 + "  *a.dat\\n")
    >>> sorted(sums), sums["a.dat"] == "cd" * 32
    (['RECORDS', 'a.dat'], True)
    """
    sums = {}
    for line in text.splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2 or not re.fullmatch(r"[0-9A-Fa-f]{64}", parts[0]):
            continue
        digest, name = parts
        sums[name.lstrip("*").strip()] = digest.lower()
    return sums


def files_for(db: str, records: list[str]) -> list[str]:
    """File names the lab needs from ``db`` (besides ``SHA256SUMS.txt``).

    Examples
    --------
    >>> files_for("afdb", ["04015"])
    ['RECORDS', '04015.hea', '04015.atr', '04015.qrs']
    >>> files_for("gaitndd", ["als1"])
    ['RECORDS', 'als1.ts', 'subject-description.txt']
    """
    names = ["RECORDS"]
    names += [rec + suffix for rec in records for suffix in RECORD_SUFFIXES[db]]
    names += list(EXTRA_FILES[db])
    return names


def fetch(data_dir: str | os.PathLike | None = None,
          base_url: str = "https://physionet.org",
          progress: bool = True, *,
          console: Console | None = None,
          timeout: float = TIMEOUT,
          retries: int = RETRIES) -> Path:
    """Download afdb and gaitndd annotation/stride files from PhysioNet.

    Files land in ``<data_dir>/afdb/`` and ``<data_dir>/gaitndd/``. Each one is
    written under a temporary name, checked against PhysioNet's
    ``SHA256SUMS.txt`` and only then renamed (atomically) to its final name,
    so an interrupted or corrupt download never leaves a half file behind.
    Files already present and intact are skipped: their checksum matches, or,
    for a file with no published checksum, it is present and not empty.

    Parameters
    ----------
    data_dir : str or path-like, optional
        Folder to download into. Default: ``$GRADER_DATA``, else a per-user
        cache folder (see :func:`reference.paths.data_dir`).
    base_url : str, default="https://physionet.org"
        The PhysioNet server; files are read from
        ``<base_url>/files/<db>/<version>/<file>``. A mirror or a local test
        server with that layout works too.
    progress : bool, default=True
        Show a progress bar over the files. What was downloaded or skipped is
        printed either way.
    console : rich.console.Console, optional
        Where to print; default a console on standard output.
    timeout : float, default=30.0
        Seconds to wait on each connection and read.
    retries : int, default=2
        Extra tries after a transient error (time-out, connection reset,
        HTTP 5xx/429). A 404 or a checksum mismatch is not retried.

    Returns
    -------
    pathlib.Path
        The data folder, holding ``afdb/`` and ``gaitndd/``.

    Raises
    ------
    FetchError
        A file could not be downloaded (the message names the file, the full
        URL and the reason), its checksum did not match (the message also
        gives the expected and actual SHA-256), or it could not be saved.
        Files fetched before the error are kept, so running again resumes.

    Examples
    --------
    Needs the data, so not run as a doctest::

        from reference.fetch import fetch
        root = fetch("~/physionet", progress=False)
        afdb: checking against SHA256SUMS.txt (76 checksums)
        downloaded afdb/RECORDS (150 B, sha256 ok)
        ...
        (root / "gaitndd" / "als1.ts").exists()
        True
    """
    root = resolve_data_dir(data_dir)
    base = base_url.rstrip("/")
    out = console or Console()
    columns = (TextColumn("{task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=out, disable=not progress) as bar:
        for db, version in DATABASES.items():
            _fetch_db(db, f"{base}/files/{db}/{version}", root / db, bar,
                      timeout=timeout, retries=retries)
    return root


def _fetch_db(db: str, url: str, folder: Path, bar: Progress, *,
              timeout: float, retries: int) -> None:
    """Fetch one database into ``folder``; see :func:`fetch`."""
    def say(text: str, style: str | None = None) -> None:
        # No markup (names and URLs are data) and no wrapping (keep URLs whole).
        bar.console.print(text, style=style, markup=False, highlight=False,
                          soft_wrap=True)

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"cannot create the data folder {folder}: {exc}") from exc

    # The checksums come first: they decide what is intact. They are always
    # fetched again (a few kB), since a new release may change them.
    sums: dict[str, str] | None
    try:
        _download(f"{url}/{SUMS}", folder / SUMS, f"{db}/{SUMS}", None,
                  timeout=timeout, retries=retries)
    except FetchError as exc:
        if exc.status != 404:
            raise
        sums = None
        say(f"warning: {db}: no {SUMS} at {url}/{SUMS} (HTTP 404); "
            f"{db} files will NOT be verified.", style="yellow")
    else:
        sums = parse_sha256sums((folder / SUMS).read_text(errors="replace"))
        say(f"{db}: checking against {SUMS} ({len(sums)} checksums)")

    stats = _Stats()
    # RECORDS first: it says which other files to get.
    _ensure(db, "RECORDS", url, folder, sums, stats, say,
            timeout=timeout, retries=retries)
    records = _read_records(folder / "RECORDS", f"{url}/RECORDS", db)
    names = files_for(db, records)

    task = bar.add_task(db, total=len(names), completed=1)
    for name in names[1:]:
        _ensure(db, name, url, folder, sums, stats, say,
                timeout=timeout, retries=retries)
        bar.advance(task)

    line = (f"{db}: {stats.downloaded} downloaded, {stats.skipped} skipped "
            f"(already present and intact)")
    if stats.unverified:
        line += f", {stats.unverified} not verified (no published checksum)"
    say(line + f" -> {folder}")


def _ensure(db: str, name: str, url: str, folder: Path,
            sums: dict[str, str] | None, stats: _Stats, say, *,
            timeout: float, retries: int) -> None:
    """Make ``folder/name`` present and intact, downloading it if needed."""
    dest = folder / name
    expected = sums.get(name) if sums is not None else None
    if dest.is_file():
        if expected is None and dest.stat().st_size > 0:
            stats.skipped += 1
            return
        if expected is not None:
            if _sha256_file(dest) == expected:
                stats.skipped += 1
                return
            say(f"{db}/{name}: local copy does not match its checksum; "
                "downloading it again", style="yellow")
    sha, size = _download(f"{url}/{name}", dest, f"{db}/{name}", expected,
                          timeout=timeout, retries=retries)
    stats.downloaded += 1
    if expected is None:
        stats.unverified += 1
        why = "no checksums published" if sums is None else f"not in {SUMS}"
        note = f"not verified: {why}"
    else:
        note = "sha256 ok"
    say(f"downloaded {db}/{name} ({_size(size)}, {note})")


def _read_records(path: Path, url: str, db: str) -> list[str]:
    """Record names listed in a ``RECORDS`` file, checked to be plain names."""
    records = path.read_text(errors="replace").split()
    bad = [r for r in records if not _SAFE_NAME.match(r)]
    if bad:
        raise FetchError(f"{db}/RECORDS from {url} lists unsafe record names "
                         f"{bad[:3]}; refusing to use them as file names", url=url)
    if not records:
        raise FetchError(f"{db}/RECORDS from {url} lists no records", url=url)
    return records


def _download(url: str, dest: Path, label: str, expected: str | None, *,
              timeout: float, retries: int) -> tuple[str, int]:
    """Download ``url`` to ``dest`` atomically; return (sha256, size).

    Raises :class:`FetchError` on an HTTP/URL error (after ``retries`` more
    tries for transient ones), on a checksum mismatch, or when ``dest`` cannot
    be written.
    """
    for attempt in range(retries + 1):
        try:
            return _download_once(url, dest, label, expected, timeout)
        except _Transient as exc:
            if attempt == retries:
                tries = f" (after {retries + 1} tries)" if retries else ""
                raise FetchError(f"could not download {label} from {url}: "
                                 f"{exc}{tries}", url=url, status=exc.status) from exc
            time.sleep(BACKOFF * 2 ** attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _download_once(url: str, dest: Path, label: str, expected: str | None,
                   timeout: float) -> tuple[str, int]:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        reason = f"HTTP {exc.code} {exc.reason}"
        if exc.code in _TRANSIENT_STATUS:
            raise _Transient(reason, exc.code) from exc
        raise FetchError(f"could not download {label} from {url}: {reason}",
                         url=url, status=exc.code) from exc
    except ValueError as exc:   # a malformed base URL: no use retrying
        raise FetchError(f"could not download {label} from {url}: {exc}",
                         url=url) from exc
    except (OSError, http.client.HTTPException) as exc:
        # URLError (DNS, refused, TLS), time-outs, resets: worth another try.
        raise _Transient(_reason(exc)) from exc

    # Write beside the final file (same file system, so os.replace is atomic);
    # the dot-name keeps half files out of globs like "*.atr". Not mkstemp:
    # its 0600 mode would make the data unreadable to others after the rename.
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        response.close()
        raise FetchError(f"cannot save {label} to {dest}: {exc}", url=url) from exc
    try:
        digest = hashlib.sha256()
        size = 0
        with response, os.fdopen(fd, "wb") as out:
            length = response.headers.get("Content-Length")
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Transient(_reason(exc)) from exc
                if not chunk:
                    break
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
            # urllib does not notice a connection closed early: check the length.
            if length is not None and length.isdigit() and int(length) != size:
                raise _Transient(f"connection closed after {size} of {length} bytes")
        actual = digest.hexdigest()
        if expected is not None and actual != expected:
            raise FetchError(
                f"checksum mismatch for {label} downloaded from {url}: expected "
                f"sha256 {expected}, got {actual}; the file was not kept", url=url)
        os.replace(tmp, dest)
    except OSError as exc:
        raise FetchError(f"cannot save {label} to {dest}: {exc}", url=url) from exc
    finally:
        tmp.unlink(missing_ok=True)   # no-op after a successful os.replace
    return actual, size


def _reason(exc: BaseException) -> str:
    """A short reason for a network error (URLError hides it in ``.reason``)."""
    reason = getattr(exc, "reason", None) or exc
    text = str(reason) or type(reason).__name__
    return text if type(reason).__name__ in text else f"{type(reason).__name__}: {text}"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    return f"{n / 1e3:.1f} kB" if n < 1_000_000 else f"{n / 1e6:.1f} MB"
