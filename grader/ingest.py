"""Ingest: a folder of submitted notebooks -> who is in which group, one entry per notebook.

Each ``*.ipynb`` under the folder (recursively; ``.ipynb_checkpoints``, ``__MACOSX`` and
macOS ``._*`` resource forks are skipped) becomes a :class:`Submission`:

* ``sha256`` of the raw bytes: the identity of the notebook. Identical uploads (every member
  of a group uploading the same file to Moodle) share one execution, see :meth:`Batch.unique`.
* the group's members twice: from the file name (``name1_name2_name3_lab_NN.ipynb``, family
  names) and from the group cell (``GROUP = ["Full Name", ...]``, read with :mod:`ast`, never
  executed). Disagreements are *flags*, not errors: the notebook is still graded.
* ``problem``: why the file cannot be graded at all (not JSON, truncated, empty, a PDF renamed
  ``.ipynb``, nbformat 3, too large). Such a submission is graded 0 with that message; it never
  makes :func:`ingest` fail.

Moodle's "Download all submissions" is understood, as the zip itself (extracted safely: no
path outside the target folder, no links, size and count caps, only notebooks) or extracted:
the folder ``Full Name_<id>_assignsubmission_file/`` (``..._file_/`` before Moodle 4.1; team
submissions ``Group name_<groupid>_...`` or ``Group name-Full Name_<id>_...``; blind marking
``Participant_<id>_...``) or the flat prefix ``Full Name_<id>_assignsubmission_file_`` gives
``moodle_name`` and ``moodle_id`` (see :func:`grader.moodle.parse_entry`) and is not part of
the file name that the naming convention applies to. Two different notebooks that claim the
same member are flagged.

>>> feedback_name(["Müller-Lüdenscheidt", "O'Brien"], 1)
'mullerludenscheidt_obrien_lab_01'
>>> family_name("Zoë Müller-Lüdenscheidt"), fold("Zoë Müller-Lüdenscheidt")
('Müller-Lüdenscheidt', 'zoemullerludenscheidt')
"""
from __future__ import annotations

import ast
import atexit
import hashlib
import json
import re
import shutil
import stat
import tempfile
import unicodedata
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .untrusted import clean_text

#: A file larger than this is not read (a notebook with outputs is a few MiB at most).
MAX_BYTES = 100 * 2**20
#: A zip (Moodle's "Download all submissions") may unpack to at most this much, in that many
#: notebooks; what comes beyond is refused, not extracted (see :func:`extract_zip`).
MAX_ZIP_BYTES = 4 * 2**30
MAX_ZIP_FILES = 20000
#: Groups of up to three students (the course's rule).
MAX_MEMBERS = 3

#: ``name1_name2_name3_lab_NN.ipynb``: family names folded to [a-z0-9], lab on two digits.
CONVENTION = re.compile(r"^(?P<names>[a-z0-9]+(?:_[a-z0-9]+)*)_lab_(?P<lab>\d{2})\.ipynb$")
#: What a sloppy but recognisable name looks like: ``Lovelace-Turing Lab1 (2).ipynb``.
_LENIENT = re.compile(r"^(?P<names>.+?)[\s_\-.]+lab[\s_\-.]*(?P<lab>\d{1,3})(?!\d).*\.ipynb$",
                      re.IGNORECASE)
_SKIP_DIRS = {".ipynb_checkpoints", "__MACOSX"}
#: Letters that Unicode does not decompose into ASCII + accent.
_SPECIAL = str.maketrans({"ß": "ss", "ø": "o", "Ø": "O", "æ": "ae", "Æ": "AE", "œ": "oe",
                          "Œ": "OE", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "ð": "d",
                          "þ": "th", "ı": "i"})


def fold(text: str) -> str:
    """Lower-case ASCII letters and digits only: accents folded, spaces, hyphens,
    apostrophes (and any other sign) removed.

    >>> fold("Müller-Lüdenscheidt"), fold("D’Alembert"), fold("Ødegaard")
    ('mullerludenscheidt', 'dalembert', 'odegaard')
    """
    text = unicodedata.normalize("NFKD", text.translate(_SPECIAL))
    text = "".join(c for c in text if not unicodedata.combining(c))
    return re.sub(r"[^a-z0-9]", "", text.encode("ascii", "ignore").decode().lower())


def family_name(full_name: str) -> str:
    """The family name as written: the last word of the full name.

    >>> family_name("  Ada   Lovelace "), family_name("Zoë Müller-Lüdenscheidt")
    ('Lovelace', 'Müller-Lüdenscheidt')
    """
    words = full_name.split()
    return words[-1] if words else ""


def feedback_name(family_names, lab_number: int) -> str:
    """``name1_name2_lab_NN``: the course's naming convention, in the group's order.

    >>> feedback_name(["Lovelace", "Turing"], 1)
    'lovelace_turing_lab_01'
    """
    names = [f for f in (fold(n) for n in family_names) if f]
    return "_".join(names + ["lab", f"{int(lab_number):02d}"])


def group_key_of(text: str) -> str:
    """Normalise how a person names a group (``"Turing_Lovelace_lab_01.pdf"``,
    ``"lovelace turing"``, ``"Lovelace+Turing"``) to the :attr:`Submission.group_key` form:
    folded family names, sorted, joined by ``_``. A hash prefix (no members known) is kept.

    >>> group_key_of("Turing_Lovelace_lab_01.pdf"), group_key_of("lovelace turing")
    ('lovelace_turing', 'lovelace_turing')
    """
    text = text.strip()
    if re.fullmatch(r"#?[0-9a-f]{12,64}", text):
        return "#" + text.lstrip("#")[:12]
    text = re.sub(r"\.(pdf|ipynb)$", "", text, flags=re.IGNORECASE)
    text = re.sub(r"[\s_\-]*lab[\s_\-]*\d+$", "", text, flags=re.IGNORECASE)
    parts = [fold(p) for p in re.split(r"[\s_,;+/&]+", text)]
    return "_".join(sorted(p for p in parts if p))


@dataclass
class Submission:
    """One submitted notebook file."""

    path: Path                      # absolute path of the file
    name: str                       # path relative to the ingested folder (POSIX)
    sha256: str                     # of the raw bytes
    file_names: tuple[str, ...] = ()   # folded family names from the file name, in its order
    file_lab: int | None = None        # lab number from the file name
    members: tuple[str, ...] = ()      # full names from the group cell, as written
    flags: list[str] = field(default_factory=list)
    problem: str | None = None      # set: cannot be graded at all (graded 0 with this message)
    moodle_name: str | None = None  # "Full Name" (or group name) of the Moodle folder
    moodle_id: str | None = None    # Moodle participant/group id of the folder

    @property
    def family_names(self) -> tuple[str, ...]:
        """Folded family names of the group, in the group's order: from the group cell,
        else from the file name."""
        if self.members:
            return tuple(f for f in (fold(family_name(m)) for m in self.members) if f)
        return self.file_names

    @property
    def group_key(self) -> str:
        """Stable identity of the group: its sorted folded family names joined by ``_``
        (``"lovelace_turing"``), or ``"#"`` + 12 hex digits of the hash when no member is known."""
        names = self.family_names
        return "_".join(sorted(names)) if names else "#" + self.sha256[:12]

    def feedback_name(self, lab_number: int) -> str:
        """Base name of this group's feedback file (add ``.pdf``)."""
        if self.family_names:
            return feedback_name(self.family_names, lab_number)
        return f"group{self.sha256[:8]}_lab_{int(lab_number):02d}"

    def as_dict(self) -> dict:
        return {"file": self.name, "path": str(self.path), "sha256": self.sha256,
                "members": list(self.members), "file_names": list(self.file_names),
                "file_lab": self.file_lab, "family_names": list(self.family_names),
                "group_key": self.group_key, "flags": list(self.flags), "problem": self.problem,
                "moodle_name": self.moodle_name, "moodle_id": self.moodle_id}


@dataclass
class Batch:
    """Every notebook of one ingest, sorted by relative name."""

    root: Path
    lab_number: int
    submissions: list[Submission]
    ignored: list[str] = field(default_factory=list)   # other files seen (PDF reports, ...)
    source: Path | None = None      # the zip that ``root`` was extracted from

    def __iter__(self):
        return iter(self.submissions)

    def __len__(self) -> int:
        return len(self.submissions)

    def by_hash(self) -> dict[str, list[Submission]]:
        """sha256 -> the submissions with those bytes (in name order)."""
        out: dict[str, list[Submission]] = defaultdict(list)
        for s in self.submissions:
            out[s.sha256].append(s)
        return dict(out)

    def unique(self) -> list[Submission]:
        """One submission per distinct content hash: what to execute. The representative is
        the one with the fewest flags (an upload named by the convention), then by name."""
        return [min(subs, key=lambda s: (len(s.flags), s.name))
                for subs in self.by_hash().values()]

    def problems(self) -> list[Submission]:
        return [s for s in self.submissions if s.problem]


# ----------------------------------------------------------------------------- reading

def _parse_file_name(file_name: str, lab_number: int, sub: Submission) -> None:
    m = CONVENTION.match(file_name)
    if m:
        sub.file_names = tuple(m.group("names").split("_"))
        sub.file_lab = int(m.group("lab"))
    else:
        lenient = _LENIENT.match(file_name)
        if lenient:
            sub.file_names = tuple(p for p in (fold(x) for x in re.split(
                r"[\s_\-.,+&]+", lenient.group("names"))) if p)
            sub.file_lab = int(lenient.group("lab"))
        names = sub.file_names or ()
        expected = feedback_name(names, lab_number) if names else f"name1_name2_lab_{lab_number:02d}"
        sub.flags.append(f"file name off the convention: {file_name!r}, expected a name like "
                         f"'{expected}.ipynb' (family names, lab number on two digits)")
    if sub.file_lab is not None and sub.file_lab != lab_number:
        sub.flags.append(f"file name says lab {sub.file_lab:02d}, this is lab {lab_number:02d}")


def _read_bytes(path: Path, name: str) -> tuple[bytes | None, str | None]:
    """(the file's bytes, None) or (None, why it is not read, naming the file)."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            return None, (f"{name}: file of {size / 2**20:.0f} MiB, larger than the "
                          f"{MAX_BYTES // 2**20} MiB a notebook may have (clear the outputs?)")
        return path.read_bytes(), None
    except OSError as exc:
        return None, f"{name}: cannot be read ({exc.strerror or exc})"


def _read_notebook(raw: bytes, name: str) -> tuple[dict | None, str | None]:
    """(notebook JSON, None) or (None, what is wrong, naming the file)."""
    if not raw.strip():
        return None, f"{name}: empty file ({len(raw)} bytes), not a notebook"
    if raw.startswith(b"%PDF"):
        return None, f"{name}: a PDF document renamed .ipynb, not a notebook"
    if raw.startswith(b"PK\x03\x04"):
        return None, f"{name}: a zip archive (or Office document) renamed .ipynb, not a notebook"
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return None, f"{name}: binary data, not a notebook (not UTF-8 text at byte {exc.start})"
    try:
        nb = json.loads(text)
    except json.JSONDecodeError as exc:
        end = exc.pos >= len(text.rstrip())
        why = "truncated (the JSON stops early)" if end else "damaged JSON"
        return None, (f"{name}: not a readable notebook, {why}: {exc.msg} at line {exc.lineno} "
                      f"column {exc.colno}")
    if not isinstance(nb, dict) or "nbformat" not in nb:
        return None, f"{name}: JSON, but not a Jupyter notebook (no 'nbformat' field)"
    version = nb.get("nbformat")
    if not isinstance(version, int) or version < 4:
        return None, (f"{name}: notebook format {version} (Jupyter before 2015); "
                      f"only format 4 is graded: open and save it in a current Jupyter")
    if version > 4:
        return None, f"{name}: notebook format {version} is unknown (format 4 expected)"
    cells = nb.get("cells")
    if not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
        return None, f"{name}: not a valid notebook (no list of cells)"
    return nb, None


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def _assigns_group(tree: ast.Module) -> ast.expr | None:
    """The value of the last ``GROUP = ...`` at the top level of a cell."""
    value = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "GROUP" for t in node.targets):
            value = node.value
        elif (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
              and node.target.id == "GROUP" and node.value is not None):
            value = node.value
    return value


def _parse(source: str) -> ast.Module | None:
    # Python cannot compile a lone surrogate (nor can a kernel run it): read as U+FFFD.
    source = clean_text(source)
    # IPython magics and shell escapes are not Python: blank them out.
    lines = ["" if ln.lstrip().startswith(("%", "!")) else ln for ln in source.splitlines()]
    try:
        return ast.parse("\n".join(lines))
    except (SyntaxError, ValueError):
        return None


def _group_cell(nb: dict) -> tuple[str | None, ast.Module | None]:
    """(source, parsed tree) of the group cell: the one tagged grader.group, else the first
    code cell that assigns GROUP."""
    code = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    for cell in code:
        meta = cell.get("metadata")
        grader_meta = meta.get("grader") if isinstance(meta, dict) else None
        if isinstance(grader_meta, dict) and grader_meta.get("group"):
            return _source(cell), _parse(_source(cell))
    for cell in code:
        src = _source(cell)
        if "GROUP" in src:
            tree = _parse(src)
            if tree is not None and _assigns_group(tree) is not None:
                return src, tree
    return None, None


def _read_members(nb: dict, sub: Submission) -> None:
    source, tree = _group_cell(nb)
    if source is None:
        sub.flags.append("group cell missing: no code cell assigns GROUP = [\"Full Name\", ...]")
        return
    if tree is None:
        sub.flags.append("group cell is not valid Python: the members could not be read")
        return
    node = _assigns_group(tree)
    if node is None:
        sub.flags.append("group cell missing: the group cell does not assign GROUP")
        return
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        sub.flags.append("group cell: GROUP is not a literal list of names")
        return
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        sub.flags.append("group cell: GROUP must be a list of full names (strings)")
        return
    # Lone surrogates ("\ud800") replaced: no store, file or terminal takes them.
    members = tuple(clean_text(" ".join(v.split())) for v in value if v.strip())
    if not members:
        sub.flags.append("group cell lists no members")
        return
    sub.members = members
    if len(members) > MAX_MEMBERS:
        sub.flags.append(f"group of {len(members)} members (at most {MAX_MEMBERS})")
    if len(set(sub.family_names)) < len(sub.family_names):
        sub.flags.append("group cell names the same family name twice")


def _check_agreement(sub: Submission) -> None:
    if not sub.members or not sub.file_names:
        return
    cell = sorted(sub.family_names)
    if sorted(sub.file_names) != cell:
        sub.flags.append(
            f"file name and group cell disagree: the file name says {', '.join(sub.file_names)}; "
            f"the group cell says {', '.join(sub.members)}")


def _moodle(rel: Path) -> tuple[str | None, str | None, str]:
    """(Moodle name, id, file name without Moodle's prefix)."""
    from .moodle import parse_entry

    name, ident, _plugin, file = parse_entry(rel.as_posix())
    if name is None:
        return None, None, rel.name
    return name, ident, Path(file).name


def _hash(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(2**20), b""):
                h.update(chunk)
    except OSError:
        h.update(b"unreadable:" + str(path).encode())
    return h.hexdigest()


def read_submission(path: Path, name: str, lab_number: int) -> Submission:
    """One file -> a :class:`Submission` (never raises for a bad file: what cannot be read
    is the submission's ``problem``, naming the file)."""
    try:
        return _read_submission(path, name, lab_number)
    except Exception as exc:  # a reader's bug on one odd file must not stop the class
        sub = Submission(path=path, name=name, sha256=_hash(path))
        sub.problem = clean_text(f"{name}: could not be read ({type(exc).__name__}: {exc})")
        return sub


def _read_submission(path: Path, name: str, lab_number: int) -> Submission:
    raw, problem = _read_bytes(path, name)
    # Bytes read once and hashed; a file too large or unreadable is hashed by streaming.
    sha256 = hashlib.sha256(raw).hexdigest() if raw is not None else _hash(path)
    sub = Submission(path=path, name=name, sha256=sha256)
    sub.moodle_name, sub.moodle_id, file_name = _moodle(Path(name))
    _parse_file_name(file_name, lab_number, sub)
    nb, problem = (None, problem) if problem else _read_notebook(raw, name)
    if problem:
        sub.problem = problem
        return sub
    _read_members(nb, sub)
    _check_agreement(sub)
    return sub


def _skipped(rel: Path) -> bool:
    return any(p in _SKIP_DIRS or p.startswith("._") for p in rel.parts)


class ZipError(ValueError):
    """A zip that cannot be ingested (damaged, or over the caps)."""


def _zip_name(info: zipfile.ZipInfo) -> str:
    """The member's name as its author wrote it: UTF-8 even without the zip's UTF-8 flag."""
    name = info.filename
    if not info.flag_bits & 0x800:
        try:
            name = name.encode("cp437").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    return name.replace("\\", "/")


#: A notebook member that unpacks to more than this many times its packed size, and to
#: more than :data:`BOMB_MIN_BYTES`, is a zip bomb (notebooks pack 2-20 times, figures less).
MAX_ZIP_RATIO = 200
BOMB_MIN_BYTES = 8 * 2**20


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB" if n >= 2**20 \
        else f"{n} bytes"


def _refusal(info: zipfile.ZipInfo, total: int, count: int) -> str | None:
    """Why a notebook member is not extracted, judged from what the zip declares."""
    size, packed = info.file_size, max(info.compress_size, 1)
    if count >= MAX_ZIP_FILES:
        return (f"refused: more than the {MAX_ZIP_FILES} notebooks a class download may hold "
                f"are in the zip")
    if size > MAX_BYTES:
        return (f"refused: unpacks to {_size(size)}, larger than the {MAX_BYTES // 2**20} MiB "
                f"a notebook may have")
    if size > BOMB_MIN_BYTES and size / packed > MAX_ZIP_RATIO:
        return (f"refused: unpacks to {_size(size)} from {_size(packed)} ({size // packed}:1, "
                f"a zip bomb?)")
    if total + size > MAX_ZIP_BYTES:
        return (f"refused: the zip would unpack to more than the "
                f"{MAX_ZIP_BYTES / 2**30:g} GiB a class download may take")
    return None


def extract_zip(zip_path: str | Path, dest: str | Path
                ) -> tuple[list[str], list[str], dict[str, str]]:
    """Unpack the notebooks of ``zip_path`` under ``dest``; returns (extracted, other files,
    refused notebooks -> why), as POSIX paths relative to ``dest``.

    Safe with a hostile zip: absolute paths, ``..``, drive letters and links are refused,
    as are notebooks beyond :data:`MAX_ZIP_FILES`, over :data:`MAX_BYTES`, packed more
    than :data:`MAX_ZIP_RATIO` to 1, or past :data:`MAX_ZIP_BYTES` in all: judged by the
    sizes the zip declares, and again by the bytes actually written (a member that
    unpacks to more than it declared is removed and refused).  So the disk holds at most
    :data:`MAX_ZIP_BYTES` at any time, and the rest of the class is extracted.
    Files other than notebooks are listed, not written.
    """
    zip_path, dest = Path(zip_path), Path(dest).resolve()
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ZipError(f"{zip_path}: not a readable zip ({exc})") from None
    extracted, others, refused, total = [], [], {}, 0
    with zf:
        for info in zf.infolist():
            name = _zip_name(info)
            parts = [p for p in name.split("/") if p not in ("", ".")]
            if info.is_dir() or not parts:
                continue
            rel = "/".join(parts)
            mode = info.external_attr >> 16
            unsafe = (name.startswith("/") or ".." in parts or re.match(r"^[A-Za-z]:", parts[0])
                      or stat.S_ISLNK(mode))
            if unsafe:
                others.append(f"{rel} (refused: unsafe path or link)")
                continue
            if Path(parts[-1]).suffix.lower() != ".ipynb" or _skipped(Path(rel)):
                if not _skipped(Path(rel)):
                    others.append(rel)
                continue
            target = dest.joinpath(*parts)
            if not target.resolve().is_relative_to(dest):
                others.append(f"{rel} (refused: outside the folder)")
                continue
            why = _refusal(info, total, len(extracted))
            if why:
                refused[rel] = f"{rel}: {why}"
                continue
            written, over = 0, False
            try:
                # A file and a folder of one name (x.ipynb beside x.ipynb/y.ipynb) is a
                # path that cannot be made: that member is refused, never the whole zip.
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.is_dir():
                    raise IsADirectoryError(f"{rel} is also a folder in the zip")
            except OSError as exc:
                refused[rel] = f"{rel}: refused: cannot be written ({exc.strerror or exc})"
                continue
            try:
                with zf.open(info) as src, open(target, "wb") as out:
                    while True:
                        chunk = src.read(2**20)
                        if not chunk:
                            break
                        written += len(chunk)
                        if written > info.file_size:   # more than declared: stop at once
                            over = True
                            break
                        out.write(chunk)
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError,
                    ValueError) as exc:
                target.write_bytes(b"")   # read as an empty file: a problem naming the file
                others.append(f"{rel} (damaged in the zip: {exc})")
                written = 0
            if over:
                target.unlink()
                refused[rel] = (f"{rel}: refused: unpacks to more than the {_size(info.file_size)} "
                                f"the zip declares")
                continue
            total += written
            extracted.append(rel)
    return extracted, others, refused


def _refused_submission(root: Path, rel: str, why: str, lab_number: int) -> Submission:
    """A notebook of the zip that was not extracted: graded 0 with ``why``."""
    sub = Submission(path=root.joinpath(*rel.split("/")), name=rel,
                     sha256=hashlib.sha256(b"refused:" + rel.encode("utf-8", "replace"))
                     .hexdigest())
    sub.moodle_name, sub.moodle_id, file_name = _moodle(Path(rel))
    _parse_file_name(file_name, lab_number, sub)
    sub.problem = why
    return sub


def ingest(path: str | Path, lab_number: int, *, extract_to: str | Path | None = None) -> Batch:
    """Read every notebook under ``path``: a folder, one ``.ipynb`` file, or a ``.zip``
    (Moodle's "Download all submissions", extracted into ``extract_to``, emptied first, or a
    temporary folder removed when the process ends)."""
    root = Path(path).resolve()
    if not root.exists():
        raise FileNotFoundError(f"{path}: no such folder")
    if root.is_file() and (root.suffix.lower() == ".zip" or zipfile.is_zipfile(root)):
        if extract_to is None:
            dest = Path(tempfile.mkdtemp(prefix="grader-moodle-"))
            atexit.register(shutil.rmtree, dest, ignore_errors=True)
        else:
            # The grader's own folder: cleared, so that a notebook missing from this download
            # is not graded from an earlier one.
            dest = Path(extract_to).resolve()
            if root.is_relative_to(dest):
                raise ZipError(f"{root}: lies inside {dest}, the folder it is extracted into")
            if dest.exists():
                shutil.rmtree(dest)
            dest.mkdir(parents=True)
        _, others, refused = extract_zip(root, dest)
        batch = ingest(dest, lab_number)
        batch.submissions = sorted(
            batch.submissions + [_refused_submission(dest, rel, f"{root.name}: {why}", lab_number)
                                 for rel, why in refused.items()], key=lambda s: s.name)
        batch.ignored = sorted(set(batch.ignored) | set(others))
        batch.source = root
        return batch
    if root.is_file():
        files, ignored, base = [root], [], root.parent
    else:
        base = root
        files, ignored = [], []
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root)
            if not p.is_file() or _skipped(rel):
                continue
            (files if p.suffix.lower() == ".ipynb" else ignored).append(p)
        ignored = [p.relative_to(root).as_posix() for p in ignored]
    subs = [read_submission(p, p.relative_to(base).as_posix(), lab_number) for p in files]
    batch = Batch(root=root, lab_number=lab_number, submissions=subs, ignored=ignored)
    _flag_identical(batch)
    from .moodle import flag_claims

    flag_claims(batch)
    return batch


def _identity(sub: Submission) -> tuple[str, ...]:
    # Identical bytes mean identical group cells: groups differ by their file names.
    return tuple(sorted(sub.file_names)) or tuple(sorted(sub.family_names))


def _flag_identical(batch: Batch) -> None:
    for subs in batch.by_hash().values():
        if len(subs) < 2:
            continue
        for sub in subs:
            others = [o.name for o in subs if o is not sub and _identity(o) != _identity(sub)]
            if others:
                sub.flags.append("identical to " + ", ".join(others)
                                 + " (handed in by a different group)")
