"""``grader moodle ...``: put grades and PDFs back into Moodle.

Registered by ``grader.cli`` with ``main.add_command(moodle)``.
"""
from __future__ import annotations

import sys

import click


@click.group("moodle")
def moodle() -> None:
    """Moodle: grading worksheet and feedback files."""


@moodle.command("export")
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.option("--worksheet", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The grading worksheet downloaded from Moodle (Grades-....csv), any language. "
                   "Without it, one is written with Moodle's English headers from the "
                   "participants of the download (students who uploaded nothing are left out).")
@click.option("--max-grade", type=float, default=100.0, show_default=True,
              help="The assignment's maximum grade in Moodle; only used without --worksheet.")
def export_cmd(out: str, worksheet: str | None, max_grade: float) -> None:
    """Fill in the grading worksheet and write OUT/moodle/feedback.zip from OUT/grader.db.

    In Moodle (Assignment > View all submissions > Grading action) upload the worksheet first
    ("Upload grading worksheet"), then the zip ("Upload multiple feedback files in a zip").
    """
    from .moodle import WorksheetError, export

    try:
        export(out, worksheet, max_grade=max_grade, log=click.echo)
    except (WorksheetError, FileNotFoundError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
