"""The ``grader`` command line."""
from __future__ import annotations

import atexit
import gc
import sys
from pathlib import Path

import click

from .sandbox import SANDBOX_CHOICES

# At exit, the collector would walk every object of WeasyPrint, matplotlib and Jupyter's
# modules once more (0.2-0.4 s per command) only to free memory the OS takes back anyway.
atexit.register(gc.freeze)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="grader")
def main() -> None:
    """Automated grading of deep-learning lab notebooks."""


@main.group()
def data() -> None:
    """The PhysioNet data the labs use."""


@data.command("fetch")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Folder to download into (default: $GRADER_DATA, else a per-user cache).")
@click.option("--base-url", default="https://physionet.org", show_default=True,
              help="PhysioNet server (files are under /files/<db>/<version>/).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar (what is downloaded or skipped is printed either way).")
def data_fetch(data_dir: str | None, base_url: str, progress: bool) -> None:
    """Download afdb and gaitndd from PhysioNet, verifying checksums."""
    from reference.fetch import FetchError, fetch

    try:
        fetch(data_dir=data_dir, base_url=base_url, progress=progress)
    except FetchError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


@main.command("release")
@click.argument("lab", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder to write the hand-out into.")
def release_cmd(lab: str, out: str) -> None:
    """Write the student hand-out of LAB (e.g. assignments/lab01): the notebook
    without solutions, the helper code, requirements.txt and a README."""
    from .assignment import SpecError
    from .release import release

    try:
        folder = release(lab, out)
    except (SpecError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    for p in sorted(folder.iterdir()):
        click.echo(f"  {p}")
    click.echo(f"hand-out written to {folder}")


@main.command("calibrate")
@click.argument("lab", type=click.Path(exists=True, file_okay=False))
@click.option("--seeds", default=3, show_default=True, help="Runs of the reference, seeds 0..K-1.")
@click.option("--profile", type=click.Choice(["quick", "full"]), default="quick", show_default=True)
@click.option("-j", "--jobs", default=2, show_default=True, help="Runs at a time.")
@click.option("--data-dir", default=None, help="PhysioNet data (default: $GRADER_DATA).")
@click.option("--sandbox", type=click.Choice(SANDBOX_CHOICES), default="auto",
              show_default=True)
@click.option("--key-out", type=click.Path(dir_okay=False), default=None,
              help="Write the key here instead of LAB/key.json (e.g. to compare a GPU calibration).")
def calibrate_cmd(lab, seeds, profile, jobs, data_dir, sandbox, key_out) -> None:
    """Run the reference solution of LAB with several seeds and write its key.json."""
    from .calibrate import CalibrationError, calibrate
    from .sandbox import SandboxUnavailable

    try:
        key = calibrate(lab, seeds=seeds, profile=profile, jobs=jobs, data_dir=data_dir,
                        sandbox=sandbox, log=click.echo, key_path=key_out)
    except (CalibrationError, SandboxUnavailable) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    sys.exit(1 if key["faults"] else 0)


@main.command("grade")
@click.argument("submissions", type=click.Path(exists=True))
@click.option("--lab", required=True, type=click.Path(exists=True, file_okay=False),
              help="The assignment folder, e.g. assignments/lab01.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder: grader.db, grades.csv, executed/.")
@click.option("-j", "--jobs", type=int, default=None, help="Notebooks at a time [default: cores].")
@click.option("--timeout", type=float, default=None,
              help="Seconds per notebook [default: the assignment's limits].")
@click.option("--memory", default=None, help="Memory cap per notebook, e.g. 4GiB.")
@click.option("--sandbox", type=click.Choice(SANDBOX_CHOICES), default="auto",
              show_default=True, help="Isolation of student code; 'none' only if you accept it.")
@click.option("--manual", "manual_csv", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Instructor's CSV: group,question,points,comment.")
@click.option("--allow-unmatched", is_flag=True,
              help="Exit 0 even when a row of --manual names no notebook (each is reported).")
@click.option("--data-dir", default=None, help="PhysioNet data (default: $GRADER_DATA).")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
              help="Run the notebooks on the workers of this Dask scheduler (pip install "
                   "'grader[dask]'); -j is then ignored: each worker's --nthreads decides. "
                   "The store, resume and rescore stay here.")
def grade_cmd(submissions, lab, out, jobs, timeout, memory, sandbox, manual_csv, allow_unmatched,
              data_dir, scheduler) -> None:
    """Grade every notebook under SUBMISSIONS (a folder, or Moodle's "Download all
    submissions" zip). Run it again after an interruption: what was graded is kept,
    the rest runs."""
    from .assignment import SpecError, parse_size
    from .cluster import ClusterError
    from .grade import grade
    from .sandbox import SandboxUnavailable
    from .store import StoreError

    try:
        grade(submissions, lab, out, jobs=jobs, timeout=timeout,
              memory=parse_size(memory, "--memory") if memory else None, sandbox=sandbox,
              manual_csv=manual_csv, data_dir=data_dir, scheduler=scheduler,
              allow_unmatched=allow_unmatched)
    except (SpecError, SandboxUnavailable, StoreError, ClusterError, ValueError,
            FileNotFoundError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


@main.command("rescore")
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.option("--lab", default=None, type=click.Path(exists=True, file_okay=False),
              help="The assignment folder [default: the one OUT was graded with].")
@click.option("--manual", "manual_csv", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Instructor's CSV: group,question,points,comment.")
@click.option("--allow-unmatched", is_flag=True,
              help="Exit 0 even when a manual row names no notebook (each is reported).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Processes that render the PDFs at once [default: the number of cores].")
def rescore_cmd(out, lab, manual_csv, allow_unmatched, jobs) -> None:
    """Recompute every score in OUT from stored evidence (after a change to the key,
    the tolerances or the manual scores). Executes nothing. A manual row that names no
    notebook (unknown group, unknown question, points out of range) is reported with its
    line, and the exit status is 1 unless --allow-unmatched."""
    import time

    from rich.console import Console

    from .assignment import SpecError
    from .grade import UnmatchedManual, _summary, rescore
    from .store import StoreError

    t0 = time.perf_counter()
    try:
        rows = rescore(out, lab, manual_csv, jobs=jobs, allow_unmatched=allow_unmatched,
                       warn=lambda m: click.echo(f"warning: {m}", err=True))
    except UnmatchedManual as exc:
        _summary(Console(stderr=True), exc.rows, Path(out))
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except (SpecError, StoreError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    _summary(Console(stderr=True), rows, Path(out))
    click.echo(f"rescored {len(rows)} submission(s) in {time.perf_counter() - t0:.2f} s")


@main.command("similarity")
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.option("--lab", default=None, type=click.Path(exists=True, file_okay=False),
              help="The assignment folder [default: the one OUT was graded with].")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
def similarity_cmd(out, lab, as_json) -> None:
    """List the pairs of graded groups in OUT whose work is similar (texts, code beyond
    the hand-out, shared wrong answers; members in two groups), most similar first.
    Reads the store and the notebooks; executes nothing. The evidence side by side is in
    OUT/summary.pdf."""
    import json

    from .assignment import SpecError
    from .similarity import similarity
    from .store import StoreError

    try:
        rep = similarity(out, lab)
    except (SpecError, StoreError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(rep, indent=1, ensure_ascii=False))
        return
    click.echo(f"{rep['groups']} group(s) compared; {len(rep['pairs'])} similar pair(s)")
    for i, p in enumerate(rep["pairs"], start=1):
        why = []
        if "text" in p["reasons"]:
            why.append(f"text {p['text']:.0%} shared")
        if "code" in p["reasons"]:
            why.append(f"code beyond the hand-out {p['code']:.0%} shared")
        if "wrong answers" in p["reasons"]:
            why.append(f"same wrong answers on {', '.join(w['question'] for w in p['wrong'])} "
                       f"(by chance in {p['wrong_expected']:.2g} pairs of this class)")
        click.echo(f"{i:3d}. {p['a']}  ~  {p['b']}: " + "; ".join(why))
    for m in rep["members"]:
        click.echo(f"  member {m['name']} in: " + " | ".join(m["groups"]))
    for label in rep["not_read"]:
        click.echo(f"  code not compared (notebook not found): {label}")


@main.command("validate")
@click.argument("lab", type=click.Path(exists=True, file_okay=False))
@click.option("-j", "--jobs", default=2, show_default=True)
@click.option("--sandbox", type=click.Choice(SANDBOX_CHOICES), default="auto",
              show_default=True)
@click.option("--data-dir", default=None, help="PhysioNet data (default: $GRADER_DATA).")
@click.option("--keep", default=None, type=click.Path(file_okay=False),
              help="Keep the graded reference and hand-out in this folder.")
def validate_cmd(lab, jobs, sandbox, data_dir, keep) -> None:
    """Prove LAB holds: key matches spec, the reference solution gets every automatic
    point through the whole pipeline, the released hand-out gets none."""
    import time

    from rich.console import Console

    from .sandbox import SandboxUnavailable, resolve
    from .validate import print_checks, validate

    try:
        resolve(sandbox)  # fail closed before anything runs
    except SandboxUnavailable as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    t0 = time.perf_counter()
    console = Console(stderr=True)
    checks = validate(lab, jobs=jobs, sandbox=sandbox, data_dir=data_dir, keep=keep, console=console)
    print_checks(checks, Console())
    failed = [c for c in checks if not c.ok]
    click.echo(f"validate: {len(checks) - len(failed)} of {len(checks)} checks hold "
               f"({time.perf_counter() - t0:.0f} s)")
    sys.exit(1 if failed else 0)


@main.command("check")
@click.argument("notebook", type=click.Path(exists=True, dir_okay=False))
@click.option("--lab", default=None, type=click.Path(exists=True, file_okay=False),
              help="Folder with the lab's assignment.toml [default: the notebook's folder].")
@click.option("--no-run", is_flag=True, help="Read the notebook as saved instead of running it.")
@click.option("--data-dir", default=None, help="PhysioNet data (default: $GRADER_DATA).")
@click.option("--sandbox", type=click.Choice(SANDBOX_CHOICES), default="auto",
              show_default=True,
              help="auto: the best sandbox that works here, else none (a note says so).")
def check_cmd(notebook, lab, no_run, data_dir, sandbox) -> None:
    """Check NOTEBOOK before submitting: name, group, answers' form, given cells, errors.
    Exits non-zero when something would cost points for form. Knows no expected answer."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from .assignment import SpecError
    from .check import check_notebook, exit_code
    from .untrusted import clean_text

    try:
        rows = check_notebook(notebook, lab, run=not no_run, data_dir=data_dir, sandbox=sandbox)
    except SpecError as exc:
        click.echo(f"error: {exc} (pass --lab with the folder of the lab's assignment.toml)", err=True)
        sys.exit(2)
    table = Table(title=f"grader check {Path(notebook).name}")
    for col in ("", "what", "detail"):
        table.add_column(col, overflow="fold")
    for r in rows:
        # what and detail quote the notebook: shown as written, never read as markup
        table.add_row("ok" if r.ok else ("FIX" if r.costs_points else "note"),
                      Text(clean_text(str(r.what))), Text(clean_text(str(r.detail))))
    Console().print(table)
    code = exit_code(rows)
    if any(r.what == "kernel" and not r.ok for r in rows):
        click.echo("the notebook could not be run: see the row `kernel` (no answer was checked)")
    else:
        click.echo("ready to submit" if code == 0 else "some answers would cost points for their form: fix the rows marked FIX")
    sys.exit(code)


@main.command("demo")
@click.option("--out", default="demo-out", show_default=True, type=click.Path(file_okay=False),
              help="Where the sample class and everything graded from it go.")
@click.option("-j", "--jobs", type=int, default=None, help="Notebooks at a time [default: cores].")
@click.option("--timeout", type=float, default=180, show_default=True,
              help="Seconds per notebook (one group never finishes).")
@click.option("--data-dir", default=None,
              help="PhysioNet data [default: $GRADER_DATA, else fetched into the user cache].")
def demo_cmd(out, jobs, timeout, data_dir) -> None:
    """Build a sample class (a Moodle zip and worksheet) from the reference solution
    and grade it end to end: PDFs, grades.csv, the Moodle worksheet and feedback zip."""
    from reference.paths import data_dir as resolve_data_dir

    from .demo import demo

    folder = resolve_data_dir(data_dir)
    if not (folder / "afdb" / "RECORDS").exists() or not (folder / "gaitndd" / "RECORDS").exists():
        from reference.fetch import FetchError, fetch

        click.echo(f"no PhysioNet data in {folder}: fetching it")
        try:
            fetch(data_dir=folder)
        except FetchError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
    demo(out, jobs=jobs, timeout=timeout, data_dir=folder)


from .moodle_cli import moodle  # noqa: E402  (the `grader moodle` group)

main.add_command(moodle)


if __name__ == "__main__":  # pragma: no cover
    main()
