"""Real services on loopback: free ports, PostgreSQL databases, redis-server, moto's S3 server."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

from worker.db import migrate
from worker.db.schema import normalise_url

PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
# Database 15: tests agree on one visibility timeout there (worker/service/broker_guards.py),
# whatever else uses the machine's Redis.
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _admin(admin_url: str) -> sa.Engine:
    return sa.create_engine(normalise_url(admin_url), isolation_level="AUTOCOMMIT",
                            poolclass=sa.pool.NullPool)


@contextlib.contextmanager
def postgres_database(admin_url: str = PG_ADMIN_URL, migrated: bool = True,
                      prefix: str = "tagger_test") -> Iterator[str]:
    """A new PostgreSQL database (migrated to head unless told not to), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with _admin(admin_url).connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(admin_url).set(database=name).render_as_string(False)
    try:
        if migrated:
            migrate.upgrade(url)
        yield url
    finally:
        with _admin(admin_url).connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def blocked_writers(admin: sa.Connection) -> list[int]:
    """The server processes of this database whose write to ``results`` waits on a lock."""
    return list(admin.scalars(sa.text(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND query ILIKE 'INSERT INTO results%' ORDER BY pid")))


def admin_engine_for(url: str) -> sa.Engine:
    """An autocommit engine on the same database, for tests that act as its administrator."""
    name = sa.make_url(url).database
    return _admin(sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(False))


class RedisServer:
    """Our own redis-server on a free loopback port: restartable, optionally persistent."""

    def __init__(self, folder: Path, appendonly: bool = True, password: str | None = None
                 ) -> None:
        self.folder = folder
        self.port = free_port()
        self.appendonly = appendonly
        self.password = password
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        persistence = (["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly
                       else ["--appendonly", "no"])
        auth = ["--requirepass", self.password] if self.password else []
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--dir", str(self.folder), "--save", "", *persistence,
             *auth, "--logfile", str(self.folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ready()
        return self

    def client(self) -> object:
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5)

    def wait_ready(self, timeout: float = 15) -> None:
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.exceptions.RedisError):
                if self.client().ping():  # type: ignore[attr-defined]
                    return
            time.sleep(0.1)
        raise TimeoutError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)
        self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


@contextlib.contextmanager
def s3_server() -> Iterator[dict[str, str]]:
    """moto's S3 server over real HTTP; yields boto3's standard environment for it."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    finally:
        server.stop()


def s3_client(env: dict[str, str]) -> object:
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                        region_name=env["AWS_DEFAULT_REGION"])


def wait_until(predicate: object, timeout: float, interval: float = 0.25,
               message: str = "") -> object:
    """Poll ``predicate`` until it returns a truthy value; raise on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()  # type: ignore[operator]
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(message or f"condition not met in {timeout}s")


def reset_s3_clients() -> None:
    """Forget the cached S3 clients (and the sources holding them): the endpoint changed."""
    from worker import sources
    from worker.sources import s3

    s3.client.cache_clear()  # a client reads AWS_ENDPOINT_URL_S3 when it is made
    s3._store.cache_clear()
    sources._cached.cache_clear()  # and each cached Source holds its client
