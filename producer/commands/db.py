"""``producer db``: the results database's schema (Alembic migrations shipped in the package)."""

from __future__ import annotations

import click

from worker.core.redact import redact
from worker.core.settings import load_settings
from worker.db import migrate


@click.group("db")
def database() -> None:
    """The results database's schema (Alembic migrations shipped in the package)."""


@database.command()
@click.option("--create", is_flag=True,
              help="Create a SQLite database that is not there yet (the default one always is).")
def upgrade(create: bool) -> None:
    """Create or upgrade the results database at DATABASE_URL to the current schema."""
    settings = load_settings()
    migrate.require_database(settings.database_url, create or settings.default_database)
    before, head = migrate.revisions(settings.database_url)
    migrate.upgrade(settings.database_url)
    click.echo(f"{redact(settings.database_url)}: schema {before or 'none'} -> {head}")


@database.command()
def current() -> None:
    """Show the database's schema revision and the one this version needs."""
    settings = load_settings()
    migrate.require_database(settings.database_url, settings.default_database)
    revision, head = migrate.revisions(settings.database_url)
    state = "up to date" if revision == head else f"needs {head}: run `producer db upgrade`"
    click.echo(f"{redact(settings.database_url)}: schema {revision or 'none'}, {state}")


@database.command("wait")
@click.option("--timeout", type=float, default=3600, show_default=True, help="Seconds.")
def wait_for_schema(timeout: float) -> None:
    """Wait until the database is at this version's schema (exit 1 on timeout): what a worker
    or a job runs first while `producer db upgrade` runs elsewhere."""
    settings = load_settings()
    revision, head = migrate.revisions(settings.database_url)
    if revision != head:
        click.echo(f"{redact(settings.database_url)}: schema {revision or 'none'}, waiting for "
                   f"{head}", err=True)
    click.echo(f"{redact(settings.database_url)}: schema "
               f"{migrate.wait_current(settings.database_url, timeout)}")
