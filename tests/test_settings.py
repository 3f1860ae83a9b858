"""Settings: defaults for the embedded mode, overrides, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.settings import DEFAULT_MODEL, SettingsError, load_settings, redact


def test_embedded_defaults(tmp_path: Path):
    settings = load_settings({"TAGGER_HOME": str(tmp_path)})
    assert settings.broker_url == "filesystem://" and settings.embedded_broker
    assert settings.database_url == f"sqlite:///{tmp_path / 'results.db'}"
    assert settings.model == DEFAULT_MODEL
    assert (settings.device, settings.dtype, settings.top_k, settings.chunk_size) == (
        "auto", "auto", 5, 64)


def test_distributed_configuration():
    settings = load_settings({"CELERY_BROKER_URL": "redis://:pw@redis:6379/0",
                              "DATABASE_URL": "postgresql://u:pw@db/tagger",
                              "TAGGER_DEVICE": "cuda:1", "TAGGER_DTYPE": "float16",
                              "TAGGER_VISIBILITY_TIMEOUT": "600"})
    assert not settings.embedded_broker
    assert settings.device == "cuda:1" and settings.dtype == "float16"
    # The hard time limit ends a chunk before Redis would hand it to another worker.
    assert settings.task_time_limit < settings.visibility_timeout
    assert settings.max_retry_countdown < settings.visibility_timeout


@pytest.mark.parametrize(("name", "value", "message"), [
    ("TAGGER_TOP_K", "five", "must be an integer"),
    ("TAGGER_TOP_K", "0", "must be >= 1"),
    ("TAGGER_DTYPE", "float8", "must be one of"),
    ("TAGGER_DEVICE", "tpu", "must be one of"),
    ("TAGGER_ALLOW_PRIVATE_URLS", "maybe", "must be a boolean"),
])
def test_bad_values_fail_fast(name: str, value: str, message: str):
    with pytest.raises(SettingsError, match=message):
        load_settings({name: value})


def test_redact_hides_passwords():
    assert "s3cret" not in redact("redis://:s3cret@redis:6379/0")
    assert "s3cret" not in redact("postgresql://tagger:s3cret@db:5432/tagger")
    assert "db:5432" in redact("postgresql://tagger:s3cret@db:5432/tagger")
