"""SQLAlchemy tables for results, runs and label sets, and the idempotent writes to them."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, make_url

from worker.errors import TransientError
from worker.labels import LabelSet

metadata = sa.MetaData()
_now = sa.func.current_timestamp()
_Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Time = sa.DateTime(timezone=True)

labelsets = sa.Table(
    "labelsets", metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("body", _Json, nullable=False),
    sa.Column("created_at", _Time, nullable=False, server_default=_now),
)

runs = sa.Table(
    "runs", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("labelset_id", sa.String(16), nullable=False),
    sa.Column("started_at", _Time, nullable=False, server_default=_now),
    sa.Column("finished_at", _Time),
    sa.Column("listed", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("enqueued", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("skipped", sa.BigInteger, nullable=False, server_default="0"),
)

results = sa.Table(
    "results", metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("uri", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("labelset_id", sa.String(16), nullable=False),
    sa.Column("item_key", sa.Text),
    sa.Column("source_version", sa.Text),
    sa.Column("content_sha256", sa.String(64)),
    sa.Column("status", sa.String(8), nullable=False),
    sa.Column("reason", sa.String(32)),
    sa.Column("error", sa.Text),
    sa.Column("labels", _Json, nullable=False),
    sa.Column("top_label", sa.Text),
    sa.Column("top_score", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
    sa.Column("run_id", sa.String(32)),
    sa.Column("created_at", _Time, nullable=False, server_default=_now),
    sa.Column("updated_at", _Time, nullable=False, server_default=_now),
    sa.UniqueConstraint("uri", "model", "labelset_id", name="uq_results_image"),
    sa.CheckConstraint("status IN ('done', 'failed')", name="ck_results_status"),
    sa.Index("ix_results_top_label", "top_label", "top_score"),
    sa.Index("ix_results_content_sha256", "content_sha256"),
    sa.Index("ix_results_run_status", "run_id", "status"),
    sa.Index("ix_results_status_reason", "status", "reason"),
)

# An image enqueued and not yet answered; its row blocks a second enqueue of the same image.
pending = sa.Table(
    "pending", metadata,
    sa.Column("uri", sa.Text, primary_key=True),
    sa.Column("model", sa.Text, primary_key=True),
    sa.Column("labelset_id", sa.String(16), primary_key=True),
    sa.Column("run_id", sa.String(32)),
    sa.Column("enqueued_at", _Time, nullable=False),
    sa.Index("ix_pending_run", "run_id"),
)

# How many times each chunk message has started executing: a poison chunk is parked after K.
deliveries = sa.Table(
    "deliveries", metadata,
    sa.Column("task_id", sa.String(64), primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("updated_at", _Time, nullable=False, server_default=_now),
)

text_embeddings = sa.Table(
    "text_embeddings", metadata,
    sa.Column("model", sa.Text, primary_key=True),
    sa.Column("labelset_id", sa.String(16), primary_key=True),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("dim", sa.Integer, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("created_at", _Time, nullable=False, server_default=_now),
)


def normalise_url(url: str) -> str:
    """Map ``postgres://`` and ``postgresql://`` to the psycopg2 driver this project ships."""
    parsed = make_url(url)
    if parsed.drivername in {"postgres", "postgresql"}:
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed.render_as_string(hide_password=False)


@functools.cache
def engine_for(url: str) -> Engine:
    """One pooled engine per URL and process."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the producer read while a worker writes; the busy timeout covers the rest.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _insert(conn: Connection, table: sa.Table) -> Any:
    dialect = conn.dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"database {dialect!r} is not supported (PostgreSQL or SQLite)")


def transient(func: Any) -> Any:
    """Turn lost connections and unreachable databases into TransientError (retry the chunk)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise TransientError(f"database unavailable: {exc.orig or exc}") from exc
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated:
                raise TransientError(f"database connection lost: {exc.orig}") from exc
            raise

    return wrapper


# --- label sets and their text embeddings ---------------------------------------------------

def save_labelset(engine: Engine, labelset: LabelSet) -> None:
    with engine.begin() as conn:
        conn.execute(_insert(conn, labelsets)
                     .values(id=labelset.id, name=labelset.name, body=labelset.to_json())
                     .on_conflict_do_nothing(index_elements=["id"]))


@transient
def load_labelset(engine: Engine, labelset_id: str) -> LabelSet | None:
    with engine.connect() as conn:
        body = conn.scalar(sa.select(labelsets.c.body).where(labelsets.c.id == labelset_id))
    return LabelSet.from_json(body) if body is not None else None


@transient
def load_text_embeddings(engine: Engine, model: str, labelset_id: str
                         ) -> tuple[int, int, bytes] | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(text_embeddings.c.rows, text_embeddings.c.dim,
                                     text_embeddings.c.data)
                           .where(text_embeddings.c.model == model,
                                  text_embeddings.c.labelset_id == labelset_id)).first()
    return (row.rows, row.dim, bytes(row.data)) if row else None


@transient
def save_text_embeddings(engine: Engine, model: str, labelset_id: str, rows: int, dim: int,
                         data: bytes) -> None:
    with engine.begin() as conn:
        conn.execute(_insert(conn, text_embeddings)
                     .values(model=model, labelset_id=labelset_id, rows=rows, dim=dim, data=data)
                     .on_conflict_do_nothing(index_elements=["model", "labelset_id"]))


# --- the worker's writes --------------------------------------------------------------------

@transient
def count_delivery(engine: Engine, task_id: str) -> int:
    """Record one more start of this chunk message and return how many there have been."""
    with engine.begin() as conn:
        stmt = _insert(conn, deliveries).values(task_id=task_id, count=1)
        stmt = stmt.on_conflict_do_update(
            index_elements=["task_id"],
            set_={"count": deliveries.c.count + 1, "updated_at": _now},
        ).returning(deliveries.c.count)
        return int(conn.execute(stmt).scalar_one())


@transient
def write_results(engine: Engine, rows: Sequence[dict[str, Any]]) -> None:
    """Upsert one chunk's results and clear their pending marks, in one transaction.

    A done result replaces anything; a failure never replaces a done result, so a re-delivered
    chunk that meets a passing fault cannot erase good labels.
    """
    if not rows:
        return
    rows = list({(r["uri"], r["model"], r["labelset_id"]): r for r in rows}.values())
    with engine.begin() as conn:
        stmt = _insert(conn, results).values([{**r, "updated_at": _now} for r in rows])
        updatable = [c.name for c in results.columns if c.name not in {"id", "created_at"}]
        stmt = stmt.on_conflict_do_update(
            index_elements=["uri", "model", "labelset_id"],
            set_={name: stmt.excluded[name] for name in updatable},
            where=sa.or_(results.c.status != "done", stmt.excluded.status == "done"),
        )
        conn.execute(stmt)
        for (model, labelset_id), uris in _group_uris(rows).items():
            conn.execute(pending.delete().where(pending.c.model == model,
                                                pending.c.labelset_id == labelset_id,
                                                pending.c.uri.in_(uris)))


def _group_uris(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
    groups: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["labelset_id"]), []).append(row["uri"])
    return groups


@transient
def done_by_content(engine: Engine, model: str, labelset_id: str, hashes: Sequence[str]
                    ) -> dict[str, list[dict[str, Any]]]:
    """Labels already computed for these content hashes (identical bytes under other URIs)."""
    if not hashes:
        return {}
    with engine.connect() as conn:
        rows = conn.execute(sa.select(results.c.content_sha256, results.c.labels)
                            .where(results.c.model == model,
                                   results.c.labelset_id == labelset_id,
                                   results.c.status == "done",
                                   results.c.content_sha256.in_(set(hashes))))
        return {row.content_sha256: row.labels for row in rows}


# --- the producer's reads and writes --------------------------------------------------------

@dataclass(frozen=True)
class Item:
    """One image to tag: where it is, the catalogue's own key, and its source version."""

    uri: str
    key: str | None = None
    version: str | None = None

    def to_message(self) -> dict[str, str]:
        return {k: v for k, v in (("uri", self.uri), ("key", self.key),
                                  ("version", self.version)) if v is not None}


def due_items(conn: Connection, items: Sequence[Item], model: str, labelset_id: str
              ) -> list[Item]:
    """The items without a result for this model and label set at their current version."""
    if not items:
        return []
    rows = conn.execute(sa.select(results.c.uri, results.c.source_version)
                        .where(results.c.model == model, results.c.labelset_id == labelset_id,
                               results.c.uri.in_({i.uri for i in items})))
    known = {row.uri: row.source_version for row in rows}
    return [i for i in items if i.uri not in known or (i.version or known[i.uri]) != known[i.uri]]


def claim_pending(conn: Connection, items: Sequence[Item], model: str, labelset_id: str,
                  run_id: str, ttl_seconds: int, force: bool = False) -> list[Item]:
    """Mark items pending for this run; return those not already pending in a live run.

    A mark older than ``ttl_seconds`` (a lost message, a crashed run) is taken over; ``force``
    takes over other runs' marks, fresh or not. The first of several items with one URI wins.
    """
    if not items:
        return []
    now = datetime.now(UTC)
    by_uri: dict[str, Item] = {}
    for item in items:
        by_uri.setdefault(item.uri, item)
    stmt = _insert(conn, pending)
    stale = pending.c.enqueued_at < now - timedelta(seconds=ttl_seconds)
    # Even forced, a run never claims an image twice (the same URL on two catalogue rows).
    other_run = sa.or_(pending.c.run_id.is_(None), pending.c.run_id != stmt.excluded.run_id)
    stmt = stmt.on_conflict_do_update(
        index_elements=["uri", "model", "labelset_id"],
        set_={"run_id": stmt.excluded.run_id, "enqueued_at": stmt.excluded.enqueued_at},
        where=other_run if force else stale,
    ).returning(pending.c.uri)
    # One statement with many parameter sets (batched by SQLAlchemy's insertmanyvalues): a
    # values() list would compile, and cache, a new statement for every batch length.
    rows = [{"uri": uri, "model": model, "labelset_id": labelset_id, "run_id": run_id,
             "enqueued_at": now} for uri in by_uri]
    claimed = set(conn.execute(stmt, rows).scalars())
    return [item for uri, item in by_uri.items() if uri in claimed]


def release_pending(engine: Engine, items: Sequence[Item], model: str, labelset_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(pending.delete().where(pending.c.model == model,
                                            pending.c.labelset_id == labelset_id,
                                            pending.c.uri.in_([i.uri for i in items])))


def create_run(engine: Engine, run_id: str, source: str, model: str, labelset_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(runs.insert().values(id=run_id, source=source, model=model,
                                          labelset_id=labelset_id,
                                          started_at=datetime.now(UTC)))


def update_run(engine: Engine, run_id: str, *, finished: bool = False, **counts: int) -> None:
    values: dict[str, Any] = dict(counts)
    if finished:
        values["finished_at"] = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(runs.update().where(runs.c.id == run_id).values(**values))


def failed_labelsets(engine: Engine, model: str, reason: str | None = None) -> list[str]:
    """Label sets that have failed results for this model (optionally for one reason)."""
    query = sa.select(results.c.labelset_id).distinct().where(results.c.model == model,
                                                              results.c.status == "failed")
    if reason is not None:
        query = query.where(results.c.reason == reason)
    with engine.connect() as conn:
        return list(conn.scalars(query))


def has_schema(engine: Engine) -> bool:
    return sa.inspect(engine).has_table("results")


def iter_results(engine: Engine, *, run_id: str | None = None, model: str | None = None,
                 labelset_id: str | None = None, status: str | None = None,
                 reason: str | None = None, batch: int = 1000) -> Iterator[sa.Row]:
    """Stream results (server-side cursor on PostgreSQL), oldest first."""
    query = sa.select(results).order_by(results.c.id)
    for column, value in (("run_id", run_id), ("model", model), ("labelset_id", labelset_id),
                          ("status", status), ("reason", reason)):
        if value is not None:
            query = query.where(results.c[column] == value)
    with engine.connect() as conn:
        yield from conn.execution_options(yield_per=batch).execute(query)
