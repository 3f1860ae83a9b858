"""Every database read a search makes: kept embeddings by model and key, and the images they are.

The one module that reads the embeddings table for search (its queries: how many a model has,
all its keys, the vectors of some keys, every vector in key order, the content hash of some
keys) and the results it resolves them to (a URI's content, the images of some contents, the
contents of a run or a top label).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from worker.core.contract import uri_hash
from worker.core.embedding import key_of, unpack
from worker.core.settings import Settings
from worker.db import models
from worker.db.models import Model
from worker.db.schema import batches, embeddings, images, results, retried, runs

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

SCAN_BATCH = 20_000
RESOLVE_SECONDS = 5.0


@dataclass(frozen=True)
class Image:
    """An image whose content has a kept embedding, as its newest done result has it."""

    uri: str
    sha256: str
    top_label: str | None
    run_id: str | None


@dataclass(frozen=True)
class Arrivals:
    """Kept embeddings written since a row: those sound, how many rows there were in all
    (damaged ones included), and the newest row and its key (where to look from next)."""

    keys: np.ndarray
    vectors: np.ndarray
    rows: int
    upto: int  # the model's rows up to ``rowid`` now: the rows before plus ``rows`` if none went
    rowid: int
    key: int


class Store:
    """The kept embeddings of the weights TAGGER_MODEL names in one database, and the images
    they belong to."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine, self.settings = engine, settings
        self._model: tuple[float, Model | None] = (-1.0, None)

    def model(self) -> Model | None:
        """The weights searched (worker/db/models.py: ``served``), looked up again at most
        every RESOLVE_SECONDS: a long-lived searcher follows newly registered weights."""
        at, found = self._model
        if found is None or time.monotonic() - at > RESOLVE_SECONDS:
            found = models.served(self.settings, record=False)
            found = models.with_width(self.engine, found) if found else None
            self._model = (time.monotonic(), found)
        return found

    def identity(self) -> str:
        """What names this store's index: the weights' digest (TAGGER_MODEL before any)."""
        found = self.model()
        return (found.weights or found.name) if found is not None else self.settings.model

    def model_id(self) -> tuple[int, int] | None:
        """(id, width) of the weights' kept embeddings; None if none are kept yet."""
        found = self.model()
        return (found.id, found.dim) if found is not None and found.dim else None

    @retried
    def count(self) -> int:
        found = self.model_id()
        if found is None:
            return 0
        with self.engine.connect() as conn:
            return int(conn.scalar(sa.select(sa.func.count()).select_from(embeddings)
                                   .where(embeddings.c.model_id == found[0])) or 0)

    @retried
    def keys(self) -> np.ndarray:
        """Every key of the model's kept embeddings, sorted (int64)."""
        import numpy as np

        found = self.model_id()
        if found is None:
            return np.zeros(0, np.int64)
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(embeddings.c.key).where(
                embeddings.c.model_id == found[0]).order_by(embeddings.c.key)).scalars().all()
        return np.asarray(rows, dtype=np.int64)

    @retried
    def vectors(self, keys: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """(keys, float16 vectors) of these keys; those not kept are absent."""

        found, wanted = self.model_id(), sorted({int(k) for k in keys})
        got, blobs = [], []
        if found is not None:
            with self.engine.connect() as conn:
                for part in batches(wanted):
                    for row in conn.execute(sa.select(embeddings.c.key, embeddings.c.vector)
                                            .where(embeddings.c.model_id == found[0],
                                                   embeddings.c.key.in_(part))):
                        got.append(row.key)
                        blobs.append(bytes(row.vector))
        return _sound(got, blobs, found[1] if found else 0)

    @retried
    def since(self, after: int, key: int) -> Arrivals | None:
        """The rows written after row ``after`` (which must still hold ``key``): what is new
        without reading every key. SQLite only, where rowids grow with each insert and a read
        sees one committed state; None elsewhere or when that row moved (deleted, vacuumed)."""
        found = self.model_id()
        if found is None or self.engine.dialect.name != "sqlite":
            return None
        rowid = sa.literal_column("rowid")
        with self.engine.connect() as conn:
            if after and conn.scalar(sa.select(embeddings.c.key).where(rowid == after)) != key:
                return None
            high = conn.scalar(sa.select(sa.func.max(rowid)).select_from(embeddings)) or 0
            rows = conn.execute(sa.select(rowid.label("row"), embeddings.c.key,
                                          embeddings.c.vector)
                                .where(rowid > after, rowid <= high,
                                       embeddings.c.model_id == found[0])).all()
            high_key = conn.scalar(sa.select(embeddings.c.key).where(rowid == high))
            upto = conn.scalar(sa.select(sa.func.count()).select_from(embeddings).where(
                embeddings.c.model_id == found[0], rowid <= high))
        keys, vectors = _sound([r.key for r in rows], [bytes(r.vector) for r in rows], found[1])
        return Arrivals(keys, vectors, len(rows), int(upto or 0), int(high), int(high_key or 0))

    @retried
    def mark(self) -> tuple[int, int, int]:
        """(highest rowid, its key, the model's rows up to it) before a full read: where
        ``since`` looks from next (SQLite; (0, 0, 0) elsewhere)."""
        found = self.model_id()
        if found is None or self.engine.dialect.name != "sqlite":
            return 0, 0, 0
        rowid = sa.literal_column("rowid")
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(rowid.label("row"), embeddings.c.key)
                               .order_by(rowid.desc()).limit(1)).first()
            if row is None:
                return 0, 0, 0
            rows = conn.scalar(sa.select(sa.func.count()).select_from(embeddings).where(
                embeddings.c.model_id == found[0], rowid <= row.row))
        return int(row.row), int(row.key), int(rows or 0)

    def scan(self, batch: int = SCAN_BATCH) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every (keys, float16 vectors) of the model in key order, a batch at a time."""

        found = self.model_id()
        if found is None:
            return
        query = (sa.select(embeddings.c.key, embeddings.c.vector)
                 .where(embeddings.c.model_id == found[0]).order_by(embeddings.c.key))
        with self.engine.connect() as conn:
            stream = conn.execution_options(stream_results=True, yield_per=batch).execute(query)
            for rows in stream.partitions(batch):
                yield _sound([r.key for r in rows], [bytes(r.vector) for r in rows], found[1])

    @retried
    def images(self, keys: Iterable[int]) -> dict[int, list[Image]]:
        """The images whose content (as their own latest fetch found it) has each of these
        keys, each as its newest done result of these weights has it."""
        found, wanted = self.model_id(), sorted({int(k) for k in keys})
        if found is None or not wanted:
            return {}
        newest: dict[str, sa.Row] = {}
        with self.engine.connect() as conn:
            contents: dict[str, int] = {}  # uri_hash -> key of its content
            for part in batches(wanted):
                for row in conn.execute(sa.select(images.c.uri_hash, images.c.content_key)
                                        .join_from(images, embeddings, sa.and_(
                                            embeddings.c.key == images.c.content_key,
                                            embeddings.c.sha256 == images.c.content))
                                        .where(embeddings.c.model_id == found[0],
                                               images.c.content_key.in_(part))):
                    contents[row.uri_hash] = row.content_key
            for part in batches(sorted(contents)):
                for row in conn.execute(of_uris(found[0], part)):
                    kept = newest.get(row.uri_hash)
                    if kept is None or (row.updated_at, row.id) > (kept.updated_at, kept.id):
                        newest[row.uri_hash] = row
        found_images: dict[int, list[Image]] = {}
        for row in sorted(newest.values(), key=lambda r: r.uri):
            found_images.setdefault(contents[row.uri_hash], []).append(
                Image(row.uri, row.content_sha256, row.top_label, row.run_id))
        return found_images

    @retried
    def content_of(self, uri: str) -> str | None:
        """The content hash of a catalogued URI's newest done result, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(latest(uri)).first()
        return row.content_sha256 if row is not None else None

    @retried
    def keys_of(self, *, run: str | None = None, label: str | None = None) -> np.ndarray:
        """The keys of the contents of a run's done images, or of images with a top label."""
        import numpy as np

        found = self.model()
        query = sa.select(results.c.content_sha256).distinct().where(
            results.c.model_id == (found.id if found else -1), results.c.status == "done",
            results.c.content_sha256.is_not(None))
        if run is not None:
            query = query.where(results.c.run_id == run)
        if label is not None:
            query = query.where(results.c.top_label == label)
        with self.engine.connect() as conn:
            hashes = conn.execute(query).scalars().all()
        return np.asarray(sorted({key_of(bytes.fromhex(h)) for h in hashes}), np.int64)

    @retried
    def copies(self) -> list[int]:
        """The keys of contents that several catalogued images have (identical bytes)."""
        found = self.model()
        query = (sa.select(results.c.content_sha256).where(
            results.c.model_id == (found.id if found else -1), results.c.status == "done",
            results.c.content_sha256.is_not(None)).group_by(results.c.content_sha256)
            .having(sa.func.count(sa.distinct(results.c.uri_hash)) > 1))
        with self.engine.connect() as conn:
            return [key_of(bytes.fromhex(h)) for h in conn.execute(query).scalars()]

    @retried
    def run_exists(self, run: str) -> bool:
        with self.engine.connect() as conn:
            return conn.scalar(sa.select(runs.c.id).where(runs.c.id == run)) is not None


def latest(uri: str) -> sa.Select:
    """A URI's newest done result."""
    return (_done().where(results.c.uri_hash == uri_hash(uri))
            .order_by(results.c.updated_at.desc(), results.c.id.desc()).limit(1))


def of_uris(model_id: int, hashes: Iterable[str]) -> sa.Select:
    """The done results of these weights for these URIs (by hash), of every label set."""
    return _done().where(results.c.model_id == model_id, results.c.uri_hash.in_(list(hashes)))


def _done() -> sa.Select:
    # The status as a filter, never an index to search by: 'done' matches most of the table,
    # and SQLite (no statistics) would take the status index and scan it (150 ms at 100,000).
    return sa.select(results.c.id, results.c.uri, results.c.uri_hash, results.c.content_sha256,
                     results.c.top_label, results.c.run_id, results.c.updated_at).where(
        results.c.status.concat("") == "done")


def _sound(keys: list[int], blobs: list[bytes], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(keys, float16 vectors) of the rows that unpack whole: a damaged stored row is left out
    of search (its image fails as corrupt-embedding when it is next relabelled or tagged)."""
    import numpy as np

    unpacked = unpack(blobs, dim)
    if unpacked.corrupt:
        log.warning("%d kept embeddings are damaged and left out of search",
                    len(unpacked.corrupt))
    sound = np.ones(len(keys), bool)
    sound[list(unpacked.corrupt)] = False
    return np.asarray(keys, np.int64)[sound], unpacked.vectors[sound]
