"""Worker start-up: refuse a bad configuration at once, then load and warm the model per child."""

from __future__ import annotations

import logging

import numpy as np

from worker import metrics, pipeline, store
from worker.labels import LabelSet, load_labelset
from worker.settings import Settings, redact

log = logging.getLogger(__name__)


def check(settings: Settings) -> LabelSet:
    """In the worker's parent: validate the label set and the model config, log what is used."""
    from transformers import AutoConfig  # reads config.json only; no torch device is touched

    labelset = load_labelset(settings.labels_path, settings.templates_path)
    AutoConfig.from_pretrained(settings.model)
    log.info("broker %s, database %s, model %s, label set %s (%s: %d labels x %d templates)",
             redact(settings.broker_url), redact(settings.database_url), settings.model,
             settings.labels_path, labelset.id, len(labelset.labels), len(labelset.templates))
    return labelset


def warm_up(settings: Settings) -> None:
    """In each worker child: load the model once, encode the default label set, one dry batch."""
    labelset = load_labelset(settings.labels_path, settings.templates_path)
    tagger = pipeline.current_tagger(settings)
    scorer = tagger.scorer
    store.save_labelset(tagger.engine, labelset)
    tagger.labelset(labelset.id)
    spec = scorer.preprocess
    scorer.encode_images(np.zeros((scorer.batch_size, spec.height, spec.width, 3), np.uint8))
    if settings.metrics_port:
        metrics.serve(settings.metrics_port + _child_index())
    log.info("model %s on %s (%s), batch size %d, %d decode threads, label set %s ready",
             settings.model, scorer.device, str(scorer.dtype).removeprefix("torch."),
             scorer.batch_size, settings.decode_threads, labelset.id)


def _child_index() -> int:
    # Prefork children each serve metrics on their own port: base port + pool index.
    from billiard.process import current_process

    return int(getattr(current_process(), "index", 0) or 0)
