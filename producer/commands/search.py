"""``producer search``, ``similar`` and ``duplicates``: parse and delegate (worker/search)."""

from __future__ import annotations

from pathlib import Path

import click

from producer import duplicates as writing
from producer.search import finder, shown
from worker.core.settings import load_settings
from worker.search import THRESHOLD


def _note(line: str) -> None:
    click.echo(line, err=True)


top_option = click.option("--top", type=click.IntRange(1, 10_000), default=50,
                          show_default=True, help="How many images to show.")
json_option = click.option("--json", "as_json", is_flag=True, help="A JSON list, for scripts.")


@click.command()
@click.argument("query")
@top_option
@click.option("--run", help="Only the images of this run.")
@click.option("--label", help="Only images with this top label.")
@json_option
def search(query: str, top: int, run: str | None, label: str | None, as_json: bool) -> None:
    """Images ranked by how well they match a text (e.g. 红色连衣裙), from their kept
    embeddings: nothing is fetched or decoded."""
    hits = finder(load_settings(), _note).text(query, top=top, run=run, label=label)
    click.echo(shown(hits, as_json))


@click.command()
@click.argument("target", metavar="URI-OR-FILE")
@top_option
@json_option
def similar(target: str, top: int, as_json: bool) -> None:
    """Images nearest to a catalogued image (itself first), or to an image file."""
    click.echo(shown(finder(load_settings(), _note).similar(target, top=top), as_json))


@click.command()
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True), default=THRESHOLD,
              show_default=True, help="Cosine at which two images count as one (unmeasured "
                                      "for the real checkpoint: docs/search.md).")
@click.option("--run", help="Only the images of this run.")
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="dupes.jsonl, .csv or .html")
def duplicates(threshold: float, run: str | None, output: Path) -> None:
    """Groups of near-duplicates (re-encoded, resized, recoloured copies) and exact copies."""
    writing.check_output(output)
    groups = finder(load_settings(), _note).duplicates(threshold=threshold, run=run)
    writing.write(groups, output, threshold)
    click.echo(f"{len(groups)} groups, {sum(len(g.members) for g in groups)} images: {output}")


COMMANDS = (search, similar, duplicates)
