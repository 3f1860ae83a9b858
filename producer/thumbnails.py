"""Previews for the report: ~160 px JPEGs made through the workers' sources and header guards,
each decoded in a killable process under a deadline and a memory cap, all under one budget."""

from __future__ import annotations

import io
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

import pebble
from PIL import ImageOps

from worker.core.errors import ItemError, Reason, TaggerError
from worker.core.redact import redact
from worker.core.settings import Settings
from worker.decoders import Limits
from worker.decoders.guards import limit_process, open_checked
from worker.decoders.modes import RESIZE_FIRST, to_rgb
from worker.sources import Budget, source_for

SIZE = 160  # longest side, pixels
QUALITY = 75
SECONDS_EACH = 10.0  # decoding one image; then its process is stopped


@dataclass(frozen=True)
class Preview:
    """A JPEG, or why there is none."""

    jpeg: bytes | None = None
    problem: str = ""


def thumbnail(data: bytes, limits: Limits) -> bytes:
    """At most SIZE x SIZE pixels, upright, transparency on white; ItemError if it cannot be."""
    image = open_checked(data, limits, (SIZE, SIZE))  # JPEG: decoded at 1/2..1/8 size
    with image:
        try:
            small = image if image.mode in RESIZE_FIRST else to_rgb(image)
            small.thumbnail((SIZE, SIZE), reducing_gap=2.0)
            out = io.BytesIO()
            to_rgb(ImageOps.exif_transpose(small)).save(out, "JPEG", quality=QUALITY)
            return out.getvalue()
        except MemoryError as exc:
            raise ItemError(Reason.TOO_MUCH_MEMORY, "out of memory while decoding") from exc
        except Exception as exc:  # Pillow raises many types for damaged data; all are per-image
            raise ItemError(Reason.UNDECODABLE, f"{type(exc).__name__}: {exc}") from exc


class Previews:
    """Fetches in threads (bytes of at most ``fetch_threads`` images held at once) and decodes
    in ``decode_processes`` processes; every failure is a Preview with its problem."""

    def __init__(self, settings: Settings, file_roots: Sequence[str], seconds: float) -> None:
        self.settings = settings
        self.roots = settings.file_roots + tuple(Path(root) for root in file_roots)
        self.limits = Limits(settings.max_image_pixels, settings.max_image_memory,
                             min(float(settings.item_timeout), SECONDS_EACH))
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        context = multiprocessing.get_context("forkserver")  # no fork of a threaded process
        context.set_forkserver_preload([__name__])
        self.pool = pebble.ProcessPool(max_workers=settings.decode_processes,
                                       initializer=limit_process, initargs=(self.limits,),
                                       context=context)

    def make(self, uris: Sequence[str]) -> dict[str, Preview]:
        threads = ThreadPoolExecutor(self.settings.fetch_threads, "preview")
        try:
            return dict(zip(uris, threads.map(self.one, uris), strict=True))
        finally:
            threads.shutdown(wait=False, cancel_futures=True)
            self.pool.stop()
            self.pool.join()

    def one(self, uri: str) -> Preview:
        try:
            now = time.monotonic()
            if now > self.deadline:
                return self.out_of_time()
            budget = Budget(min(self.deadline, now + self.settings.fetch_timeout), self.roots)
            data = source_for(uri, self.settings).fetch(uri, budget)
            return self.decoded(self.pool.schedule(thumbnail, (data, self.limits),
                                                   timeout=self.limits.seconds))
        except ItemError as exc:
            return Preview(problem=f"{exc.reason}: {redact(str(exc))}")
        except TaggerError as exc:  # a source down or slow: a page without this picture
            return Preview(problem=redact(str(exc)))

    def decoded(self, future: pebble.ProcessFuture) -> Preview:
        """The decoder's preview; its ItemError is raised."""
        try:
            return Preview(jpeg=future.result(max(0.0, self.deadline - time.monotonic())))
        except FutureTimeout:
            if not future.done():  # the report's budget ran out, not the image's
                return self.out_of_time()
            return Preview(problem=f"{Reason.TIMEOUT}: decoding took over "
                                   f"{self.limits.seconds:.0f}s")
        except pebble.ProcessExpired as exc:
            return Preview(problem=f"{Reason.DECODER_CRASHED}: exit code {exc.exitcode}")

    def out_of_time(self) -> Preview:
        return Preview(problem=f"the report's {self.seconds:.0f} s for previews ran out "
                               "(producer report --preview-seconds)")


def previews(uris: Sequence[str], settings: Settings, file_roots: Sequence[str],
             seconds: float) -> dict[str, Preview]:
    """A preview, or why there is none, for each URI; those not made in ``seconds`` say so."""
    return Previews(settings, file_roots, seconds).make(uris) if uris else {}
