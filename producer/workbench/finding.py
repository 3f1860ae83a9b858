"""The server's one search (worker/search's Finder): made and its index loaded in a thread of
its own when the server starts, then shared by every request; a page that needs it before it
is ready says so instead of waiting (building an index over a million images takes minutes).
A thread of its own also keeps the index current, so that no request pays for looking at the
table (counting a million kept embeddings on PostgreSQL takes a few hundred milliseconds)."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as Late
from typing import TYPE_CHECKING

from worker.core.settings import Settings

if TYPE_CHECKING:
    from worker.search import Finder

log = logging.getLogger(__name__)
PATIENCE = 2.0  # seconds a page waits for a Finder still being made before it says so


class NotReady(Exception):
    """Search cannot answer yet (its index is being built), or could not be made: the message
    says which, in one line."""


class Finding:
    """One Finder per server: its index and (from the first text query) its text tower stay
    loaded; the Finder itself is safe across threads and reloads its index when it changes."""

    def __init__(self, settings: Settings, patience: float = PATIENCE) -> None:
        self.settings = settings
        self.patience = patience
        self._lock = threading.Lock()
        self._made: Future[Finder] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finder")
        self._closed = threading.Event()

    def start(self) -> None:
        """Make the Finder and load its index in the background (once; again after a failure)."""
        with self._lock:
            if self._made is None or (self._made.done() and self._made.exception() is not None):
                self._made = self._pool.submit(self._make)

    def finder(self) -> Finder:
        """The Finder, waiting at most ``patience`` for it; NotReady while it is being made."""
        self.start()
        made = self._made
        assert made is not None
        try:
            return made.result(timeout=self.patience)
        except Late:
            raise NotReady("the search index is being prepared (minutes for a large "
                           "catalogue, once): try again shortly") from None
        except Exception as exc:  # the next request tries again: say why this one could not
            raise NotReady(f"search is unavailable: {str(exc).splitlines()[0]}") from None

    def _make(self) -> Finder:
        from producer.search import finder  # NumPy and faiss: only a server that searches

        try:
            made = finder(self.settings, log.info)
            made.index()  # built (or read) once here, then kept warm for every request
        except Exception as exc:
            log.warning("search is unavailable: %s", _line(exc))
            raise
        self._pool.submit(self._warm_text, made)
        threading.Thread(target=self._keep_current, args=(made,), name="finder-current",
                         daemon=True).start()
        return made

    def _keep_current(self, made: Finder) -> None:
        """Refresh twice per CHECK_SECONDS: requests find a snapshot checked within it and
        never check the table themselves."""
        from worker.search.finder import CHECK_SECONDS

        while not self._closed.wait(CHECK_SECONDS / 2):
            try:
                made.refresh()
            except Exception as exc:  # the database away for a moment: the snapshot answers
                log.warning("search index not brought up to date: %s", _line(exc))

    def _warm_text(self, made: Finder) -> None:
        """Load the text tower (exported to ONNX first, once per checkpoint) before the first
        query asks for it, where the checkpoint is on this machine: never downloaded here."""
        from worker.backends.folder import find_local

        if find_local(self.settings.model) is None:
            return
        try:
            made.text("预热", top=1)
        except Exception as exc:  # the first query says why, in its own words
            log.warning("the text tower could not be loaded: %s", _line(exc))

    def close(self) -> None:
        self._closed.set()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]
