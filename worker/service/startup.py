"""Worker start-up: refuse a bad configuration at once, then load and warm up the tagger."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worker.backends import runtime_modules
from worker.backends.weights import Weights, checkpoint_digest
from worker.core import metrics
from worker.core.celeryconf import tagging_queue
from worker.core.errors import ConfigError
from worker.core.labels import LabelSet, load_labelset
from worker.core.redact import redact
from worker.core.settings import Settings
from worker.db import migrate
from worker.decoders import Limits
from worker.decoders.probe import check_decoder
from worker.loop.assemble import Parts, assemble
from worker.service import visibility

log = logging.getLogger(__name__)
GPU_MODEL_THREADS = 2  # torch's CPU threads in a process whose model runs on a GPU


@dataclass(frozen=True)
class Checked:
    """What the parent found at start: the default label set, the checkpoint's folder, the
    digest of its files (its identity: computed once, before any fork), and how many model
    processes the worker runs (prefork -c K; threads and solo: one)."""

    labelset: LabelSet
    folder: Path
    weights: Weights
    model_processes: int = 1


_checked: Checked | None = None  # found in the parent, before any fork
_parts: Parts | None = None  # this process's parts, once warmed up


def check(settings: Settings, model_processes: int = 1) -> Checked:
    """In the worker's parent: label set, model files, database schema, broker agreement."""
    from worker.backends.folder import resolve

    global _checked
    labelset = load_labelset(settings.labels_path, settings.templates_path)
    folder = resolve(settings.model)
    started = time.perf_counter()
    weights = checkpoint_digest(folder, settings.cache_dir)
    migrate.ensure_current(settings.database_url, settings.default_database)
    visibility.agree(settings)
    log.info("broker %s, database %s, model %s (%s, weights %s: digest in %.2f s), label set %s "
             "(%s: %d labels x %d templates)", redact(settings.broker_url),
             redact(settings.database_url), settings.model, folder, weights.short,
             time.perf_counter() - started, settings.labels_path, labelset.id,
             len(labelset.labels), len(labelset.templates))
    _checked = Checked(labelset, folder, weights, model_processes)
    return _checked


def check_queues(consumed: Iterable[str], settings: Settings) -> None:
    """A worker takes chunks of its own model only: from its model's queue and no other."""
    ours = tagging_queue(settings)
    others = sorted(set(consumed) - {ours})
    if others:
        raise ConfigError(
            f"told to consume {', '.join(others)} (-Q), but a worker of {settings.model} takes "
            f"its chunks from {ours} only (named by TAGGER_QUEUE and TAGGER_MODEL): drop -Q")
    log.info("taking chunks of model %s from queue %s", settings.model, ours)


def preload() -> None:
    """Import the registered backends' runtime libraries in the parent, once: every prefork
    child then starts (and restarts, after a crash) without 8 s of imports. Importing touches
    no CUDA device. A runtime not installed here is left to the backend that needs it."""
    for module in runtime_modules():
        try:
            importlib.import_module(module)
        except ImportError as exc:
            log.info("not preloading %s: %s", module, exc)


def warm_up(settings: Settings) -> Parts:
    """Load the model once, encode the default label set, run one dry batch; log the choice."""
    global _parts
    checked = _checked or check(settings)
    parts = assemble(settings, checked.folder, weights=checked.weights,
                     model_processes=checked.model_processes)
    try:
        _try_parts(parts, settings, checked)
    except BaseException:
        parts.close()  # its decode processes, before the refusal ends this process
        raise
    backend, decoder = parts.tagger.backend, parts.tagger.decoder
    if settings.metrics_port:
        metrics.serve(settings.metrics_port + _child_index())
    metrics.observe_backend({"backend": backend.name, "runtime": backend.description,
                             "decoder": decoder.name}, getattr(backend, "candidates", ()))
    log.info("model %s (weights %s): %s, batch size %d, %s decoder, %d decode processes; "
             "label set %s ready", settings.model, parts.served.short, backend.description,
             backend.batch_size, decoder.name, settings.decode_processes_per(
                 checked.model_processes), checked.labelset.id)
    _parts = parts
    return parts


def _try_parts(parts: Parts, settings: Settings, checked: Checked) -> None:
    """The decoder on a probe JPEG, the label set's texts, one dry batch of the image tower."""
    backend, decoder = parts.tagger.backend, parts.tagger.decoder
    limit_threads(backend.device)
    check_decoder(decoder, backend.preprocess, Limits.from_settings(settings))
    if decoder.name == "pillow" and backend.device.startswith("cuda"):
        log.warning("decoding on the CPU (Pillow) for a model on %s: TAGGER_DECODER=%s; nvJPEG "
                    "needs torchvision built for this torch (pip install 'catalog-tagger[gpu]')",
                    backend.device, settings.decoder)
    parts.labels.add(checked.labelset)
    spec = backend.preprocess
    backend.encode_images([np.zeros((spec.height, spec.width, 3), np.uint8)] * backend.batch_size)


def limit_threads(device: str) -> None:
    """A model on a GPU leaves the CPU little to do in its process: a few torch threads (each
    idle one spins), the cores to the decode processes."""
    import torch

    if device.startswith("cuda"):
        torch.set_num_threads(min(GPU_MODEL_THREADS, torch.get_num_threads()))


def parts(settings: Settings) -> Parts:
    """The process's parts, warmed up on first use (in the child, never before a fork)."""
    return _parts if _parts is not None else warm_up(settings)


def close() -> None:
    """Stop the process's decoder processes and release what they hold (at a child's exit)."""
    global _parts
    if _parts is not None:
        _parts.close()
        _parts = None


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
