"""Settings to parts: the one place that builds what a worker process holds.

Backend, decoder, decode processes, forward thread, sinks, label-set store and database engine
are made here from ``Settings`` and handed to the loop (``pipeline.Tagger``) and the chunk
runner (``chunks``), which never read settings themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import Engine

from worker.backends import Backend
from worker.backends.choose import load_backend
from worker.backends.weights import Weights, checkpoint_digest
from worker.core.settings import Settings
from worker.db import models
from worker.db.models import Model
from worker.db.schema import engine_for
from worker.decoders import DECODERS, decoder_name
from worker.loop.batcher import Batcher
from worker.loop.dedupe import KnownContent
from worker.loop.file_roots import FileRoots
from worker.loop.labelstore import LabelStore
from worker.loop.pipeline import Tagger
from worker.prep.pool import prep_pool
from worker.sinks import Sink, make_sinks

LINGER_ON_GPU = 0.005  # seconds a partial batch waits for other chunks' images


@dataclass
class Parts:
    """What one worker process holds while it tags chunks."""

    model: str  # the name it serves (TAGGER_MODEL): which chunks and ranges are its own
    served: Model  # the weights it runs: what its results and embeddings are keyed by
    max_deliveries: int
    read_timeout: float
    engine: Engine
    sinks: list[Sink]
    labels: LabelStore
    roots: FileRoots
    tagger: Tagger

    def close(self) -> None:
        """Stop the forward thread and the decode processes."""
        self.tagger.close()


def assemble(settings: Settings, folder: Path, backend: Backend | None = None,
             weights: Weights | None = None, model_processes: int = 1) -> Parts:
    """Every part, from ``settings``; ``weights``: the checkpoint's digest, if computed already;
    ``backend``: one already loaded (tests, benchmarks: identified by the model's name unless
    ``weights`` are given); ``model_processes``: this process's siblings and itself (prefork
    -c K), who share the host's cores for decoding."""
    engine = engine_for(settings.database_url)
    if weights is None:
        weights = (checkpoint_digest(folder, settings.cache_dir) if backend is None
                   else Weights(settings.model, datetime.fromtimestamp(0, UTC)))
    served = models.register(engine, weights, settings.model)
    backend = backend or load_backend(settings, folder)
    on_cpu = backend.device == "cpu"
    overlap = settings.decode_overlap
    take_turns = overlap == "off" or (overlap == "auto" and on_cpu)
    name = decoder_name(settings.decoder, backend.device)
    prep = prep_pool(settings, name, backend.preprocess, take_turns,
                     model_processes=model_processes)
    batcher = Batcher(backend, prep.turns, linger=0.0 if on_cpu else LINGER_ON_GPU)
    tagger = Tagger(backend, DECODERS.get(name)(settings, backend.device), prep, batcher,
                    KnownContent(engine, served), settings.top_k,
                    settings.group_size(backend.batch_size))
    return Parts(model=settings.model, served=served, max_deliveries=settings.max_deliveries,
                 read_timeout=settings.read_timeout, engine=engine, sinks=make_sinks(settings),
                 labels=LabelStore(engine, served.id, backend),
                 roots=FileRoots(engine, settings.file_roots), tagger=tagger)
