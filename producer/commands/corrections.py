"""``producer corrections import`` and ``export``: parse and delegate (corrections_csv)."""

from __future__ import annotations

import contextlib
import getpass
import sys
from pathlib import Path

import click

from producer import corrections_csv
from producer.commands.common import labels_option, labelset_of, ready, templates_option
from worker.core.settings import load_settings


@click.group()
def corrections() -> None:
    """Reviewers' verdicts on labels: bring them in from a CSV file, or write them out."""


@corrections.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@labels_option
@templates_option
def import_(file: Path, labels: Path | None, templates: Path | None) -> None:
    """Store the verdicts of FILE.csv (columns uri,label,verdict; verdict right or wrong) under
    the label set. Each bad row is one line on standard error; the others are stored."""
    settings = load_settings()
    ready(settings)
    labelset = labelset_of(settings, labels, templates)
    done = corrections_csv.import_file(settings.database_url, file, labelset,
                                       f"{getpass.getuser()} (import)",
                                       lambda line: click.echo(line, err=True))
    click.echo(f"imported {done.stored} corrections into label set {done.labelset_id}"
               + (f"; {done.bad} bad rows (listed above)" if done.bad else ""))


@corrections.command("export")
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False),
              help="CSV file to write (default: standard output).")
@labels_option
@templates_option
@click.option("--all", "every", is_flag=True, help="Every label set's corrections.")
def export_(output: Path | None, labels: Path | None, templates: Path | None,
            every: bool) -> None:
    """Write the corrections as CSV: uri,label,verdict,reviewer,created_at,labelset_id,
    content_sha256 (importable again)."""
    settings = load_settings()
    ready(settings)
    labelset_id = None if every else labelset_of(settings, labels, templates).id
    with output.open("wb") if output else contextlib.nullcontext(sys.stdout.buffer) as out:
        count = corrections_csv.export_file(settings.database_url, out, labelset_id)
    click.echo(f"exported {count} corrections" + (f" to {output}" if output else ""), err=True)
