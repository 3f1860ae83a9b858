"""Previews for the report: ~256 px JPEGs made as the workers make pixels, in decode processes
(worker/prep): the same sources, header guards, deadline and memory cap; all under one budget.

Its imports are at the top: a decode process imports this module before its first deadline
starts (report.py and the workbench import it only when they make pictures)."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import ImageOps

from worker.core.errors import ItemError, Reason, TaggerError
from worker.core.pixels import Preprocess
from worker.core.redact import redact
from worker.core.settings import Settings
from worker.decoders import Limits
from worker.decoders.guards import open_checked
from worker.decoders.modes import RESIZE_FIRST, to_rgb
from worker.prep.pool import PrepPool, prep_pool

SIZE = 256  # longest side, pixels: sharp in a ~200 px tile, and opened larger
PICTURE = 1024  # longest side of the workbench's larger picture
QUALITY = 75
SECONDS_EACH = 10.0  # decoding one image; then its process is stopped
THUMBNAIL = f"{__name__}:thumbnail"  # what the decode processes run instead of a decoder
LARGE = f"{__name__}:picture"


@dataclass(frozen=True)
class Preview:
    """A JPEG, or why there is none."""

    jpeg: bytes | None = None
    problem: str = ""
    reason: str = ""  # an ItemError's reason (outside-roots, too-large, ...)


def thumbnail(data: bytes, spec: Preprocess, limits: Limits) -> bytes:
    """In a decode process: at most SIZE x SIZE pixels, upright, transparency on white."""
    return _shrunk(data, limits, SIZE)


def picture(data: bytes, spec: Preprocess, limits: Limits) -> bytes:
    """In a decode process: at most PICTURE x PICTURE pixels, as ``thumbnail``."""
    return _shrunk(data, limits, PICTURE)


def _shrunk(data: bytes, limits: Limits, side: int) -> bytes:
    image = open_checked(data, limits, (side, side))  # JPEG: decoded at 1/2..1/8 size
    with image:
        try:
            small = image if image.mode in RESIZE_FIRST else to_rgb(image)
            small.thumbnail((side, side), reducing_gap=2.0)
            out = io.BytesIO()
            to_rgb(ImageOps.exif_transpose(small)).save(out, "JPEG", quality=QUALITY)
            return out.getvalue()
        except MemoryError as exc:
            raise ItemError(Reason.TOO_MUCH_MEMORY, "out of memory while decoding") from exc
        except Exception as exc:  # Pillow raises many types for damaged data; all are per-image
            raise ItemError(Reason.UNDECODABLE, f"{type(exc).__name__}: {exc}") from exc


def preview_pool(settings: Settings, processes: int | None = None) -> PrepPool:
    """Decode processes that make previews (``processes`` of them, default as the workers)."""
    limits = replace(Limits.from_settings(settings),
                     seconds=min(float(settings.item_timeout), SECONDS_EACH))
    if processes is not None:
        settings = replace(settings, decode_processes=processes)
    return prep_pool(settings, THUMBNAIL, Preprocess(SIZE, SIZE), False, limits)


def readable(settings: Settings, file_roots: Sequence[str]) -> tuple[Path, ...]:
    """The folders previews may read files from: TAGGER_FILE_ROOTS and the runs' own."""
    return settings.file_roots + tuple(Path(root) for root in file_roots)


def previews(uris: Sequence[str], settings: Settings, file_roots: Sequence[str],
             seconds: float, progress: Callable[[int], None] | None = None
             ) -> dict[str, Preview]:
    """A preview, or why there is none, for each URI; those not made in ``seconds`` say so.
    ``progress`` is told how many are answered, as they are."""
    if not uris:
        return {}
    deadline = time.monotonic() + seconds
    pool = preview_pool(settings)
    try:
        answers = {}
        for answer in pool.prepare(list(enumerate(uris)), readable(settings, file_roots),
                                   group_size=1, deadline=deadline):
            answers[answer.index] = answer.outcome
            if progress:
                progress(len(answers))
    finally:
        pool.close()
    late = Preview(problem=f"the report's {seconds:.0f} s for previews ran out "
                           "(producer report --preview-seconds)")
    return {uri: preview_of(answers[i]) if i in answers else late
            for i, uri in enumerate(uris)}


def preview_of(outcome: object) -> Preview:
    if isinstance(outcome, ItemError):
        return Preview(problem=f"{outcome.reason}: {redact(str(outcome))}",
                       reason=str(outcome.reason))
    if isinstance(outcome, TaggerError):  # a source down or slow: a page without this picture
        return Preview(problem=redact(str(outcome)))
    return Preview(jpeg=outcome)  # type: ignore[arg-type]
