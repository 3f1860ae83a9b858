"""``producer relabel`` (and ``--learn``): parse and delegate (relabel.py, learn/version.py)."""

from __future__ import annotations

from pathlib import Path

import click

from producer import relabel as relabelling
from producer import render
from producer.commands.common import labels_option, labelset_of, ready, templates_option
from producer.learn.version import describe, learn_and_relabel
from worker.core.settings import load_settings


@click.command()
@labels_option
@templates_option
@click.option("--run", "scope_run", help="Only the images of this run (default: every image "
                                          "with a kept embedding under TAGGER_MODEL).")
@click.option("--learn", is_flag=True,
              help="First learn a new version of the label set from the reviewers' "
                   "corrections, then score every kept embedding with it.")
@click.option("--timeout", type=float, default=24 * 3600, show_default=True, help="Seconds.")
def relabel(labels: Path | None, templates: Path | None, scope_run: str | None, learn: bool,
            timeout: float) -> None:
    """Score images with a label set from their kept embeddings: nothing is fetched."""
    settings = load_settings()
    ready(settings)
    labelset = labelset_of(settings, labels, templates)
    echo = lambda text: click.echo(text, err=True)  # noqa: E731
    if learn:
        if scope_run:
            raise click.UsageError("--learn scores every kept embedding: leave out --run")
        done = learn_and_relabel(settings, labelset.id, timeout=timeout, echo=echo)
        click.echo(render.learned(done, describe(done["report"])))
    elif settings.embedded_broker:
        counts = relabelling.relabel_here(settings, labelset, scope_run=scope_run,
                                          timeout=timeout, echo=echo)
        click.echo(render.relabelled(counts, labelset.id))
    else:
        click.echo(render.relabelling(relabelling.relabel(settings, labelset,
                                                          scope_run=scope_run), settings.model))
