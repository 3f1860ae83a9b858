"""The folders a run's chunks may read files from: TAGGER_FILE_ROOTS plus the run's own folder."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy.engine import Engine

from worker.db import writes as db

MAX_RUNS = 1000  # runs remembered per process


class FileRoots:
    """Per run, once per process once its listing has ended (a listing still running may add
    the targets of links it meets); a catalogue row never widens them, only a folder listing."""

    def __init__(self, engine: Engine, configured: tuple[Path, ...]) -> None:
        self.engine = engine
        self.configured = configured
        self._runs: dict[str | None, tuple[Path, ...]] = {}
        self._lock = threading.Lock()

    def for_run(self, run_id: str | None) -> tuple[Path, ...]:
        with self._lock:
            if run_id in self._runs:
                return self._runs[run_id]
            own, final = db.run_file_roots(self.engine, run_id) if run_id else ([], True)
            roots = self.configured + tuple(Path(p) for p in own)
            if final:
                if len(self._runs) >= MAX_RUNS:
                    self._runs.clear()
                self._runs[run_id] = roots
            return roots
