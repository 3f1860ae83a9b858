"""Models by their weights: the id results and embeddings are keyed by, and which weights it is.

A worker registers the digest of the checkpoint it loaded (worker/backends/weights.py) at start.
Rows written before weights were identified (migration 0007) belong to a model with no digest,
one per name it was served as: they are shown, but scored from or counted as done only once a
worker registers weights that provably computed them (their files unchanged since before the
first of those results); otherwise the images are tagged again under the weights now served.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from worker.backends.folder import find_local
from worker.backends.weights import Weights, checkpoint_digest, short
from worker.core.settings import Settings
from worker.db.schema import engine_for, insert, models, now, retried

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Model:
    """One model's row: its id, weights digest (None before 0007), name and embedding width."""

    id: int
    weights: str | None
    name: str
    dim: int | None

    @property
    def short(self) -> str:
        return short(self.weights)


_known: dict[tuple[str, str], Model] = {}  # (database URL, weights) -> its row
_lock = threading.Lock()


def _model(row: sa.Row | None) -> Model | None:
    return Model(int(row.id), row.weights, row.name, row.dim) if row is not None else None


def _by_weights(conn: Connection, weights: str) -> Model | None:
    return _model(conn.execute(sa.select(models).where(models.c.weights == weights)).first())


@retried
def register(engine: Engine, weights: Weights, name: str) -> Model:
    """The model of these weights, served as ``name`` (added, or a legacy model adopted)."""
    for attempt in (1, 2):
        try:
            with engine.begin() as conn:
                found = _by_weights(conn, weights.digest) or _adopt(conn, weights, name)
                if found is None:
                    conn.execute(insert(conn, models).values(weights=weights.digest, name=name)
                                 .on_conflict_do_nothing(index_elements=["weights"]))
                    found = _by_weights(conn, weights.digest)
                assert found is not None
                conn.execute(models.update().where(models.c.id == found.id)
                             .values(name=name, seen_at=now))
            break
        except sa.exc.IntegrityError:  # another worker registered them meanwhile: theirs
            if attempt == 2:
                raise
    forget()  # a process that registers weights sees the rows as they now are
    return Model(found.id, found.weights, name, found.dim)


def _adopt(conn: Connection, weights: Weights, name: str) -> Model | None:
    """The legacy model of ``name`` when these files are older than its first result."""
    legacy = conn.execute(sa.select(models).where(models.c.weights.is_(None),
                                                  models.c.name == name)).first()
    if legacy is None or weights.changed_at >= _aware(legacy.since):
        if legacy is not None:
            log.warning("results stored under model %s before weights were identified are "
                        "not used: its files changed since (%s); its images are tagged again",
                        name, weights.changed_at.isoformat(timespec="seconds"))
        return None
    conn.execute(models.update().where(models.c.id == legacy.id, models.c.weights.is_(None))
                 .values(weights=weights.digest))
    log.info("results stored under model %s before weights were identified are its weights "
             "%s (its files are older than the first of them)", name, short(weights.digest))
    return _model(conn.execute(sa.select(models).where(models.c.id == legacy.id)).first())


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite keeps UTC bare


@retried
def identify(engine: Engine, weights: str, name: str, dim: int | None = None) -> Model:
    """The model of ``weights`` (added if new), its embedding width recorded once known."""
    cache = (engine.url.render_as_string(), weights)
    with _lock:
        known = _known.get(cache)
    if known is not None and (dim is None or known.dim is not None):
        return known
    with engine.begin() as conn:
        conn.execute(insert(conn, models).values(weights=weights, name=name, dim=dim)
                     .on_conflict_do_nothing(index_elements=["weights"]))
        if dim is not None:
            conn.execute(models.update().where(models.c.weights == weights,
                                               models.c.dim.is_(None)).values(dim=dim))
        found = _by_weights(conn, weights)
    assert found is not None
    with _lock:
        _known[cache] = found
    return found


@retried
def with_width(engine: Engine, model: Model) -> Model:
    """``model`` with its embeddings' width as the database has it now (None: none kept yet,
    by any process)."""
    if model.dim is not None:
        return model
    with engine.connect() as conn:
        dim = conn.scalar(sa.select(models.c.dim).where(models.c.id == model.id))
    return replace(model, dim=dim)


@retried
def find(engine: Engine, weights: str) -> Model | None:
    """The model of these weights, if any worker (or producer) registered them."""
    with engine.connect() as conn:
        return _by_weights(conn, weights)


@retried
def latest(engine: Engine, name: str) -> Model | None:
    """The weights a worker last registered as ``name`` (for a producer without the files)."""
    with engine.connect() as conn:
        return _model(conn.execute(
            sa.select(models).where(models.c.name == name, models.c.weights.is_not(None))
            .order_by(models.c.seen_at.desc(), models.c.id.desc()).limit(1)).first())


@retried
def by_id(engine: Engine) -> dict[int, Model]:
    """Every model, by id (a handful: shown beside counts)."""
    with engine.connect() as conn:
        return {m.id: m for m in map(_model, conn.execute(sa.select(models))) if m}


def forget() -> None:
    """Drop this process's remembered rows (after a registration, or a test's migration)."""
    with _lock:
        _known.clear()


def served(settings: Settings, record: bool = True) -> Model | None:
    """Which weights TAGGER_MODEL names for a producer: the digest of its checkpoint where the
    files are on this machine (the ones `producer tag`'s own worker loads), else the weights its
    workers last registered under that name (a producer on a machine of its own). None: no
    worker has served TAGGER_MODEL yet and its files are not here (nothing of it is done).
    ``record``: weights found here are registered (as a worker's start would), else only
    looked up (a dry run)."""
    engine = engine_for(settings.database_url)
    fleet = latest(engine, settings.model)
    folder = find_local(settings.model)
    if folder is None:
        return fleet
    weights = checkpoint_digest(folder, settings.cache_dir)
    if fleet is not None and fleet.weights != weights.digest:
        log.warning("TAGGER_MODEL=%s is weights %s here, but a worker last registered weights "
                    "%s under that name: results are due and done for the ones here",
                    settings.model, weights.short, fleet.short)
    if record:
        return register(engine, weights, settings.model)
    return find(engine, weights.digest)
