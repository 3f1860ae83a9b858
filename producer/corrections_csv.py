"""`producer corrections import` and `export`: verdicts as CSV (uri, label, verdict).

An import reads the file as a stream, a batch at a time: each good row is stored, each bad one
is reported on a line of its own (its line number and why) and costs nothing else.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from sqlalchemy.engine import Engine

from producer.export import inert
from worker.core.errors import ConfigError
from worker.core.judgement import VERDICTS
from worker.core.labels import LabelSet
from worker.core.redact import redact
from worker.db import corrections, labelsets, learned
from worker.db.schema import engine_for

COLUMNS = ("uri", "label", "verdict")
EXPORTED = ("uri", "label", "verdict", "reviewer", "created_at", "labelset_id",
            "content_sha256")
BATCH = 1000
MAX_FIELD = 8192  # a URI or label longer than this is a broken row, not a reason to stop


@dataclass
class Imported:
    stored: int = 0
    bad: int = 0
    labelset_id: str = ""
    problems: list[str] = field(default_factory=list)


def import_file(database_url: str, path: Path, labelset: LabelSet, reviewer: str,
                report: Callable[[str], None]) -> Imported:
    """Store the verdicts of a CSV file under ``labelset``; ``report`` gets a line per bad row."""
    engine = engine_for(database_url)
    labelsets.save_labelset(engine, labelset)
    root = learned.root_of(engine, labelset.id)
    known = set(labelset.labels)
    done = Imported(labelset_id=root)

    def bad(line: int, why: str) -> None:
        done.bad += 1
        report(f"{path}:{line}: {why}")

    pending: list[tuple[int, str, str, str]] = []
    for line, row in _rows(path, bad):
        uri, label, verdict = (row[name].strip() for name in COLUMNS)
        if verdict.lower() not in VERDICTS:
            bad(line, f"verdict {verdict[:20]!r} is not right or wrong")
        elif label not in known:
            bad(line, f"label {label[:48]!r} is not in label set {labelset.name or root}")
        elif not uri:
            bad(line, "no uri")
        else:
            pending.append((line, uri, label, verdict.lower()))
        if len(pending) >= BATCH:
            _store(engine, root, reviewer, pending, done, bad)
            pending = []
    _store(engine, root, reviewer, pending, done, bad)
    return done


def _rows(path: Path, bad: Callable[[int, str], None]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of each row with the three columns; others reported."""
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    csv.field_size_limit(MAX_FIELD)
    with handle:
        reader = csv.DictReader(handle)
        try:
            header = reader.fieldnames or []
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not a CSV file ({exc})") from None
        if missing := [name for name in COLUMNS if name not in header]:
            raise ConfigError(f"{path}: the first row must name the columns uri,label,verdict "
                              f"(missing: {', '.join(missing)})")
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as exc:
                bad(reader.line_num, f"unreadable row: {str(exc)[:80]}")
                continue
            if any(row.get(name) is None for name in COLUMNS):
                bad(reader.line_num, "fewer than 3 columns")
                continue
            yield reader.line_num, row


def _store(engine: Engine, root: str, reviewer: str, rows: list[tuple[int, str, str, str]],
           done: Imported, bad: Callable[[int, str], None]) -> None:
    contents = corrections.contents_of(engine, [uri for _, uri, _, _ in rows])
    good = []
    for line, uri, label, verdict in rows:
        if uri in contents:
            good.append(corrections.Correction(contents[uri], uri, label, verdict))
        else:
            bad(line, f"{redact(uri)[:200]} has no tagged image: tag it first")
    corrections.add(engine, root, reviewer, good)
    done.stored += len(good)


def export_file(database_url: str, out: IO[bytes], labelset_id: str | None) -> int:
    """Every correction (of one label set's family, if given) as CSV; returns how many."""
    engine = engine_for(database_url)
    root = learned.root_of(engine, labelset_id) if labelset_id else None
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    writer = csv.writer(text, quoting=csv.QUOTE_ALL)
    writer.writerow(EXPORTED)
    count = 0
    for row in corrections.iter_all(engine, root):
        writer.writerow([inert(value) for value in (
            redact(row["uri"]), row["label"], row["verdict"], row["reviewer"],
            row["created_at"].isoformat() if row["created_at"] else "", row["labelset_id"],
            row["content_sha256"])])
        count += 1
    text.detach()
    return count
