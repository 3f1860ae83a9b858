"""Run the Alembic migrations shipped in the package, from any folder, on any database URL."""

from __future__ import annotations

import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

import migrations
from worker.core.errors import ConfigError
from worker.core.redact import redact
from worker.db.schema import engine_for

SCRIPTS = Path(migrations.__file__).resolve().parent


def alembic_config(url: str) -> Config:
    """Alembic's configuration without alembic.ini: the packaged scripts, this URL."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    config.attributes["url"] = url
    return config


def require_database(url: str, create: bool = False) -> None:
    """A SQLite file that is not there is a mistyped path, refused, unless ``create`` (the
    default database, or `producer db upgrade --create`): then its folder is made too."""
    if not url.startswith("sqlite"):
        return
    database = make_url(url).database
    if not database or database == ":memory:" or Path(database).is_file():
        return
    if not create:
        raise ConfigError(f"no SQLite database at {Path(database).absolute()} (DATABASE_URL): "
                          "check the path, or create it with `producer db upgrade --create`")
    Path(database).parent.mkdir(parents=True, exist_ok=True)


def upgrade(url: str, revision: str = "head", create: bool = False) -> None:
    """To ``revision``; ``create``: a SQLite file that is not there yet may be created."""
    require_database(url, create)
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def head() -> str:
    """The newest shipped revision (no database is opened)."""
    return str(ScriptDirectory.from_config(alembic_config("")).get_current_head())


def revisions(url: str) -> tuple[str | None, str]:
    """(the database's revision or None, the newest shipped revision)."""
    with engine_for(url).connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return current, head()


def ensure_current(url: str, create: bool = False) -> None:
    """The schema rule, in one place: the embedded database (SQLite) upgrades itself; a shared
    one is upgraded on purpose, by `producer db upgrade`, never as a side effect.

    ``create``: the database may be created (the default one: ``Settings.default_database``).
    """
    require_database(url, create)
    current, head = revisions(url)
    if current == head:
        return
    if url.startswith("sqlite"):
        upgrade(url)
        return
    raise ConfigError(f"the results database {redact(url)} is at schema {current or 'none'}, "
                      f"this version needs {head}: run `producer db upgrade` (with the same "
                      "DATABASE_URL)")


def wait_current(url: str, timeout: float, interval: float = 2.0) -> str:
    """Until another process (a migration Job) has brought the database to this version's
    schema; its revision. A schema newer than this version knows is refused at once."""
    known = {script.revision for script in
             ScriptDirectory.from_config(alembic_config(url)).walk_revisions()}
    deadline = time.monotonic() + timeout
    while True:
        current, head = revisions(url)
        if current == head:
            return head
        if current is not None and current not in known:
            raise ConfigError(f"the results database {redact(url)} is at schema {current}, "
                              f"newer than this version (which needs {head}): deploy the "
                              "version that upgraded it")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the results database {redact(url)} is still at schema "
                               f"{current or 'none'} after {timeout:.0f}s, this version needs "
                               f"{head}: `producer db upgrade` has not run")
        time.sleep(interval)
