"""The ``grader`` command line."""
from __future__ import annotations

import sys

import click


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


if __name__ == "__main__":  # pragma: no cover
    main()
