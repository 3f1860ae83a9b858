"""``producer relabel`` (and ``--learn``) and ``producer corrections``: parse and delegate."""

from __future__ import annotations

import contextlib
import getpass
import sys
from pathlib import Path

import click

from producer import corrections_csv, render
from producer import relabel as relabelling
from producer.cli_common import labels_option, labelset_of, ready, templates_option
from producer.learn.version import describe, learn_and_relabel
from worker.core.settings import load_settings


@click.command()
@labels_option
@templates_option
@click.option("--run", "scope_run", help="Only the images of this run (default: every image "
                                          "with a kept embedding under TAGGER_MODEL).")
@click.option("--learn", is_flag=True,
              help="First learn a new version of the label set from the reviewers' "
                   "corrections, then score every kept embedding with it.")
@click.option("--timeout", type=float, default=24 * 3600, show_default=True, help="Seconds.")
def relabel(labels: Path | None, templates: Path | None, scope_run: str | None, learn: bool,
            timeout: float) -> None:
    """Score images with a label set from their kept embeddings: nothing is fetched."""
    settings = load_settings()
    ready(settings)
    labelset = labelset_of(settings, labels, templates)
    echo = lambda text: click.echo(text, err=True)  # noqa: E731
    if learn:
        if scope_run:
            raise click.UsageError("--learn scores every kept embedding: leave out --run")
        done = learn_and_relabel(settings, labelset.id, timeout=timeout, echo=echo)
        click.echo(render.learned(done, describe(done["report"])))
    elif settings.embedded_broker:
        counts = relabelling.relabel_here(settings, labelset, scope_run=scope_run,
                                          timeout=timeout, echo=echo)
        click.echo(render.relabelled(counts, labelset.id))
    else:
        click.echo(render.relabelling(relabelling.relabel(settings, labelset,
                                                          scope_run=scope_run), settings.model))


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
