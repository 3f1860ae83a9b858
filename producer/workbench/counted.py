"""Figures that take a scan of a run's results (counts by state, reason and label: a second or
more at a million images), counted off the request path and kept a while: a page shows the
latest count and when it was made, or says it is counting and reloads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as Late
from typing import Any

FRESH = 30.0  # seconds a count is shown before it is counted again (in the background)
PATIENCE = 1.0  # seconds a page waits for a first count before it says it is counting
KEPT = 200  # counts kept (least recently counted dropped)


class Counted:
    """Counts by key; at most two counting at once, one per key."""

    def __init__(self, fresh: float = FRESH, patience: float = PATIENCE) -> None:
        self.fresh = fresh
        self.patience = patience
        self._lock = threading.Lock()
        self._done: dict[Hashable, tuple[Any, float]] = {}
        self._counting: dict[Hashable, Future[Any]] = {}
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="count")

    def get(self, key: Hashable, count: Callable[[], Any]) -> tuple[Any, float | None]:
        """(the latest count, when it was made), or (None, None) while the first is counting."""
        with self._lock:
            done = self._done.get(key)
            if done is not None and time.time() - done[1] < self.fresh:
                return done
            future = self._counting.get(key)
            if future is None:
                future = self._counting[key] = self._pool.submit(self._count, key, count)
        if done is not None:
            return done
        try:
            future.result(timeout=self.patience)
        except Late:
            return None, None
        with self._lock:
            return self._done.get(key, (None, None))

    def _count(self, key: Hashable, count: Callable[[], Any]) -> None:
        try:
            value = count()
            with self._lock:
                self._done[key] = (value, time.time())
                while len(self._done) > KEPT:
                    self._done.pop(min(self._done, key=lambda k: self._done[k][1]))
        finally:
            with self._lock:
                self._counting.pop(key, None)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
