"""Where results go: the Sink interface and its registry; TAGGER_SINKS names the ones a worker uses.

A new sink (a Kafka topic, a search index) is one module with a class shaped like ``Sink`` and
one line in ``SINKS`` (a ``Part`` declaring its own settings, ``TAGGER_KAFKA_*``, if it has any:
``settings.part("kafka")``); ``TAGGER_SINKS=database,kafka`` turns it on. The results database
always comes first: it commits before the message is acknowledged, and the others follow it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from worker.core.contract import Result
from worker.core.registry import Registry
from worker.core.settings import PRIMARY_SINK as PRIMARY  # noqa: F401 - as before

if TYPE_CHECKING:
    from worker.core.settings import Settings


class Sink(Protocol):
    """Takes one chunk's results; raises TransientError when they could not be stored."""

    def __init__(self, settings: Settings) -> None: ...

    def write(self, results: Sequence[Result], task_id: str | None = None) -> None: ...


SINKS: Registry[type[Sink]] = Registry("sink", {
    "database": "worker.sinks.database:DatabaseSink",
})


def make_sinks(settings: Settings) -> list[Sink]:
    """The sinks TAGGER_SINKS names, in its order (the results database first)."""
    return [SINKS.get(name)(settings) for name in settings.sinks]
