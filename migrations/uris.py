"""Stored URIs rewritten to their stored form (worker/core/redact.py: ``stored_uri``) and
hashed again: what migrations 0003 (URIs without secrets) and 0008 (URLs inside parameters)
run. Rows that then name one image keep one: a done result over a failed one, then the latest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from worker.core.redact import stored_uri

BATCH = 1000
_SUSPECT = sa.or_(sa.column("uri").like("%@%"), sa.column("uri").like("%?%"),
                  sa.column("uri").like("%#%"))


def _hash(uri: str) -> str:
    return hashlib.sha256(uri.encode("utf-8", "surrogatepass")).hexdigest()


def _changed(rows: list[Any]) -> Iterator[tuple[Any, str]]:
    for row in rows:
        stored = stored_uri(row.uri)
        if stored != row.uri:
            yield row, stored


def _rank(row: Any) -> tuple[bool, Any]:
    return row.status == "done", row.updated_at


def scrub_results(bind: sa.Connection, model: str = "model") -> None:
    """``model``: the column that, with the URI's hash and the label set, makes a result one
    (the model's name before migration 0007, its weights' id after)."""
    results = sa.table("results", sa.column("id"), sa.column("uri"), sa.column("uri_hash"),
                       sa.column("signed"), sa.column(model), sa.column("labelset_id"),
                       sa.column("status"), sa.column("updated_at"))
    last = 0
    while rows := bind.execute(sa.select(results).where(results.c.id > last, _SUSPECT)
                               .order_by(results.c.id).limit(BATCH)).all():
        last = rows[-1].id
        changed = {row.id: stored for row, stored in _changed(rows)}
        if not changed:
            continue
        hashes = {_hash(stored) for stored in changed.values()}
        best = {(r.uri_hash, r._mapping[model], r.labelset_id): r for r in bind.execute(
            sa.select(results).where(results.c.uri_hash.in_(hashes)))}
        losers: set[Any] = set()
        for row in (r for r in rows if r.id in changed):
            key = (_hash(changed[row.id]), row._mapping[model], row.labelset_id)
            other = best.get(key)
            if other is not None and _rank(other) >= _rank(row):
                losers.add(row.id)
                continue
            if other is not None:
                losers.add(other.id)
            best[key] = row
        moved = [{"i": r.id, "u": changed[r.id], "h": key[0]} for key, r in best.items()
                 if r.id in changed and r.id not in losers]
        if losers:
            bind.execute(results.delete().where(results.c.id.in_(losers)))
        if moved:
            bind.execute(sa.text("UPDATE results SET uri = :u, uri_hash = :h, signed = true "
                                 "WHERE id = :i"), moved)


def scrub_pending(bind: sa.Connection) -> None:
    pending = sa.table("pending", sa.column("uri"), sa.column("uri_hash"), sa.column("model"),
                       sa.column("labelset_id"))
    rows = bind.execute(sa.select(pending).where(_SUSPECT)).all()  # images in flight: few
    for row, stored in _changed(rows):
        mark = sa.and_(pending.c.model == row.model, pending.c.labelset_id == row.labelset_id)
        old = sa.and_(mark, pending.c.uri_hash == row.uri_hash)
        if bind.execute(sa.select(pending.c.uri).where(
                mark, pending.c.uri_hash == _hash(stored))).first() is None:
            bind.execute(pending.update().where(old).values(uri=stored,
                                                            uri_hash=_hash(stored)))
        else:
            bind.execute(pending.delete().where(old))


def scrub_images(bind: sa.Connection) -> None:
    """What each URI's fetch found (migration 0007's table), under its stored URI: where the
    stored form is already there, that row stays and this one goes."""
    images = sa.table("images", sa.column("uri"), sa.column("uri_hash"), sa.column("signed"))
    last = ""
    while rows := bind.execute(sa.select(images).where(images.c.uri_hash > last, _SUSPECT)
                               .order_by(images.c.uri_hash).limit(BATCH)).all():
        last = rows[-1].uri_hash
        for row, stored in _changed(rows):
            old = images.c.uri_hash == row.uri_hash
            if bind.execute(sa.select(images.c.uri).where(
                    images.c.uri_hash == _hash(stored))).first() is None:
                bind.execute(images.update().where(old).values(
                    uri=stored, uri_hash=_hash(stored), signed=True))
            else:
                bind.execute(images.delete().where(old))
