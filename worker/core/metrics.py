"""Prometheus metrics of the worker: images by outcome, batch sizes, stage timings."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from prometheus_client import Counter, Gauge, Histogram, Info, start_http_server

from worker.core.contract import Result

IMAGES = Counter("tagger_images_total", "Images written, by status and failure reason",
                 ["status", "reason"])
IMAGES.labels("done", "")  # a zero from the start, so "nothing written yet" is a value in alerts
BATCH_SIZE = Histogram("tagger_batch_size", "Images per forward pass",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
FORWARD_SECONDS = Histogram("tagger_forward_seconds", "Seconds per forward pass (image tower)")
STAGE_SECONDS = Counter("tagger_stage_seconds_total",
                        "Seconds spent per chunk stage (prepare = until every image was fetched "
                        "and decoded, score = after; forward = the image tower's)", ["stage"])
QUEUE_WAIT = Histogram("tagger_queue_wait_seconds", "Seconds a chunk waited in the broker",
                       buckets=(0.1, 1, 5, 30, 60, 300, 900, 3600, 14400, 43200))
BACKEND = Info("tagger_backend", "The model runtime this worker runs (backend, precision, device)")
CANDIDATE_RATE = Gauge("tagger_backend_candidate_images_per_second",
                       "Image-tower rate of each runtime measured at warm-up", ["candidate"])
CANDIDATE_COSINE = Gauge("tagger_backend_candidate_min_cosine",
                         "Worst cosine to torch float32 of each runtime on the probe batch",
                         ["candidate"])
GPU_MEMORY = Gauge("tagger_gpu_memory_bytes",
                   "GPU memory held by tensors of the worker process, by kind (current, peak)",
                   ["kind"])

log = logging.getLogger(__name__)


def serve(port: int) -> None:
    """Expose /metrics on ``port`` (0 = off); a taken port costs the metrics, never the worker."""
    if not port:
        return
    try:
        start_http_server(port)
    except OSError as exc:
        log.warning("metrics not served on port %d: %s", port, exc)
        return
    log.info("metrics on port %d", port)


def observe_batch(size: int, seconds: float) -> None:
    if size:
        BATCH_SIZE.observe(size)
        FORWARD_SECONDS.observe(seconds)


def observe_results(results: Sequence[Result]) -> None:
    for result in results:
        IMAGES.labels(result.status, result.reason.value if result.reason else "").inc()


def observe_backend(info: Mapping[str, str], candidates: Sequence[Mapping[str, object]] = ()
                    ) -> None:
    """The chosen runtime, and what each candidate measured when ``auto`` chose."""
    BACKEND.info(dict(info))
    for candidate in candidates:
        name = str(candidate["name"])
        CANDIDATE_RATE.labels(name).set(float(candidate.get("images_per_second") or 0))
        CANDIDATE_COSINE.labels(name).set(float(candidate.get("min_cosine") or 0))


def observe_timings(timings: Mapping[str, float]) -> None:
    for stage, seconds in timings.items():
        STAGE_SECONDS.labels(stage).inc(seconds)


def observe_queue_wait(seconds: float) -> None:
    QUEUE_WAIT.observe(max(0.0, seconds))


def observe_gpu_memory(allocated: int, peak: int) -> None:
    GPU_MEMORY.labels("current").set(allocated)
    GPU_MEMORY.labels("peak").set(peak)
