"""``producer runs``: recent runs from the results database, as text or JSON."""

from __future__ import annotations

import json

import click

from producer import render
from producer.commands.common import ready
from worker.core.settings import load_settings
from worker.db import status as db_status


@click.command()
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="A JSON list, for machines.")
def runs(limit: int, as_json: bool) -> None:
    """Recent runs, newest first: source, model, label set, counts by reason, state."""
    found = db_status.find_runs(ready(load_settings()), limit=limit)
    click.echo(json.dumps(found, ensure_ascii=False) if as_json
               else "\n".join(render.run(r) for r in found) or "no runs yet")
