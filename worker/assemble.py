"""Settings to parts: the one place that builds what a worker process holds.

Backend, decoder, sinks, label-set store and database engine are made here from ``Settings`` and
handed to the loop (``pipeline.Tagger``) and the chunk runner (``chunks``), which never read
settings themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine

from worker.backends import Backend
from worker.backends.choose import load_backend
from worker.core.settings import Settings
from worker.db.schema import engine_for
from worker.decoders import make_decoder
from worker.dedupe import KnownContent
from worker.file_roots import FileRoots
from worker.labelstore import LabelStore
from worker.pipeline import LoopOptions, Tagger
from worker.sinks import Sink, make_sinks
from worker.sources import Source, source_for


@dataclass
class Parts:
    """What one worker process holds while it tags chunks."""

    model: str
    max_deliveries: int
    engine: Engine
    sinks: list[Sink]
    labels: LabelStore
    roots: FileRoots
    tagger: Tagger

    def close(self) -> None:
        """Stop the loop's threads and the decoder's processes."""
        self.tagger.close()


def assemble(settings: Settings, folder: Path, backend: Backend | None = None) -> Parts:
    """Every part, from ``settings``; ``backend``: one already loaded (tests, benchmarks)."""
    engine = engine_for(settings.database_url)
    backend = backend or load_backend(settings, folder)
    decoder = make_decoder(settings, backend.device)

    def sources(uri: str) -> Source:
        return source_for(uri, settings)

    overlap = settings.decode_overlap
    options = LoopOptions(
        fetch_threads=settings.fetch_threads, item_timeout=settings.item_timeout,
        top_k=settings.top_k,
        take_turns=overlap == "off" or (overlap == "auto" and backend.device == "cpu"))
    tagger = Tagger(backend, decoder, sources, KnownContent(engine, settings.model), options)
    return Parts(model=settings.model, max_deliveries=settings.max_deliveries, engine=engine,
                 sinks=make_sinks(settings),
                 labels=LabelStore(engine, settings.model, backend),
                 roots=FileRoots(engine, settings.file_roots), tagger=tagger)
