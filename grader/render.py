"""Reports: one PDF of feedback per group, and a class summary for the instructor.

Two layers, as everywhere in the grader:

* **data** (pure): :func:`feedback_data` and :func:`summary_data` turn the scored rows
  (what :func:`grader.grade.rescore` returns) into plain dicts for the templates;
  :func:`feedback_files` decides the file name of every report.  No I/O, no clock.
* **rendering** (the edge): :func:`render_feedback`, :func:`render_summary` and
  :func:`render_all` draw the charts (matplotlib, Agg), fill the Jinja2 templates of
  ``reports/`` and write the PDFs with WeasyPrint.  One Jinja environment, one font
  configuration and one parsed stylesheet serve every report of the process.

What a student sees is limited on purpose: the expected value of a question only where
the question reveals it (``QuestionScore.expected`` is ``None`` otherwise), no other
group's name (flags that name another upload stay in the instructor's summary), no path
of the grader's machine.  Everything a notebook produced (answers, tracebacks, figures)
is untrusted: it is escaped by Jinja, figures must be real PNGs of sane size, and
WeasyPrint may fetch nothing but ``data:`` URIs and the files of ``reports/``.

Example::

    from grader.grade import rescore
    from grader.render import render_all
    rows = rescore("out/")
    paths = render_all(rows, assignment, key, "out/")   # {"feedback": [...], "summary": ...}
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
import os
import re
import statistics
import struct
import tempfile
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

from .measure import measurement_key
from .score import PENDING_FEEDBACK

import reports as _reports

REPORTS_DIR = Path(_reports.__file__).resolve().parent

#: verdict -> (symbol, word): meaning never rests on colour alone.
VERDICT_LABELS: dict[str, tuple[str, str]] = {
    "correct": ("✓", "correct"),
    "partial": ("◐", "partly right"),
    "wrong": ("✗", "wrong"),
    "missing": ("∅", "no answer"),
    "manual": ("✎", "graded by hand"),
    "pending": ("✎", "to be graded by hand"),
    "ungraded": ("?", "not graded"),
    "invalid": ("!", "not a valid answer"),
}
STATUS_TEXT = {
    "ok": "The notebook ran to the end without an error.",
    "errors": "The notebook ran to the end, but some cells raised an error (see below).",
    "timeout": "The notebook was stopped: it ran past the time limit.",
    "dead": "The kernel died (out of memory, or a crash) before the end of the notebook.",
    "invalid": "This submission could not be graded.",
    "pending": "This notebook has not been run yet.",
    "grader-error": "The grader itself failed on this notebook (not the group's fault).",
}
TRACEBACK_LINES = 8
MAX_ERRORS = 10
MAX_TEXT_ANSWER = 2500
MAX_FIGURE_PIXELS = 16_000_000
#: Pixels (as the PNG headers declare) that one report decodes at most: figures beyond are
#: left out, counted as skipped.  Twelve 5000x5000 figures would take seconds and
#: hundreds of MB to render; a page shows far fewer pixels than this.
MAX_REPORT_PIXELS = 24_000_000
#: A kept figure is downscaled to this many pixels on its longer side, 8 bits per channel.
FIGURE_SIDE = 1600
# Flags a student may see: about their own upload only (others name other groups' files).
_STUDENT_FLAGS = ("file name", "group cell", "group of")


# ============================================================================ data (pure)

def _f(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return 0.0
    return v if math.isfinite(v) else 0.0


def fmt_points(x: Any) -> str:
    """``2.0 -> '2'``, ``1.3333 -> '1.33'``."""
    return f"{round(_f(x), 2):g}"


def _date(graded_at: Any) -> str:
    if isinstance(graded_at, datetime):
        if graded_at.tzinfo is None:
            return graded_at.strftime("%Y-%m-%d %H:%M")
        return graded_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return str(graded_at or "")


def public_isolation(text: str | None) -> str:
    """The sandbox description without the grader's own paths (what was hidden where).

    >>> public_isolation("bubblewrap, no network; hidden paths: /srv/key; limits: 900 s per cell")
    'bubblewrap, no network; limits: 900 s per cell'
    """
    text = str(text or "")
    return re.sub(r"; (?:hidden paths|hidden among the rest|NOT hidden): .*?(?=; limits:|$)", "",
                  text).strip()


_CLAIM = re.compile(r"^claims the same member \(([a-z0-9 ,]*)\)")


def student_flags(flags: Iterable[str] | None) -> list[str]:
    """The flags about the group's own upload (file name, group cell), none naming others;
    a contested member is said, without the other notebook's name."""
    out = []
    for f in flags or []:
        f = str(f)
        if f.startswith(_STUDENT_FLAGS):
            out.append(f)
        elif m := _CLAIM.match(f):
            out.append(f"another notebook also claims a member of this group ({m.group(1)}): "
                       f"hand-graded points and this report belong to the notebook uploaded, "
                       f"not to the names in the group cell; the instructor checks both")
    return list(dict.fromkeys(out))


def png_pixels(b64: Any) -> int:
    """Pixels that ``b64`` (base64 of a PNG) declares in its header; 0 when it is not a
    PNG of sane size (untrusted input)."""
    if not isinstance(b64, str) or not b64:
        return 0
    try:
        raw = base64.b64decode(b64[:64], validate=True)   # the header is all we read
    except (binascii.Error, ValueError):
        return 0
    if len(raw) < 24 or raw[:8] != b"\x89PNG\r\n\x1a\n" or raw[12:16] != b"IHDR":
        return 0
    w, h = struct.unpack(">II", raw[16:24])
    return w * h if 0 < w and 0 < h and w * h <= MAX_FIGURE_PIXELS else 0


def png_ok(b64: Any) -> bool:
    """``b64`` is base64 of a PNG whose header declares a sane size (untrusted input)."""
    if not png_pixels(b64):
        return False
    try:
        base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _within_budget(raw_figures: list) -> list[dict]:
    """The figures a report shows: sane PNGs, in order, while their declared pixels add
    up to at most :data:`MAX_REPORT_PIXELS`."""
    kept, used = [], 0
    for f in raw_figures:
        if not isinstance(f, Mapping) or not png_ok(f.get("png")):
            continue
        n = png_pixels(f["png"])
        if used + n > MAX_REPORT_PIXELS:
            continue
        used += n
        kept.append({"cell": f.get("cell"), "png": f["png"]})
    return kept


def metric_band(question, evidence: Mapping, entry: Mapping | None) -> dict | None:
    """What the band chart of a metric question draws: the zero..full band, the
    reference runs and the group's measured value (``None``: not measured)."""
    if not isinstance(entry, Mapping) or "full" not in entry or "zero" not in entry:
        return None
    m = (evidence.get("measurements") or {}).get(
        measurement_key(question.model, question.task, question.fold))
    value = None
    if isinstance(m, Mapping) and "error" not in m:
        v = (m.get("metrics") or {}).get(question.metric)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            value = float(v)
    refs = [float(r) for r in entry.get("reference") or []
            if isinstance(r, (int, float)) and math.isfinite(r)]
    return {"metric": question.metric, "task": question.task, "zero": _f(entry["zero"]),
            "full": _f(entry["full"]), "reference": refs, "value": value}


def _members(sub: Mapping) -> list[str]:
    return list(sub.get("members") or []) or [n.capitalize() for n in sub.get("family_names") or []]


def _verdict_key(s) -> str:
    if s.verdict == "manual" and s.feedback == PENDING_FEEDBACK and not s.comment:
        return "pending"
    return s.verdict if s.verdict in VERDICT_LABELS else "ungraded"


def _tail(tb: Any, n: int = TRACEBACK_LINES) -> str:
    lines = (tb if isinstance(tb, list) else str(tb or "").splitlines())
    lines = [str(x).rstrip() for x in lines if str(x).strip()]
    return "\n".join(lines[-n:])


def _errors(evidence: Mapping) -> list[dict]:
    out = []
    for e in (evidence.get("errors") or [])[:MAX_ERRORS]:
        if not isinstance(e, Mapping):
            continue
        cell = e.get("cell_index")
        out.append({"where": "kernel" if cell is None else f"cell {cell}",
                    "ename": str(e.get("ename") or "Error"), "evalue": str(e.get("evalue") or "")[:500],
                    "traceback": _tail(e.get("traceback"))})
    return out


def _exercises(assignment, result) -> list[dict]:
    order = list(dict.fromkeys(q.exercise for q in assignment.questions))
    order += [e for e in result.exercises if e not in order]
    out = []
    for name in order:
        e = result.exercises.get(name)
        if e:
            out.append({"name": name or "Questions", "points": e["points"], "max": e["max"]})
    return out


def feedback_data(row: Mapping, assignment, key: Mapping, graded_at: Any) -> dict:
    """Everything a group's report shows, from one scored row.  Pure."""
    sub, ev, res = row["submission"], row.get("evidence") or {}, row["result"]
    entries = (key or {}).get("questions") or {}
    spec = {q.id: q for q in assignment.questions}
    status = str(ev.get("status") or "pending")
    problem = sub.get("problem") or (ev.get("message") if status == "invalid" else None)
    if problem:
        status = "invalid"
    message = problem or ev.get("message")
    questions = []
    for s in res.questions:
        q = spec.get(s.id)
        vk = _verdict_key(s)
        answer = s.answer
        if answer is not None and len(answer) > MAX_TEXT_ANSWER:
            answer = answer[:MAX_TEXT_ANSWER - 1] + "…"
        comment = s.comment or None
        questions.append({
            "id": s.id, "kind": s.kind, "exercise": s.exercise or "Questions",
            "prompt": q.prompt if q else s.id, "answer": answer,
            "long_answer": s.kind == "text" or (answer is not None and len(answer) > 80),
            "verdict": vk, "symbol": VERDICT_LABELS[vk][0], "verdict_text": VERDICT_LABELS[vk][1],
            "points": s.points, "max_points": s.max_points,
            "feedback": None if comment and s.feedback == comment else s.feedback,
            "expected": s.expected if (q is not None and q.reveal) else None,
            "comment": comment,
            "band": metric_band(q, ev, entries.get(s.id)) if q is not None and q.kind == "metric"
            else None,
        })
    pending = sum(x["max_points"] for x in questions if x["verdict"] == "pending")
    raw_figures = ev.get("figures") or []
    figures = _within_budget(raw_figures)
    return {
        "course": assignment.course, "lab": assignment.number, "title": assignment.title,
        "members": _members(sub), "file": sub.get("file") or "", "sha256": sub.get("sha256") or "",
        "feedback_name": sub.get("feedback") or "", "date": _date(graded_at),
        "total": res.total, "max": res.max, "pending": pending,
        "exercises": _exercises(assignment, res),
        "isolation": public_isolation(ev.get("isolation")),
        "status": status, "status_text": STATUS_TEXT.get(status, f"Status: {status}."),
        "message": message, "seconds": ev.get("seconds"),
        "flags": student_flags(sub.get("flags")),
        "errors": _errors(ev), "figures": figures,
        "figures_skipped": int(ev.get("figures_skipped") or 0) + len(raw_figures) - len(figures),
        "questions": questions, "verdicts": VERDICT_LABELS,
    }


def _safe_name(base: str) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(base or "")).strip(".-") or "report"
    return base[:150]


def feedback_files(rows: Iterable[Mapping]) -> list[tuple[str, list[Mapping]]]:
    """``(file name, rows)`` per report, in row order.  Pure.

    Uploads of the same notebook under the same base name (every member of a group
    uploads it) share one report.  Two different notebooks that would get the same name
    are told apart by their hashes (``..._lab_01_3fa9c1d2.pdf``), never by overwriting and
    never by who came first: a group cell can claim anyone, so the plain name goes only
    to the one notebook whose own uploader is in its group (:func:`grader.manual.backed`),
    when exactly one is.
    """
    from .manual import backed

    rows = list(rows)
    groups: dict[tuple[str, str], list[Mapping]] = {}
    for r in rows:
        sub = r["submission"]
        base = _safe_name(sub.get("feedback") or f"group{str(sub.get('sha256', ''))[:8]}")
        groups.setdefault((base, str(sub.get("sha256") or sub.get("id"))), []).append(r)
    per_base: dict[str, list[str]] = {}
    for base, sha in groups:
        per_base.setdefault(base.lower(), []).append(sha)
    owners = backed(r["submission"] for r in rows if r["submission"].get("sha256"))
    out, taken = [], set()
    for (base, sha), rs in groups.items():
        shas = per_base[base.lower()]
        mine = [h for h in shas if h in owners]
        name = base if len(shas) == 1 or mine == [sha] else f"{base}_{re.sub('[^0-9a-z]', '', sha)[:8]}"
        stem, n = name, 1
        while name.lower() in taken:   # only a hash prefix shared by two notebooks
            n += 1
            name = f"{stem}_{n}"
        taken.add(name.lower())
        out.append((name + ".pdf", rs))
    return out


def by_group(rows: Iterable[Mapping]) -> list[list[Mapping]]:
    """Rows of the same notebook handed in by the same group, together."""
    seen: dict[tuple[str, str], list[Mapping]] = {}
    for r in rows:
        s = r["submission"]
        seen.setdefault((str(s.get("group_key")), str(s.get("sha256"))), []).append(r)
    return list(seen.values())


def summary_data(rows: Iterable[Mapping], assignment, key: Mapping, generated_at: Any) -> dict:
    """Everything the instructor's summary shows.  Pure.  One entry per group and
    notebook (members who uploaded the same file count once)."""
    rows = list(rows)
    # The names of render_feedback (and index.json): from the rows in their own order,
    # which decides which of two notebooks of one base name gets the "_2".
    by_row = {id(r): name for name, rs in feedback_files(rows) for r in rs}
    groups = by_group(rows)
    table, totals, problems, flagged = [], [], [], []
    qstats = {q.id: {"id": q.id, "prompt": q.prompt, "kind": q.kind, "exercise": q.exercise,
                     "max": q.points, "sum": 0.0, "full": 0, "missing": 0, "n": 0}
              for q in assignment.questions}
    exercises = list(dict.fromkeys(q.exercise for q in assignment.questions))
    for rs in groups:
        r = rs[0]
        sub, ev, res = r["submission"], r.get("evidence") or {}, r["result"]
        status = "invalid" if sub.get("problem") else str(ev.get("status") or "pending")
        members = _members(sub)
        label = ", ".join(members) or f"(unknown: {sub.get('group_key')})"
        totals.append(res.total)
        table.append({"group": label, "files": sorted({x["submission"].get("file") or "" for x in rs}),
                      "report": ", ".join(dict.fromkeys(by_row[id(x)] for x in rs)),
                      "status": status,
                      "exercises": [res.exercises.get(e, {}).get("points", 0.0) for e in exercises],
                      "total": res.total, "max": res.max})
        if status not in ("ok",):
            errs = _errors(ev)
            problems.append({"group": label, "status": status,
                             "message": sub.get("problem") or ev.get("message") or "",
                             "errors": [f"{e['where']}: {e['ename']}: {e['evalue']}"[:300]
                                        for e in errs]})
        flags = list(dict.fromkeys(f for x in rs for f in x["submission"].get("flags") or []))
        if flags:
            flagged.append({"group": label, "files": table[-1]["files"], "flags": flags})
        if status == "invalid":
            continue  # an unreadable file says nothing about a question
        for s in res.questions:
            st = qstats.get(s.id)
            if st is None:
                continue
            st["n"] += 1
            st["sum"] += s.points
            st["full"] += s.points >= s.max_points - 1e-9
            st["missing"] += s.verdict == "missing"
    per_question = []
    for st in qstats.values():
        n = st["n"]
        per_question.append({**st, "mean": st["sum"] / n if n else None,
                             "share_full": st["full"] / n if n else None,
                             "share_missing": st["missing"] / n if n else None})
    table.sort(key=lambda t: t["group"].casefold())
    return {
        "course": assignment.course, "lab": assignment.number, "title": assignment.title,
        "date": _date(generated_at), "max": assignment.max_points, "exercises": exercises,
        "n_groups": len(groups), "n_uploads": sum(len(g) for g in groups),
        "totals": totals,
        "mean": statistics.fmean(totals) if totals else None,
        "median": statistics.median(totals) if totals else None,
        "min": min(totals) if totals else None, "max_total": max(totals) if totals else None,
        "table": table, "questions": per_question, "problems": problems, "flagged": flagged,
        "key_date": (key or {}).get("date"),
    }


# ============================================================================ charts (pure, drawn)

def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def band_chart(band: Mapping) -> str:
    """A strip chart, base64 PNG: no points up to ``zero``, partial up to ``full``, full
    beyond; reference runs as ticks; the group's value as a labelled triangle.  The
    zones differ by hatching and by their words, not by colour alone."""
    from matplotlib.figure import Figure

    zero, full, refs, value = band["zero"], band["full"], band["reference"], band["value"]
    pts = [zero, full, *refs] + ([value] if value is not None else [])
    lo = min(0.0, min(pts)) if min(pts) < 0 else max(0.0, min(pts) - 0.1)
    hi = max(1.0, max(pts)) if max(pts) <= 1.0 else max(pts) * 1.05
    fig = Figure(figsize=(6.4, 1.15))
    ax = fig.add_axes((0.03, 0.36, 0.94, 0.38))
    ax.axvspan(lo, zero, facecolor="white", edgecolor="0.45", hatch="///", lw=0)
    ax.axvspan(zero, full, facecolor="0.88", edgecolor="0.6", hatch="..", lw=0)
    ax.axvspan(full, hi, facecolor="0.72", edgecolor="0.72", lw=0)
    for x0, x1, word in ((lo, zero, "0 points"), (zero, full, "partial"), (full, hi, "full points")):
        if x1 - x0 > (hi - lo) * 0.07:
            ax.text((x0 + x1) / 2, 0.5, word, ha="center", va="center", fontsize=7,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 1, "alpha": 0.85})
    for r in refs:
        ax.plot([r, r], [0.05, 0.95], color="black", lw=1.2)
    if refs:
        ax.text(sum(refs) / len(refs), 1.08, "reference", ha="center", va="bottom", fontsize=7)
    if value is not None:
        ax.plot([value], [-0.12], marker="^", markersize=9, color="black", clip_on=False)
        ax.text(value, -0.55, f"yours: {value:.3f}", ha="center", va="top", fontsize=8,
                fontweight="bold")
    ax.set_xlim(lo, hi)
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.tick_params(axis="x", labelsize=7, length=2, pad=1)
    ax.set_title(f"{band['metric']} on the {band['task']} test set", fontsize=8, loc="left", pad=11)
    return _png(fig)


def histogram_chart(totals: list[float], maximum: float) -> str:
    """Histogram of the groups' totals, base64 PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 2.2))
    ax = fig.add_axes((0.08, 0.2, 0.9, 0.72))
    top = max(maximum, max(totals, default=0.0)) or 1.0
    bins = [top * i / 20 for i in range(21)]
    ax.hist(totals, bins=bins, color="0.55", edgecolor="black", hatch="//")
    ax.set_xlim(0, top)
    ax.set_xlabel("total points", fontsize=8)
    ax.set_ylabel("groups", fontsize=8)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.tick_params(labelsize=7)
    return _png(fig)


# ============================================================================ rendering (the edge)

@lru_cache(maxsize=1)
def _env():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(loader=FileSystemLoader(str(REPORTS_DIR)),
                      autoescape=select_autoescape(["html", "j2"], default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pts"] = fmt_points
    env.filters["pct"] = lambda x: "–" if x is None else f"{100 * x:.0f} %"
    env.filters["num"] = lambda x, n=2: "–" if x is None else f"{x:.{n}f}"
    return env


@lru_cache(maxsize=1)
def _weasy():
    from weasyprint import CSS
    from weasyprint.text.fonts import FontConfiguration

    fonts = FontConfiguration()
    css = CSS(filename=str(REPORTS_DIR / "report.css"), font_config=fonts)
    return fonts, css


def _allowed(url: str) -> bool:
    """Only ``data:`` URIs and the files of ``reports/``: nothing a notebook wrote can
    make the renderer read the disk or the network."""
    if url.startswith("data:"):
        return True
    if url.startswith("file://"):
        from urllib.request import url2pathname

        return Path(url2pathname(url[7:].split("?")[0])).resolve().is_relative_to(REPORTS_DIR)
    return False


@lru_cache(maxsize=1)
def _fetcher():
    from weasyprint import urls

    if hasattr(urls, "URLFetcher"):  # WeasyPrint >= 66: a class
        class Fetcher(urls.URLFetcher):
            def fetch(self, url, headers=None):
                if not _allowed(url):
                    raise ValueError(f"refused to fetch {url[:80]!r}")
                return super().fetch(url, headers)

        return Fetcher(allowed_protocols=("data", "file"))

    def fetch(url, timeout=10, ssl_context=None):  # older WeasyPrint: a function
        if not _allowed(url):
            raise ValueError(f"refused to fetch {url[:80]!r}")
        return urls.default_url_fetcher(url, timeout=timeout, ssl_context=ssl_context)

    return fetch


def _write_pdf(template: str, context: Mapping, path: Path) -> Path:
    from weasyprint import HTML

    html = _env().get_template(template).render(**context)
    fonts, css = _weasy()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".render-", suffix=".pdf", dir=path.parent)
    os.close(fd)
    try:
        HTML(string=html, base_url=str(REPORTS_DIR) + "/", url_fetcher=_fetcher()).write_pdf(
            tmp, stylesheets=[css], font_config=fonts)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _now() -> datetime:
    return datetime.now(timezone.utc)


def shrink_png(b64: str, side: int = FIGURE_SIDE) -> str | None:
    """``b64`` (a PNG) at most ``side`` pixels wide and high, 8 bits per channel, as
    base64; unchanged when it already is; ``None`` when it cannot be decoded."""
    from PIL import Image

    raw = base64.b64decode(b64)
    try:
        with Image.open(io.BytesIO(raw)) as im:
            if max(im.size) <= side and raw[24] <= 8 and im.mode in ("1", "L", "LA", "P",
                                                                     "RGB", "RGBA"):
                return b64
            im.load()
            if im.mode in ("I", "I;16", "I;16B", "I;16L"):   # 16-bit grey: keep the top byte
                im = im.convert("I").point(lambda v: v * (1 / 256)).convert("L")
            elif im.mode not in ("L", "RGB", "RGBA"):
                im = im.convert("RGBA")
            im.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        return None
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render_feedback_pdf(data: Mapping, path: str | Path) -> Path:
    """Write one report from :func:`feedback_data`'s dict (charts drawn here, figures
    downscaled here: see :func:`shrink_png`)."""
    questions = [{**q, "chart": band_chart(q["band"]) if q.get("band") else None}
                 for q in data["questions"]]
    figures = [dict(f, png=png) for f in data.get("figures") or []
               if (png := shrink_png(f["png"])) is not None]
    skipped = int(data.get("figures_skipped") or 0) + len(data.get("figures") or []) - len(figures)
    return _write_pdf("feedback.html.j2", {**data, "questions": questions, "figures": figures,
                                           "figures_skipped": skipped}, Path(path))


#: A helper process costs about as much to start (Python, WeasyPrint) as rendering a few
#: reports: one is started for every this many reports to render, up to ``workers - 1``.
REPORTS_PER_HELPER = 4
DIGESTS = ".digests.json"


@lru_cache(maxsize=1)
def _templates_digest() -> str:
    h = hashlib.sha256()
    for f in sorted(REPORTS_DIR.iterdir()):
        if f.suffix in (".j2", ".css"):
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def report_digest(data: Mapping) -> str:
    """What a feedback PDF shows, as a hash: its data (the date aside) and the templates.
    Pure but for reading the templates once."""
    blob = json.dumps({k: v for k, v in data.items() if k != "date"}, sort_keys=True, default=str)
    return hashlib.sha256((_templates_digest() + blob).encode()).hexdigest()


def _summary_pdf(data: dict, path: Path) -> Path:
    """Write the summary from :func:`summary_data`'s dict (the histogram drawn here)."""
    data = {**data, "histogram": histogram_chart(data["totals"], data["max"])
            if data["totals"] else None}
    return _write_pdf("summary.html.j2", data, path)


def _render_calls(calls: list[tuple[Any, tuple, bool]], workers: int = 1, progress=None) -> None:
    """Run render calls ``(function, args, tick)``: here, and with ``workers`` > 1 also in
    up to ``workers - 1`` helper processes, each taking the next call when it is free.
    ``progress()`` is called after each call whose ``tick`` is true.

    This process takes calls from the front, the helpers from the back, so the first call
    (the summary, say) starts at once while the helpers boot.  WeasyPrint's layout is pure
    Python: processes, not threads.  Spawned, not forked: the grader's kernels and threads
    (ZeroMQ's too) must not be copied into them.
    """
    helpers = min(workers - 1, len(calls) // REPORTS_PER_HELPER, 7)
    if helpers < 1:
        for fn, args, tick in calls:
            fn(*args)
            if tick and progress:
                progress()
        return
    import multiprocessing as mp
    from collections import deque
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    todo = deque(calls)
    running: dict = {}
    with ProcessPoolExecutor(max_workers=helpers, mp_context=mp.get_context("spawn")) as pool:
        try:
            while todo or running:
                for fut in [f for f in running if f.done()]:
                    fut.result()  # a helper's error is this call's error
                    if running.pop(fut) and progress:
                        progress()
                while todo and len(running) < helpers:
                    fn, args, tick = todo.pop()
                    running[pool.submit(fn, *args)] = tick
                if todo:
                    fn, args, tick = todo.popleft()
                    fn(*args)
                    if tick and progress:
                        progress()
                elif running:
                    wait(running, return_when=FIRST_COMPLETED)
        except BaseException:
            for fut in running:
                fut.cancel()
            raise


def _plan_feedback(rows: list[Mapping], assignment, key: Mapping, folder: Path, graded_at,
                   progress=None) -> tuple[list[Path], list[tuple[dict, Path]], dict, dict]:
    """Which feedback PDFs to (re)write: ``(paths, todo, index, digests)``; ``progress()``
    for each report kept as it is."""
    try:
        old = json.loads((folder / DIGESTS).read_text())
    except (OSError, ValueError):
        old = {}
    paths, index, digests, todo = [], {}, {}, []
    for name, rs in feedback_files(rows):
        data = feedback_data(rs[0], assignment, key, graded_at)
        digests[name] = report_digest(data)
        path = folder / name
        if old.get(name) == digests[name] and path.exists():
            if progress:
                progress()
        else:
            todo.append((data, path))
        paths.append(path)
        for r in rs:
            index[str(r["submission"].get("id"))] = name
    return paths, todo, index, digests


def _write_index(folder: Path, index: dict, digests: dict) -> None:
    (folder / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    (folder / DIGESTS).write_text(json.dumps(digests, indent=0, sort_keys=True) + "\n")


def render_feedback(rows: list[Mapping], assignment, key: Mapping, out: str | Path, *,
                    graded_at: Any = None, progress=None, workers: int = 1) -> list[Path]:
    """One PDF per group in ``OUT/feedback/`` (see :func:`feedback_files` for the names).
    Also writes ``OUT/feedback/index.json``: submission id -> file name.

    A PDF whose content would not change (same :func:`report_digest`) is kept as it is,
    date included: after a change to one group's manual score, one PDF is rendered.
    ``progress()`` is called once per group.  ``workers``: processes that may render at
    once (this one included); helpers start only when there are enough reports.
    """
    folder = Path(out) / "feedback"
    folder.mkdir(parents=True, exist_ok=True)
    paths, todo, index, digests = _plan_feedback(rows, assignment, key, folder,
                                                 graded_at or _now(), progress)
    _render_calls([(render_feedback_pdf, job, True) for job in todo], workers, progress)
    _write_index(folder, index, digests)
    return paths


def render_summary(rows: list[Mapping], assignment, key: Mapping, out: str | Path, *,
                   generated_at: Any = None) -> Path:
    """``OUT/summary.pdf``: distribution, per-question statistics, problems, flags, grades."""
    return _summary_pdf(summary_data(rows, assignment, key, generated_at or _now()),
                        Path(out) / "summary.pdf")


def render_all(rows: list[Mapping], assignment, key: Mapping, out: str | Path,
               progress=None, workers: int = 1, similarity: Mapping | None = None) -> dict:
    """Every report: ``{"feedback": [paths], "summary": path}``, rendered by up to
    ``workers`` processes (see :func:`render_feedback`).  ``similarity``: the report of
    :func:`grader.similarity.similarity`, shown in the summary."""
    now = _now()
    folder = Path(out) / "feedback"
    folder.mkdir(parents=True, exist_ok=True)
    paths, todo, index, digests = _plan_feedback(rows, assignment, key, folder, now, progress)
    summary = Path(out) / "summary.pdf"
    data = {**summary_data(rows, assignment, key, now), "similarity": similarity}
    _render_calls([(_summary_pdf, (data, summary), False)]
                  + [(render_feedback_pdf, job, True) for job in todo], workers, progress)
    _write_index(folder, index, digests)
    return {"feedback": paths, "summary": summary}
