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
import logging
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Sequence

import nbformat

from reference.paths import cache_dir, data_dir as resolve_data_dir

from .assignment import Assignment, load_assignment
from .evidence import collect, empty_evidence, epilogue_code
from .execute import Kernel, execute_notebook, load_notebook, start_kernel
from .ingest import ingest
from .measure import measure_models
from .sandbox import (Limits, format_size, gpu_for_worker, limit_disk, nvidia_devices, release_disk,
                      release_disks_below, resolve, sandbox_mode, visible_gpus)
from .score import score
from .manual import match_manual
from .store import Store, read_manual_csv
from .untrusted import clean_text, csv_row, markup

log = logging.getLogger(__name__)

#: The work dirs of a run, under the output folder (hidden from kernels); wiped at the
#: start of each run (a killed run's leftovers) and removed at its end.
WORK_DIR = ".work"


def warm_data_cache(data_dir: Path) -> Path:
    """Parse the PhysioNet files once, here, so that no kernel pays for it.

    Kernels get the cache read-only: a group cannot poison another's data.
    """
    from reference.data import load_af, load_gait

    load_af(data_dir=data_dir)
    load_gait("binary", data_dir=data_dir)
    return cache_dir()


def start_in_fresh_workdir(work_root: Path, *, limits: Limits, isolation, data_dir: Path,
                           hidden: list[Path], threads: int, env: dict[str, str],
                           devices: Sequence[str] = ()) -> Kernel:
    """Start a kernel in a new, empty work dir under ``work_root`` (see :func:`start_kernel`),
    bounded to ``limits.disk`` in all where that can be enforced (:func:`limit_disk`)."""
    work = Path(tempfile.mkdtemp(prefix="sub-", dir=work_root))
    try:
        os.chmod(work, 0o755)
        if limits.disk is not None:
            why = limit_disk(work, limits.disk)
            if why is not None:
                limits = replace(limits, disk=None)
                log.debug("work dir %s not size-limited: %s", work, why)
        return start_kernel(workdir=work, limits=limits, isolation=isolation, data_dir=data_dir,
                            hidden=hidden, env=env, threads=threads, readonly=[cache_dir()],
                            devices=devices)
    except BaseException:
        remove_workdir(work)
        raise


def remove_workdir(work: Path) -> None:
    """Unmount (if :func:`limit_disk` mounted it) and remove a work dir."""
    release_disk(work)
    wipe(work)


def run_one(nb_path: Path, *, assignment: Assignment, limits: Limits, isolation, data_dir: Path,
            work_root: Path, hidden: list[Path], executed_dir: Path, threads: int,
            env: dict[str, str], kernels: KernelPrestart | None = None,
            executed_name: str | None = None) -> dict:
    """Execute one notebook, collect its evidence and measure its models. Never raises.

    ``executed_name``: where under ``executed_dir`` the executed notebook goes (the
    submission's path relative to the ingested folder, so that two uploads of one file
    name in different folders keep their own); default: the notebook's file name.
    ``kernels``: take the kernel this worker thread started ahead (the batch's
    :class:`KernelPrestart`, which fixed the launch arguments) instead of starting one.
    Else the kernel gets this machine's NVIDIA GPUs, unless ``env`` hides them
    (``CUDA_VISIBLE_DEVICES=""``).
    """
    kernel = work = None
    try:
        if kernels is not None:
            kernel = kernels.take()
        else:
            devices = nvidia_devices() if env.get("CUDA_VISIBLE_DEVICES") != "" else []
            kernel = start_in_fresh_workdir(work_root, limits=limits, isolation=isolation,
                                            data_dir=data_dir, hidden=hidden, threads=threads,
                                            env=env, devices=devices)
        work = kernel.workdir
        result = execute_notebook(_sendable(nb_path), kernel=kernel,
                                  snapshot=epilogue_code(assignment))
        evidence = collect(result, work, assignment)
        if kernel.limits.disk and "No space left" in " ".join(
                str(evidence.get(k)) for k in ("evidence_error", "epilogue_error")):
            evidence["message"] = (
                f"its work dir was full (at most {format_size(kernel.limits.disk)} in all, "
                "[limits] disk), so its latest answers could not be collected"
                + (f"; {evidence['message']}" if evidence.get("message") else ""))
        if assignment.measurements:  # a run that stopped early keeps the models it had made
            evidence["measurements"] = measure_models(
                work, assignment, data_dir, isolation=isolation,
                limits=assignment.limits.to_measure(), work_root=work_root)
        else:
            evidence.setdefault("measurements", {})
        write_executed(result.notebook, executed_dir, executed_name or nb_path.name)
        return evidence
    except Exception as exc:  # a grader bug must not cost the rest of the batch
        return empty_evidence("grader-error", f"{type(exc).__name__}: {exc}")
    finally:
        if kernel is not None:
            kernel.shutdown()  # already done, unless execution itself failed
        if work is not None:
            remove_workdir(work)


def _sendable(nb_path: Path):
    """The notebook with lone surrogates in its cells' code replaced (no kernel, nor
    Python, can take them: Jupyter itself fails to send such a cell); the path itself
    when it cannot be read (execution then says why)."""
    node, _ = load_notebook(nb_path)
    if node is None:
        return nb_path
    for cell in node.cells:
        cell["source"] = clean_text(cell.get("source", ""))
    return node


def executed_path(executed_dir: Path, name: str) -> Path:
    """``executed_dir / name`` for a submission's relative name, never outside the folder."""
    parts = [p for p in Path(name).parts if p not in ("", ".", "..", "/")]
    return executed_dir.joinpath(*parts) if parts else executed_dir / "notebook.ipynb"


def write_executed(notebook, executed_dir: Path, name: str) -> Path:
    """Write an executed notebook; text a notebook printed that UTF-8 cannot hold (lone
    surrogates) is replaced, not a reason to lose the notebook."""
    path = executed_path(executed_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(clean_text(nbformat.writes(notebook)), encoding="utf-8")
    return path


class KernelPrestart:
    """Per worker thread, one kernel started ahead for the next submission it will take.

    :meth:`take` (called by ``run_one`` in a worker thread) returns the kernel this
    thread started ahead, or starts one now, then launches the next one, which boots
    (Python, ipykernel, the sandbox) while the current notebook runs; none when no
    submission is left for it.  Each kernel gets a fresh, empty work dir, so a spare
    never sees another group's files.  ``launch(worker)`` starts a kernel for worker
    number ``worker`` (0, 1, ... in the order the threads first take), e.g. on that
    worker's GPU.  :meth:`close` (end of the batch, also on error or Ctrl-C) shuts down
    the spares never used and removes their work dirs; a spare started after it is shut
    down at once.  Each thread starts its own kernels: a sandbox dies with the thread
    that started it (``--die-with-parent``).

    Example::

        prestart = KernelPrestart(lambda worker: start_in_fresh_workdir(root, ...), todo=6)
        try:
            pool.submit(run_one, path, ..., kernels=prestart)
        finally:
            prestart.close()
    """

    def __init__(self, launch: Callable[[int], Kernel], todo: int):
        self.launch, self.left = launch, todo
        self._lock = threading.Lock()
        # keyed by thread, not thread id: a new thread may reuse a dead one's id
        self._spares: dict[threading.Thread, Kernel] = {}   # its kernel started ahead
        self._workers: dict[threading.Thread, int] = {}     # its worker number
        self._closed = False

    def take(self) -> Kernel:
        me = threading.current_thread()
        with self._lock:
            worker = self._workers.setdefault(me, len(self._workers))
            kernel = self._spares.pop(me, None)
            self.left -= 1
            ahead = not self._closed and self.left > len(self._spares)
        if kernel is None:
            kernel = self.launch(worker)
        if ahead:
            try:
                spare = self.launch(worker)
            except Exception:  # the next take starts one itself
                log.warning("could not start a kernel ahead", exc_info=True)
            else:
                with self._lock:
                    keep = not self._closed
                    if keep:
                        self._spares[me] = spare
                if not keep:
                    _discard(spare)
        return kernel

    def close(self) -> None:
        with self._lock:
            self._closed = True
            spares, self._spares = list(self._spares.values()), {}
        for kernel in spares:
            _discard(kernel)


def _discard(kernel: Kernel) -> None:
    """Shut down a kernel that ran nothing and remove its work dir."""
    kernel.shutdown()
    remove_workdir(kernel.workdir)


def wipe(path: Path) -> None:
    """Remove ``path`` and everything under it, folders a notebook made unreadable too,
    after unmounting the size-limited work dirs a killed run left there."""
    if not os.path.lexists(path):
        return
    release_disks_below(path)
    for root, dirs, _ in os.walk(path):
        for d in dirs:
            p = os.path.join(root, d)
            if not os.path.islink(p):  # never chmod through a student's symlink
                try:
                    os.chmod(p, 0o700)
                except OSError:
                    pass
    shutil.rmtree(path, ignore_errors=True)


class UnmatchedManual(ValueError):
    """Manual rows that were given to no notebook (each named with its line); raised by
    :func:`rescore` after everything is written, unless ``allow_unmatched``."""

    def __init__(self, problems: list[str], rows: list[dict]):
        self.problems, self.rows = problems, rows
        super().__init__(f"{len(problems)} manual score row(s) given to no notebook "
                         "(fix them, or pass --allow-unmatched):\n"
                         + "\n".join(f"  {p}" for p in problems))


def rescore(out: str | Path, lab: str | Path | None = None, manual_csv: str | Path | None = None,
            *, jobs: int | None = None, allow_unmatched: bool = False,
            warn: Callable[[str], None] | None = None) -> list[dict]:
    """Recompute every score from stored evidence; write grades.csv and the reports whose
    content changed (``jobs`` processes at most, default: the number of cores). Executes
    nothing.

    Manual scores go to the notebook each row names (:func:`grader.manual.match_manual`).
    A row that names none (unknown or ambiguous group, unknown question, points out of
    range) is kept in the store and passed to ``warn`` (default: the log); after writing
    everything, :class:`UnmatchedManual` is raised unless ``allow_unmatched``."""
    out = Path(out)
    with Store(out / "grader.db") as store:
        lab = lab or store.meta().get("lab")
        if not lab:
            raise ValueError(f"{out / 'grader.db'}: no lab recorded; pass --lab")
        assignment = load_assignment(lab)
        key = assignment.load_key()
        if manual_csv:
            store.set_manual(read_manual_csv(manual_csv))
            store.set_meta("manual_csv", str(Path(manual_csv).resolve()))
        subs = store.submissions()
        from .render import feedback_files   # here: the hand-out's check imports this module

        reports = {s["id"]: name for name, rs in feedback_files([{"submission": s} for s in subs])
                   for s in (r["submission"] for r in rs)}
        manual, unmatched = match_manual(store.manual(), subs,
                                         {q.id: q.points for q in assignment.questions}, reports)
        source = store.meta().get("manual_csv", "manual scores")
        unmatched = [f"{source}: {p}" for p in unmatched]
        rows, by_submission = [], {}
        stored: dict[str, dict] = {}   # sha256 -> evidence: group members' uploads share it
        for sub in subs:
            if sub.get("problem"):
                evidence = empty_evidence("invalid", sub["problem"])
            else:
                if sub["sha256"] not in stored:
                    stored[sub["sha256"]] = (store.evidence(sub["sha256"])
                                             or empty_evidence("pending"))
                evidence = stored[sub["sha256"]]
            result = score(assignment, evidence, key, manual.get(sub["sha256"], {}))
            by_submission[sub["id"]] = [asdict(s) for s in result.questions]
            rows.append({"submission": sub, "evidence": evidence, "result": result})
        store.replace_scores(by_submission)
    write_grades_csv(out / "grades.csv", assignment, rows)
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        from .render import feedback_files, render_all

        with Progress(TextColumn("feedback PDFs"), BarColumn(), MofNCompleteColumn(),
                      console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("pdf", total=len(feedback_files(rows)))
            render_all(rows, assignment, key, out, progress=lambda: bar.advance(task),
                       workers=jobs or os.cpu_count() or 1,
                       similarity=_similarity(out, assignment, rows))
    except (ImportError, OSError) as exc:
        # WeasyPrint without Pango (a headless GPU server, say): the grades stand.
        log.warning("feedback PDFs not written (%s: %s); grades.csv and %s are complete. "
                    "Install Pango (apt install libpango-1.0-0 libpangoft2-1.0-0), then run "
                    "`grader rescore %s`.", type(exc).__name__, exc, out / "grader.db", out)
    for p in unmatched:
        (warn or (lambda m: log.warning("%s", m)))(f"manual score not given: {p}")
    if unmatched and not allow_unmatched:
        raise UnmatchedManual(unmatched, rows)
    return rows


def _similarity(out: Path, assignment: Assignment, rows: list[dict]) -> dict | None:
    """The summary's similarity section; a failure there costs the section, not the grades."""
    from .similarity import similarity

    try:
        return similarity(out, assignment.folder, rows=rows)
    except Exception:  # noqa: BLE001
        log.warning("similarity section left out of the summary", exc_info=True)
        return None


def write_grades_csv(path: Path, assignment: Assignment, rows: list[dict]) -> None:
    qids = [q.id for q in assignment.questions]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        # Cells hold the groups' text: csv_row keeps a spreadsheet from evaluating any.
        w.writerow(csv_row(["group", "members", "file", "status", "total", "maximum", *qids,
                            "flags", "sandbox"]))
        for r in rows:
            sub, res = r["submission"], r["result"]
            points = {q.id: q.points for q in res.questions}
            status = r["evidence"].get("status", "")
            if r["evidence"].get("message"):
                status += f": {r['evidence']['message']}"
            w.writerow(csv_row([
                sub["group_key"], "; ".join(sub["members"] or sub.get("family_names", [])),
                sub["file"], status, f"{round(res.total, 2):g}", f"{res.max:g}",
                *[f"{round(points.get(q, 0), 2):g}" for q in qids], "; ".join(sub["flags"]),
                sandbox_mode(r["evidence"].get("isolation"))]))


def _repo_git(path: Path) -> list[Path]:
    """The .git of a checkout holding ``path``: its history holds the solution notebook."""
    for p in [path, *path.parents]:
        if (p / ".git").exists():
            return [p / ".git"]
    return []


def grade(submissions: str | Path, lab: str | Path, out: str | Path, *, jobs: int | None = None,
          timeout: float | None = None, memory: int | None = None, sandbox: str = "auto",
          data_dir=None, manual_csv: str | Path | None = None, console=None,
          scheduler: str | None = None, allow_unmatched: bool = False) -> list[dict]:
    """Grade every notebook under ``submissions``; resumable; returns the scored rows.

    ``scheduler``: ``tcp://HOST:PORT`` of a Dask scheduler: the notebooks run on its
    workers (``jobs`` is then theirs to decide), the store stays here (see
    :mod:`grader.cluster`). Raises :class:`grader.cluster.ClusterError` when dask is
    missing or the scheduler cannot be reached; :class:`UnmatchedManual` (after grading
    and writing everything) when a row of ``manual_csv`` names no notebook, unless
    ``allow_unmatched``.
    """
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    console = console or Console(stderr=True)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    wipe(out / WORK_DIR)  # a killed run's work dirs: garbage now
    assignment = load_assignment(Path(lab).resolve())
    assignment.load_key()  # fail now, not after an hour of execution
    data_dir = resolve_data_dir(data_dir).resolve()
    isolation = resolve(sandbox)
    if isolation.degraded or isolation.mode == "none":
        console.print(f"[bold red]WARNING[/]: {markup(isolation.description)}")
    limits = assignment.limits.to_sandbox(timeout, memory)
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
    unique = batch.unique()
    todo = [s for s in unique if s.sha256 in pending and not s.problem]
    done_before = len({s.sha256 for s in batch if not s.problem}) - len(todo)
    console.print(markup(f"{len(batch)} notebook(s), {len(unique)} distinct, "
                  f"{len(batch.problems())} unreadable; {done_before} already graded, "
                  f"{len(todo)} to run "
                  + (f"on the Dask cluster at {scheduler}" if scheduler else f"with {jobs} worker(s)")
                  + f"; isolation: {isolation.mode}"))

    if todo:
        work_root = out / WORK_DIR
        work_root.mkdir()
        os.chmod(work_root, 0o755)
        # Every lab's folder, not only this one's: each holds a key and a solution. The lab's
        # own folder too: the sandbox skips a parent that is "/" or the grader's home.
        hidden = [assignment.folder, assignment.folder.parent, Path(submissions).resolve(),
                  Path(batch.root).resolve(), out,
                  work_root, *_repo_git(assignment.folder)]
        env = {"GRADER_CACHE": str(cache_dir())}
        by_hash = batch.by_hash()
        prestart = None if scheduler else _prestart(
            len(todo), work_root, console, limits=limits, isolation=isolation, data_dir=data_dir,
            hidden=hidden, threads=threads, env=env)
        try:
            with Store(out / "grader.db") as store, \
                    _executor(scheduler, jobs, isolation, data_dir, console) as (pool, completed), \
                    Progress(TextColumn("[bold]grading"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                             console=console, transient=False) as bar:
                _run_batch(pool, completed, todo, store, by_hash, bar,
                           dict(assignment=assignment, limits=limits, isolation=isolation,
                                data_dir=data_dir, work_root=work_root, hidden=hidden,
                                executed_dir=out / "executed", threads=threads, env=env,
                                **({"kernels": prestart} if prestart else {})))
        finally:
            if prestart is not None:
                prestart.close()
            wipe(work_root)

    try:
        rows = rescore(out, assignment.folder, manual_csv, jobs=jobs,
                       allow_unmatched=allow_unmatched,
                       warn=lambda m: console.print(f"[yellow]warning[/]: {markup(m)}"))
    except UnmatchedManual as exc:   # everything is written: show it, then say what is not
        _summary(console, exc.rows, out)
        raise
    _summary(console, rows, out)
    return rows


def _prestart(todo: int, work_root: Path, console, *, env: dict[str, str],
              **launch) -> KernelPrestart:
    """Kernels started ahead for the local workers; with GPUs, worker k's kernels get GPU
    k mod n (``CUDA_VISIBLE_DEVICES``) and the NVIDIA device nodes."""
    gpus = visible_gpus()
    devices = nvidia_devices() if gpus else []
    if gpus:
        console.print(markup(f"GPUs {', '.join(gpus)}: worker k gets GPU k mod {len(gpus)}"))

    def start(worker: int) -> Kernel:
        gpu = gpu_for_worker(worker, gpus)
        return start_in_fresh_workdir(
            work_root, env=env if gpu is None else {**env, "CUDA_VISIBLE_DEVICES": gpu},
            devices=devices, **launch)

    return KernelPrestart(start, todo)


@contextmanager
def _executor(scheduler: str | None, jobs: int, isolation, data_dir: Path, console):
    """The pool that runs the notebooks, with its ``as_completed``: local threads, or the
    Dask cluster at ``scheduler`` (whose workers warm their own data cache)."""
    if not scheduler:
        warm_data_cache(data_dir)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            yield pool, as_completed
        return
    # Imported here: the default install has no dask.
    from .cluster import MISSING_DASK, ClusterError, ClusterExecutor
    from .cluster import as_completed as cluster_as_completed

    try:
        pool = ClusterExecutor(scheduler)
    except ImportError as exc:
        if str(exc) != MISSING_DASK:
            raise
        raise ClusterError(MISSING_DASK) from exc
    with pool:
        console.print(markup(f"cluster: {pool.describe()}"))
        for line in pool.warnings(isolation, data_dir):
            console.print(f"[bold red]WARNING[/]: {markup(line)}")
        yield pool, cluster_as_completed


def _run_batch(pool, completed, todo: list, store: Store, by_hash: dict, bar, kwargs: dict) -> None:
    """Submit ``run_one`` for every submission of ``todo`` to ``pool`` and store each
    evidence as it comes (``completed``: the pool's ``as_completed``)."""
    task = bar.add_task("grading", total=len(todo))
    futures = {pool.submit(run_one, s.path, executed_name=s.name, **kwargs): s for s in todo}
    try:
        _collect(futures, completed, store, by_hash, bar, task)
    except BaseException:  # Ctrl-C: what has not started never will; stored evidence stays
        for fut in futures:
            fut.cancel()
        raise


def _collect(futures: dict, completed, store: Store, by_hash: dict, bar, task) -> None:
    for fut in completed(futures):
        s = futures[fut]
        try:
            evidence = fut.result()
            store.put_evidence(s.sha256, evidence)  # committed at once: resumable
        except Exception as exc:  # this group's grader error; the batch goes on
            log.exception("evidence of %s not stored", clean_text(s.name))
            evidence = empty_evidence(
                "grader-error", clean_text(f"{s.name}: the evidence could not be stored "
                                           f"({type(exc).__name__}: {exc})")[:2000])
            store.put_evidence(s.sha256, evidence)
        status = str(evidence.get("status"))
        colour = {"ok": "green", "errors": "yellow"}.get(status, "red")
        where = f" on {fut.worker}" if getattr(fut, "worker", None) else ""
        names = ", ".join(x.name for x in by_hash[s.sha256])
        # File names are the groups' text: never read as markup.
        bar.console.print(f"  [{colour}]{markup(f'{status:8s}')}[/] {markup(names)} "
                          f"({evidence.get('seconds') or 0:.0f} s{markup(where)})")
        bar.advance(task)


def _summary(console, rows: list[dict], out: Path) -> None:
    """One line per group (members who uploaded the same notebook count once)."""
    from rich.table import Table
    from rich.text import Text

    from .render import by_group

    table = Table(title="grades")
    for col in ("group", "members", "uploads", "status", "points"):
        table.add_column(col, justify="right" if col in ("uploads", "points") else "left",
                         overflow="fold")
    groups = by_group(rows)
    groups.sort(key=lambda rs: (str(rs[0]["submission"]["group_key"]),
                                str(rs[0]["submission"]["sha256"])))
    for same in groups:
        r = same[0]
        sub, res = r["submission"], r["result"]
        # Every cell is the groups' text: shown as written, never read as markup.
        table.add_row(*[Text(clean_text(str(x))) for x in (
            sub["group_key"], ", ".join(sub["members"]) or "(group cell empty)",
            len(same), r["evidence"].get("status"), f"{res.total:.2f} / {res.max:g}")])
    console.print(table)
    console.print(markup(f"grades: {out / 'grades.csv'}; executed notebooks: {out / 'executed'}; "
                         f"store: {out / 'grader.db'}"))
