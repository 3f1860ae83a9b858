"""``producer report``: a run's figures and previews of its photos, written as one HTML page."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from producer.figures import gather
from producer.page import render
from producer.progress import Progress
from producer.status import find_run
from worker.core.errors import ConfigError
from worker.core.settings import Settings
from worker.db.runs import result_filter
from worker.db.schema import engine_for

PREVIEW_SECONDS = 25.0  # for all previews of a page: 1,000 catalogue photos take ~5 s here


def write_report(settings: Settings, output: Path | None = None, run_id: str | None = None,
                 selection: Mapping[str, str | None] | None = None,
                 preview_seconds: float = PREVIEW_SECONDS) -> Path:
    """The page of a run (default: the latest) to ``output`` (default: beside the run's results
    file under TAGGER_HOME); with ``selection`` (result columns, ``uri_prefix``) its galleries
    show those images rather than the run's own. Previews not made in ``preview_seconds`` show
    why instead."""
    run = find_run(settings, run_id)
    if run is None:
        raise ConfigError("no run yet: `producer tag FOLDER` or `producer enqueue` starts one")
    output = output or settings.home / "results" / f"{run['id']}.html"
    figures = gather(engine_for(settings.database_url), run,
                     result_filter(**(selection or {"run_id": run["id"]})))
    from producer.thumbnails import previews  # Pillow and processes: not for `producer --help`

    partial = _writable(output)  # before the previews' seconds are spent
    uris = figures.photo_uris()
    with Progress("report previews", total=len(uris), unit=" previews") if uris else (
            contextlib.nullcontext()) as bar:
        made = previews(uris, settings, figures.file_roots, preview_seconds,
                        bar.update if bar else None)
    html = render(figures, made, datetime.now(UTC))
    try:
        partial.write_text(html, encoding="utf-8")
        os.replace(partial, output)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ConfigError(f"cannot write the report to {output}: {exc.strerror or exc}") from exc
    return output


def _writable(output: Path) -> Path:
    """The name the page is written under first (never half a page under the real name),
    created now: a folder that cannot take it fails at once, as one line."""
    partial = output.with_name(output.name + ".part")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        partial.touch()
    except OSError as exc:
        raise ConfigError(f"cannot write the report to {output}: {exc.strerror or exc}") from exc
    return partial
