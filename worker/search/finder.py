"""``Finder``: text, similar-image and near-duplicate searches over one database's kept
embeddings, the index and the towers loaded once and the index reloaded when it changed."""

from __future__ import annotations

import functools
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from worker.core.embedding import key_of
from worker.core.errors import ConfigError
from worker.core.labels import load_labelset
from worker.core.settings import Settings
from worker.db.schema import engine_for
from worker.search import exact, keeper
from worker.search.groups import group
from worker.search.hits import THRESHOLD, Group, Hit
from worker.search.image import ImageEncoder
from worker.search.index import EF_TEXT, EXACT_BELOW, Index
from worker.search.store import Store
from worker.search.text import QueryError, TextEncoder, check_query
from worker.search.towers import towers
from worker.sources.local import path_of

log = logging.getLogger(__name__)
CHECK_SECONDS = 5.0  # how often a long-lived Finder looks for new kept embeddings
NEIGHBOURS = 100  # nearest contents looked at for one image's duplicates


class Finder:
    """Searches one database's kept embeddings of ``settings.model``; safe across threads."""

    def __init__(self, settings: Settings, note: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.note = note or log.info
        self.store = Store(engine_for(settings.database_url), settings)
        self.folder = settings.index_dir
        self.templates = load_labelset(settings.labels_path, settings.templates_path).templates
        self._index: Index | None = None
        self._checked = -np.inf
        self._refreshing = threading.Lock()
        self._loading = threading.Lock()
        self._text: TextEncoder | None = None
        self._image: ImageEncoder | None = None

    @property
    def name(self) -> str:
        """The index's name: this database and the weights searched."""
        return keeper.index_name(self.settings.database_url, self.store.identity())

    @property
    def snapshot(self) -> Index | None:
        """The snapshot searched now, as it is (None before the first search)."""
        return self._index

    def index(self) -> Index:
        """The current snapshot: checked against the table every CHECK_SECONDS; while one
        thread updates or reloads it, the others search the snapshot they had."""
        if self._index is not None and time.monotonic() - self._checked < CHECK_SECONDS:
            return self._index
        return self.refresh()

    def refresh(self) -> Index:
        """The snapshot brought up to the table (and to what another process saved) now; a
        long-lived searcher calls this beside its searches so that they never wait for it."""
        if not self._refreshing.acquire(blocking=self._index is None):
            return self._index  # type: ignore[return-value]
        try:
            kept = self._index
            if kept is not None and kept.generation() != Index.pointed(self.folder, self.name):
                # another process saved a new generation: load that one (the delta alone
                # where its main index is the one this process has)
                kept = Index.load(self.folder, self.name, kept)
            self._index = keeper.current(self.store, self.folder, self.name, self.note, kept)
            self._checked = time.monotonic()
            return self._index
        finally:
            self._refreshing.release()

    def text(self, query: str, *, top: int = 50, run: str | None = None,
             label: str | None = None) -> list[Hit]:
        """Images ranked by the cosine of their kept embedding to the text's (under the same
        prompt templates as labels). Nothing is fetched or decoded."""
        check_query(query)  # before anything is loaded
        index = self.index()
        within = self._within(run, label)
        vector = self._text_vector(query)
        hits = self._hits(index, vector, top * (2 if label else 1), within, EF_TEXT)
        return [h for h in hits if label is None or h.top_label == label][:top]

    def similar(self, target: str | bytes, *, top: int = 50) -> list[Hit]:
        """Images nearest to a catalogued image (a URI or file path with a kept embedding:
        itself first) or to an image's bytes or file (embedded through the image tower)."""
        index = self.index()
        vector, content = self._target(target)
        hits = self._hits(index, vector, top, None)
        # Its own content first, at 1: float16 rounding can put a copy at 0.99999 above it.
        own = [Hit(h.uri, 1.0, h.sha256, h.top_label, h.run_id) for h in hits
               if h.sha256 == content]
        return (own + [h for h in hits if h.sha256 != content])[:top]

    def duplicates_of(self, uri: str, *, threshold: float | None = None) -> list[Hit]:
        """The other images at or above ``threshold`` to a catalogued image, nearest first."""
        vector = self._kept_vector(self.store.content_of(self._uri_of(uri)))
        if vector is None:
            raise ConfigError(f"{uri} is not a catalogued image with a kept embedding")
        bar = THRESHOLD if threshold is None else threshold
        hits = self._hits(self.index(), vector, NEIGHBOURS, None)
        return [h for h in hits if h.score >= bar and h.uri != self._uri_of(uri)]

    def duplicates(self, *, threshold: float | None = None, run: str | None = None
                   ) -> list[Group]:
        """Groups of near-duplicates (every pair at or above ``threshold`` lands in one group,
        and every member has such a pair), and the exact copies; the largest first."""
        bar = THRESHOLD if threshold is None else threshold
        index = self.index()
        within = self._within(run, None)
        found = group(self._pairs(index, bar, within))
        return self._groups(found, within)

    def _pairs(self, index: Index, bar: float, within: np.ndarray | None
               ) -> Iterator[tuple[int, int, float]]:
        if within is not None and len(within) < EXACT_BELOW:
            keys, vectors = self.store.vectors(within)
            yield from exact.pairs(vectors, keys, bar)
            return
        done = 0
        for keys, vectors in index.blocks():  # the index's own copy: no database read
            if within is not None:
                mask = np.isin(keys, within)
                keys, vectors = keys[mask], vectors[mask]
            for a, b, score in index.pairs(vectors, keys, bar):
                if within is None or np.isin(b, within):
                    yield a, b, score
            done += len(keys)
            self.note(f"compared {done:,} of {index.count:,} kept embeddings")

    def _groups(self, found: list[tuple[list[int], list[tuple[int, int, float]]]],
                within: np.ndarray | None) -> list[Group]:
        keys = [k for members, _ in found for k in members]
        copies = [k for k in self.store.copies() if within is None or np.isin(k, within)]
        images = self.store.images([*keys, *copies])
        groups = []
        for members, edges in [*found, *(([k], []) for k in copies if k not in set(keys))]:
            best: dict[int, float] = {}
            for a, b, score in edges:
                best[a], best[b] = max(best.get(a, 0.0), score), max(best.get(b, 0.0), score)
            hits = [Hit(i.uri, 1.0 if len(images.get(k, [])) > 1 else best.get(k, 0.0),
                        i.sha256, i.top_label, i.run_id)
                    for k in members for i in images.get(k, [])]
            pairs = [(images[a][0].uri, images[b][0].uri, score) for a, b, score in edges
                     if images.get(a) and images.get(b)]
            pairs += [(i[0].uri, j.uri, 1.0) for k in members
                      if len(i := images.get(k, [])) > 1 for j in i[1:]]
            if len(hits) > 1:
                groups.append(Group(hits, pairs, exact=len(members) == 1))
        return groups

    def _within(self, run: str | None, label: str | None) -> np.ndarray | None:
        if run is not None and not self.store.run_exists(run):
            raise QueryError(f"no run {run}: `producer runs` lists them")
        if run is None and label is None:
            return None
        keys = self.store.keys_of(run=run, label=label)
        if label is not None and not len(keys):
            raise QueryError(f"no image has the top label {label!r}"
                             + (f" in run {run}" if run else ""))
        return keys

    def _hits(self, index: Index, vector: np.ndarray, top: int, within: np.ndarray | None,
              ef: int | None = None) -> list[Hit]:
        scores, keys = index.search(vector, top, within, ef)
        found = [(float(s), int(k)) for s, k in zip(scores[0], keys[0], strict=True) if k != -1]
        images = self.store.images(k for _, k in found)
        return [Hit(i.uri, score, i.sha256, i.top_label, i.run_id)
                for score, key in found for i in images.get(key, [])]

    def _target(self, target: str | bytes) -> tuple[np.ndarray, str | None]:
        """The embedding to search near, and the content hash of a catalogued target."""
        if isinstance(target, bytes):
            with tempfile.TemporaryDirectory(prefix="similar-") as folder:
                path = Path(folder, "image")
                path.write_bytes(target)
                return self._images().encode(path), None
        content = self.store.content_of(self._uri_of(target))
        vector = self._kept_vector(content)
        if vector is not None:
            return vector, content
        path = path_of(target).expanduser()
        if not path.is_file():
            raise ConfigError(f"{target} is neither a catalogued image with a kept embedding "
                              "nor an image file")
        return self._images().encode(path), None

    def _uri_of(self, target: str) -> str:
        """A file path as its catalogue URI (file://, its folder's real path), else as given."""
        path = path_of(target).expanduser()
        if "://" in target or not path.exists():
            return target
        return (Path(path.absolute().parent).resolve() / path.name).as_uri()

    def _kept_vector(self, content: str | None) -> np.ndarray | None:
        if content is None:
            return None
        keys, vectors = self.store.vectors([key_of(bytes.fromhex(content))])
        return np.asarray(vectors[0], np.float32) if len(keys) else None

    def _text_vector(self, query: str) -> np.ndarray:
        with self._loading:  # the towers once, on first use (exported first where missing)
            if self._text is None:
                self._text = TextEncoder(towers(self.settings, self.note))
        return _encode(self._text, query, tuple(self.templates))

    def _images(self) -> ImageEncoder:
        with self._loading:
            if self._image is None:
                self._image = ImageEncoder(self.settings, towers(self.settings, self.note))
        return self._image


@functools.lru_cache(maxsize=256)
def _encode(encoder: TextEncoder, query: str, templates: tuple[str, ...]) -> np.ndarray:
    """A query's embedding, remembered: the workbench asks for the same words again."""
    return encoder.encode(query, templates)


