"""Every database read a search makes: kept embeddings by model and key, and the images they are.

The one module that reads the embeddings table for search (its queries: how many a model has,
all its keys, the vectors of some keys, every vector in key order, the content hash of some
keys) and the results it resolves them to (a URI's content, the images of some contents, the
contents of a run or a top label).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from worker.core.contract import uri_hash
from worker.core.embedding import key_of, unpack
from worker.db.embeddings import model_id
from worker.db.schema import batches, embeddings, results, retried, runs

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

SCAN_BATCH = 20_000


@dataclass(frozen=True)
class Image:
    """An image whose content has a kept embedding, as its newest done result has it."""

    uri: str
    sha256: str
    top_label: str | None
    run_id: str | None


class Store:
    """The kept embeddings of one model in one database, and the images they belong to."""

    def __init__(self, engine: Engine, model: str) -> None:
        self.engine, self.model = engine, model

    def model_id(self) -> tuple[int, int] | None:
        """(id, width) of the model's kept embeddings; None if it has none yet."""
        return model_id(self.engine, self.model)

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
        """The images (newest done result per URI) whose content has each of these keys."""
        found, wanted = self.model_id(), sorted({int(k) for k in keys})
        if found is None or not wanted:
            return {}
        with self.engine.connect() as conn:
            hashes: dict[str, int] = {}
            for part in batches(wanted):
                for row in conn.execute(sa.select(embeddings.c.key, embeddings.c.sha256).where(
                        embeddings.c.model_id == found[0], embeddings.c.key.in_(part))):
                    hashes[bytes(row.sha256).hex()] = row.key
            newest: dict[str, sa.Row] = {}
            for part in batches(sorted(hashes)):
                for row in conn.execute(of_contents(part)):
                    kept = newest.get(row.uri_hash)
                    if kept is None or (row.updated_at, row.id) > (kept.updated_at, kept.id):
                        newest[row.uri_hash] = row
        found_images: dict[int, list[Image]] = {}
        for row in sorted(newest.values(), key=lambda r: r.uri):
            found_images.setdefault(hashes[row.content_sha256], []).append(
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

        query = sa.select(results.c.content_sha256).distinct().where(
            results.c.model == self.model, results.c.status == "done",
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
        query = (sa.select(results.c.content_sha256).where(
            results.c.model == self.model, results.c.status == "done",
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


def of_contents(hashes: Iterable[str]) -> sa.Select:
    """The done results of these contents (hex)."""
    return _done().where(results.c.content_sha256.in_(list(hashes)))


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
