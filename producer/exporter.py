"""`producer serve-metrics`: each model queue's true backlog as Prometheus gauges (KEDA)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from producer import status
from worker.core.redact import redact
from worker.core.settings import Settings

PORT = 9200


class Backlog(Collector):
    """Counted afresh at every scrape (no loop of its own, so never a stale number)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        images = GaugeMetricFamily(
            "tagger_backlog_images", "Images of a model queue not answered yet: in chunks "
            "queued, prefetched, running or waiting for a retry (what `producer status` calls "
            "backlog)", labels=["queue", "model"])
        chunks = GaugeMetricFamily(
            "tagger_queue_chunks", "Chunk messages of a model queue in the broker: waiting in "
            "its list (LLEN) or reserved by a worker (kombu's unacked)",
            labels=["queue", "model", "state"])
        for model, backlog in status.backlogs(self.settings).items():
            images.add_metric([backlog["queue"], model], backlog["images"])
            for state in ("waiting", "reserved"):
                chunks.add_metric([backlog["queue"], model, state], backlog[state])
        yield images
        yield chunks


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged: one line every few seconds would bury the failures."""


def application(settings: Settings, on_error: Callable[[str], None]) -> Callable[..., Any]:
    """/metrics from the backlog; a count that fails answers 503, never a zero that would
    scale the fleet in."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Backlog(settings))
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            return list(metrics(environ, start_response))
        except Exception as exc:  # the database or the broker: the next scrape tries again
            line = (redact(str(exc)).strip().splitlines() or [type(exc).__name__])[0]
            on_error(f"backlog not counted: {line}")
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [f"backlog not counted: {line}\n".encode()]

    return app


def server(settings: Settings, port: int, address: str,
           on_error: Callable[[str], None]) -> WSGIServer:
    """The exporter's HTTP server, bound (``serve_forever`` runs it)."""
    return make_server(address, port, application(settings, on_error),
                       handler_class=QuietHandler)
