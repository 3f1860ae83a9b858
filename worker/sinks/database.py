"""The primary sink: one transaction per chunk in the results database (idempotent upserts)."""

from __future__ import annotations

from collections.abc import Sequence

from worker.core.contract import Result
from worker.core.settings import Settings
from worker.db import writes
from worker.db.schema import engine_for


class DatabaseSink:
    """Upserts results, clears their pending marks and closes the delivery, all or nothing;
    keeps the image embeddings computed for them in the same transaction (unless
    TAGGER_KEEP_EMBEDDINGS=0)."""

    def __init__(self, settings: Settings) -> None:
        self.engine = engine_for(settings.database_url)
        self.keep_embeddings = settings.keep_embeddings

    def write(self, results: Sequence[Result], task_id: str | None = None) -> None:
        writes.write_results(self.engine, results, task_id, self.keep_embeddings)
