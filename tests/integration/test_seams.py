"""ARCHITECTURE.md's "Where a change goes", proven the way a user would use it: a new source,
decoder, backend and sink, each one class plus one registration line in a plugin module
(tests/integration/seam_parts.py, named by TAGGER_PLUGINS), carry a catalogue from `producer
enqueue kv://...` through Redis and a real `celery -A worker worker` (tasks.py, its start-up
checks, its decode processes) into PostgreSQL and the new sink, each configured by its own
TAGGER_<PART>_* settings; no other file edited.

To add a case: the ``env`` fixture is the whole configuration, ``shelve`` stores images,
``start_worker`` starts a worker on it, and ``sunk`` reads what the new sink was given.
"""

from __future__ import annotations

import contextlib
import json
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from testkit.commands import ROOT, run_producer, user_env, wait_for_results
from testkit.processes import Worker
from testkit.services import REDIS_URL, wait_until
from worker.core import plugins
from worker.core.celeryconf import tagging_queue
from worker.core.errors import ConfigError
from worker.core.registry import Registry, registries
from worker.core.settings import load_settings

PLUGIN = "tests.integration.seam_parts"
SHELF = f"seams-{uuid.uuid4().hex[:8]}"  # this run's keys in Redis
DEADLINE = 180  # seconds: generous, a busy machine is slow, nothing here depends on it


@pytest.fixture
def env(pg_url: str, tiny_model: Path, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The whole configuration, as a user's environment: the parts' own settings included."""
    labels = tmp_path / "colours.txt"
    labels.write_text("红\n绿\n蓝\n", encoding="utf-8")
    values = user_env(
        CELERY_BROKER_URL=REDIS_URL, DATABASE_URL=pg_url, PYTHONPATH=str(ROOT),
        TAGGER_QUEUE=f"test-seams-{uuid.uuid4().hex[:8]}", TAGGER_MODEL=str(tiny_model),
        TAGGER_LABELS=str(labels), TAGGER_HOME=str(tmp_path / "home"), TAGGER_PLUGINS=PLUGIN,
        TAGGER_BACKEND="colour", TAGGER_DECODER="solid", TAGGER_SINKS="database,list",
        TAGGER_TOP_K="2", TAGGER_CHUNK_SIZE="3", TAGGER_DECODE_PROCESSES="2",
        TAGGER_VISIBILITY_TIMEOUT="30", TAGGER_CACHE_DIR=str(tmp_path / "cache"),
        TAGGER_KV_URL=REDIS_URL, TAGGER_LIST_KEY=f"{SHELF}:sunk")
    yield values
    store = redis.Redis.from_url(REDIS_URL)
    store.delete(f"{SHELF}:sunk", *store.scan_iter(match=f"{SHELF}*"))
    with plugged():
        store.delete(tagging_queue(load_settings(values)))


@contextlib.contextmanager
def plugged() -> Iterator[None]:
    """The plugin registered in this process too (for checks made here), undone afterwards
    so that other tests see the built-in parts only."""
    plugins.load("TAGGER_PLUGINS", "")  # the built-in parts, to keep
    before = {seam: set(registry.names()) for seam, registry in registries().items()}
    sys.modules.pop(PLUGIN, None)  # imported again: it registers again
    try:
        yield
    finally:
        for seam, registry in registries().items():
            for name in set(registry.names()) - before.get(seam, set()):
                registry.unregister(name)
        sys.modules.pop(PLUGIN, None)


def shelve(**images: bytes) -> list[str]:
    """Store ``images`` under this run's prefix in Redis; their kv:// URIs."""
    store = redis.Redis.from_url(REDIS_URL)
    for name, data in images.items():
        store.set(f"{SHELF}/{name.replace('_', '.')}", data)
    return [f"kv://{SHELF}/{name.replace('_', '.')}" for name in images]


def sunk(env: dict[str, str]) -> list[dict[str, str]]:
    """What the new sink was given, in order."""
    store = redis.Redis.from_url(REDIS_URL)
    return [json.loads(raw) for raw in store.lrange(env["TAGGER_LIST_KEY"], 0, -1)]


def test_new_parts_carry_a_catalogue_through_a_worker(env: dict[str, str],
                                                      start_worker: Callable[..., Worker]):
    with plugged():  # only to write images in its format; the worker and producer import it
        from tests.integration.seam_parts import solid
    uris = shelve(red_solid=solid(2, 2, (255, 0, 0)), green_solid=solid(3, 1, (0, 255, 0)),
                  blue_solid=solid(1, 1, (0, 0, 255)), dull_solid=solid(2, 2, (16, 16, 240)),
                  scrap_solid=b"JUNK")
    shelve(notes_txt=b"not an image", draft_red_solid=solid(1, 1, (255, 0, 0)))
    done = run_producer("enqueue", f"kv://{SHELF}/", "--exclude", "*draft*", env=env)
    assert done.returncode == 0, done.stderr
    # .solid is listed (its decoder declares the suffix), notes.txt is not an image, the
    # draft is left out by the source's own listing option.
    assert "enqueued 5 in 2 chunks" in done.stdout + done.stderr, done.stdout + done.stderr
    assert "not-image" in done.stdout + done.stderr

    worker = start_worker(env, ready_timeout=DEADLINE)
    stored = wait_for_results(env["DATABASE_URL"], uris, DEADLINE)
    tops = {uri.rpartition("/")[2]: (row.status, row.top_label) for uri, row in stored.items()}
    assert tops == {"red.solid": ("done", "红"), "green.solid": ("done", "绿"),
                    "blue.solid": ("done", "蓝"), "dull.solid": ("done", "蓝"),
                    "scrap.solid": ("failed", None)}
    # Refused by the header guards, which name the new format among those they take.
    assert stored[f"kv://{SHELF}/scrap.solid"].reason == "undecodable"
    assert "SOLID" in stored[f"kv://{SHELF}/scrap.solid"].error
    assert all(len(r.labels) == 2 for r in stored.values() if r.status == "done")
    assert {r.runtime for r in stored.values() if r.status == "done"} == {"colour float32 cpu"}
    assert "solid decoder" in worker.log()
    # The new sink saw every result the database stored, after it, in the worker's process.
    wait_until(lambda: len(sunk(env)) >= len(uris), DEADLINE, message="the sink saw too few")
    assert sorted(r["uri"] for r in sunk(env)) == sorted(stored)


def test_a_report_previews_the_new_format(env: dict[str, str]):
    from producer.thumbnails import previews

    with plugged():
        from tests.integration.seam_parts import solid

        uris = shelve(red_solid=solid(8, 8, (255, 0, 0)), scrap_solid=b"JUNK")
        shown = previews(uris, load_settings(env), [], seconds=DEADLINE)
    assert shown[uris[0]].jpeg and shown[uris[0]].jpeg.startswith(b"\xff\xd8")
    assert shown[uris[1]].reason == "undecodable"


def test_a_part_s_own_setting_is_checked_when_settings_load(env: dict[str, str],
                                                            tmp_path: Path):
    bad = {**env, "TAGGER_KV_URL": "http://shelf.example"}
    expected = "TAGGER_KV_URL must be a redis:// URL, got 'http'"
    done = run_producer("enqueue", f"kv://{SHELF}/", env=bad)
    assert (done.returncode, done.stderr.strip()) == (1, f"Error: {expected}")
    worker = Worker(bad, tmp_path / "bad.log").launch()
    worker.wait_for(lambda: worker.exited() is not None, DEADLINE, "the worker did not stop")
    assert worker.exited() != 0
    assert expected in worker.log() and "Traceback" not in worker.log()


def test_the_producer_offers_a_source_s_listing_options(env: dict[str, str], tmp_path: Path):
    helped = run_producer("enqueue", "--help", env=env)
    assert "--exclude" in helped.stdout and "(kv://)" in helped.stdout
    assert "--exclude" in run_producer("tag", "--help", env=env).stdout
    done = run_producer("enqueue", str(tmp_path), "--exclude", "*draft*", env=env)
    assert (done.returncode, done.stderr.strip()) == (
        1, f"Error: --exclude is for kv:// locations, not {tmp_path}")
    unknown = run_producer("enqueue", "gs://products/shoes/", env=env)
    assert unknown.stderr.startswith("Error: no source for gs:// URIs (known: file://, s3://")
    assert "kv://" in unknown.stderr


def test_the_registries_are_the_lists_settings_check():
    with plugged():
        settings = load_settings({"TAGGER_PLUGINS": PLUGIN, "TAGGER_BACKEND": "COLOUR",
                                  "TAGGER_DECODER": "solid", "TAGGER_SINKS": "list, database",
                                  "TAGGER_LIST_KEY": "results"})
        assert (settings.backend, settings.decoder, settings.sinks) == (
            "colour", "solid", ("database", "list"))
        assert settings.part("list").key == "results" and settings.plugins == (PLUGIN,)
        assert settings.part("kv").url == "redis://127.0.0.1:6379/0"  # its declared default
        with pytest.raises(ConfigError, match="TAGGER_BACKEND must be one of auto, torch, "
                                              "onnx, colour, got 'tensorrt'"):
            load_settings({"TAGGER_BACKEND": "tensorrt"})
        with pytest.raises(ConfigError, match="TAGGER_SINKS must include database"):
            load_settings({"TAGGER_SINKS": "list"})
    with pytest.raises(ConfigError, match="TAGGER_SINKS must be one of database, got "):
        load_settings({"TAGGER_SINKS": "database,list"})  # the plugin's parts are gone again
    with pytest.raises(ConfigError, match="TAGGER_PLUGINS: cannot import 'no_such_plugin'"):
        load_settings({"TAGGER_PLUGINS": "no_such_plugin"})


def test_a_new_backend_and_decoder_join_auto_by_their_own_declaration():
    import torch

    from worker.backends.choose import candidate_names
    from worker.decoders import decoder_name, image_suffixes

    with plugged():
        load_settings({"TAGGER_PLUGINS": PLUGIN})
        assert "colour float32" in candidate_names("auto", torch.device("cpu"))
        assert "colour float32" not in candidate_names("auto", torch.device("cuda"))
        assert candidate_names("auto", torch.device("cpu"))[0] == "torch float32"  # yardstick
        assert decoder_name("auto", "abacus") == "solid"
        assert decoder_name("auto", "cpu") == "pillow"
        assert ".solid" in image_suffixes()
    assert ".solid" not in image_suffixes()


def test_a_registry_imports_an_entry_only_when_asked():
    registry: Registry[type] = Registry("thing", {"lazy": "no.such.module:Thing"})
    assert registry.names() == ("lazy",) and "lazy" in registry
    with pytest.raises(ModuleNotFoundError):
        registry.get("lazy")
    with pytest.raises(ConfigError, match="no thing named 'other' \\(known: lazy\\)"):
        registry.get("other")
