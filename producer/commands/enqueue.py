"""``producer enqueue``: parse and delegate (producer/enqueue.py), then print what was sent."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import click

from producer import enqueue as enqueuing
from producer import render
from producer.commands.common import (
    chunk_option,
    labels_option,
    labelset_of,
    listing_options,
    listing_values,
    ready,
    templates_option,
)
from producer.progress import Progress
from worker.core.invocation import command
from worker.core.redact import redact
from worker.core.settings import load_settings


@click.command()
@click.argument("locations", metavar="[URI]...", nargs=-1)
@click.option("--bucket", help="Shorthand for s3://BUCKET/PREFIX.")
@click.option("--prefix", default="", help="Only keys under this prefix (with --bucket).")
@click.option("--dir", "folder", type=click.Path(path_type=Path),
              help="Shorthand for a local folder (recursive).")
@click.option("--database-url", envvar="CATALOG_DATABASE_URL",
              help="Shorthand for a catalogue database to read image URLs from.")
@listing_options
@labels_option
@templates_option
@chunk_option
@click.option("--force", is_flag=True, help="Re-tag images that already have a result.")
@click.option("--dry-run", is_flag=True, help="Print what would be enqueued; send nothing.")
def enqueue(locations: tuple[str, ...], bucket: str | None, prefix: str, folder: Path | None,
            database_url: str | None, labels: Path | None, templates: Path | None,
            chunk_size: int | None, force: bool, dry_run: bool, **listing: Any) -> None:
    """List each URI (s3://bucket/prefix, a folder, file:///dir, a catalogue database, or any
    other registered scheme) and enqueue its images: new or changed ones only, unless --force."""
    settings = load_settings()
    locations += tuple(_shorthands(bucket, prefix, folder, database_url))
    if not locations:
        raise click.UsageError("give what to list: a URI (s3://bucket/prefix, a folder, ...), "
                               "--bucket, --dir or --database-url")
    options = listing_values(listing)
    listings = [enqueuing.locate(location, settings, **options) for location in locations]
    labelset = labelset_of(settings, labels, templates)
    ready(settings)
    with Progress("listing", unit=" entries") as bar:
        summary = enqueuing.enqueue(
            itertools.chain.from_iterable(listing.entries for listing in listings),
            settings=settings, labelset=labelset,
            source=" ".join(listing.source for listing in listings),
            chunk_size=chunk_size or settings.chunk_size,
            file_roots=[root for listing in listings for root in listing.file_roots],
            force=force, dry_run=dry_run, progress=lambda n: bar.update(bar.done + n),
            show_due=lambda i: click.echo(redact(i.uri)))
    _said(summary, locations, dry_run, f"label set {labelset.id}, model {settings.model}")


def _said(summary: enqueuing.Summary, locations: tuple[str, ...], dry_run: bool,
          what: str) -> None:
    """The run's line (on stderr for a dry run, whose stdout is the URIs), then its notes."""
    if not summary.listed:
        click.echo(f"warning: nothing was listed at {redact(' '.join(locations))}", err=True)
    verb = "would enqueue" if dry_run else "enqueued"
    click.echo(f"run {summary.run_id}: listed {summary.listed}, {verb} {summary.enqueued} in "
               f"{render.plural(summary.chunks, 'chunk')}, {summary.describe_skips()} ({what})",
               err=dry_run)
    if outside := summary.describe_outside():
        click.echo(outside, err=True)
    if again := render.failed_before(summary.skipped_by_reason, f"{command('producer')} "
                                     "retry-failed"):
        click.echo(again, err=True)


def _shorthands(bucket: str | None, prefix: str, folder: Path | None,
                database_url: str | None) -> list[str]:
    """--bucket, --dir and --database-url as the URIs they stand for."""
    if prefix and not bucket:
        raise click.UsageError("--prefix goes with --bucket (or give s3://bucket/prefix)")
    return [*([f"s3://{bucket}/{prefix}"] if bucket else []),
            *([str(folder.expanduser())] if folder else []),
            *([database_url] if database_url else [])]
