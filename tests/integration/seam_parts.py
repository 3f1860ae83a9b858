"""Test-only parts, registered as a plugin registers its own (``TAGGER_PLUGINS=tests.integration.
seam_parts``): a source with a setting and a listing option of its own, a decoder for a format
and suffix Pillow does not know, a backend, and a sink with a setting of its own. Each is one
class plus one registration line at the bottom; no other file knows them."""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image, ImageFile

from worker.backends import BACKENDS, BackendPart
from worker.core.contract import Item, Result
from worker.core.errors import ItemError, Reason, Skip
from worker.core.parse import Url, text
from worker.core.pixels import Pixels, Preprocess
from worker.core.registry import Flag, Part, Setting
from worker.decoders import DECODERS, DecoderPart, Limits
from worker.sinks import SINKS
from worker.sources import SOURCES, Budget, Listed, Skipped, Source, SourcePart, is_image_name

if TYPE_CHECKING:
    from worker.core.settings import Settings

MAGIC = b"SOLID"


def solid(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A SOLID image: the magic, its width and height (a byte each), then raw RGB pixels."""
    return MAGIC + bytes([width, height]) + bytes(rgb) * (width * height)


class SolidImageFile(ImageFile.ImageFile):
    """SOLID images for Pillow: what an AVIF plugin does for AVIF (this module is the opener)."""

    format = "SOLID"
    format_description = "test-only raw RGB"

    def _open(self) -> None:
        header = self.fp.read(len(MAGIC) + 2)
        if not header.startswith(MAGIC) or len(header) < len(MAGIC) + 2:
            raise SyntaxError("not a SOLID image")
        self._mode = "RGB"
        self._size = (header[-2], header[-1])
        self.tile = [ImageFile._Tile("raw", (0, 0, *self.size), len(header), ("RGB", 0, 1))]


Image.register_open("SOLID", SolidImageFile, lambda prefix: prefix.startswith(MAGIC))


class KeyValueSource(Source):
    """``kv://PREFIX``: images stored as values in the Redis of TAGGER_KV_URL."""

    def __init__(self, settings: Settings) -> None:
        import redis

        super().__init__(settings)
        self.store = redis.Redis.from_url(settings.part("kv").url)

    def listing(self, location: str, exclude: str | None = None, **_: Any) -> Iterator[Listed]:
        prefix = location.removeprefix("kv://")
        for key in sorted(k.decode() for k in self.store.scan_iter(match=f"{prefix}*")):
            if exclude and fnmatch.fnmatch(key, exclude):
                continue
            if not is_image_name(key):
                yield Skipped(Skip.NOT_IMAGE, key)
                continue
            data = self.store.get(key) or b""
            yield Item(f"kv://{key}", version=hashlib.md5(data).hexdigest())

    def fetch(self, uri: str, budget: Budget) -> bytes:
        data = self.store.get(uri.removeprefix("kv://"))
        if data is None:
            raise ItemError(Reason.NOT_FOUND, f"no value under {uri}")
        return bytes(data)


class SolidDecoder:
    """Pillow's decoding, after the header guards, which now know SOLID images too."""

    name = "solid"

    def __init__(self, settings: Settings, device: str) -> None:
        self.device = device

    @classmethod
    def preferred_on(cls, device: str) -> bool:
        return device == "abacus"

    @staticmethod
    def prepare(data: bytes, spec: Preprocess, limits: Limits) -> np.ndarray:
        """In a decode process, under the item's deadline and memory cap."""
        from worker.decoders.pillow import decode_image

        return decode_image(data, spec, limits)

    def finish(self, prepared: Sequence[Any], spec: Preprocess) -> list[Pixels | ItemError]:
        return list(prepared)

    def close(self) -> None:
        pass


class ColourBackend:
    """Embeddings are the normalised mean colour; a label's text embedding is its colour."""

    name = "colour"
    description = "colour float32 cpu"
    text_encoder = "colour"
    text = None
    device = "cpu"
    batch_size = 2
    logit_scale = 10.0
    preprocess = Preprocess(height=4, width=4)
    COLOURS: ClassVar[dict[str, tuple[float, float, float]]] = {
        "红": (1.0, 0.0, 0.0), "绿": (0.0, 1.0, 0.0), "蓝": (0.0, 0.0, 1.0)}

    def __init__(self, settings: Settings, folder: Path, precision: str | None = None, *,
                 reference: Any = None) -> None:
        self.batches: list[int] = []

    @classmethod
    def auto_candidates(cls, device: str, precision: str) -> list[str]:
        return ["float32"] if device == "cpu" and precision in {"auto", "float32"} else []

    def encode_texts(self, prompts: Sequence[Sequence[str]]) -> np.ndarray:
        return np.array([self.COLOURS[group[0]] for group in prompts], np.float32)

    def encode_images(self, pixels: Sequence[Pixels]) -> np.ndarray:
        self.batches.append(len(pixels))
        means = np.stack([np.asarray(p, np.float32).mean(axis=(0, 1)) for p in pixels]) + 1e-6
        return means / np.linalg.norm(means, axis=1, keepdims=True)

    def drop_image_tower(self) -> None:
        pass

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return False

    def release_memory(self) -> None:
        pass

    def memory(self) -> tuple[int, int] | None:
        return None


class RedisListSink:
    """Pushes each result onto the Redis list TAGGER_LIST_KEY, as a live sink (a Kafka topic)
    passes results on: what the test reads back from outside the worker."""

    def __init__(self, settings: Settings) -> None:
        import redis

        self.key = settings.part("list").key
        self.store = redis.Redis.from_url(settings.broker_url)

    def write(self, results: Sequence[Result], task_id: str | None = None) -> None:
        self.store.rpush(self.key, *(json.dumps({"uri": r.item.uri, "status": r.status,
                                                 "task": task_id}) for r in results))


# The one registration line of each part.
SOURCES.register("kv", SourcePart(f"{__name__}:KeyValueSource", settings=(
    Setting("url", Url("redis"), "redis://127.0.0.1:6379/0"),), listing=(
    Flag("exclude", "Leave out keys matching this glob."),)))
DECODERS.register("solid", DecoderPart(f"{__name__}:SolidDecoder", formats=("SOLID",),
                                       suffixes=(".solid",), opener=__name__))
BACKENDS.register("colour", BackendPart(f"{__name__}:ColourBackend", precisions=("float32",)))
SINKS.register("list", Part(f"{__name__}:RedisListSink", settings=(
    Setting("key", text, "seams"),)))
