"""``producer tag``: parse and delegate (producer/tag.py), then print the closing summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from producer import render
from producer.commands.common import (
    chunk_option,
    labels_option,
    labelset_of,
    listing_options,
    listing_values,
    templates_option,
)
from producer.tag import tag as tag_location
from worker.core.settings import load_settings


@click.command()
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
    settings = load_settings()
    result = tag_location(settings, location, labelset=labelset_of(settings, labels, templates),
                          output=output, chunk_size=chunk_size or settings.chunk_size,
                          timeout=timeout, force=force, retry_failed=retry_failed,
                          own_worker=not no_worker, echo=lambda line: click.echo(line, err=True),
                          options=listing_values(listing))
    click.echo(render.tagged(result, location))
