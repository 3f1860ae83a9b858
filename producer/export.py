"""Write stored results as JSON lines or CSV, streaming (millions of rows, constant memory)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from typing import IO, Any

import sqlalchemy as sa

CSV_FIELDS = ("uri", "key", "status", "top_parent", "top_label", "top_score", "labels", "reason",
              "error", "model", "labelset_id", "content_sha256", "run_id", "attempts", "updated_at")


def record(row: sa.Row) -> dict[str, Any]:
    """The exported form of one result row."""
    return {
        "uri": row.uri, "key": row.item_key, "status": row.status,
        "labels": row.labels or [], "error": row.error, "reason": row.reason,
        "model": row.model, "labelset_id": row.labelset_id,
        "content_sha256": row.content_sha256, "run_id": row.run_id, "attempts": row.attempts,
        "top_label": row.top_label, "top_score": row.top_score,
        # The first level of a two-level label set (家居 for 台灯); None for flat label sets.
        "top_parent": (row.labels or [{}])[0].get("parent"),
        "updated_at": row.updated_at.isoformat() if row.updated_at else None,
    }


def write(rows: Iterable[sa.Row], out: IO[str], fmt: str) -> int:
    """Write ``rows`` to ``out`` in ``fmt`` (jsonl or csv); returns how many were written."""
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS)
        writer.writeheader()
    for row in rows:
        data = record(row)
        if fmt == "csv":
            writer.writerow({**data, "labels": json.dumps(data["labels"], ensure_ascii=False)})
        else:
            out.write(json.dumps(data, ensure_ascii=False) + "\n")
        count += 1
    return count
