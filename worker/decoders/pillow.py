"""The CPU decoder: Pillow in a pool of processes, each image under a deadline and a memory cap.

A runaway decode (a progressive JPEG of thousands of scans, a bomb under the pixel cap) is
killed with its process and replaced; its neighbours and the worker carry on.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from multiprocessing.process import AuthenticationString  # type: ignore[attr-defined]

import numpy as np
import pebble
from PIL import Image, ImageOps

from worker.core.errors import ItemError, Reason
from worker.core.pixels import Pixels, Preprocess
from worker.core.settings import Settings
from worker.decoders import Limits
from worker.decoders.guards import limit_process, open_checked
from worker.decoders.modes import RESIZE_FIRST, to_rgb

# Shrink by an integer box reduction first while the remaining bicubic step is at least this
# large: several times faster on multi-megapixel sources, indistinguishable at the model's size.
REDUCING_GAP = 3.0
TASKS_PER_PROCESS = 500  # then a fresh process: fragmentation and leaks cannot build up


def decode_image(data: bytes, spec: Preprocess, limits: Limits) -> np.ndarray:
    """Decode ``data`` into an (height, width, 3) uint8 array, or raise ItemError."""
    image = open_checked(data, limits, spec.draft_size)
    with image:
        try:
            image = ImageOps.exif_transpose(image)
            if image.mode in RESIZE_FIRST:
                # Resize at the source's channel count, then compose: a 5K RGBA photo is
                # composed onto white at 224x224 instead of at full size (same result: Pillow
                # resizes with premultiplied alpha, and composing is linear).
                return np.asarray(to_rgb(resize(image, spec)))
            return np.asarray(resize(to_rgb(image), spec))
        except MemoryError as exc:
            raise ItemError(Reason.TOO_MUCH_MEMORY,
                            f"{image.format} image needs more than the "
                            f"{limits.max_memory // 2**20} MiB allowed to decode it") from exc
        except Exception as exc:  # Pillow raises many types for damaged data; all are per-item.
            raise ItemError(Reason.UNDECODABLE,
                            f"{image.format} image: {type(exc).__name__}: {exc}") from exc


def resize(image: Image.Image, spec: Preprocess) -> Image.Image:
    """Resize as the processor does: squash to (height, width), or short side then centre crop."""
    if spec.shortest_edge is None:
        return image.resize((spec.width, spec.height), resample=spec.resample,
                            reducing_gap=REDUCING_GAP)
    width, height = image.size
    scale = spec.shortest_edge / min(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = image.resize(size, resample=spec.resample, reducing_gap=REDUCING_GAP)
    left = (size[0] - spec.width) // 2
    top = (size[1] - spec.height) // 2
    return image.crop((left, top, left + spec.width, top + spec.height))


def _allow_children() -> None:
    """Let a Celery prefork child start processes of its own.

    billiard installs its process object as multiprocessing's current process: it is marked
    daemonic (multiprocessing refuses children to those) and carries billiard's authkey type,
    which multiprocessing cannot pickle for a new process. The decoder processes are ours,
    stopped in close(), and daemonic themselves, so they end with this process anyway.
    """
    current = multiprocessing.current_process()
    if current._config.get("daemon"):  # type: ignore[attr-defined]
        current._config.pop("daemon")  # type: ignore[attr-defined]
        current._config["authkey"] = AuthenticationString(os.urandom(32))  # type: ignore


class PillowDecoder:
    """Decodes on the CPU in ``TAGGER_DECODE_PROCESSES`` processes (no GIL, killable)."""

    name = "pillow"

    @classmethod
    def preferred_on(cls, device: str) -> bool:
        return device == "cpu"

    def __init__(self, settings: Settings, device: str = "cpu") -> None:
        self.limits = Limits.from_settings(settings)
        _allow_children()
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])  # each fork starts with Pillow loaded
        self.pool = pebble.ProcessPool(max_workers=settings.decode_processes,
                                       max_tasks=TASKS_PER_PROCESS, initializer=limit_process,
                                       initargs=(self.limits,), context=context)

    def decode(self, blobs: Sequence[bytes], spec: Preprocess) -> list[Pixels | ItemError]:
        futures = [self.pool.schedule(decode_image, (blob, spec, self.limits),
                                      timeout=self.limits.seconds) for blob in blobs]
        return [self._outcome(future) for future in futures]

    def _outcome(self, future: pebble.ProcessFuture) -> Pixels | ItemError:
        try:
            return future.result()
        except ItemError as exc:
            return exc
        except FutureTimeout:
            return ItemError(Reason.TIMEOUT, f"decoding took over {self.limits.seconds:.0f}s "
                             "(TAGGER_ITEM_TIMEOUT); its process was stopped")
        except pebble.ProcessExpired as exc:
            return ItemError(Reason.DECODER_CRASHED,
                             f"the decoder process died (exit code {exc.exitcode})")
        except MemoryError:
            return ItemError(Reason.TOO_MUCH_MEMORY, "out of memory while decoding")

    def close(self) -> None:
        self.pool.stop()
        self.pool.join()
