"""The core finds each seam's registry by name: the same object the seam's package holds."""

from __future__ import annotations

import pytest

from worker.backends import BACKENDS
from worker.core.errors import ConfigError
from worker.core.registry import PRIMARY_SINK, SEAMS, seam
from worker.core.settings import load_settings
from worker.decoders import DECODERS
from worker.sinks import PRIMARY, SINKS
from worker.sources import SOURCES


def test_each_seam_is_found_by_name():
    assert {name: seam(name) for name in SEAMS} == {
        "backend": BACKENDS, "decoder": DECODERS, "sink": SINKS, "source": SOURCES}
    assert all(seam(name) is registry for name, registry in (
        ("backend", BACKENDS), ("decoder", DECODERS), ("sink", SINKS), ("source", SOURCES)))
    assert PRIMARY == PRIMARY_SINK == "database"


def test_settings_check_names_against_the_registries(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(SINKS, "_entries", {**SINKS.entries(), "topic": "somewhere:Topic"})
    assert load_settings({"TAGGER_SINKS": "topic,database"}).sinks == ("database", "topic")
    with pytest.raises(ConfigError, match="TAGGER_SINKS must be one of database, topic, got"):
        load_settings({"TAGGER_SINKS": "kafka"})
