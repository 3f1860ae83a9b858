"""The ``producer`` command: parse options and delegate; every mistake is one line, exit 1."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa

from producer import cli_search as search_commands
from producer import enqueue as enqueuing
from producer import render
from producer import status as reporting
from producer.cli_cancel import cancel
from producer.cli_common import (
    labels_option,
    labelset_of,
    listing_options,
    listing_values,
    ready,
    templates_option,
)
from producer.cli_db import database
from producer.cli_exporter import export_backlog
from producer.cli_labels import corrections, relabel
from producer.cli_serve import serve
from producer.endings import endings
from producer.export import WRITERS, export_embeddings, format_of, written
from producer.export import export as export_rows
from producer.judged import judged_rows
from producer.progress import Progress
from producer.report import PREVIEW_SECONDS, write_report
from producer.tag import tag as tag_location
from worker.core.invocation import command
from worker.core.redact import redact
from worker.core.settings import Settings, load_settings
from worker.db import embeddings as kept
from worker.db import runs as db
from worker.db import status as db_status
from worker.db.models import served


class Main(click.Group):
    """Each command ends as producer/endings.py says: troubles as one line, exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        with endings():
            return super().invoke(ctx)


def _settings() -> Settings:
    return load_settings()


@click.group(cls=Main)
def main() -> None:
    """Tag images with Chinese labels: `producer tag ./images`, or enqueue for a fleet.

    Configuration comes from the environment: CELERY_BROKER_URL, DATABASE_URL, TAGGER_* and
    boto3's AWS_* settings. With none of them set, everything runs on this machine under
    TAGGER_HOME (a per-user data folder).
    """


chunk_option = click.option("--chunk-size", type=click.IntRange(1),
                            help="Images per message [default: TAGGER_CHUNK_SIZE or 64].")


@main.command()
@click.argument("location")
@labels_option
@templates_option
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False),
              help="Results file: .jsonl, .csv or .parquet [default: under TAGGER_HOME].")
@chunk_option
@click.option("--force", is_flag=True, help="Tag again images that already have labels.")
@click.option("--retry-failed", is_flag=True,
              help="Try again images that failed in an earlier run (skipped otherwise).")
@click.option("--timeout", type=float, default=24 * 3600, show_default=True, help="Seconds.")
@click.option("--no-worker", is_flag=True, help="Use running workers instead of starting one.")
@listing_options
def tag(location: str, labels: Path | None, templates: Path | None, output: Path | None,
        chunk_size: int | None, force: bool, retry_failed: bool, timeout: float,
        no_worker: bool, **listing: Any) -> None:
    """Tag every image of a folder (or s3://bucket/prefix) and write their labels to a file.

    Exit code 0 once every image has a result, 3 if there is no image (nothing is started)."""
    settings = _settings()
    result = tag_location(settings, location, labelset=labelset_of(settings, labels, templates),
                          output=output, chunk_size=chunk_size or settings.chunk_size,
                          timeout=timeout, force=force, retry_failed=retry_failed,
                          own_worker=not no_worker, echo=lambda line: click.echo(line, err=True),
                          options=listing_values(listing))
    click.echo(render.tagged(result, location))


@main.command()
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
    settings = _settings()
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
    if not summary.listed:
        click.echo(f"warning: nothing was listed at {redact(' '.join(locations))}", err=True)
    verb = "would enqueue" if dry_run else "enqueued"
    click.echo(f"run {summary.run_id}: listed {summary.listed}, {verb} {summary.enqueued} in "
               f"{render.plural(summary.chunks, 'chunk')}, {summary.describe_skips()} (label "
               f"set {labelset.id}, model {settings.model})", err=dry_run)
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


@main.command()
@click.option("--run", "run_id", help="One run (default: everything, and the latest run).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for machines.")
def status(run_id: str | None, as_json: bool) -> None:
    """Queue depth, done / failed / in flight / pending images, throughput, ETA."""
    settings = _settings()
    ready(settings)
    report = reporting.status(settings, run_id)
    click.echo(json.dumps(report, ensure_ascii=False) if as_json else render.status(report))


@main.command()
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="A JSON list, for machines.")
def runs(limit: int, as_json: bool) -> None:
    """Recent runs, newest first: source, model, label set, counts by reason, state."""
    found = db_status.find_runs(ready(_settings()), limit=limit)
    click.echo(json.dumps(found, ensure_ascii=False) if as_json
               else "\n".join(render.run(r) for r in found) or "no runs yet")


@main.command()
@click.option("--run", "run_id", help="The run to wait for (default: the latest).")
@click.option("--all", "every_run", is_flag=True,
              help="Wait until no image of any run is pending (several label sets a night).")
@click.option("--timeout", type=float, default=24 * 3600, show_default=True, help="Seconds.")
def wait(run_id: str | None, every_run: bool, timeout: float) -> None:
    """Wait, showing progress, until every image of a run has a result (exit 1 on timeout)."""
    if run_id and every_run:
        raise click.UsageError("give --run or --all, not both")
    settings = _settings()
    ready(settings)
    with Progress("waiting", watching=True) as bar:
        counts = reporting.wait(settings, run_id, timeout, every_run=every_run, on_progress=(
            lambda c: bar.update(c["done"] + c["failed"], c["done"] + c["failed"] + c["pending"],
                                 f"{c['in_flight']} in flight")))
    click.echo(f"run {counts['run']}: {counts['done']} done, {counts['failed']} failed"
               + (f" ({render.counts(counts['failed_by_reason'])})"
                  if counts["failed_by_reason"] else ""))


@main.command()
@click.option("--format", "fmt", type=click.Choice(sorted(WRITERS)),
              help="[default: from --output's suffix, else jsonl]")
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False),
              help="File to write (default: standard output).")
@click.option("--run", "run_id", help="Only this run's results.")
@click.option("--status", "status_", type=click.Choice(["done", "failed"]))
@click.option("--embeddings", "vectors", is_flag=True,
              help="Kept image embeddings instead of labels: uri, key, model, sha256, "
                   "embedding (jsonl or parquet).")
def export(fmt: str | None, output: Path | None, run_id: str | None, status_: str | None,
           vectors: bool) -> None:
    """Export results: one record per image with its labels, scores, status and error."""
    settings = _settings()
    engine = ready(settings)
    if run_id:
        reporting.find_run(settings, run_id)  # an unknown run is a mistake, not 0 results
    fmt = fmt or format_of(str(output or ""))
    if vectors and (status_ or fmt == "csv"):
        raise click.UsageError("--embeddings writes jsonl or parquet, without --status")
    left_out = 0
    with written(output) as out:
        if vectors:
            count, left_out = export_embeddings(_kept(settings, engine, run_id), out, fmt)
        else:
            count = export_rows(judged_rows(engine, db.iter_results(
                engine, run_id=run_id, status=status_)), out, fmt)
    click.echo(render.exported(count, "embeddings" if vectors else "results", output, left_out),
               err=True)


def _kept(settings: Settings, engine: sa.Engine, run_id: str | None) -> Any:
    """The kept embeddings of the weights TAGGER_MODEL names here (of one run's images)."""
    model = served(settings)
    return kept.read_images(engine, kept.Scope(model, run_id),
                            timeout=settings.read_timeout) if model else iter(())


@main.command()
@click.option("--run", "run_id", help="The run to show (default: the latest).")
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False),
              help="HTML file to write [default: RUN.html beside the run's results under "
                   "TAGGER_HOME].")
@click.option("--preview-seconds", type=click.FloatRange(min=1), default=PREVIEW_SECONDS,
              show_default=True, help="Time for all previews; the rest say they ran out.")
def report(run_id: str | None, output: Path | None, preview_seconds: float) -> None:
    """Write one self-contained HTML page of a run: its figures, a gallery per label, the least
    confident images, failures by reason and a score histogram."""
    settings = _settings()
    ready(settings)
    click.echo(f"report: {write_report(settings, output, run_id, preview_seconds=preview_seconds)}")


@main.command("retry-failed")
@click.option("--reason", help="Only failures with this reason (see `producer status`).")
@chunk_option
def retry_failed(reason: str | None, chunk_size: int | None) -> None:
    """Enqueue failed images again; a later success replaces the failure.

    Failed images whose URLs were signed (not stored) are cleared instead: the next listing
    of their source sends them again, freshly signed."""
    settings = _settings()
    engine, model = ready(settings), served(settings)
    forgotten = db.forget_signed_failures(engine, model.id, reason) if model else 0
    if forgotten:
        click.echo(f"{forgotten} failed images had signed URLs or credentials, which are not "
                   "stored: their failures are cleared, and the next listing of their source "
                   "sends them again")
    summaries = enqueuing.retry_failed(settings, reason, chunk_size or settings.chunk_size)
    if not summaries and not forgotten:
        click.echo("no failed images to retry")
    for labelset_id, summary in summaries:
        click.echo(f"run {summary.run_id}: re-enqueued {summary.enqueued} failed images "
                   f"of label set {labelset_id} in {render.plural(summary.chunks, 'chunk')}")


for subcommand in (database, export_backlog, relabel, corrections, serve, cancel,
                   *search_commands.COMMANDS):
    main.add_command(subcommand)
