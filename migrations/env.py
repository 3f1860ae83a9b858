"""Alembic environment: the URL comes from the caller or from DATABASE_URL, never alembic.ini."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from worker.core.settings import load_settings
from worker.db.schema import engine_for, metadata, normalise_url

config = context.config
if config.config_file_name:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

url = config.attributes.get("url") or load_settings().database_url


def run_offline() -> None:
    context.configure(url=normalise_url(url), target_metadata=metadata, literal_binds=True,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    with engine_for(url).connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
