"""Each image at the content its own latest fetch found: written with its results, read to
believe a content claimed for it (a kept embedding scores it) and to relabel it.

Only a worker that fetched and hashed an image's bytes writes its row; a result scored from a
kept embedding, or a content hash sent in a message, never does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from worker.core.contract import Result
from worker.core.embedding import key_of
from worker.db import bulk
from worker.db.schema import batches, images, insert, now, retried

COLUMNS = ("uri", "signed", "item_key", "source_version", "content_key", "content")


def rows_of(outcomes: Iterable[Result]) -> list[dict[str, Any]]:
    """The image rows of the results whose content was fetched here, one per URI (the last)."""
    found: dict[str, dict[str, Any]] = {}
    for outcome in outcomes:
        if outcome.fetched and outcome.content_sha256:
            row = outcome.row()
            content = bytes.fromhex(outcome.content_sha256)
            found[row["uri_hash"]] = {"uri_hash": row["uri_hash"],
                                      **{k: row[k] for k in COLUMNS[:4]},
                                      "content_key": key_of(content), "content": content}
    return list(found.values())


def write(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Upsert image rows in the caller's transaction: the latest fetch is what an image holds."""
    if not rows:
        return
    if bulk.uses_copy(conn):
        bulk.write_images(conn, rows)
        return
    stmt = insert(conn, images)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=["uri_hash"],
        set_={**{name: stmt.excluded[name] for name in COLUMNS}, "updated_at": now}), rows)


@retried
def read(engine: Engine, uri_hashes: Iterable[str]) -> dict[str, tuple[str | None, str]]:
    """``contents``, in a connection of its own."""
    with engine.connect() as conn:
        return contents(conn, uri_hashes)


def contents(conn: Connection, uri_hashes: Iterable[str]) -> dict[str, tuple[str | None, str]]:
    """What the images' own latest fetches found: uri_hash -> (version, content hex)."""
    found: dict[str, tuple[str | None, str]] = {}
    for part in batches(sorted(set(uri_hashes))):
        for row in conn.execute(sa.select(images.c.uri_hash, images.c.source_version,
                                          images.c.content)
                                .where(images.c.uri_hash.in_(part))):
            found[row.uri_hash] = (row.source_version, bytes(row.content).hex())
    return found


def with_contents(hashes: Iterable[str]) -> sa.Select:
    """The hashes of the URIs whose own latest fetch found one of these contents (hex), as a
    subquery: found by the content's key (indexed), checked against the full hash."""
    raw = sorted({bytes.fromhex(sha) for sha in hashes})
    return sa.select(images.c.uri_hash).where(images.c.content_key.in_([key_of(r) for r in raw]),
                                              images.c.content.in_(raw))
