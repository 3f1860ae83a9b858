"""Which weights TAGGER_MODEL names for this producer: the digest of its checkpoint where the
files are on this machine (the ones `producer tag`'s own worker loads), else the weights its
workers last registered under that name (a producer on a machine of its own)."""

from __future__ import annotations

import logging

from worker.backends.folder import find_local
from worker.backends.weights import checkpoint_digest
from worker.core.settings import Settings
from worker.db import models
from worker.db.models import Model
from worker.db.schema import engine_for

log = logging.getLogger(__name__)


def served(settings: Settings, record: bool = True) -> Model | None:
    """The model results are due, found done and relabelled under; None: no worker has served
    TAGGER_MODEL yet and its files are not here (nothing of it is done). ``record``: weights
    found here are registered (as a worker's start would), else only looked up (a dry run)."""
    engine = engine_for(settings.database_url)
    fleet = models.latest(engine, settings.model)
    folder = find_local(settings.model)
    if folder is None:
        return fleet
    weights = checkpoint_digest(folder, settings.cache_dir)
    if fleet is not None and fleet.weights != weights.digest:
        log.warning("TAGGER_MODEL=%s is weights %s here, but a worker last registered weights "
                    "%s under that name: results are due and done for the ones here",
                    settings.model, weights.short, fleet.short)
    if record:
        return models.register(engine, weights, settings.model)
    return models.find(engine, weights.digest)
