"""The grader's store: one SQLite file, ``OUT/grader.db``, resumable and crash-safe.

Tables
------
``meta``         key/value: ``schema``, ``assignment`` (lab number), ``created``.
``submissions``  one row per (file, sha256): members, flags, problem (JSON columns).
``evidence``     one row per notebook content hash, written in ONE transaction when the
                 notebook's execution is complete. Killing the grader at any moment and running
                 again re-executes exactly the hashes without a row (:meth:`Store.pending_hashes`).
``scores``       per submission and question; replaced as a whole per submission in one
                 transaction (a rescore never duplicates rows).
``manual``       instructor's scores as typed in the CSV (group as written, question, points,
                 comment, line): matched to a submission at scoring time, never dropped.

WAL journal with ``synchronous=FULL``: a committed row survives SIGKILL and power loss; an
uncommitted one is simply absent.

>>> with Store("out") as db:                                  # doctest: +SKIP
...     ids = db.add_submissions(batch)
...     for sha in db.pending_hashes(): db.put_evidence(sha, run(sha))
"""
from __future__ import annotations

import csv
import json
import math
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from grader.ingest import Batch, Submission, group_key_of
from grader.manual import ManualScore
from grader.untrusted import clean_text

__all__ = ["Store", "StoreError", "ManualScore", "read_manual_csv", "DB_NAME"]

DB_NAME = "grader.db"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS submissions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused
    file        TEXT NOT NULL,            -- path relative to the ingested folder
    sha256      TEXT NOT NULL,
    group_key   TEXT NOT NULL,
    feedback    TEXT NOT NULL,            -- base name of the group's feedback file
    members     TEXT NOT NULL,            -- JSON list: full names from the group cell
    family_names TEXT NOT NULL,           -- JSON list: folded, in the group's order
    file_names  TEXT NOT NULL,            -- JSON list: family names from the file name
    flags       TEXT NOT NULL,            -- JSON list of messages
    problem     TEXT,                     -- set: not gradable (graded 0 with this message)
    moodle_name TEXT,
    moodle_id   TEXT,
    added_at    TEXT NOT NULL,
    UNIQUE (file, sha256)
);
CREATE INDEX IF NOT EXISTS submissions_sha ON submissions (sha256);
CREATE TABLE IF NOT EXISTS evidence (
    sha256      TEXT PRIMARY KEY,
    json        TEXT NOT NULL,
    status      TEXT,
    seconds     REAL,
    finished_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS scores (
    submission_id INTEGER NOT NULL REFERENCES submissions (id) ON DELETE CASCADE,
    question    TEXT NOT NULL,
    points      REAL NOT NULL,
    max_points  REAL NOT NULL,
    verdict     TEXT,
    feedback    TEXT,
    answer      TEXT,                     -- JSON
    expected    TEXT,                     -- JSON
    extra       TEXT,                     -- JSON: any other keys (kind, exercise, comment...)
    PRIMARY KEY (submission_id, question)
);
CREATE TABLE IF NOT EXISTS manual (
    group_key   TEXT NOT NULL,            -- the group as the instructor typed it
    question    TEXT NOT NULL,
    points      REAL NOT NULL,            -- as typed: a typo is reported, never clamped
    comment     TEXT NOT NULL DEFAULT '',
    line        INTEGER NOT NULL DEFAULT 0,   -- line of the CSV
    PRIMARY KEY (group_key, question)
);
"""


class StoreError(RuntimeError):
    """The store cannot be used (another lab's store, bad manual CSV...)."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _jsonable(obj: Any) -> Any:
    """json.dumps fallback: numpy scalars/arrays, paths, sets."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _dumps(obj: Any) -> str:
    # A lone surrogate (a notebook's "\ud800") only occurs inside a JSON string: replaced
    # there, so that SQLite (UTF-8) takes the text and everything read back is printable.
    return clean_text(json.dumps(obj, default=_jsonable, ensure_ascii=False))


def _text(value: str | None) -> str | None:
    return None if value is None else clean_text(str(value))


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class Store:
    """``OUT/grader.db``. ``path`` is the database file or the output folder holding it.

    Use as a context manager (``with Store(out, lab_number=1) as db:``). With
    ``lab_number`` the store records it and refuses a store made for another lab.
    Safe to share between threads (writes are serialised).
    """

    def __init__(self, path: str | Path, lab_number: int | None = None):
        path = Path(path)
        if path.is_dir() or (not path.exists() and path.suffix != ".db"):
            path = path / DB_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, timeout=60, isolation_level=None,
                                   check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=60000")
            self._db.executescript(_SCHEMA)
            if "line" not in {r[1] for r in self._db.execute("PRAGMA table_info(manual)")}:
                self._db.execute("ALTER TABLE manual ADD COLUMN line INTEGER NOT NULL DEFAULT 0")
            self._init_meta(lab_number)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(f"{path}: not a usable grader store ({exc})") from None

    # ------------------------------------------------------------------ plumbing
    @contextmanager
    def _tx(self):
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on error)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _init_meta(self, lab_number: int | None) -> None:
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            db.execute("INSERT OR IGNORE INTO meta VALUES ('created', ?)", (_now(),))
            if lab_number is not None:
                row = db.execute("SELECT value FROM meta WHERE key='assignment'").fetchone()
                if row is None:
                    db.execute("INSERT INTO meta VALUES ('assignment', ?)", (str(int(lab_number)),))
                elif int(row[0]) != int(lab_number):
                    raise StoreError(f"{self.path} holds the grading of lab {int(row[0]):02d}, "
                                     f"not lab {int(lab_number):02d}: use another output folder")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def meta(self) -> dict[str, str]:
        return {r["key"]: r["value"] for r in self._db.execute("SELECT key, value FROM meta")}

    def set_meta(self, key: str, value: Any) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))

    @property
    def lab_number(self) -> int | None:
        value = self.meta().get("assignment")
        return None if value is None else int(value)

    # ------------------------------------------------------------------ submissions
    def add_submissions(self, batch: Batch | Iterable[Submission]) -> list[int]:
        """Record the batch's submissions; returns their row ids in batch order.

        Idempotent: the same (file, sha256) keeps its row (flags and members are refreshed).
        A file that now has other bytes (a resubmission) replaces its old row and that row's
        scores; evidence stays, keyed by hash.
        """
        subs = list(batch)
        lab = getattr(batch, "lab_number", None)
        lab = lab if lab is not None else (self.lab_number or 0)
        ids: list[int] = []
        with self._tx() as db:
            for s in subs:
                name = _text(s.name)   # a file name need not be UTF-8
                db.execute("DELETE FROM submissions WHERE file = ? AND sha256 <> ?",
                           (name, s.sha256))
                values = dict(
                    file=name, sha256=s.sha256, group_key=_text(s.group_key),
                    feedback=_text(s.feedback_name(lab)), members=_dumps(list(s.members)),
                    family_names=_dumps(list(s.family_names)),
                    file_names=_dumps(list(s.file_names)), flags=_dumps(list(s.flags)),
                    problem=_text(s.problem), moodle_name=_text(s.moodle_name),
                    moodle_id=_text(s.moodle_id), added_at=_now())
                cols = ", ".join(values)
                marks = ", ".join(f":{k}" for k in values)
                update = ", ".join(f"{k} = excluded.{k}" for k in values
                                   if k not in ("file", "sha256", "added_at"))
                db.execute(f"INSERT INTO submissions ({cols}) VALUES ({marks}) "
                           f"ON CONFLICT (file, sha256) DO UPDATE SET {update}", values)
                ids.append(db.execute("SELECT id FROM submissions WHERE file = ? AND sha256 = ?",
                                      (name, s.sha256)).fetchone()[0])
        return ids

    def submissions(self) -> list[dict]:
        """Every submission row, JSON columns decoded, by id."""
        out = []
        for r in self._db.execute("SELECT * FROM submissions ORDER BY id"):
            d = dict(r)
            for k in ("members", "family_names", "file_names", "flags"):
                d[k] = _loads(d[k])
            out.append(d)
        return out

    # ------------------------------------------------------------------ evidence
    def pending_hashes(self) -> list[str]:
        """Hashes of gradable submissions (no problem) that have no evidence yet, in the
        order they were added."""
        rows = self._db.execute(
            "SELECT sha256, MIN(id) AS first FROM submissions "
            "WHERE problem IS NULL AND sha256 NOT IN (SELECT sha256 FROM evidence) "
            "GROUP BY sha256 ORDER BY first")
        return [r["sha256"] for r in rows]

    def put_evidence(self, sha256: str, evidence: Mapping[str, Any]) -> None:
        """Store a notebook's complete evidence (one transaction; replaces an older one).
        ``status`` and ``seconds`` keys, when present, are also kept as columns."""
        text = _dumps(dict(evidence))
        seconds = evidence.get("seconds")
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO evidence VALUES (?, ?, ?, ?, ?)",
                       (sha256, text, _text(evidence.get("status")),
                        None if seconds is None else float(seconds), _now()))

    def evidence(self, sha256: str) -> dict | None:
        row = self._db.execute("SELECT json FROM evidence WHERE sha256 = ?", (sha256,)).fetchone()
        return None if row is None else json.loads(row[0])

    def evidence_rows(self) -> list[dict]:
        """sha256, status, seconds, finished_at of every stored evidence (no JSON)."""
        return [dict(r) for r in self._db.execute(
            "SELECT sha256, status, seconds, finished_at FROM evidence ORDER BY finished_at")]

    def drop_evidence(self, sha256s: Iterable[str] | None = None) -> int:
        """Forget evidence (all, or these hashes) so that it is executed again."""
        with self._tx() as db:
            if sha256s is None:
                return db.execute("DELETE FROM evidence").rowcount
            return sum(db.execute("DELETE FROM evidence WHERE sha256 = ?", (h,)).rowcount
                       for h in sha256s)

    # ------------------------------------------------------------------ scores
    _SCORE_KEYS = ("question", "id", "points", "max_points", "verdict",
                   "feedback", "answer", "expected", "submission_id")

    @classmethod
    def _score_row(cls, submission_id: int, s: Mapping[str, Any]) -> tuple:
        qid = s.get("question", s.get("id"))
        if qid is None:
            raise ValueError(f"score without a question id: {dict(s)!r}")
        extra = {k: v for k, v in s.items() if k not in cls._SCORE_KEYS}
        return (submission_id, str(qid), float(s.get("points", 0.0)),
                float(s.get("max_points", 0.0)), _text(s.get("verdict")), _text(s.get("feedback")),
                _dumps(s.get("answer")), _dumps(s.get("expected")), _dumps(extra))

    def put_scores(self, submission_id: int, scores: Iterable[Mapping[str, Any]]) -> None:
        """Replace every score of one submission (one transaction)."""
        self.replace_scores({submission_id: scores})

    def replace_scores(self, by_submission: Mapping[int, Iterable[Mapping[str, Any]]]) -> None:
        """Replace the scores of several submissions in one transaction (a whole rescore)."""
        rows = {sid: [self._score_row(sid, s) for s in scores]
                for sid, scores in by_submission.items()}
        with self._tx() as db:
            for sid, sid_rows in rows.items():
                db.execute("DELETE FROM scores WHERE submission_id = ?", (sid,))
                db.executemany("INSERT INTO scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", sid_rows)

    def scores(self, submission_id: int | None = None) -> list[dict]:
        """Score rows (keys: submission_id, question, id (= question), points, max_points,
        verdict, feedback, answer, expected, plus any other key that was put, e.g. kind,
        exercise, comment), by submission then in the order they were put."""
        sql = "SELECT * FROM scores"
        args: tuple = ()
        if submission_id is not None:
            sql += " WHERE submission_id = ?"
            args = (submission_id,)
        out = []
        for r in self._db.execute(sql + " ORDER BY submission_id, rowid", args):
            d = dict(r)
            d["answer"], d["expected"] = _loads(d["answer"]), _loads(d["expected"])
            extra = _loads(d.pop("extra")) or {}
            out.append({**extra, **d, "id": d["question"]})
        return out

    # ------------------------------------------------------------------ manual scores
    def set_manual(self, rows: Iterable[ManualScore | tuple | Mapping[str, Any]]) -> None:
        """Replace the whole manual table (the instructor's CSV is the source of truth)."""
        clean = []
        for r in rows:
            if isinstance(r, Mapping):
                r = ManualScore(r["group"], r["question"], r["points"], r.get("comment", ""),
                                r.get("line", 0))
            elif not isinstance(r, ManualScore):
                r = ManualScore(*r)
            clean.append((_text(r.group), _text(r.question), float(r.points),
                          _text(r.comment or ""), int(r.line or 0)))
        with self._tx() as db:
            db.execute("DELETE FROM manual")
            db.executemany("INSERT OR REPLACE INTO manual (group_key, question, points, comment, "
                           "line) VALUES (?, ?, ?, ?, ?)", clean)

    def manual(self) -> list[ManualScore]:
        """Every manual row as typed, in the CSV's order."""
        return [ManualScore(*r) for r in self._db.execute(
            "SELECT group_key, question, points, comment, line FROM manual "
            "ORDER BY line, group_key, question")]


MANUAL_COLUMNS = ("group", "question", "points", "comment")


def read_manual_csv(path: str | Path) -> list[ManualScore]:
    """An instructor's CSV ``group,question,points,comment`` -> manual scores, as typed.

    ``group`` names the submission as the instructor likes (``lovelace_turing``,
    ``Turing_Lovelace_lab_01.pdf``, ``Lovelace Turing``, a report name, a hash prefix); it is
    matched at scoring time (:func:`grader.manual.match_manual`), which reports every row
    that matches nothing. ``comment`` may be left out. ``;`` separators and decimal commas (French Excel) are
    accepted. A bad row raises :class:`StoreError` naming the file and the line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}: cannot read the manual scores ({exc})") from None
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    delimiter = ";" if first.count(";") > first.count(",") else ","
    reader = csv.reader(lines, delimiter=delimiter)
    out: list[ManualScore] = []
    header: list[str] | None = None
    seen: dict[tuple[str, str], int] = {}
    for lineno, row in enumerate(reader, start=1):
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [c.strip().lower() for c in row]
            unknown = [c for c in header if c not in MANUAL_COLUMNS]
            if unknown:
                raise StoreError(f"{path}:{lineno}: unknown column {unknown[0]!r} "
                                 f"(the columns are {', '.join(MANUAL_COLUMNS)})")
            missing = [c for c in MANUAL_COLUMNS[:3] if c not in header]
            if missing:
                raise StoreError(f"{path}:{lineno}: missing column {missing[0]!r} "
                                 f"(the header must be {','.join(MANUAL_COLUMNS)})")
            if len(set(header)) < len(header):
                raise StoreError(f"{path}:{lineno}: a column is named twice")
            continue
        if len(row) > len(header) and any(c.strip() for c in row[len(header):]):
            raise StoreError(f"{path}:{lineno}: {len(row)} fields, the header has {len(header)}"
                             f" (quote a comment that contains '{delimiter}')")
        cells = dict(zip(header, (c.strip() for c in row)))
        group, question = cells.get("group", ""), cells.get("question", "")
        if not group:
            raise StoreError(f"{path}:{lineno}: the group is empty")
        if not question:
            raise StoreError(f"{path}:{lineno}: the question is empty")
        raw = cells.get("points", "")
        try:
            points = float(raw.replace(",", ".")) if raw else math.nan
        except ValueError:
            points = math.nan
        if not math.isfinite(points):
            raise StoreError(f"{path}:{lineno}: points {raw!r} is not a number")
        key = group_key_of(group)
        if not key:
            raise StoreError(f"{path}:{lineno}: group {group!r} names nobody")
        if (key, question) in seen:
            raise StoreError(f"{path}:{lineno}: group {group!r}, question {question!r} "
                             f"already given on line {seen[key, question]}")
        seen[key, question] = lineno
        out.append(ManualScore(clean_text(group), clean_text(question), points,
                               clean_text(cells.get("comment", "")), lineno))
    if header is None:
        raise StoreError(f"{path}: empty file (expected the header "
                         f"{','.join(MANUAL_COLUMNS)})")
    return out
