"""``producer serve-metrics``: serve each model queue's backlog to Prometheus (and so to KEDA)."""

from __future__ import annotations

import click

from producer import exporter
from worker.core.celeryconf import tagging_queue
from worker.core.settings import load_settings
from worker.db import migrate


@click.command("serve-metrics")
@click.option("--port", type=click.IntRange(1, 65535), default=exporter.PORT, show_default=True)
@click.option("--address", default="0.0.0.0", show_default=True,
              help="Where to listen (a cluster's Prometheus scrapes it from another pod).")
def export_backlog(port: int, address: str) -> None:
    """Serve /metrics: images not yet answered of each model queue (tagger_backlog_images),
    counted at every scrape as `producer status` counts them, and the broker's chunks."""
    settings = load_settings()
    migrate.ensure_current(settings.database_url, settings.default_database)
    server = exporter.server(settings, port, address, lambda line: click.echo(line, err=True))
    click.echo(f"backlog of {tagging_queue(settings)} (and every model with images pending) "
               f"on http://{address}:{server.server_port}/metrics", err=True)
    with server:
        server.serve_forever()
