"""Label sets: parse label and template files, validate them, identify them by their content."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from worker.core.errors import ConfigError

MAX_LABEL_CHARS = 48
DEFAULT_TEMPLATE = "{}"


class LabelSetError(ConfigError):
    """A label file that cannot be used as it is."""


@dataclass(frozen=True)
class LabelSet:
    """Labels (optionally with a parent category each) and the prompt templates they are put in."""

    labels: tuple[str, ...]
    parents: tuple[str | None, ...]
    templates: tuple[str, ...] = (DEFAULT_TEMPLATE,)
    name: str = ""
    id: str = field(init=False)

    def __post_init__(self) -> None:
        if not self.labels:
            raise LabelSetError(f"label set {self.name or '(unnamed)'} has no labels")
        if len(self.parents) != len(self.labels):
            raise LabelSetError("labels and parents differ in length")
        for template in self.templates:
            if template.count("{}") != 1:
                raise LabelSetError(f"template {template!r} must contain '{{}}' exactly once")
        object.__setattr__(self, "id", _content_id(self))

    def prompts(self) -> list[list[str]]:
        """For each label, its text under every template."""
        return [[t.format(label) for t in self.templates] for label in self.labels]

    def to_json(self) -> dict:
        return {"labels": list(self.labels), "parents": list(self.parents),
                "templates": list(self.templates), "name": self.name}

    @classmethod
    def from_json(cls, data: dict) -> LabelSet:
        return cls(labels=tuple(data["labels"]), parents=tuple(data["parents"]),
                   templates=tuple(data["templates"]), name=data.get("name", ""))


def _content_id(labelset: LabelSet) -> str:
    # The name is left out: renaming a file must not make a whole catalogue due again.
    canonical = json.dumps([labelset.labels, labelset.parents, labelset.templates],
                           ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _lines(text: str) -> list[tuple[int, str]]:
    """Non-blank, non-comment lines, NFC-normalised and stripped, with their line numbers."""
    out = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = unicodedata.normalize("NFC", raw).strip()
        if line and not line.startswith("#"):
            out.append((number, line))
    return out


def parse_labels(text: str, source: str = "labels") -> tuple[list[str], list[str | None]]:
    """Parse ``label`` or ``parent/label`` lines; exact duplicates are dropped, first one kept."""
    labels: list[str] = []
    parents: list[str | None] = []
    seen: dict[str, tuple[int, str | None]] = {}
    for number, line in _lines(text):
        parent, _, label = line.rpartition("/")
        parent, label = parent.strip() or None, label.strip()
        if not label:
            raise LabelSetError(f"{source}:{number}: empty label in {line!r}")
        if len(label) > MAX_LABEL_CHARS:
            raise LabelSetError(
                f"{source}:{number}: label is {len(label)} characters, "
                f"over the limit of {MAX_LABEL_CHARS}: {label[:20]}…")
        if label in seen:
            first_line, first_parent = seen[label]
            if first_parent != parent:
                raise LabelSetError(
                    f"{source}:{number}: label {label!r} is already under parent "
                    f"{first_parent!r} (line {first_line}); a label can have one parent")
            continue
        seen[label] = (number, parent)
        labels.append(label)
        parents.append(parent)
    return labels, parents


def parse_templates(text: str, source: str = "templates") -> list[str]:
    """Parse a templates file: one template per line, each containing ``{}``.

    Repeated templates are kept: the official 80-template ensemble repeats two, which weights them.
    """
    templates = [line for _, line in _lines(text)]
    if not templates:
        raise LabelSetError(f"{source}: no templates")
    return templates


def load_labelset(labels_path: Path, templates_path: Path | None = None) -> LabelSet:
    """Read a label file (and optionally a templates file) into a validated LabelSet."""
    labels, parents = parse_labels(_read(labels_path, "label"), str(labels_path))
    if not labels:
        raise LabelSetError(f"label file {labels_path} has no labels: write one per line "
                            "(`parent/label` for a category; `#` starts a comment)")
    templates = (parse_templates(_read(templates_path, "templates"), str(templates_path))
                 if templates_path else [DEFAULT_TEMPLATE])
    return LabelSet(labels=tuple(labels), parents=tuple(parents), templates=tuple(templates),
                    name=labels_path.stem)


def _read(path: Path, kind: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LabelSetError(f"cannot read {kind} file {path}: not UTF-8 text (byte {exc.start}); "
                            "save it as UTF-8") from exc
    except OSError as exc:
        raise LabelSetError(f"cannot read {kind} file {path}: {exc.strerror or exc}") from exc
