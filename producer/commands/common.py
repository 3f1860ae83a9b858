"""What the ``producer`` commands share: the database made ready, label set and chunk options."""

from __future__ import annotations

from pathlib import Path

import click
import sqlalchemy as sa

from worker.core.labels import LabelSet, load_labelset
from worker.core.settings import Settings
from worker.db import migrate
from worker.db.schema import engine_for


def ready(settings: Settings) -> sa.Engine:
    """The results database at the current schema (the embedded one upgrades itself)."""
    migrate.ensure_current(settings.database_url, settings.default_database)
    return engine_for(settings.database_url)


def labelset_of(settings: Settings, labels: Path | None, templates: Path | None) -> LabelSet:
    return load_labelset(labels or settings.labels_path, templates or settings.templates_path)


labels_option = click.option("--labels", type=click.Path(path_type=Path, dir_okay=False),
                             help="Label file (default: TAGGER_LABELS or the e-commerce set).")
templates_option = click.option("--templates", type=click.Path(path_type=Path, dir_okay=False),
                                help="Prompt templates, one per line with {} "
                                     "(default: TAGGER_TEMPLATES).")
chunk_option = click.option("--chunk-size", type=click.IntRange(1),
                            help="Images per message [default: TAGGER_CHUNK_SIZE or 64].")
