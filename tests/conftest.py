"""Shared fixtures: real PostgreSQL, Redis, moto's S3 server, a tiny model, worker processes."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from tests.helpers import ROOT, TEST_LABELS, WorkerProcess, build_tiny_model
from worker.store import normalise_url

logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto server request lines
PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def migrate(url: str, revision: str = "head", down: bool = False) -> None:
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["url"] = url
    config.attributes["configure_logger"] = False
    (command.downgrade if down else command.upgrade)(config, revision)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def labels_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("labels") / "labels.txt"
    path.write_text("# test labels\n" + "\n".join(TEST_LABELS) + "\n", encoding="utf-8")
    return path


def _create_database() -> tuple[str, str]:
    name = f"tagger_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(normalise_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return name, sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(False)


def _drop_database(name: str) -> None:
    admin = sa.create_engine(normalise_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped afterwards."""
    name, url = _create_database()
    yield url
    _drop_database(name)


@pytest.fixture
def pg_url(empty_pg_url: str) -> str:
    """A new PostgreSQL database migrated to head."""
    migrate(empty_pg_url)
    return empty_pg_url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    migrate(url)
    return url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server, reached over real HTTP by boto3."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def aws_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"AWS_ENDPOINT_URL_S3": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def bucket(aws_env: dict[str, str]) -> str:
    import boto3

    name = f"products-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture
def tagger_env(tmp_path: Path, tiny_model: Path, labels_file: Path, pg_url: str,
               aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The distributed configuration: Redis broker (own queue), PostgreSQL, S3, tiny model."""
    env = {"CELERY_BROKER_URL": REDIS_URL, "DATABASE_URL": pg_url,
           "TAGGER_QUEUE": f"test-{uuid.uuid4().hex[:8]}", "TAGGER_MODEL": str(tiny_model),
           "TAGGER_LABELS": str(labels_file), "TAGGER_DTYPE": "float32",
           "TAGGER_HOME": str(tmp_path / "home"), "TAGGER_CHUNK_SIZE": "8",
           "TAGGER_BATCH_SIZE": "4", "TAGGER_VISIBILITY_TIMEOUT": "30", **aws_env}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def worker_env(env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **env, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1", "TAGGER_DECODE_THREADS": "2"}


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator:
    """Start real Celery workers with a given environment; all are stopped afterwards."""
    workers: list[WorkerProcess] = []

    def start(env: dict[str, str], **kwargs: object) -> WorkerProcess:
        worker = WorkerProcess(worker_env(env), tmp_path / f"worker-{len(workers)}.log", **kwargs)
        workers.append(worker)
        return worker.start()

    yield start
    for worker in workers:
        worker.stop()
