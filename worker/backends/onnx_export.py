"""The Chinese CLIP image tower as ONNX files, exported (and quantised) once per host, cached."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from worker.backends.probe import onnx_agreement, probe_images
from worker.backends.weights import atomic_path, file_sha256
from worker.core.pixels import Preprocess

log = logging.getLogger(__name__)

OPSET = 18
GRAPH_VERSION = 1  # bump when ImageTower or a conversion changes: older cache files are ignored
INPUT, OUTPUT = "pixels", "embeddings"
BUILT_FROM = {"int8": "float32", "float16": "float32"}  # the rest is exported from torch
HOW = {"float32": "torch.onnx export", "int8": "dynamic quantisation of float32",
       "float16": "float16 conversion of float32"}
CHECK_IMAGES = 8  # probe images a cached file is run on at every load
# A file that computes what it computed when built agrees with torch as it did then (the same
# runtime on the same probe); a replaced one is far off, and a damaged one fails to load.
SAME_AGREEMENT = 1e-3


class ImageTower(torch.nn.Module):
    """(B, H, W, 3) uint8 pixels -> image embeddings, with TorchBackend's scaling in the graph."""

    def __init__(self, model: Any, spec: Preprocess) -> None:
        super().__init__()
        self.vision_model = model.vision_model
        self.visual_projection = model.visual_projection
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
        # (x / 255 - mean) / std as one multiply-add, so the runtime does it with the rest.
        self.register_buffer("scale", 1 / (255 * std))
        self.register_buffer("shift", mean / std)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float() * self.scale - self.shift
        return self.visual_projection(self.vision_model(pixel_values=x).pooler_output)


class _Quieter(logging.Filter):
    """Drops records below ``level`` logged from files under a package (on the root logger)."""

    def __init__(self, package: str, level: int) -> None:
        super().__init__()
        self.package, self.level = package, level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or self.package not in record.pathname


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The exporter and quantiser log a page of progress at INFO, some of it on the root logger.

    Their errors still show; what they log below that says nothing an operator can act on.
    """
    loggers = {name: logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")}
    levels = {name: logger.level for name, logger in loggers.items()}
    quieter = _Quieter(f"{os.sep}onnxruntime{os.sep}quantization{os.sep}", logging.ERROR)
    for logger in loggers.values():
        logger.setLevel(logging.ERROR)
    logging.getLogger().addFilter(quieter)
    try:
        with warnings.catch_warnings():  # deprecations inside torch.export, not in our calls
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            # TorchScript's fallback traces the image-size check as a constant: the tower is
            # exported for the checkpoint's one size, so that is what is wanted.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            yield
    finally:
        logging.getLogger().removeFilter(quieter)
        for name, logger in loggers.items():
            logger.setLevel(levels[name])


def export_float32(model: Any, spec: Preprocess, path: Path) -> None:
    """torch.export-based exporter (onnxscript); TorchScript's where it fails on a new model."""
    tower = ImageTower(model, spec).eval()
    example = (torch.zeros(2, spec.height, spec.width, 3, dtype=torch.uint8),)
    try:
        batch = torch.export.Dim("batch", min=1, max=65536)
        program = torch.onnx.export(tower, example, None, input_names=[INPUT],
                                    output_names=[OUTPUT], dynamic_shapes={INPUT: {0: batch}},
                                    opset_version=OPSET, dynamo=True, external_data=False,
                                    verbose=False)
        assert program is not None
        program.save(str(path))
    except Exception as exc:  # the exporter's failures have no common type
        log.warning("torch.export-based ONNX export failed (%s); trying the TorchScript one", exc)
        torch.onnx.export(tower, example, str(path), input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}}, opset_version=OPSET, dynamo=False)


def quantize_int8(source: Path, path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The matrix products hold the time; quantising the patch Conv too gained nothing measurable
    # (ViT-B/16 on a 2-core EPYC).
    quantize_dynamic(source, path, op_types_to_quantize=["MatMul", "Gemm"],
                     weight_type=QuantType.QInt8)


def convert_float16(source: Path, path: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # keep_io_types: the uint8 input and float32 embeddings stay; the casts are in the graph.
    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(path))


class ModelCache:
    """ONNX files of one checkpoint under cache_dir/onnx/<its digest>: built once per host.

    Writers hold an flock on the folder's lock file, so N workers starting together export
    once. Each file has a JSON sidecar, written after it, with its size, sha256 and how well it
    agreed with torch float32 on the probe when built. Every load checks all three, running
    the probe again: a torn, damaged or replaced file (a matching sidecar proves nothing
    about what a file computes) is deleted and rebuilt instead of loaded.
    """

    def __init__(self, root: Path, weights: str, source: Callable[[], Any], spec: Preprocess,
                 reference: Callable[[list[np.ndarray]], np.ndarray]) -> None:
        self.folder = root / weights[:16]  # the checkpoint's digest (weights.py)
        self.source = source  # () -> the float32 torch ChineseCLIPModel on the CPU
        self.spec = spec
        self.reference = reference  # torch float32's normalised image embeddings
        self._truth: tuple[list[np.ndarray], np.ndarray] | None = None

    def path(self, precision: str) -> Path:
        return self.folder / (f"{precision}-opset{OPSET}-g{GRAPH_VERSION}-ort{ort.__version__}"
                              f"-torch{torch.__version__}.onnx")

    def get(self, precision: str) -> Path:
        path = self.path(precision)
        if self.usable(path, warn=False):
            log.info("ONNX %s image tower from the cache: %s", precision, path)
            return path
        with self.locked():
            built = self._get_locked(precision)
        log.info("ONNX %s image tower: %s", precision, built)
        return built

    def _get_locked(self, precision: str) -> Path:
        path = self.path(precision)
        if self.usable(path, warn=True):  # built by another process while this one waited
            return path
        source = self._get_locked(BUILT_FROM[precision]) if precision in BUILT_FROM else None
        path.with_suffix(".json").unlink(missing_ok=True)  # a reader must never pair old + new
        started = time.monotonic()
        with atomic_path(path) as temporary, quiet():
            if source is None:
                export_float32(self.source(), self.spec, temporary)
            elif precision == "int8":
                quantize_int8(source, temporary)
            else:
                convert_float16(source, temporary)
        seconds = time.monotonic() - started
        meta = {"sha256": file_sha256(path), "size": path.stat().st_size, "seconds": seconds,
                "onnxruntime": ort.__version__, "torch": torch.__version__, "opset": OPSET,
                "probe_cosine": self.agreement(path)}
        with atomic_path(path.with_suffix(".json")) as temporary:
            temporary.write_text(json.dumps(meta, indent=1), encoding="utf-8")
        log.info("built the ONNX %s image tower in %.1f s (%s; worst cosine %.5f to torch "
                 "float32 on the probe): %s", precision, seconds, HOW[precision],
                 meta["probe_cosine"], path)
        return path

    def usable(self, path: Path, warn: bool) -> bool:
        """Whole (its sidecar's size and sha256) and computing what it did when built.

        Unlocked (``warn`` False) it only looks; locked, it deletes a file that fails.
        """
        try:
            meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
            whole = meta.get("size") == path.stat().st_size and (
                meta.get("sha256") == file_sha256(path))
        except (OSError, ValueError):
            meta, whole = {}, False
        if not whole:
            # Unlocked, a mismatch may be another process's rename in between: say it when sure.
            if warn and path.exists():
                log.warning("cached ONNX model %s is damaged (no sidecar, or its size or sha256 "
                            "differs); rebuilding it", path)
            return False
        built = meta.get("probe_cosine")
        try:
            now: float | None = self.agreement(path)
        except Exception:  # onnxruntime raises one type for every file it cannot load
            now = None
        if now is not None and isinstance(built, float) and abs(now - built) <= SAME_AGREEMENT:
            return True
        if warn:
            log.warning("cached ONNX model %s does not compute what was built (worst cosine %s "
                        "to torch float32 on the probe, %s when built): replaced or damaged; "
                        "deleting and rebuilding it", path,
                        "unknown" if now is None else f"{now:.5f}", built)
            path.with_suffix(".json").unlink(missing_ok=True)
            path.unlink(missing_ok=True)
        return False

    def agreement(self, path: Path) -> float:
        """The file's worst cosine to torch float32 on the probe (torch's side computed once)."""
        if self._truth is None:
            probe = probe_images(self.spec, CHECK_IMAGES)
            self._truth = probe, self.reference(probe)
        return onnx_agreement(path, *self._truth)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a+b") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another process building ONNX models in %s", self.folder)
                fcntl.flock(lock, fcntl.LOCK_EX)
            for stale in self.folder.glob(".*.tmp"):  # writers hold the lock: these are orphans
                stale.unlink(missing_ok=True)
            yield
