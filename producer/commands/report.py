"""``producer report``: parse and delegate (producer/report.py); prints the page's path."""

from __future__ import annotations

from pathlib import Path

import click

from producer.commands.common import ready
from producer.report import PREVIEW_SECONDS, write_report
from worker.core.settings import load_settings


@click.command()
@click.option("--run", "run_id", help="The run to show (default: the latest).")
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False),
              help="HTML file to write [default: RUN.html beside the run's results under "
                   "TAGGER_HOME].")
@click.option("--preview-seconds", type=click.FloatRange(min=1), default=PREVIEW_SECONDS,
              show_default=True, help="Time for all previews; the rest say they ran out.")
def report(run_id: str | None, output: Path | None, preview_seconds: float) -> None:
    """Write one self-contained HTML page of a run: its figures, a gallery per label, the least
    confident images, failures by reason and a score histogram."""
    settings = load_settings()
    ready(settings)
    click.echo(f"report: {write_report(settings, output, run_id, preview_seconds=preview_seconds)}")
