"""An image file given to ``similar``: fetched and decoded as workers do (a decode process: the
local source's checks, the header guards, a deadline and a memory cap), then the ONNX image
tower the workers cache."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np

from worker.core.errors import ConfigError, ItemError, TaggerError
from worker.core.redact import redact
from worker.core.settings import Settings
from worker.prep.pool import prep_pool
from worker.search.towers import Towers, session

DECODER = "pillow"  # what a CPU worker decodes with: pixels as the kept embeddings saw them


class NotAnImage(ConfigError):
    """The file given cannot be used as an image."""


class ImageEncoder:
    """Image files to normalised float32 embeddings; the ONNX session is loaded once."""

    def __init__(self, settings: Settings, towers: Towers) -> None:
        self.settings, self.towers = settings, towers
        self.session = session(towers.image)

    def pixels(self, path: Path) -> np.ndarray:
        real = Path(os.path.realpath(path))
        settings = dataclasses.replace(self.settings, decode_processes=1)
        pool = prep_pool(settings, DECODER, self.towers.preprocess, False)
        deadline = time.monotonic() + settings.fetch_timeout + 2 * settings.item_timeout
        try:
            answers = list(pool.prepare([(0, real.as_uri())], (real.parent,), group_size=1,
                                        deadline=deadline))
        finally:
            pool.close()
        if not answers:
            raise NotAnImage(f"{path}: not decoded within its time limit")
        outcome = answers[0].outcome
        if isinstance(outcome, ItemError):
            raise NotAnImage(f"{path} is not an image that can be used "
                             f"({outcome.reason}: {redact(str(outcome))})")
        if isinstance(outcome, TaggerError):
            raise NotAnImage(f"{path}: {redact(str(outcome))}")
        return np.asarray(outcome)

    def encode(self, path: Path) -> np.ndarray:
        rows = self.session.run(None, {self.session.get_inputs()[0].name:
                                       self.pixels(path)[None]})[0]
        return (rows[0] / np.linalg.norm(rows[0])).astype(np.float32)
