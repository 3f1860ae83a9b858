"""The primary sink: one transaction per chunk, or per relabel batch, in the results database."""

from __future__ import annotations

from worker.core.scored import Scored
from worker.core.settings import Settings
from worker.db import writes
from worker.db.schema import engine_for
from worker.sinks import Results


class DatabaseSink:
    """Upserts results, clears their pending marks and closes the delivery, all or nothing;
    keeps the image embeddings computed for them in the same transaction (unless
    TAGGER_KEEP_EMBEDDINGS=0). A relabel batch is written as COPY text, never as `Result`s."""

    def __init__(self, settings: Settings) -> None:
        self.engine = engine_for(settings.database_url)
        self.keep_embeddings = settings.keep_embeddings

    def write(self, results: Results, task_id: str | None = None) -> None:
        if isinstance(results, Scored):
            writes.write_scored(self.engine, results)
        else:
            writes.write_results(self.engine, list(results), task_id, self.keep_embeddings)
