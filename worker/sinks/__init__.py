"""Where results go: the results database first (committed before the message is acknowledged).

A live sink (a Kafka topic, a search index) is one module with a class shaped like ``Sink``,
added in ``make_sinks``; export files (jsonl, csv, parquet) are writers in ``sinks.files``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from worker.core.contract import Result
from worker.core.settings import Settings


class Sink(Protocol):
    """Takes one chunk's results; raises TransientError when they could not be stored."""

    def write(self, results: Sequence[Result], task_id: str | None = None) -> None: ...


def make_sinks(settings: Settings) -> list[Sink]:
    """The sinks a worker writes to, the results database first."""
    from worker.sinks.database import DatabaseSink

    return [DatabaseSink(settings.database_url)]
