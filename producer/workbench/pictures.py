"""The workbench's pictures, made as the workers make pixels: in decode processes, through the
same sources, file roots, header guards, deadline and memory cap (producer/thumbnails.py);
the latest ones kept in memory."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

from producer.thumbnails import (
    LARGE,
    SECONDS_EACH,
    THUMBNAIL,
    Preview,
    preview_of,
    preview_pool,
    readable,
)
from worker.core.settings import Settings
from worker.prep.pool import PrepPool

SIZES = {"small": THUMBNAIL, "large": LARGE}
CACHE_BYTES = 64 * 2**20
PROCESSES = 4  # at most: a page of 48 previews keeps them busy, a server needs no more


class Pictures:
    """Previews by (content, size), made on demand; the processes start with the first."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: PrepPool | None = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._bytes = 0

    def pool(self) -> PrepPool:
        with self._lock:
            if self._pool is None:
                self._pool = preview_pool(self.settings, min(PROCESSES,
                                                             self.settings.decode_processes))
            return self._pool

    def get(self, uri: str, content: str, file_roots: Sequence[str], size: str) -> Preview:
        """The picture of ``uri`` (whose content is ``content``) at ``size``, or why none."""
        key = (content, size)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return Preview(jpeg=self._cache[key])
        deadline = time.monotonic() + SECONDS_EACH + self.settings.fetch_timeout
        answers = list(self.pool().prepare([(0, uri)], readable(self.settings, file_roots),
                                           group_size=1, decoder=SIZES[size],
                                           deadline=deadline))
        preview = (preview_of(answers[0].outcome) if answers
                   else Preview(problem="no picture in time"))
        if preview.jpeg is not None:
            self._keep(key, preview.jpeg)
        return preview

    def _keep(self, key: tuple[str, str], jpeg: bytes) -> None:
        with self._lock:
            if key not in self._cache:
                self._cache[key] = jpeg
                self._bytes += len(jpeg)
            while self._bytes > CACHE_BYTES:
                self._bytes -= len(self._cache.popitem(last=False)[1])

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
