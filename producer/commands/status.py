"""``producer status``: parse and delegate (producer/status.py); the report as text or JSON."""

from __future__ import annotations

import json

import click

from producer import render
from producer import status as reporting
from producer.commands.common import ready
from worker.core.settings import load_settings


@click.command()
@click.option("--run", "run_id", help="One run (default: everything, and the latest run).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for machines.")
def status(run_id: str | None, as_json: bool) -> None:
    """Queue depth, done / failed / in flight / pending images, throughput, ETA."""
    settings = load_settings()
    ready(settings)
    report = reporting.status(settings, run_id)
    click.echo(json.dumps(report, ensure_ascii=False) if as_json else render.status(report))
