"""Settings: defaults for the embedded mode, overrides, and one-line errors naming the variable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.core.errors import ConfigError
from worker.core.redact import redact
from worker.core.settings import DEFAULT_MODEL, load_settings


def test_embedded_defaults(tmp_path: Path):
    settings = load_settings({"TAGGER_HOME": str(tmp_path)})
    assert settings.broker_url == "filesystem://" and settings.embedded_broker
    assert settings.database_url == f"sqlite:///{tmp_path / 'results.db'}"
    assert settings.model == DEFAULT_MODEL
    assert (settings.device, settings.precision, settings.top_k, settings.chunk_size) == (
        "auto", "auto", 5, 64)
    assert (settings.backend, settings.decoder, settings.sinks) == ("auto", "auto", ("database",))
    assert settings.decode_processes_per(1) == 2 * (os.cpu_count() or 1)
    assert settings.file_roots == ()
    assert settings.keep_embeddings
    assert not load_settings({"TAGGER_KEEP_EMBEDDINGS": "0"}).keep_embeddings


def test_distributed_configuration():
    settings = load_settings({"CELERY_BROKER_URL": "redis://:pw@redis:6379/0",
                              "DATABASE_URL": "postgresql://u:pw@db/tagger",
                              "TAGGER_DEVICE": "cuda:1", "TAGGER_PRECISION": "float16",
                              "TAGGER_BACKEND": "onnx", "TAGGER_DECODER": "pillow",
                              "TAGGER_DECODE_PROCESSES": "2",
                              "TAGGER_ITEM_TIMEOUT": "7",
                              "TAGGER_MAX_IMAGE_MEMORY": str(64 * 2**20),
                              "TAGGER_VISIBILITY_TIMEOUT": "600"})
    assert not settings.embedded_broker
    assert settings.device == "cuda:1" and settings.precision == "float16"
    assert (settings.backend, settings.decoder) == ("onnx", "pillow")
    assert settings.decode_processes == 2
    assert (settings.item_timeout, settings.max_image_memory) == (7, 64 * 2**20)
    # The hard time limit ends a chunk before Redis would hand it to another worker.
    assert settings.task_time_limit < settings.visibility_timeout
    assert settings.max_retry_countdown < settings.visibility_timeout


def test_cache_dir_and_file_roots(tmp_path: Path):
    first, second = tmp_path / "a", tmp_path / "b"
    settings = load_settings({"TAGGER_CACHE_DIR": str(tmp_path / "cache"),
                              "TAGGER_FILE_ROOTS": f"{first}{os.pathsep}{second}"})
    assert settings.cache_dir == tmp_path / "cache"
    assert settings.file_roots == (Path(os.path.realpath(first)), Path(os.path.realpath(second)))


@pytest.mark.parametrize(("name", "value", "message"), [
    ("TAGGER_TOP_K", "five", "must be an integer"),
    ("TAGGER_TOP_K", "0", "must be >= 1"),
    ("TAGGER_PRECISION", "float8", "must be one of"),
    ("TAGGER_BACKEND", "tensorrt", "must be one of"),
    ("TAGGER_DECODER", "opencv", "must be one of"),
    ("TAGGER_DEVICE", "tpu", "must be one of"),
    ("TAGGER_DECODE_PROCESSES", "0", "must be >= 1"),
    ("TAGGER_DECODE_PROCESSES", "many", "must be an integer"),
    ("TAGGER_ITEM_TIMEOUT", "0", "must be >= 1"),
    ("TAGGER_MAX_IMAGE_MEMORY", "1000", "must be >= "),
    ("TAGGER_ALLOW_PRIVATE_URLS", "maybe", "must be a boolean"),
    ("TAGGER_KEEP_EMBEDDINGS", "sometimes", "must be a boolean"),
    ("TAGGER_URL_ALLOW_NETWORKS", "10.0.0.0/33", "CIDR"),
    ("CELERY_BROKER_URL", "amqp://guest@rabbit//", "redis://"),
])
def test_bad_values_fail_fast(name: str, value: str, message: str):
    with pytest.raises(ConfigError, match=message) as info:
        load_settings({name: value})
    assert name in str(info.value)


@pytest.mark.parametrize(("value", "message"), [
    ("not a url", "is not a database URL"),
    ("mysql://u:pw@db/tagger", "'mysql' databases are not supported"),
    ("postgresql//u:pw@db/tagger", "is not a database URL"),
    ("postgresql://u:pw@db:port/tagger", "is not a database URL"),
])
def test_bad_database_url_is_one_line_naming_the_variable(value: str, message: str):
    with pytest.raises(ConfigError, match=message) as info:
        load_settings({"DATABASE_URL": value})
    text = str(info.value)
    assert text.startswith("DATABASE_URL") and "\n" not in text
    assert ":pw" not in text  # the password of a refused URL is not shown


@pytest.mark.parametrize("value", ["relative/images", f"/abs/ok{os.pathsep}images"])
def test_file_roots_must_be_absolute(value: str):
    with pytest.raises(ConfigError, match="TAGGER_FILE_ROOTS takes absolute folders"):
        load_settings({"TAGGER_FILE_ROOTS": value})


def test_redact_hides_passwords():
    assert "s3cret" not in redact("redis://:s3cret@redis:6379/0")
    assert "s3cret" not in redact("postgresql://tagger:s3cret@db:5432/tagger")
    assert "db:5432" in redact("postgresql://tagger:s3cret@db:5432/tagger")


def test_decode_processes_are_shared_by_the_model_processes_of_a_host():
    cores = os.cpu_count() or 1
    default = load_settings({})
    # Each of K prefork children got 2 x cores decode processes: 3 x as many as cores for K=3.
    assert [default.decode_processes_per(k) for k in (1, 2, 3)] == [
        max(1, 2 * cores // k) for k in (1, 2, 3)]
    assert load_settings({"TAGGER_DECODE_PROCESSES": "5"}).decode_processes_per(3) == 5


def test_a_chunk_goes_to_the_model_in_quarters_never_more_than_a_batch():
    assert load_settings({}).group_size(512) == 16
    assert load_settings({"TAGGER_CHUNK_SIZE": "256"}).group_size(512) == 64
    assert load_settings({"TAGGER_CHUNK_SIZE": "8"}).group_size(512) == 16  # one call each
    assert load_settings({}).group_size(4) == 4
