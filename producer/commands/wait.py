"""``producer wait``: parse and delegate (producer/status.py), with a progress line."""

from __future__ import annotations

import click

from producer import render
from producer import status as reporting
from producer.commands.common import ready
from producer.progress import Progress
from worker.core.settings import load_settings


@click.command()
@click.option("--run", "run_id", help="The run to wait for (default: the latest).")
@click.option("--all", "every_run", is_flag=True,
              help="Wait until no image of any run is pending (several label sets a night).")
@click.option("--timeout", type=float, default=24 * 3600, show_default=True, help="Seconds.")
def wait(run_id: str | None, every_run: bool, timeout: float) -> None:
    """Wait, showing progress, until every image of a run has a result (exit 1 on timeout)."""
    if run_id and every_run:
        raise click.UsageError("give --run or --all, not both")
    settings = load_settings()
    ready(settings)
    with Progress("waiting", watching=True) as bar:
        counts = reporting.wait(settings, run_id, timeout, every_run=every_run, on_progress=(
            lambda c: bar.update(c["done"] + c["failed"], c["done"] + c["failed"] + c["pending"],
                                 f"{c['in_flight']} in flight")))
    click.echo(f"run {counts['run']}: {counts['done']} done, {counts['failed']} failed"
               + (f" ({render.counts(counts['failed_by_reason'])})"
                  if counts["failed_by_reason"] else ""))
