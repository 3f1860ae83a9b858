"""ARCHITECTURE.md's "Where a change goes", proven: a new source, backend, decoder and sink, each
one class here plus one registration, carry a catalogue from `producer enqueue URI` through Redis
and the worker's parts (its decode processes included) into PostgreSQL, no other file edited."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import redis
import sqlalchemy as sa

from producer.sending import sending_app
from testkit.commands import invoke, one_line_error
from testkit.services import REDIS_URL
from worker.backends import BACKENDS
from worker.core.celeryconf import tagging_queue
from worker.core.contract import Chunk, Item, Result
from worker.core.errors import ConfigError, ItemError, Reason
from worker.core.pixels import Pixels, Preprocess
from worker.core.registry import Registry
from worker.core.settings import Settings, load_settings
from worker.db.schema import engine_for, results
from worker.decoders import DECODERS, Limits, decoder_name
from worker.sinks import SINKS
from worker.sources import SOURCES, Budget, Listed, Source

SHELF = f"seams-{uuid.uuid4().hex[:8]}"  # this run's keys in Redis
class KeyValueSource(Source):
    """``kv://PREFIX/NAME``: images stored as Redis values under ``PREFIX/NAME``."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.store = redis.Redis.from_url(REDIS_URL)

    def listing(self, location: str, **_: Any) -> Iterator[Listed]:
        prefix = location.removeprefix("kv://")
        for key in sorted(self.store.scan_iter(match=f"{prefix}*")):
            data = self.store.get(key) or b""
            yield Item(f"kv://{key.decode()}", version=hashlib.md5(data).hexdigest())

    def fetch(self, uri: str, budget: Budget) -> bytes:
        data = self.store.get(uri.removeprefix("kv://"))
        if data is None:
            raise ItemError(Reason.NOT_FOUND, f"no value under {uri}")
        return bytes(data)


class SolidDecoder:
    """``SOLID`` + three bytes: a solid colour at the model's size."""

    name = "solid"

    def __init__(self, settings: Settings, device: str) -> None:
        self.device = device

    @classmethod
    def preferred_on(cls, device: str) -> bool:
        return device == "abacus"

    @staticmethod
    def prepare(data: bytes, spec: Preprocess, limits: Limits) -> np.ndarray:
        """In a decode process, under the item's deadline and memory cap."""
        if not data.startswith(b"SOLID") or len(data) != 8:
            raise ItemError(Reason.UNDECODABLE, "not a SOLID image")
        return np.full((spec.height, spec.width, 3), list(data[5:8]), np.uint8)

    def finish(self, prepared: Sequence[Any], spec: Preprocess) -> list[Pixels | ItemError]:
        return list(prepared)

    def close(self) -> None:
        pass


class ColourBackend:
    """Embeddings are the normalised mean colour; a label's text embedding is its colour."""

    name = "colour"
    description = "colour float32 cpu"
    text_encoder = "colour"
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
        means = np.stack([np.asarray(p, np.float32).mean(axis=(0, 1)) for p in pixels])
        return means / np.linalg.norm(means, axis=1, keepdims=True)

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return False

    def release_memory(self) -> None:
        pass

    def memory(self) -> tuple[int, int] | None:
        return None


class ListSink:
    """Keeps what it is given, as a live sink (a topic, an index) would pass it on."""

    written: ClassVar[list[Result]] = []

    def __init__(self, settings: Settings) -> None:
        pass

    def write(self, results: Sequence[Result], task_id: str | None = None) -> None:
        self.written.extend(results)


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one registration line of each new part (undone after the test)."""
    for registry in (SOURCES, BACKENDS, DECODERS, SINKS):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    SOURCES.register("kv", KeyValueSource)
    BACKENDS.register("colour", ColourBackend)
    DECODERS.register("solid", SolidDecoder)
    SINKS.register("list", ListSink)
    ListSink.written = []


@pytest.fixture
def env(registered: None, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> Iterator[dict[str, str]]:
    labels = tmp_path / "colours.txt"
    labels.write_text("红\n绿\n蓝\n", encoding="utf-8")
    values = {"CELERY_BROKER_URL": REDIS_URL, "DATABASE_URL": pg_url,
              "TAGGER_QUEUE": f"test-seams-{uuid.uuid4().hex[:8]}", "TAGGER_MODEL": "colours",
              "TAGGER_LABELS": str(labels), "TAGGER_HOME": str(tmp_path / "home"),
              "TAGGER_BACKEND": "colour", "TAGGER_DECODER": "solid",
              "TAGGER_SINKS": "database,list", "TAGGER_TOP_K": "2", "TAGGER_CHUNK_SIZE": "3",
              "TAGGER_DECODE_PROCESSES": "2"}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    yield values
    store = redis.Redis.from_url(REDIS_URL)
    store.delete(tagging_queue(load_settings(values)), *store.scan_iter(match=f"{SHELF}*"))


def queued_chunks(settings: Settings) -> list[Chunk]:
    """The chunk messages waiting on the queue, taken off it as a worker would."""
    found = []
    with sending_app(settings).connection_for_read() as conn:
        queue = conn.SimpleQueue(tagging_queue(settings))
        while True:
            try:
                message = queue.get(timeout=0.5)
            except queue.Empty:
                break
            found.append(Chunk.decode(message.decode()[1]))
            message.ack()
    return found


def test_new_parts_carry_a_catalogue_end_to_end(env: dict[str, str], tmp_path: Path):
    store = redis.Redis.from_url(REDIS_URL)
    for name, data in {"red.solid": b"SOLID\xff\x00\x00", "green.solid": b"SOLID\x00\xff\x00",
                       "blue.solid": b"SOLID\x00\x00\xff", "dull.solid": b"SOLID\x10\x10\xf0",
                       "scrap.solid": b"JUNK"}.items():
        store.set(f"{SHELF}/{name}", data)
    out = invoke("enqueue", f"kv://{SHELF}/")
    assert out.exit_code == 0, out.output
    assert "listed 5, enqueued 5 in 2 chunks" in out.stderr + out.stdout

    from worker.handlers.chunks import run_chunk
    from worker.loop.assemble import assemble  # torch: not at the top, decode processes import this

    settings = load_settings()
    parts = assemble(settings, tmp_path)
    try:
        assert type(parts.tagger.backend) is ColourBackend
        assert type(parts.tagger.decoder) is SolidDecoder
        assert [type(s).__name__ for s in parts.sinks] == ["DatabaseSink", "ListSink"]
        for number, chunk in enumerate(queued_chunks(settings)):
            report = run_chunk(parts, chunk, task_id=f"task-{number}", chunk_retries=8)
            assert report.parked is None
    finally:
        parts.close()

    with engine_for(settings.database_url).connect() as conn:
        stored = {r.uri: r for r in conn.execute(sa.select(results))}
    tops = {uri.rpartition("/")[2]: (row.status, row.top_label) for uri, row in stored.items()}
    assert tops == {"red.solid": ("done", "红"), "green.solid": ("done", "绿"),
                    "blue.solid": ("done", "蓝"), "dull.solid": ("done", "蓝"),
                    "scrap.solid": ("failed", None)}
    assert stored[f"kv://{SHELF}/scrap.solid"].reason == "undecodable"
    assert all(len(r.labels) == 2 for r in stored.values() if r.status == "done")
    assert {r.runtime for r in stored.values() if r.status == "done"} == {"colour float32 cpu"}
    # The second sink saw every result the database stored, after it.
    assert sorted(r.item.uri for r in ListSink.written) == sorted(stored)
    assert parts.tagger.backend.batches and max(parts.tagger.backend.batches) <= 2


def test_the_registries_are_the_lists_settings_check(registered: None):
    settings = load_settings({"TAGGER_BACKEND": "COLOUR", "TAGGER_DECODER": "solid",
                              "TAGGER_SINKS": "list, database"})
    assert (settings.backend, settings.decoder, settings.sinks) == (
        "colour", "solid", ("database", "list"))
    with pytest.raises(ConfigError, match="TAGGER_BACKEND must be one of auto, torch, onnx, "
                                          "colour, got 'tensorrt'"):
        load_settings({"TAGGER_BACKEND": "tensorrt"})
    with pytest.raises(ConfigError, match="TAGGER_SINKS must include database"):
        load_settings({"TAGGER_SINKS": "list"})
    with pytest.raises(ConfigError, match="TAGGER_SINKS must be one of database, list"):
        load_settings({"TAGGER_SINKS": "database,kafka"})


def test_a_new_backend_and_decoder_join_auto_by_their_own_declaration(registered: None):
    import torch

    from worker.backends.choose import candidate_names

    assert "colour float32" in candidate_names("auto", torch.device("cpu"))
    assert "colour float32" not in candidate_names("auto", torch.device("cuda"))
    assert candidate_names("auto", torch.device("cpu"))[0] == "torch float32"  # the yardstick
    assert decoder_name("auto", "abacus") == "solid"
    assert decoder_name("auto", "cpu") == "pillow"


def test_an_unregistered_scheme_is_one_line_naming_the_known_ones(registered: None,
                                                                   env: dict[str, str]):
    error = one_line_error("enqueue", "gs://products/shoes/")
    assert error.startswith("Error: no source for gs:// URIs (known: file://, s3://")
    assert "kv://" in error


def test_a_registry_imports_an_entry_only_when_asked():
    registry: Registry[type] = Registry("thing", {"lazy": "no.such.module:Thing"})
    assert registry.names() == ("lazy",) and "lazy" in registry
    with pytest.raises(ModuleNotFoundError):
        registry.get("lazy")
    with pytest.raises(ConfigError, match="no thing named 'other' \\(known: lazy\\)"):
        registry.get("other")
