"""What a cluster runs beside the workers: `producer db wait` before a version starts, and the
backlog exporter (per model queue; a count that fails is an error, never a zero)."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from producer import exporter
from producer import status as reporting
from testkit.commands import invoke
from testkit.services import REDIS_URL
from worker.core.errors import ConfigError
from worker.core.settings import Settings, load_settings
from worker.db import migrate
from worker.db.schema import engine_for, pending, pending_ranges, runs


@pytest.fixture
def fleet_env(pg_url, tmp_path, monkeypatch) -> dict[str, str]:
    env = {"DATABASE_URL": pg_url, "CELERY_BROKER_URL": REDIS_URL,
           "TAGGER_QUEUE": f"fleet-{uuid.uuid4().hex[:12]}", "TAGGER_HOME": str(tmp_path)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_db_wait_holds_until_the_schema_is_this_versions(empty_pg_url, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", empty_pg_url)
    result = invoke("db", "wait", "--timeout", "0.5")
    assert result.exit_code == 1, result.output
    assert "still at schema none" in result.output and "`producer db upgrade` has not run" in (
        result.output)

    head = migrate.revisions(empty_pg_url)[1]
    waited: list[str] = []
    waiter = threading.Thread(target=lambda: waited.append(
        migrate.wait_current(empty_pg_url, timeout=120, interval=0.1)))
    waiter.start()
    migrate.upgrade(empty_pg_url)  # the migration Job, elsewhere
    waiter.join(150)
    assert waited == [head]
    result = invoke("db", "wait", "--timeout", "5")
    assert result.exit_code == 0 and result.stdout.strip().endswith(f"schema {head}")


def test_db_wait_refuses_a_newer_schema_at_once(pg_url):
    with engine_for(pg_url).begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'f00d'"))
    with pytest.raises(ConfigError, match="at schema f00d, newer than this version"):
        migrate.wait_current(pg_url, timeout=3600)


def mark_pending(url: str, model: str, images: int) -> None:
    with engine_for(url).begin() as conn:
        conn.execute(pending.insert(), [
            {"uri_hash": uuid.uuid4().hex * 2, "model": model, "labelset_id": "l",
             "uri": f"file:///{model}/{i}.png", "run_id": None,
             "enqueued_at": datetime.now(UTC)} for i in range(images)])


def test_backlog_is_counted_per_model_queue(fleet_env):
    settings = load_settings()
    mark_pending(fleet_env["DATABASE_URL"], settings.model, 3)
    mark_pending(fleet_env["DATABASE_URL"], "another/model", 2)
    with engine_for(fleet_env["DATABASE_URL"]).begin() as conn:  # a relabel run's range
        conn.execute(runs.insert().values(id="relabel", source="kept", model=settings.model,
                                          labelset_id="l"))
        conn.execute(pending_ranges.insert().values(run_id="relabel", lo=0, hi=9, images=4,
                                                    enqueued_at=datetime.now(UTC)))
    found = reporting.backlogs(settings)
    assert {m: b["images"] for m, b in found.items()} == {settings.model: 7, "another/model": 2}
    assert found["another/model"]["queue"].startswith(f"{fleet_env['TAGGER_QUEUE']}.another-model.")
    assert reporting.status(settings)["backlog"] == 7  # this installation's model queue


@contextmanager
def serving(settings: Settings, errors: list[str]) -> Iterator[int]:
    server = exporter.server(settings, 0, "127.0.0.1", errors.append)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


def test_a_count_that_fails_is_an_error_not_a_zero(fleet_env):
    settings = load_settings()
    errors: list[str] = []
    with serving(settings, errors) as port:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert f'tagger_backlog_images{{model="{settings.model}"' in response.read().decode()
    broken = load_settings({**fleet_env,
                            "DATABASE_URL": "postgresql://tagger:s3cret@127.0.0.1:1/none"})
    with serving(broken, errors) as port:
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30)
        assert failed.value.code == 503
        body = failed.value.read().decode()
    assert "tagger_backlog_images" not in body and body.startswith("backlog not counted:")
    assert len(errors) == 1 and "s3cret" not in errors[0], errors
