"""The core finds each seam's registry by name: the same object the seam's package holds."""

from __future__ import annotations

import pytest

from worker.backends import BACKENDS
from worker.core.errors import ConfigError
from worker.core.parse import Integer, text
from worker.core.registry import PRIMARY_SINK, SEAMS, Part, Setting, seam
from worker.core.settings import load_settings
from worker.decoders import DECODERS, DecoderPart, fallback_of
from worker.sinks import PRIMARY, SINKS
from worker.sources import SOURCES


def test_each_seam_is_found_by_name():
    assert {name: seam(name) for name in SEAMS} == {
        "backend": BACKENDS, "decoder": DECODERS, "sink": SINKS, "source": SOURCES}
    assert all(seam(name) is registry for name, registry in (
        ("backend", BACKENDS), ("decoder", DECODERS), ("sink", SINKS), ("source", SOURCES)))
    assert PRIMARY == PRIMARY_SINK == "database"


def test_settings_check_names_against_the_registries(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(SINKS, "_entries", SINKS.entries())  # undone after the test
    SINKS.register("topic", "somewhere:Topic")
    assert load_settings({"TAGGER_SINKS": "topic,database"}).sinks == ("database", "topic")
    with pytest.raises(ConfigError, match="TAGGER_SINKS must be one of database, topic, got"):
        load_settings({"TAGGER_SINKS": "kafka"})


def test_a_part_declares_settings_read_when_settings_load(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(SINKS, "_entries", SINKS.entries())  # undone after the test
    SINKS.register("topic", Part("somewhere:Topic", settings=(
        Setting("name", text, "tags"), Setting("partitions", Integer(1), 1))))
    settings = load_settings({"TAGGER_TOPIC_PARTITIONS": "4"})
    assert (settings.part("topic").name, settings.part("topic").partitions) == ("tags", 4)
    assert settings.part("catalogue").timeout == 600  # a built-in part's own setting
    with pytest.raises(ConfigError, match=r"^TAGGER_TOPIC_PARTITIONS must be >= 1, got 0$"):
        load_settings({"TAGGER_TOPIC_PARTITIONS": "0"})


def test_declarations_are_read_without_importing_the_part(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(DECODERS, "_entries", DECODERS.entries())
    DECODERS.register("avif", DecoderPart("no.such.module:Avif", formats=("AVIF",),
                                          suffixes=(".avif",), fallback="pillow"))
    assert ".avif" in DECODERS.declared("suffixes") and "AVIF" in DECODERS.declared("formats")
    assert fallback_of("avif") == "pillow" and fallback_of("nvjpeg") == "pillow"
    assert load_settings({"TAGGER_PRECISION": "BFLOAT16"}).precision == "bfloat16"
