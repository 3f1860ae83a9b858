"""Result rows with what reviewers said: each done image's judged label (worker/core/judgement),
looked up a batch at a time, for export and for the workbench's pages."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Connection, Engine

from worker.core.judgement import Judged, Verdicts, judge
from worker.db import corrections, learned, thresholds
from worker.db.labelsets import load_labelset

BATCH = 1000


class Context:
    """Per label set (learned versions too): its root, thresholds and parents, read once."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.roots: dict[str, str] = {}
        self.limits: dict[str, dict[str, float]] = {}
        self.parents: dict[str, dict[str, str | None]] = {}

    def learn(self, conn: Connection, labelset_id: str) -> None:
        if labelset_id in self.roots:
            return
        self.roots[labelset_id] = learned.root_of(self.engine, labelset_id)
        self.limits[labelset_id] = thresholds.of(conn, labelset_id)
        labelset = load_labelset(self.engine, labelset_id)
        self.parents[labelset_id] = (dict(zip(labelset.labels, labelset.parents, strict=True))
                                     if labelset else {})

    def verdicts(self, conn: Connection, rows: Sequence[Mapping[str, Any]]
                 ) -> dict[tuple[str, str], Verdicts]:
        """(labelset id, content) -> verdicts, for these rows' done images."""
        wanted: dict[str, set[str]] = {}
        for row in rows:
            if row["status"] != "done":
                continue
            self.learn(conn, row["labelset_id"])
            if row["content_sha256"]:
                wanted.setdefault(row["labelset_id"], set()).add(row["content_sha256"])
        found: dict[tuple[str, str], Verdicts] = {}
        for labelset_id, shas in wanted.items():
            for sha, verdicts in corrections.for_contents(
                    conn, self.roots[labelset_id], shas).items():
                found[(labelset_id, sha)] = verdicts
        return found

    def parent(self, row: Mapping[str, Any], label: str | None) -> str | None:
        """A label's parent: as the row's labels have it, else as its label set has it."""
        for entry in row["labels"] or []:
            if entry["label"] == label:
                return entry.get("parent")
        return self.parents[row["labelset_id"]].get(label) if label else None

    def judged(self, row: Mapping[str, Any], verdicts: Verdicts | None) -> Judged:
        return judge(row["labels"] or [], verdicts, self.limits[row["labelset_id"]])


def judged_rows(engine: Engine, rows: Iterable[Mapping[str, Any]], batch: int = BATCH
                ) -> Iterator[dict[str, Any]]:
    """Each row as a dict; a done one with ``judged`` (its Judged) and ``judged_parent``."""
    context = Context(engine)
    it = iter(rows)
    while part := list(itertools.islice(it, batch)):
        with engine.connect() as conn:
            verdicts = context.verdicts(conn, part)
        for row in part:
            out = dict(row)
            if row["status"] == "done":
                judged = context.judged(row, verdicts.get((row["labelset_id"],
                                                           row["content_sha256"])))
                out["judged"] = judged
                out["judged_parent"] = context.parent(row, judged.label)
            yield out
