"""The primary sink: one transaction per chunk in the results database (idempotent upserts)."""

from __future__ import annotations

from collections.abc import Sequence

from worker.core.contract import Result
from worker.db import results as db
from worker.db.schema import engine_for


class DatabaseSink:
    """Upserts results, clears their pending marks and closes the delivery, all or nothing."""

    def __init__(self, database_url: str) -> None:
        self.engine = engine_for(database_url)

    def write(self, results: Sequence[Result], task_id: str | None = None) -> None:
        db.write_results(self.engine, results, task_id)
