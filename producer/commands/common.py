"""What the ``producer`` commands share: the database made ready, label set and chunk options,
the sources' own listing options."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import sqlalchemy as sa

from worker.core import plugins
from worker.core.errors import ConfigError
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


F = TypeVar("F", bound=Callable[..., Any])


def listing_options(command: F) -> F:
    """Every registered source's listing options (``SourcePart.listing``), TAGGER_PLUGINS's
    included, as options of ``command``; ``listing_values`` picks out those given."""
    from worker.sources import listing_flags

    with contextlib.suppress(ConfigError):  # the command's load_settings says it, in a line
        plugins.load("TAGGER_PLUGINS", os.environ.get("TAGGER_PLUGINS", ""))
    for flag, schemes in reversed(listing_flags().values()):
        shown = f" [default: {flag.default}]" if flag.default else ""
        command = click.option(flag.option, f"listing_{flag.name}", default=None,
                               help=f"{flag.help}{shown} ({', '.join(schemes)})")(command)
    return command


def listing_values(given: dict[str, Any]) -> dict[str, Any]:
    """The listing options given on the command line (``listing_*`` parameters), by name."""
    return {name.removeprefix("listing_"): value for name, value in given.items()
            if name.startswith("listing_") and value is not None}
