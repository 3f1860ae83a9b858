"""``producer serve``: parse and delegate to the workbench."""

from __future__ import annotations

import click

from worker.core.settings import load_settings


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; another than this machine's needs TAGGER_SERVE_TOKEN.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
def serve(host: str, port: int) -> None:
    """The workbench in a browser: runs, galleries per label (least confident first), images,
    corrections, thresholds, and label sets that learn from the corrections."""
    from producer.workbench.serve import serve as run

    run(load_settings(), host, port)
