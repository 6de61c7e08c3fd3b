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


if __name__ == "__main__":  # pragma: no cover
    main()
