"""``grader grade``: the batch, from a folder of notebooks to grades.

The imperative shell around the pure core: ingest -> execute (parallel, sandboxed)
-> evidence and the grader's own measurements -> SQLite -> score -> grades.csv.
Evidence is committed per notebook as soon as it is complete, so a killed batch
resumes where it stopped; scores are always recomputed from evidence (that is
all ``grader rescore`` does).

Example::

    from grader.grade import grade
    grade("submissions/", "assignments/lab01", "out/", jobs=2)
"""
from __future__ import annotations

import csv
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

import nbformat

from reference.paths import cache_dir, data_dir as resolve_data_dir

from .assignment import Assignment, load_assignment
from .evidence import collect, epilogue_code
from .execute import execute_notebook
from .ingest import ingest
from .measure import measure_models
from .sandbox import Limits, resolve
from .score import score
from .store import Store, read_manual_csv


def _limits(assignment: Assignment, timeout: float | None, memory: int | None) -> Limits:
    lim = assignment.limits
    return Limits(cell_timeout=min(lim.cell_timeout, timeout) if timeout else lim.cell_timeout,
                  notebook_timeout=timeout or lim.notebook_timeout,
                  memory=memory or lim.memory, max_processes=lim.max_processes,
                  max_file_size=lim.max_file_size, output_cap=lim.output_cap)


def warm_data_cache(data_dir: Path) -> Path:
    """Parse the PhysioNet files once, here, so that no kernel pays for it.

    Kernels get the cache read-only: a group cannot poison another's data.
    """
    from reference.data import load_af, load_gait

    load_af(data_dir=data_dir)
    load_gait("binary", data_dir=data_dir)
    return cache_dir()


def run_one(nb_path: Path, *, assignment: Assignment, limits: Limits, isolation, data_dir: Path,
            work_root: Path, hidden: list[Path], executed_dir: Path, threads: int,
            env: dict[str, str]) -> dict:
    """Execute one notebook, collect its evidence and measure its models. Never raises."""
    work = Path(tempfile.mkdtemp(prefix="sub-", dir=work_root))
    os.chmod(work, 0o755)
    try:
        result = execute_notebook(nb_path, workdir=work, limits=limits, isolation=isolation,
                                  data_dir=data_dir, hidden=hidden, env=env,
                                  epilogue=epilogue_code(assignment), threads=threads,
                                  readonly=[cache_dir()])
        evidence = collect(result, work, assignment)
        if result.status in ("ok", "errors") and assignment.measurements:
            evidence["measurements"] = measure_models(work, assignment, data_dir)
        else:
            evidence.setdefault("measurements", {})
        executed_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(result.notebook, executed_dir / nb_path.name)
        return evidence
    except Exception as exc:  # a grader bug must not cost the rest of the batch
        return {"status": "grader-error", "message": f"{type(exc).__name__}: {exc}",
                "answers": {}, "texts": {}, "errors": [], "measurements": {}}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def rescore(out: str | Path, lab: str | Path | None = None, manual_csv: str | Path | None = None) -> list[dict]:
    """Recompute every score from stored evidence; write grades.csv. Executes nothing."""
    out = Path(out)
    with Store(out / "grader.db") as store:
        lab = lab or store.meta().get("lab")
        if not lab:
            raise ValueError(f"{out / 'grader.db'}: no lab recorded; pass --lab")
        assignment = load_assignment(lab)
        key = assignment.load_key()
        if manual_csv:
            store.set_manual(read_manual_csv(manual_csv))
        manual: dict[str, dict[str, tuple[float, str]]] = {}
        for m in store.manual():
            manual.setdefault(m.group_key, {})[m.question] = (m.points, m.comment)
        rows, by_submission = [], {}
        for sub in store.submissions():
            evidence = store.evidence(sub["sha256"]) or {
                "status": "pending", "answers": {}, "texts": {}, "errors": [], "measurements": {}}
            if sub.get("problem"):
                evidence = {"status": "invalid", "message": sub["problem"], "answers": {},
                            "texts": {}, "errors": [], "measurements": {}}
            result = score(assignment, evidence, key, manual.get(sub["group_key"], {}))
            by_submission[sub["id"]] = [asdict(s) for s in result.questions]
            rows.append({"submission": sub, "evidence": evidence, "result": result})
        store.replace_scores(by_submission)
    write_grades_csv(out / "grades.csv", assignment, rows)
    from .render import render_all

    render_all(rows, assignment, key, out)
    return rows


def write_grades_csv(path: Path, assignment: Assignment, rows: list[dict]) -> None:
    qids = [q.id for q in assignment.questions]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["group", "members", "file", "status", "total", "maximum", *qids, "flags"])
        for r in rows:
            sub, res = r["submission"], r["result"]
            points = {q.id: q.points for q in res.questions}
            status = r["evidence"].get("status", "")
            if r["evidence"].get("message"):
                status += f": {r['evidence']['message']}"
            w.writerow([sub["group_key"], "; ".join(sub["members"] or sub.get("family_names", [])),
                        sub["file"], status, f"{round(res.total, 2):g}", f"{res.max:g}",
                        *[f"{round(points.get(q, 0), 2):g}" for q in qids], "; ".join(sub["flags"])])


def _repo_git(path: Path) -> list[Path]:
    """The .git of a checkout holding ``path``: its history holds the solution notebook."""
    for p in [path, *path.parents]:
        if (p / ".git").exists():
            return [p / ".git"]
    return []


def grade(submissions: str | Path, lab: str | Path, out: str | Path, *, jobs: int | None = None,
          timeout: float | None = None, memory: int | None = None, sandbox: str = "auto",
          data_dir=None, manual_csv: str | Path | None = None, console=None) -> list[dict]:
    """Grade every notebook under ``submissions``; resumable; returns the scored rows."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    console = console or Console(stderr=True)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    assignment = load_assignment(Path(lab).resolve())
    assignment.load_key()  # fail now, not after an hour of execution
    data_dir = resolve_data_dir(data_dir).resolve()
    isolation = resolve(sandbox)
    if isolation.degraded or isolation.mode == "none":
        console.print(f"[bold red]WARNING[/]: {isolation.description}")
    limits = _limits(assignment, timeout, memory)
    jobs = max(1, jobs or os.cpu_count() or 1)
    threads = max(1, (os.cpu_count() or 1) // jobs)

    # A Moodle zip unpacks into the output folder, which the kernels never see.
    batch = ingest(submissions, assignment.number, extract_to=out / "submissions")
    if not batch.submissions:
        raise ValueError(f"{submissions}: no notebook (*.ipynb) found")
    with Store(out / "grader.db", assignment.number) as store:
        store.set_meta("lab", str(assignment.folder))
        store.add_submissions(batch)
        pending = set(store.pending_hashes())
    todo = [s for s in batch.unique() if s.sha256 in pending and not s.problem]
    done_before = len({s.sha256 for s in batch if not s.problem}) - len(todo)
    console.print(f"{len(batch)} notebook(s), {len(batch.unique())} distinct, "
                  f"{len(batch.problems())} unreadable; {done_before} already graded, "
                  f"{len(todo)} to run with {jobs} worker(s); isolation: {isolation.mode}")

    if todo:
        warm_data_cache(data_dir)
        work_root = Path(tempfile.mkdtemp(prefix="grader-work-"))
        os.chmod(work_root, 0o755)
        # Every lab's folder, not only this one's: each holds a key and a solution.
        hidden = [assignment.folder, assignment.folder.parent, Path(submissions).resolve(),
                  Path(batch.root).resolve(), out,
                  work_root, *_repo_git(assignment.folder)]
        env = {"GRADER_CACHE": str(cache_dir())}
        by_hash = batch.by_hash()
        try:
            with Store(out / "grader.db") as store, Progress(TextColumn("[bold]grading"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                          console=console, transient=False) as bar, \
                    ThreadPoolExecutor(max_workers=jobs) as pool:
                task = bar.add_task("grading", total=len(todo))
                futures = {pool.submit(run_one, s.path, assignment=assignment, limits=limits,
                                       isolation=isolation, data_dir=data_dir,
                                       work_root=work_root, hidden=hidden,
                                       executed_dir=out / "executed", threads=threads,
                                       env=env): s for s in todo}
                for fut in as_completed(futures):
                    s = futures[fut]
                    evidence = fut.result()
                    store.put_evidence(s.sha256, evidence)  # committed at once: resumable
                    status = evidence.get("status")
                    colour = {"ok": "green", "errors": "yellow"}.get(status, "red")
                    bar.console.print(f"  [{colour}]{status:8s}[/] {', '.join(x.name for x in by_hash[s.sha256])} "
                                      f"({evidence.get('seconds') or 0:.0f} s)")
                    bar.advance(task)
        finally:
            shutil.rmtree(work_root, ignore_errors=True)

    rows = rescore(out, assignment.folder, manual_csv)
    _summary(console, rows, out)
    return rows


def _summary(console, rows: list[dict], out: Path) -> None:
    """One line per group (members who uploaded the same notebook count once)."""
    from rich.table import Table

    table = Table(title="grades")
    for col in ("group", "members", "uploads", "status", "points"):
        table.add_column(col, justify="right" if col in ("uploads", "points") else "left",
                         overflow="fold")
    seen: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        seen.setdefault((r["submission"]["group_key"], r["submission"]["sha256"]), []).append(r)
    for (group, _), same in sorted(seen.items()):
        r = same[0]
        sub, res = r["submission"], r["result"]
        table.add_row(group, ", ".join(sub["members"]) or "(group cell empty)", str(len(same)),
                      str(r["evidence"].get("status")), f"{res.total:.2f} / {res.max:g}")
    console.print(table)
    console.print(f"grades: {out / 'grades.csv'}; executed notebooks: {out / 'executed'}; "
                  f"store: {out / 'grader.db'}")
