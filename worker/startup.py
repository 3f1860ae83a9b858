"""Worker start-up: refuse a bad configuration at once, then load and warm up the tagger."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np

from worker import broker, metrics
from worker.core.errors import ConfigError
from worker.core.labels import LabelSet, load_labelset
from worker.core.redact import redact
from worker.core.settings import Settings
from worker.db import migrate
from worker.db.runs import save_labelset
from worker.db.schema import engine_for
from worker.pipeline import Tagger

log = logging.getLogger(__name__)
_folder: Path | None = None  # the resolved checkpoint, found in the parent before any fork
_tagger: Tagger | None = None


def check(settings: Settings) -> LabelSet:
    """In the worker's parent: label set, model files, database schema, broker agreement."""
    from worker.backends.files import resolve

    global _folder
    labelset = load_labelset(settings.labels_path, settings.templates_path)
    _folder = resolve(settings.model)
    check_schema(settings)
    broker.agree_on_visibility_timeout(settings)
    log.info("broker %s, database %s, model %s (%s), label set %s (%s: %d labels x %d "
             "templates)", redact(settings.broker_url), redact(settings.database_url),
             settings.model, _folder, settings.labels_path, labelset.id, len(labelset.labels),
             len(labelset.templates))
    return labelset


def check_schema(settings: Settings) -> None:
    """The embedded database upgrades itself; a shared one must be upgraded on purpose."""
    current, head = migrate.revisions(settings.database_url)
    if current == head:
        return
    if settings.database_url.startswith("sqlite"):
        migrate.upgrade(settings.database_url)
        return
    raise ConfigError(f"the results database is at revision {current or 'none'}, this worker "
                      f"needs {head}: run `producer db upgrade` (with the same DATABASE_URL)")


def preload() -> None:
    """Import the model libraries in the parent, once: every prefork child then starts (and
    restarts, after a crash) without 8 s of imports. Importing touches no CUDA device."""
    import onnxruntime  # noqa: F401
    import torch  # noqa: F401
    from transformers.models.chinese_clip import modeling_chinese_clip  # noqa: F401


def warm_up(settings: Settings) -> Tagger:
    """Load the model once, encode the default label set, run one dry batch; log the choice."""
    from worker.backends import load_backend
    from worker.decoders import make_decoder

    global _tagger
    if _folder is None:
        check(settings)
    assert _folder is not None
    labelset = load_labelset(settings.labels_path, settings.templates_path)
    backend = load_backend(settings, _folder)
    tagger = Tagger(settings, backend, make_decoder(settings, backend.device))
    save_labelset(engine_for(settings.database_url), labelset)
    tagger.labelset(labelset.id)
    spec = backend.preprocess
    backend.encode_images([np.zeros((spec.height, spec.width, 3), np.uint8)] * backend.batch_size)
    if settings.metrics_port:
        metrics.serve(settings.metrics_port + _child_index())
    metrics.observe_backend({"backend": backend.name, "runtime": backend.description,
                             "decoder": tagger.decoder.name},
                            getattr(backend, "candidates", ()))
    log.info("model %s: %s, batch size %d, %s decoder, %d fetch threads; label set %s ready",
             settings.model, backend.description, backend.batch_size, tagger.decoder.name,
             settings.fetch_threads, labelset.id)
    _tagger = tagger
    return tagger


def tagger(settings: Settings) -> Tagger:
    """The process's tagger, warmed up on first use (in the child, never before a fork)."""
    return _tagger if _tagger is not None else warm_up(settings)


def close() -> None:
    """Stop the process's decoder processes and release what they hold (at a child's exit)."""
    global _tagger
    if _tagger is not None:
        _tagger.close()
        _tagger = None


def _child_index() -> int:
    # Prefork children each serve metrics on their own port: base port + pool index.
    from billiard.process import current_process

    return int(getattr(current_process(), "index", 0) or 0)


EXIT_CHILD_FAILED = 3
stopping = False  # set in the parent once a child could not load the model


def stop_when_a_child_fails() -> None:
    """In the parent: a child's SIGUSR2 (see ``stop_parent``) starts a shutdown, exit code 3."""

    def _stop(_signum: int, _frame: Any) -> None:
        from celery.worker import state

        global stopping
        stopping = True  # children forked from now on inherit it and exit at once, quietly
        state.should_stop = EXIT_CHILD_FAILED

    signal.signal(signal.SIGUSR2, _stop)


def stop_parent() -> None:
    """A child that cannot load the model ends the whole worker, which exits non-zero.

    Otherwise the pool would fork a new child, which would fail the same way, for ever.
    """
    os.kill(os.getppid(), signal.SIGUSR2)
