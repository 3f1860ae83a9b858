"""``producer export``: parse and delegate (producer/export.py): results or kept embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa

from producer import render
from producer import status as reporting
from producer.commands.common import ready
from producer.export import WRITERS, export_embeddings, format_of, written
from producer.export import export as export_rows
from producer.judged import judged_rows
from worker.core.settings import Settings, load_settings
from worker.db import embeddings as kept
from worker.db import runs as db
from worker.db.models import served


@click.command()
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
    settings = load_settings()
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
