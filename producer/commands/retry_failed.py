"""``producer retry-failed``: parse and delegate (producer/enqueue.py): failures sent again."""

from __future__ import annotations

import click

from producer import enqueue as enqueuing
from producer import render
from producer.commands.common import chunk_option, ready
from worker.core.settings import load_settings
from worker.db import runs as db
from worker.db.models import served


@click.command("retry-failed")
@click.option("--reason", help="Only failures with this reason (see `producer status`).")
@chunk_option
def retry_failed(reason: str | None, chunk_size: int | None) -> None:
    """Enqueue failed images again; a later success replaces the failure.

    Failed images whose URLs were signed (not stored) are cleared instead: the next listing
    of their source sends them again, freshly signed."""
    settings = load_settings()
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
