"""Label sets: parse label and template files, validate them, identify them by their content."""

from __future__ import annotations

import hashlib
import json
import string
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from worker.core.errors import ConfigError

MAX_LABEL_CHARS = 48
MAX_LINE_CHARS = 200  # a template with its label; prompts are cut at 52 tokens anyway
MAX_FILE_BYTES = 2 * 2**20  # the most labels, at 48 characters each, take ~1.4 MB
# Text embeddings are (labels, 512) float32 in every worker process and prompts go through the
# text tower once: 20,000 labels are 40 MB; 100,000 prompts (80 templates x 1,250 labels) ~20
# min of a CPU's text tower. Image scoring is flat in labels either way (worker/loop/scores.py).
MAX_LABELS = 20_000
MAX_PROMPTS = 100_000
DEFAULT_TEMPLATE = "{}"
# Zero-width joiners build emoji and some scripts' letters; other format characters (a BOM
# mid-file, zero-width spaces, bidi overrides) make two labels look alike, or text misread.
_JOINERS = {"\u200c", "\u200d"}


class LabelSetError(ConfigError):
    """A label file that cannot be used as it is."""


@dataclass(frozen=True)
class LabelSet:
    """Labels (optionally with a parent category each) and the prompt templates they are put in."""

    labels: tuple[str, ...]
    parents: tuple[str | None, ...]
    templates: tuple[str, ...] = (DEFAULT_TEMPLATE,)
    name: str = ""
    # A version learned from corrections: the digest of its label vectors (worker/db/learned.py),
    # which score in place of the text tower's. Empty for a zero-shot label set.
    learned: str = ""
    id: str = field(init=False)

    def __post_init__(self) -> None:
        if not self.labels:
            raise LabelSetError(f"label set {self.name or '(unnamed)'} has no labels")
        if len(self.parents) != len(self.labels):
            raise LabelSetError("labels and parents differ in length")
        for template in self.templates:
            problem = template_problem(template)
            if problem:
                raise LabelSetError(f"template {_shown(template)}: {problem}")
        object.__setattr__(self, "id", _content_id(self))

    def prompts(self) -> list[list[str]]:
        """For each label, its text under every template."""
        return [[t.format(label) for t in self.templates] for label in self.labels]

    def to_json(self) -> dict:
        return {"labels": list(self.labels), "parents": list(self.parents),
                "templates": list(self.templates), "name": self.name,
                **({"learned": self.learned} if self.learned else {})}

    @classmethod
    def from_json(cls, data: dict) -> LabelSet:
        return cls(labels=tuple(data["labels"]), parents=tuple(data["parents"]),
                   templates=tuple(data["templates"]), name=data.get("name", ""),
                   learned=data.get("learned", ""))


def _content_id(labelset: LabelSet) -> str:
    # The name is left out: renaming a file must not make a whole catalogue due again.
    parts: list = [labelset.labels, labelset.parents, labelset.templates]
    if labelset.learned:  # zero-shot label sets keep the ids they always had
        parts.append(labelset.learned)
    canonical = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def template_problem(template: str) -> str | None:
    """Why ``template`` cannot take a label, or None: one ``{}`` and no other braces."""
    try:
        fields = [part[1:] for part in string.Formatter().parse(template) if part[1] is not None]
    except ValueError as exc:  # a lone { or }
        return f"{exc}; write a brace as {{{{ or }}}}"
    if fields != [("", "", None)]:
        return "must contain '{}' exactly once, and no other {...}"
    return None


def _shown(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _character_problem(line: str) -> str | None:
    for char in line:
        kind = unicodedata.category(char)
        if (kind == "Cc" and char != "\t") or kind in {"Zl", "Zp"} or (
                kind == "Cf" and char not in _JOINERS):
            return f"invisible or control character U+{ord(char):04X}"
    return None


def _lines(text: str, source: str) -> list[tuple[int, str]]:
    """Non-blank, non-comment lines, NFC-normalised and stripped, with their line numbers.

    Lines end at \\n (or \\r\\n), as editors number them; control and invisible characters
    are refused with the line they are on.
    """
    out = []
    for number, raw in enumerate(text.split("\n"), start=1):
        raw = raw.removesuffix("\r")
        line = unicodedata.normalize("NFC", raw).strip()
        comment = not line or line.startswith("#")
        problem = _character_problem(raw) or (
            f"line is {len(line)} characters, over {MAX_LINE_CHARS}"
            if len(line) > MAX_LINE_CHARS and not comment else None)
        if problem:
            raise LabelSetError(f"{source}:{number}: {problem}; the file must be plain text, "
                                "one entry per line")
        if not comment:
            out.append((number, line))
    return out


def parse_labels(text: str, source: str = "labels") -> tuple[list[str], list[str | None]]:
    """Parse ``label`` or ``parent/label`` lines; exact duplicates are dropped, first one kept."""
    labels: list[str] = []
    parents: list[str | None] = []
    seen: dict[str, tuple[int, str | None]] = {}
    for number, line in _lines(text, source):
        parent, _, label = line.rpartition("/")
        parent, label = parent.strip() or None, label.strip()
        if not label:
            raise LabelSetError(f"{source}:{number}: empty label in {_shown(line)}")
        for kind, name in (("label", label), ("parent", parent or "")):
            if len(name) > MAX_LABEL_CHARS:
                raise LabelSetError(
                    f"{source}:{number}: {kind} is {len(name)} characters, "
                    f"over the limit of {MAX_LABEL_CHARS}: {name[:20]}…")
        if label in seen:
            first_line, first_parent = seen[label]
            if first_parent != parent:
                where = (f"under parent {first_parent!r}" if first_parent is not None
                         else "listed without a parent")
                raise LabelSetError(f"{source}:{number}: label {label!r} is already {where} "
                                    f"(line {first_line}); a label can have one parent")
            continue
        seen[label] = (number, parent)
        labels.append(label)
        parents.append(parent)
    return labels, parents


def parse_templates(text: str, source: str = "templates") -> list[str]:
    """Parse a templates file: one template per line, each containing ``{}``.

    Repeated templates are kept: the official 80-template ensemble repeats two, which weights them.
    """
    templates = []
    for number, line in _lines(text, source):
        problem = template_problem(line)
        if problem:
            raise LabelSetError(f"{source}:{number}: template {_shown(line)} {problem}")
        templates.append(line)
    if not templates:
        raise LabelSetError(f"{source}: no templates")
    return templates


def load_labelset(labels_path: Path, templates_path: Path | None = None) -> LabelSet:
    """Read a label file (and optionally a templates file) into a validated LabelSet."""
    labels, parents = parse_labels(_read(labels_path, "label"), str(labels_path))
    if not labels:
        raise LabelSetError(f"label file {labels_path} has no labels: write one per line "
                            "(`parent/label` for a category; `#` starts a comment)")
    if len(labels) > MAX_LABELS:
        raise LabelSetError(f"label file {labels_path} has {len(labels)} labels, over the limit "
                            f"of {MAX_LABELS}: split it into label sets of fewer")
    templates = (parse_templates(_read(templates_path, "templates"), str(templates_path))
                 if templates_path else [DEFAULT_TEMPLATE])
    if len(labels) * len(templates) > MAX_PROMPTS:
        raise LabelSetError(f"{len(labels)} labels x {len(templates)} templates are "
                            f"{len(labels) * len(templates)} prompts, over the limit of "
                            f"{MAX_PROMPTS}: use fewer templates or fewer labels")
    return LabelSet(labels=tuple(labels), parents=tuple(parents), templates=tuple(templates),
                    name=labels_path.stem)


def _read(path: Path, kind: str) -> str:
    """The file's text, UTF-8 with or without a BOM, at most MAX_FILE_BYTES."""
    try:
        with open(path, "rb") as file:  # read to a cap: /dev/zero is a path too
            data = file.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise LabelSetError(f"{kind} file {path} is over {MAX_FILE_BYTES} bytes: is it "
                                "the right file?")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelSetError(f"cannot read {kind} file {path}: not UTF-8 text (byte {exc.start}); "
                            "save it as UTF-8") from exc
    except OSError as exc:
        raise LabelSetError(f"cannot read {kind} file {path}: {exc.strerror or exc}") from exc
