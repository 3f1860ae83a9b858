"""The ``producer`` command: parse options and delegate to listing, enqueue, status, export."""

from __future__ import annotations

import functools
import itertools
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import kombu.exceptions
import sqlalchemy as sa
from tqdm import tqdm

from producer import enqueue as enqueuing
from producer import export as exporting
from producer import listing
from producer import status as reporting
from worker import store
from worker.app import create_app
from worker.labels import LabelSetError, load_labelset
from worker.settings import Settings, SettingsError, load_settings


def _user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Show configuration, source, broker and database trouble as one line, exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (SettingsError, LabelSetError, listing.SourceError) as exc:
            raise click.ClickException(str(exc)) from exc
        except kombu.exceptions.OperationalError as exc:
            raise click.ClickException(f"broker unreachable: {exc}") from exc
        except sa.exc.OperationalError as exc:
            raise click.ClickException(f"database unreachable: {exc.orig}") from exc

    return wrapper


def _ready(settings: Settings) -> sa.Engine:
    engine = store.engine_for(settings.database_url)
    if not store.has_schema(engine):
        raise click.ClickException("the results database has no tables yet: "
                                   "run `alembic upgrade head` first")
    return engine


def _primed(items: Iterator[Any]) -> Iterator[Any]:
    """Start the listing now, so a missing bucket fails before a run is recorded."""
    first = list(itertools.islice(items, 1))
    return itertools.chain(first, items)


@click.group()
def main() -> None:
    """Enqueue a catalogue of images for Chinese labels, watch the run, export the labels.

    Configuration comes from the environment: CELERY_BROKER_URL, DATABASE_URL, TAGGER_* and
    boto3's AWS_* settings. With none of them set everything runs under ./.tagger/.
    """


@main.command()
@click.option("--bucket", help="S3 bucket to list.")
@click.option("--prefix", default="", help="Only keys under this prefix.")
@click.option("--dir", "folder", type=click.Path(path_type=Path), help="Local folder (recursive).")
@click.option("--database-url", envvar="CATALOG_DATABASE_URL",
              help="Catalogue database to read image URLs from.")
@click.option("--query", help="SQL returning (key, image_url[, version]) rows.")
@click.option("--table", help="Catalogue table (instead of --query).")
@click.option("--key-column", default="id", show_default=True)
@click.option("--url-column", default="image_url", show_default=True)
@click.option("--version-column", help="Column that changes when the image changes.")
@click.option("--labels", type=click.Path(path_type=Path, dir_okay=False),
              help="Label file (default: TAGGER_LABELS or the shipped e-commerce set).")
@click.option("--templates", type=click.Path(path_type=Path, dir_okay=False),
              help="Prompt templates file, one per line with {} (default: TAGGER_TEMPLATES).")
@click.option("--chunk-size", type=click.IntRange(1), help="Images per message [default: 64].")
@click.option("--force", is_flag=True, help="Re-tag images that already have a result.")
@click.option("--dry-run", is_flag=True, help="Print what would be enqueued; send nothing.")
@_user_errors
def enqueue(bucket: str | None, prefix: str, folder: Path | None, database_url: str | None,
            query: str | None, table: str | None, key_column: str, url_column: str,
            version_column: str | None, labels: Path | None, templates: Path | None,
            chunk_size: int | None, force: bool, dry_run: bool) -> None:
    """List a source and enqueue its images (new or changed ones only, unless --force)."""
    settings = load_settings()
    if sum(x is not None for x in (bucket, folder, database_url)) != 1:
        raise click.UsageError("give exactly one source: --bucket, --dir or --database-url")
    if bucket:
        source, items = f"s3://{bucket}/{prefix}", listing.list_s3(bucket, prefix)
    elif folder:
        source, items = str(folder.absolute()), listing.list_dir(folder)
    else:
        if not query and not table:
            raise click.UsageError("--database-url needs --query or --table")
        sql = query or listing.table_query(table or "", key_column, url_column, version_column)
        source = f"sql: {listing.describe(sql)}"
        items = listing.list_query(database_url or "", sql)
    labelset = load_labelset(labels or settings.labels_path, templates or settings.templates_path)
    _ready(settings)
    items = _primed(items)
    with tqdm(unit=" images", disable=not sys.stderr.isatty(), file=sys.stderr) as bar:
        summary = enqueuing.enqueue(
            items, app=create_app(settings), settings=settings, labelset=labelset, source=source,
            chunk_size=chunk_size or settings.chunk_size, force=force, dry_run=dry_run,
            progress=bar.update, show_due=lambda item: click.echo(item.uri))
    verb = "would enqueue" if dry_run else "enqueued"
    click.echo(f"run {summary.run_id}: listed {summary.listed}, {verb} {summary.enqueued} "
               f"in {summary.chunks} chunks, skipped {summary.skipped} "
               f"(label set {labelset.id}, model {settings.model})", err=dry_run)


@main.command()
@click.option("--run", "run_id", help="One run (default: everything, and the latest run).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for machines.")
@_user_errors
def status(run_id: str | None, as_json: bool) -> None:
    """Queue depth (waiting and reserved), done / failed / pending counts, throughput, ETA."""
    settings = load_settings()
    try:
        report = reporting.status(create_app(settings), _ready(settings), settings.queue, run_id)
    except LookupError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False))
        return
    click.echo(f"queue {report['queue']}: {report['queue_depth']} waiting, "
               f"{report['reserved']} reserved")
    click.echo(f"images: {report['done']} done, {report['failed']} failed, "
               f"{report['pending']} pending")
    for reason, count in sorted(report["failed_by_reason"].items()):
        click.echo(f"  failed {reason}: {count}")
    eta = report["eta_seconds"]
    click.echo(f"rate: {report['images_per_second']} images/s"
               + (f", ETA {eta // 60} min" if eta else ""))
    if report["run"]:
        click.echo(_run_line(report["run"]))


def _run_line(run: dict[str, Any]) -> str:
    return (f"run {run['id']} [{run['state']}] {run['source']}\n"
            f"  model {run['model']}, label set {run['labelset_id']}, started {run['started_at']}"
            + (f", listing finished {run['finished_at']}" if run["finished_at"] else "")
            + f"\n  listed {run['listed']}, enqueued {run['enqueued']}, skipped {run['skipped']}"
            f"; done {run['done']}, failed {run['failed']}, pending {run['pending']}")


@main.command()
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="A JSON list, for machines.")
@_user_errors
def runs(limit: int, as_json: bool) -> None:
    """Recent runs, newest first: source, model, label set, counts and state."""
    found = reporting.recent_runs(_ready(load_settings()), limit)
    if as_json:
        click.echo(json.dumps(found, ensure_ascii=False))
        return
    for run in found:
        click.echo(_run_line(run))


@main.command()
@click.option("--run", "run_id", help="The run to wait for (default: the latest).")
@click.option("--all", "every_run", is_flag=True,
              help="Wait until no image of any run is pending (several label sets a night).")
@click.option("--timeout", type=float, default=24 * 3600, show_default=True, help="Seconds.")
@_user_errors
def wait(run_id: str | None, every_run: bool, timeout: float) -> None:
    """Wait until every image of a run has a result (exit code 1 on timeout)."""
    if run_id and every_run:
        raise click.UsageError("give --run or --all, not both")
    try:
        counts = reporting.wait(_ready(load_settings()), run_id, timeout, every_run=every_run)
    except (LookupError, TimeoutError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"run {counts['run']}: {counts['done']} done, {counts['failed']} failed")


@main.command()
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl",
              show_default=True)
@click.option("--output", type=click.File("w", encoding="utf-8"), default="-",
              help="File to write (default: standard output).")
@click.option("--run", "run_id", help="Only this run's results.")
@click.option("--status", "status_", type=click.Choice(["done", "failed"]))
@_user_errors
def export(fmt: str, output: Any, run_id: str | None, status_: str | None) -> None:
    """Export results: one record per image with its labels, scores, status and error."""
    engine = _ready(load_settings())
    count = exporting.write(store.iter_results(engine, run_id=run_id, status=status_), output,
                            fmt)
    click.echo(f"exported {count} results", err=True)


@main.command("retry-failed")
@click.option("--reason", help="Only failures with this reason (see `producer status`).")
@click.option("--chunk-size", type=click.IntRange(1), help="Images per message.")
@_user_errors
def retry_failed(reason: str | None, chunk_size: int | None) -> None:
    """Enqueue failed images again; a later success replaces the failure."""
    settings = load_settings()
    engine = _ready(settings)
    app = create_app(settings)
    labelset_ids = store.failed_labelsets(engine, settings.model, reason)
    if not labelset_ids:
        click.echo("no failed images to retry")
    for labelset_id in labelset_ids:
        labelset = store.load_labelset(engine, labelset_id)
        if labelset is None:
            continue
        items = list(enqueuing.failed_items(engine, settings.model, labelset_id, reason))
        summary = enqueuing.enqueue(items, app=app, settings=settings, labelset=labelset,
                                    source=f"retry-failed reason={reason or '*'}",
                                    chunk_size=chunk_size or settings.chunk_size, force=True)
        click.echo(f"run {summary.run_id}: re-enqueued {summary.enqueued} failed images "
                   f"of label set {labelset_id} in {summary.chunks} chunks")
