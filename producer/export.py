"""Export files: stored results as JSON lines, CSV or Parquet, streaming, secrets redacted."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import stat
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePath
from typing import IO, TYPE_CHECKING, Any

from worker.core.errors import ConfigError
from worker.core.redact import redact

if TYPE_CHECKING:
    import numpy as np

# A spreadsheet takes a cell starting with one of these for a formula (OWASP, CSV injection);
# the full-width forms too, which some spreadsheets read as their ASCII counterparts.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "＝", "＋", "－", "＠")
FIELDS = ("uri", "key", "status", "top_parent", "top_label", "top_score", "label_by", "unsure",
          "rejected", "labels", "reason", "error", "model", "labelset_id", "runtime",
          "content_sha256", "run_id", "attempts", "updated_at")


def record(row: Mapping[str, Any]) -> dict[str, Any]:
    """The exported form of one result row (signatures and passwords in URLs masked).

    With ``judged`` (producer/judged.py) a reviewer's label wins: ``top_label`` is theirs and
    ``label_by`` says "reviewer"; a label rejected by one is not the top label; a label under
    its threshold is ``unsure``. ``labels`` stay the model's scores.
    """
    labels = row["labels"] or []
    updated = row["updated_at"]
    judged = row.get("judged")
    return {
        "uri": redact(row["uri"]), "key": row["item_key"], "status": row["status"],
        # The first level of a two-level label set (家居 for 台灯); None for flat label sets.
        "top_parent": (row.get("judged_parent") if judged else
                       labels[0].get("parent") if labels else None),
        "top_label": judged.label if judged else row["top_label"],
        "top_score": judged.score if judged else row["top_score"],
        "label_by": judged.by if judged else None,
        "unsure": judged.unsure if judged else None,
        "rejected": list(judged.rejected) if judged else [],
        "labels": labels, "reason": row["reason"],
        "error": redact(row["error"]) if row["error"] else None,
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
        data = {**data, "labels": json.dumps(data["labels"], ensure_ascii=False),
                "rejected": json.dumps(data["rejected"], ensure_ascii=False)}
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
        types = {"top_score": pa.float64(), "attempts": pa.int64(), "labels": pa.list_(label),
                 "unsure": pa.bool_(), "rejected": pa.list_(pa.string())}
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


def export_embeddings(batches: Iterable[tuple[Sequence[Any], np.ndarray, Mapping[int, str]]],
                      out: IO[bytes], fmt: str) -> tuple[int, int]:
    """Kept embeddings with their images: uri, key, model, sha256, and the embedding as
    float32 (the stored float16 values, widened exactly: every tool reads float32). Parquet
    holds it as a fixed-size list, JSON lines as a list of numbers. Rows whose stored
    embedding is corrupt are left out. Returns (written, left out)."""
    import numpy as np  # here: the producer starts without NumPy

    if fmt not in {"parquet", "jsonl"}:
        raise ConfigError(f"embeddings are exported as parquet or jsonl, not {fmt}")
    writer = _VectorWriter(out, _pyarrow() if fmt == "parquet" else None)
    count = left_out = 0
    for rows, vectors, corrupt in batches:
        keep = [i for i in range(len(rows)) if i not in corrupt]
        columns = {"uri": [redact(rows[i].uri) for i in keep],
                   "key": [rows[i].item_key for i in keep],
                   "model": [rows[i].model for i in keep],
                   "sha256": [rows[i].content_sha256 for i in keep]}
        writer.write(columns, vectors[keep].astype(np.float32))
        count, left_out = count + len(keep), left_out + len(corrupt)
    writer.close()
    return count, left_out


class _VectorWriter:
    """Embedding batches as JSON lines, or (with ``pa``, pyarrow) as Parquet under one schema
    whatever a batch holds (a batch without any catalogue key is still a string column)."""

    def __init__(self, out: IO[bytes], pa: Any) -> None:
        self.out, self.pa, self.writer = out, pa, None
        self.text = None if pa else io.TextIOWrapper(out, encoding="utf-8", newline="\n",
                                                     write_through=True)

    def write(self, columns: dict[str, list[Any]], vectors: np.ndarray) -> None:
        if self.text is not None:
            for i, vector in enumerate(vectors.tolist()):
                self.text.write(json.dumps({**{k: v[i] for k, v in columns.items()},
                                            "embedding": vector}, ensure_ascii=False) + "\n")
            return
        pa = self.pa
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()),
                                                      vectors.shape[1])
        self.writer = self.writer or pa.parquet.ParquetWriter(self.out,
                                                              self._schema(embedding.type))
        self.writer.write_table(pa.table({**columns, "embedding": embedding},
                                         schema=self.writer.schema))

    def _schema(self, embedding: Any) -> Any:
        pa = self.pa
        return pa.schema([*((name, pa.string()) for name in EMBEDDING_FIELDS[:-1]),
                          ("embedding", embedding)])

    def close(self) -> None:
        if self.text is not None:
            self.text.detach()
            return
        writer = self.writer or self.pa.parquet.ParquetWriter(
            self.out, self._schema(self.pa.list_(self.pa.float32())))
        writer.close()


@contextlib.contextmanager
def written(path: Path | None) -> Iterator[IO[bytes]]:
    """``path`` (None: standard output) written in full or not at all: a temporary file
    beside it is renamed over it once writing ended, so a failure (pyarrow missing, a
    database error, Ctrl-C) leaves a file that was there as it was, and no half file."""
    if path is None:
        yield sys.stdout.buffer
        return
    if path.exists() and not path.is_file():  # /dev/stdout, a named pipe: nothing to replace
        with path.open("wb") as out:
            yield out
        return
    path = path.resolve() if path.is_symlink() else path  # the file it names is replaced
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                             suffix=".part")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(handle, "wb") as out:
            yield out
        os.chmod(temporary, _mode(path))
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _mode(path: Path) -> int:
    """The file's mode if it exists, else what the umask gives a new file (mkstemp's 0600
    would hide an export from its readers)."""
    with contextlib.suppress(OSError):
        return stat.S_IMODE(path.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
