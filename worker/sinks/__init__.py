"""Where results go: the Sink interface and its registry; TAGGER_SINKS names the ones a worker uses.

A new sink (a Kafka topic, a search index) is one module with a class shaped like ``Sink`` and
one line in ``SINKS`` (a ``Part`` declaring its own settings, ``TAGGER_KAFKA_*``, if it has any:
``settings.part("kafka")``); ``TAGGER_SINKS=database,kafka`` turns it on. Every result goes through
them: a chunk's (a list of `Result`) and a relabel's, a batch at a time (a `Scored`, which
iterates as `Result`s made as they are asked for). The results database always comes first:
it commits before the message is acknowledged, and the others follow it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Protocol

from worker.core.contract import Result
from worker.core.registry import PRIMARY_SINK, Registry

if TYPE_CHECKING:
    from worker.core.settings import Settings

PRIMARY = PRIMARY_SINK
# A chunk's results (a list), or a relabel's batch (worker.core.scored.Scored): both are sized
# collections of `Result`; a sink that only iterates needs to tell them apart for nothing.
Results = Collection[Result]


class Sink(Protocol):
    """Takes one chunk's results or one relabel batch; raises TransientError when they could not
    be stored. ``task_id``: the chunk message whose delivery the write closes (None: a relabel
    batch, whose range is closed after its last batch)."""

    def __init__(self, settings: Settings) -> None: ...

    def write(self, results: Results, task_id: str | None = None) -> None: ...


SINKS: Registry[type[Sink]] = Registry("sink", {
    "database": "worker.sinks.database:DatabaseSink",
})


def make_sinks(settings: Settings) -> list[Sink]:
    """The sinks TAGGER_SINKS names, in its order (the results database first)."""
    return [SINKS.get(name)(settings) for name in settings.sinks]


def write_all(sinks: Sequence[Sink], results: Results, task_id: str | None = None) -> None:
    """``results`` to every sink, in order: the database's commit comes before the others."""
    for sink in sinks:
        sink.write(results, task_id)
