"""``reference.fetch`` and ``grader data fetch`` against a local PhysioNet stand-in.

A real HTTP server on 127.0.0.1 serves the shared data folder ($GRADER_DATA) in
PhysioNet's layout ``/files/<db>/1.0.0/<file>``. To keep the tests fast it lists
only a few records in each ``RECORDS`` (and fixes that line of
``SHA256SUMS.txt`` to match); every other file comes from disk unchanged.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from grader.cli import main
from reference import fetch as fetch_mod
from reference.fetch import FetchError, fetch, parse_sha256sums

AFDB_RECORDS = ["04015", "04043"]
GAIT_RECORDS = ["als1", "control1", "park1"]


class Truncated(bytes):
    """A body the server cuts short: it promises more bytes than it sends."""


class PhysioNetStub:
    """Serves ``root/<db>/<file>`` at ``/files/<db>/1.0.0/<file>``.

    ``overrides[url_path]`` replaces a file: ``bytes`` (served as is), an
    ``int`` (that HTTP status), a :class:`Truncated` body, or a list of those
    used one per request, after which the file on disk is served.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.overrides: dict[str, object] = {}
        self.requests: list[str] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.serve_records("afdb", AFDB_RECORDS)
        self.serve_records("gaitndd", GAIT_RECORDS)

    def path(self, db: str, name: str) -> str:
        return f"/files/{db}/1.0.0/{name}"

    def serve_records(self, db: str, records: list[str]) -> bytes:
        """Serve a RECORDS listing ``records``, with SHA256SUMS.txt to match."""
        body = "".join(r + "\n" for r in records).encode()
        digest = hashlib.sha256(body).hexdigest()
        sums = (self.root / db / "SHA256SUMS.txt").read_bytes()
        sums = re.sub(rb"(?m)^[0-9a-f]{64}(\s+)RECORDS", digest.encode() + rb"\1RECORDS", sums)
        self.overrides[self.path(db, "RECORDS")] = body
        self.overrides[self.path(db, "SHA256SUMS.txt")] = sums
        return body

    def served(self, db: str, name: str) -> bytes:
        """The bytes a good server sends for ``db/name``."""
        override = self.overrides.get(self.path(db, name))
        return override if isinstance(override, bytes) else (self.root / db / name).read_bytes()

    def data_requests(self) -> list[str]:
        """Requests for anything but the checksum lists."""
        return [p for p in self.requests if not p.endswith("/SHA256SUMS.txt")]

    def _handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                stub.requests.append(self.path)
                body = stub.overrides.get(self.path)
                if isinstance(body, list):
                    body = body.pop(0) if body else None
                if body is None:
                    m = re.fullmatch(r"/files/(afdb|gaitndd)/1\.0\.0/([\w.+-]+)", self.path)
                    file = stub.root / m[1] / m[2] if m else None
                    body = file.read_bytes() if file and file.is_file() else 404
                if isinstance(body, int):
                    self.send_error(body)
                    return
                self.send_response(200)
                extra = 1000 if isinstance(body, Truncated) else 0
                self.send_header("Content-Length", str(len(body) + extra))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

        return Handler

    def __enter__(self) -> PhysioNetStub:
        # A short poll keeps shutdown() (one per test) from costing 0.5 s.
        threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    env = os.environ.get("GRADER_DATA")
    if not env:
        pytest.fail("GRADER_DATA is not set: run the tests with "
                    "GRADER_DATA=../shared/data (the shared PhysioNet data folder)")
    root = Path(env).expanduser().resolve()
    for db in ("afdb", "gaitndd"):
        if not (root / db / "SHA256SUMS.txt").is_file():
            pytest.fail(f"GRADER_DATA={env} holds no {db}/SHA256SUMS.txt: "
                        "point it at the shared PhysioNet data folder")
    return root


@pytest.fixture
def server(shared_data):
    with PhysioNetStub(shared_data) as stub:
        yield stub


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(fetch_mod, "BACKOFF", 0.0)


def run(dest: Path, base_url: str, **kwargs) -> str:
    """Fetch quietly into ``dest``; return what was printed."""
    out = io.StringIO()
    fetch(dest, base_url=base_url, progress=False, console=Console(file=out, width=100),
          **kwargs)
    return out.getvalue()


def expected_files() -> set[str]:
    afdb = {f"afdb/{r}{s}" for r in AFDB_RECORDS for s in (".hea", ".atr", ".qrs")}
    gait = {f"gaitndd/{r}.ts" for r in GAIT_RECORDS}
    return afdb | gait | {"gaitndd/subject-description.txt"} | {
        f"{db}/{name}" for db in ("afdb", "gaitndd") for name in ("RECORDS", "SHA256SUMS.txt")}


def files_in(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_fresh_fetch_gets_exactly_the_expected_files(server, tmp_path):
    output = run(tmp_path, server.url)

    assert files_in(tmp_path) == expected_files()          # no .dat, no half files
    for rel in expected_files():
        db, name = rel.split("/")
        assert (tmp_path / rel).read_bytes() == server.served(db, name), rel
    assert "downloaded afdb/04015.atr" in output
    assert "afdb: 7 downloaded, 0 skipped" in output
    assert "gaitndd: 5 downloaded, 0 skipped" in output
    assert "not verified" not in output


def test_fetch_returns_the_data_folder_and_honours_grader_data(server, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADER_DATA", str(tmp_path / "env"))
    out = io.StringIO()
    root = fetch(base_url=server.url + "/", progress=True, console=Console(file=out))
    assert root == tmp_path / "env"
    assert (root / "gaitndd" / "als1.ts").is_file()


def test_second_fetch_downloads_nothing(server, tmp_path):
    run(tmp_path, server.url)
    server.requests.clear()

    output = run(tmp_path, server.url)

    assert server.data_requests() == []
    assert sorted(server.requests) == [server.path("afdb", "SHA256SUMS.txt"),
                                       server.path("gaitndd", "SHA256SUMS.txt")]
    assert "afdb: 0 downloaded, 7 skipped" in output
    assert "gaitndd: 0 downloaded, 5 skipped" in output


def test_corrupt_download_is_an_error_and_leaves_no_file(server, tmp_path):
    good = (server.root / "gaitndd" / "als1.ts").read_bytes()
    url_path = server.path("gaitndd", "als1.ts")
    server.overrides[url_path] = good.replace(b"1", b"2", 1)

    with pytest.raises(FetchError) as err:
        run(tmp_path, server.url)

    msg = str(err.value)
    sums = parse_sha256sums((server.root / "gaitndd" / "SHA256SUMS.txt").read_text())
    assert "gaitndd/als1.ts" in msg and server.url + url_path in msg
    assert sums["als1.ts"] in msg
    assert hashlib.sha256(server.overrides[url_path]).hexdigest() in msg
    assert not (tmp_path / "gaitndd" / "als1.ts").exists()
    assert not list(tmp_path.rglob("*.part"))
    # What was verified before the error stays, so running again resumes.
    assert (tmp_path / "afdb" / "04015.atr").is_file()


def test_missing_file_is_an_error_naming_file_and_url(server, tmp_path):
    url_path = server.path("afdb", "04043.qrs")
    server.overrides[url_path] = 404

    with pytest.raises(FetchError) as err:
        run(tmp_path, server.url)

    msg = str(err.value)
    assert "afdb/04043.qrs" in msg and server.url + url_path in msg and "404" in msg
    assert err.value.status == 404
    assert server.requests.count(url_path) == 1             # a 404 is not retried
    assert not (tmp_path / "afdb" / "04043.qrs").exists()


def test_corrupt_local_file_is_downloaded_again(server, tmp_path):
    run(tmp_path, server.url)
    local = tmp_path / "afdb" / "04043.atr"
    local.write_bytes(b"garbage")
    server.requests.clear()

    output = run(tmp_path, server.url)

    assert server.data_requests() == [server.path("afdb", "04043.atr")]
    assert local.read_bytes() == (server.root / "afdb" / "04043.atr").read_bytes()
    assert "afdb/04043.atr: local copy does not match its checksum" in output
    assert "afdb: 1 downloaded, 6 skipped" in output


def test_without_published_checksums_it_carries_on_and_says_so(server, tmp_path):
    server.overrides[server.path("afdb", "SHA256SUMS.txt")] = 404

    output = run(tmp_path, server.url)

    assert "afdb: no SHA256SUMS.txt" in output and "will NOT be verified" in output
    assert "afdb: 7 downloaded, 0 skipped" in output and "7 not verified" in output
    assert not (tmp_path / "afdb" / "SHA256SUMS.txt").exists()
    assert (tmp_path / "afdb" / "04015.hea").read_bytes() == \
        (server.root / "afdb" / "04015.hea").read_bytes()

    # Unverifiable files are skipped when present and non-empty, else fetched.
    (tmp_path / "afdb" / "04015.hea").write_bytes(b"")
    server.requests.clear()
    run(tmp_path, server.url)
    assert server.data_requests() == [server.path("afdb", "04015.hea")]


def test_transient_errors_are_retried(server, tmp_path):
    url_path = server.path("gaitndd", "park1.ts")
    server.overrides[url_path] = [503, Truncated(b"12")]    # then the real file

    run(tmp_path, server.url, retries=2)

    assert server.requests.count(url_path) == 3
    assert (tmp_path / "gaitndd" / "park1.ts").read_bytes() == \
        (server.root / "gaitndd" / "park1.ts").read_bytes()


def test_truncated_download_fails_after_retries_and_leaves_no_file(server, tmp_path):
    url_path = server.path("afdb", "04015.qrs")
    server.overrides[url_path] = Truncated((server.root / "afdb" / "04015.qrs").read_bytes())

    with pytest.raises(FetchError) as err:
        run(tmp_path, server.url, retries=1)

    msg = str(err.value)
    assert "afdb/04015.qrs" in msg and server.url + url_path in msg
    assert "connection closed" in msg and "after 2 tries" in msg
    assert server.requests.count(url_path) == 2
    assert not (tmp_path / "afdb" / "04015.qrs").exists()
    assert not list(tmp_path.rglob("*.part"))


def test_unreachable_server_is_an_error_naming_file_and_url(tmp_path):
    with socket.socket() as s:                   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"

    with pytest.raises(FetchError) as err:
        run(tmp_path, url, retries=0)

    msg = str(err.value)
    assert "afdb/SHA256SUMS.txt" in msg and f"{url}/files/afdb/1.0.0/SHA256SUMS.txt" in msg
    assert "refused" in msg.lower()


def test_unsafe_record_names_are_refused(server, tmp_path):
    server.serve_records("afdb", ["04015", "../../evil"])

    with pytest.raises(FetchError, match=r"afdb/RECORDS .*unsafe record names"):
        run(tmp_path, server.url)
    assert not (tmp_path.parent / "evil.hea").exists()


def test_cli_fetch_succeeds(server, tmp_path):
    result = CliRunner().invoke(main, ["data", "fetch", "--data-dir", str(tmp_path),
                                       "--base-url", server.url])

    assert result.exit_code == 0, result.output
    assert "downloaded gaitndd/als1.ts" in result.output
    assert files_in(tmp_path) == expected_files()


def test_cli_fetch_error_exits_1_naming_the_file(server, tmp_path):
    url_path = server.path("gaitndd", "subject-description.txt")
    server.overrides[url_path] = 404

    result = CliRunner().invoke(main, ["data", "fetch", "--data-dir", str(tmp_path),
                                       "--base-url", server.url, "--no-progress"])

    assert result.exit_code == 1
    assert "error:" in result.output
    assert "gaitndd/subject-description.txt" in result.output
    assert server.url + url_path in result.output
    assert "Traceback" not in result.output
