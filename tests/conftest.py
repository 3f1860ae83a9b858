"""Fixtures: real PostgreSQL, Redis and S3 (moto's server), the tiny model, worker processes.

Tests are marked by folder: tests/unit (no services, fast: `pytest -m unit`; its folders mirror
the package tree, so a module's tests are found by path), tests/integration
(real services), tests/e2e (whole processes).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from testkit.browser import INSTALL, Browser, find_chromium
from testkit.models import TEST_LABELS, tiny_checkpoint
from testkit.processes import Worker
from testkit.services import REDIS_URL, postgres_database, s3_server

if TYPE_CHECKING:
    from worker.loop.assemble import Parts


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # tests/unit mirrors the package tree, so the kind is the folder right under tests/
    kinds = {"unit", "integration", "e2e"}
    for item in items:
        kind = Path(str(item.fspath)).relative_to(Path(__file__).parent).parts[0]
        if kind in kinds:
            item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def labels_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("labels") / "labels.txt"
    path.write_text("# test labels\n" + "\n".join(TEST_LABELS) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped afterwards."""
    with postgres_database(migrated=False) as url:
        yield url


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A new PostgreSQL database migrated to head, dropped afterwards."""
    with postgres_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    from worker.db import migrate

    url = f"sqlite:///{tmp_path / 'results.db'}"
    migrate.upgrade(url, create=True)
    return url


@pytest.fixture(scope="session")
def s3_env() -> Iterator[dict[str, str]]:
    """moto's S3 server, reached over real HTTP by boto3."""
    with s3_server() as env:
        yield env


@pytest.fixture
def s3_endpoint(s3_env: dict[str, str]) -> str:
    return s3_env["AWS_ENDPOINT_URL_S3"]


@pytest.fixture
def aws_env(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    return s3_env


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
           "TAGGER_LABELS": str(labels_file), "TAGGER_BACKEND": "torch",
           "TAGGER_PRECISION": "float32", "TAGGER_HOME": str(tmp_path / "home"),
           "TAGGER_CACHE_DIR": str(tmp_path / "cache"), "TAGGER_CHUNK_SIZE": "8",
           "TAGGER_BATCH_SIZE": "4", "TAGGER_VISIBILITY_TIMEOUT": "30",
           "TAGGER_DECODE_PROCESSES": "2", **aws_env}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Start real Celery workers with a given environment; all are killed afterwards."""
    workers: list[Worker] = []

    def start(env: dict[str, str], ready_timeout: float = 120, **options: object) -> Worker:
        worker = Worker(env, tmp_path / f"worker-{len(workers)}.log", **options)
        workers.append(worker)
        return worker.start(ready_timeout)

    yield start
    for worker in workers:
        worker.kill()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Chromium (the system's, driven by Playwright), once per test process."""
    executable = find_chromium()
    if executable is None:
        pytest.skip(f"no Chromium to load pages in: {INSTALL}")
    started = Browser(executable)
    yield started
    started.close()


@pytest.fixture
def made() -> Iterator[list[Parts]]:
    """The worker parts a test assembles (append them): closed afterwards."""
    parts: list[Parts] = []
    yield parts
    for each in parts:
        each.close()
