"""``producer cancel RUN``: parse and delegate (producer/cancel.py)."""

from __future__ import annotations

import click

from producer.cancel import cancel as cancel_run
from worker.core.settings import load_settings
from worker.db import migrate


@click.command()
@click.argument("run_id", metavar="RUN")
def cancel(run_id: str) -> None:
    """Withdraw a run: its queued chunks or ranges leave the queue, its images stop being
    pending (`producer wait` returns; a later run may send them again), and workers drop the
    rest of its messages. Chunks already running finish and keep their results."""
    settings = load_settings()
    migrate.ensure_current(settings.database_url, settings.default_database)
    click.echo(cancel_run(settings, run_id))
