"""Export files: stored results as JSON lines, CSV or Parquet, streaming, secrets redacted."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePath
from typing import IO, TYPE_CHECKING, Any

from worker.core.errors import ConfigError
from worker.core.redact import redact

if TYPE_CHECKING:
    import numpy as np

# A spreadsheet takes a cell starting with one of these for a formula (OWASP, CSV injection);
# the full-width forms too, which some spreadsheets read as their ASCII counterparts.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "＝", "＋", "－", "＠")
FIELDS = ("uri", "key", "status", "top_parent", "top_label", "top_score", "labels", "reason",
          "error", "model", "labelset_id", "runtime", "content_sha256", "run_id", "attempts",
          "updated_at")


def record(row: Mapping[str, Any]) -> dict[str, Any]:
    """The exported form of one result row (signatures and passwords in URLs masked)."""
    labels = row["labels"] or []
    updated = row["updated_at"]
    return {
        "uri": redact(row["uri"]), "key": row["item_key"], "status": row["status"],
        # The first level of a two-level label set (家居 for 台灯); None for flat label sets.
        "top_parent": labels[0].get("parent") if labels else None,
        "top_label": row["top_label"], "top_score": row["top_score"], "labels": labels,
        "reason": row["reason"], "error": redact(row["error"]) if row["error"] else None,
        "model": row["model"], "labelset_id": row["labelset_id"], "runtime": row["runtime"],
        "content_sha256": row["content_sha256"], "run_id": row["run_id"],
        "attempts": row["attempts"], "updated_at": updated.isoformat() if updated else None,
    }


class JsonLinesWriter:
    """One JSON object per line, UTF-8, Chinese kept as it is."""

    def __init__(self, out: IO[bytes]) -> None:
        self.text = io.TextIOWrapper(out, encoding="utf-8", newline="\n", write_through=True)

    def write(self, data: dict[str, Any]) -> None:
        self.text.write(json.dumps(data, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self.text.detach()


def inert(value: Any) -> Any:
    """A text cell a spreadsheet shows as text: one starting like a formula gets a leading '."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


class CsvWriter:
    """A header row, then one row per image; ``labels`` as a JSON list in its cell.

    Every cell is quoted and none can start a formula (labels and URIs come from outside).
    """

    def __init__(self, out: IO[bytes]) -> None:
        self.text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
        self.writer = csv.DictWriter(self.text, fieldnames=FIELDS, quoting=csv.QUOTE_ALL)
        self.writer.writeheader()

    def write(self, data: dict[str, Any]) -> None:
        data = {**data, "labels": json.dumps(data["labels"], ensure_ascii=False)}
        self.writer.writerow({name: inert(value) for name, value in data.items()})

    def close(self) -> None:
        self.text.detach()


def _pyarrow() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet
    except ImportError:
        raise ConfigError("Parquet export needs pyarrow: pip install "
                          "'catalog-tagger[parquet]'") from None
    return pa


class ParquetWriter:
    """Parquet row groups of ``batch`` results; ``labels`` as a list of structs (pyarrow)."""

    def __init__(self, out: IO[bytes], batch: int = 10_000) -> None:
        pa = self.pa = _pyarrow()
        label = pa.struct([("label", pa.string()), ("score", pa.float64()),
                           ("parent", pa.string())])
        types = {"top_score": pa.float64(), "attempts": pa.int64(), "labels": pa.list_(label)}
        self.schema = pa.schema([(name, types.get(name, pa.string())) for name in FIELDS])
        self.writer = pa.parquet.ParquetWriter(out, self.schema)
        self.rows: list[dict[str, Any]] = []
        self.batch = batch

    def write(self, data: dict[str, Any]) -> None:
        self.rows.append(data)
        if len(self.rows) >= self.batch:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self.writer.write_table(self.pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        self._flush()
        self.writer.close()


WRITERS = {"jsonl": JsonLinesWriter, "csv": CsvWriter, "parquet": ParquetWriter}


def format_of(path: str, default: str = "jsonl") -> str:
    """The export format a file name asks for (``results.csv`` -> csv; no suffix: ``default``);
    a ConfigError for a suffix no writer has, rather than another format under its name."""
    suffix = PurePath(path).suffix.lower().removeprefix(".")
    if not suffix:
        return default
    if suffix not in WRITERS:
        known = ", ".join(f".{name}" for name in sorted(WRITERS))
        raise ConfigError(f"cannot write {PurePath(path).name}: .{suffix} is not a format "
                          f"this exports ({known})")
    return suffix


def export(rows: Iterable[Mapping[str, Any]], out: IO[bytes], fmt: str) -> int:
    """Write result rows to ``out`` in ``fmt``; returns how many were written."""
    writer = WRITERS[fmt](out)
    count = 0
    try:
        for row in rows:
            writer.write(record(row))
            count += 1
    finally:
        writer.close()
    return count


EMBEDDING_FIELDS = ("uri", "key", "model", "sha256", "embedding")


def export_embeddings(batches: Iterable[tuple[Sequence[Any], np.ndarray]], out: IO[bytes],
                      fmt: str) -> int:
    """Kept embeddings with their images: uri, key, model, sha256, and the embedding as
    float32 (the stored float16 values, widened exactly: every tool reads float32). Parquet
    holds it as a fixed-size list, JSON lines as a list of numbers."""
    import numpy as np  # here: the producer starts without NumPy

    if fmt not in {"parquet", "jsonl"}:
        raise ConfigError(f"embeddings are exported as parquet or jsonl, not {fmt}")
    pa = _pyarrow() if fmt == "parquet" else None
    text = io.TextIOWrapper(out, encoding="utf-8", newline="\n", write_through=True)
    count, writer = 0, None
    for rows, vectors in batches:
        columns = {"uri": [redact(r.uri) for r in rows], "key": [r.item_key for r in rows],
                   "model": [r.model for r in rows], "sha256": [r.content_sha256 for r in rows]}
        vectors = vectors.astype(np.float32)
        if pa is None:
            for i, vector in enumerate(vectors.tolist()):
                text.write(json.dumps({**{k: v[i] for k, v in columns.items()},
                                       "embedding": vector}, ensure_ascii=False) + "\n")
        else:
            table = pa.table({**columns, "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(vectors.ravel()), vectors.shape[1])})
            writer = writer or pa.parquet.ParquetWriter(out, table.schema)
            writer.write_table(table)
        count += len(rows)
    if pa is not None:
        empty = {name: pa.array([], pa.string()) for name in EMBEDDING_FIELDS[:-1]}
        writer = writer or pa.parquet.ParquetWriter(out, pa.table(
            {**empty, "embedding": pa.array([], pa.list_(pa.float32()))}).schema)
        writer.close()
    text.detach()
    return count
