"""Export files from result rows: JSON lines, CSV and Parquet, with secrets redacted."""

from __future__ import annotations

import csv
import io
import json
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from producer.export import FIELDS, WRITERS, export, format_of, record, written
from worker.core.errors import ConfigError

SIGNED = ("https://cdn.example.com/商品/台灯.jpg?X-Amz-Credential=AKIAEXAMPLE"
          "&X-Amz-Signature=cafebabe1234&w=200")


def row(uri: str, status: str = "done", **changes: Any) -> dict[str, Any]:
    labels = ([{"label": "台灯", "score": 0.75, "parent": "家居"}, {"label": "椅子", "score": 0.2}]
              if status == "done" else [])
    return {"id": 1, "uri": uri, "item_key": "sku-1", "status": status,
            "labels": labels, "top_label": labels[0]["label"] if labels else None,
            "top_score": labels[0]["score"] if labels else None,
            "reason": None if status == "done" else "not-found",
            "error": None if status == "done" else f"HTTP 404 for {SIGNED}",
            "model": "m", "labelset_id": "ls", "runtime": "torch float32 cpu",
            "content_sha256": "ab" * 32, "run_id": "r1", "attempts": 1,
            "updated_at": datetime(2026, 11, 23, 12, 0, tzinfo=UTC), **changes}


ROWS = [row("s3://b/1.jpg"), row(SIGNED, status="failed", item_key=None, attempts=3)]


def exported(fmt: str, rows: list[dict[str, Any]] = ROWS) -> bytes:
    out = io.BytesIO()
    assert export(iter(rows), out, fmt) == len(rows)
    return out.getvalue()


def test_record_fields():
    done = record(ROWS[0])
    assert list(done) == list(FIELDS)
    assert (done["top_parent"], done["top_label"], done["top_score"]) == ("家居", "台灯", 0.75)
    assert done["updated_at"] == "2026-11-23T12:00:00+00:00"
    failed = record(ROWS[1])
    assert (failed["top_parent"], failed["labels"], failed["reason"]) == (None, [], "not-found")


def test_json_lines():
    text = exported("jsonl").decode("utf-8")
    assert "台灯" in text  # Chinese as it is, not \u escapes
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["status"] for line in lines] == ["done", "failed"]
    assert lines[0]["labels"][0] == {"label": "台灯", "score": 0.75, "parent": "家居"}
    assert lines[1]["key"] is None and lines[1]["attempts"] == 3


def test_csv():
    text = exported("csv").decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(FIELDS)
    assert json.loads(rows[0]["labels"])[1] == {"label": "椅子", "score": 0.2}
    assert (rows[0]["top_label"], rows[0]["top_score"]) == ("台灯", "0.75")
    assert (rows[1]["status"], rows[1]["reason"], rows[1]["key"]) == ("failed", "not-found", "")


def test_parquet_is_readable_with_pyarrow():
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(exported("parquet")))
    assert table.column_names == list(FIELDS)
    data = table.to_pylist()
    assert data[0]["labels"] == [{"label": "台灯", "score": 0.75, "parent": "家居"},
                                 {"label": "椅子", "score": 0.2, "parent": None}]
    assert (data[0]["top_score"], data[1]["attempts"], data[1]["labels"]) == (0.75, 3, [])


def test_parquet_writes_row_groups_and_empty_files():
    import pyarrow.parquet as pq

    many = [row(f"s3://b/{i}.jpg") for i in range(25)]
    out = io.BytesIO()
    writer = WRITERS["parquet"](out, batch=10)
    for r in many:
        writer.write(record(r))
    writer.close()
    parquet = pq.ParquetFile(io.BytesIO(out.getvalue()))
    assert (parquet.metadata.num_rows, parquet.num_row_groups) == (25, 3)
    empty = pq.read_table(io.BytesIO(exported("parquet", [])))
    assert empty.num_rows == 0 and empty.column_names == list(FIELDS)


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_signatures_are_redacted_in_exports(fmt: str):
    data = exported(fmt)
    for secret in (b"AKIAEXAMPLE", b"cafebabe1234"):
        assert secret not in data
    assert b"X-Amz-Signature=***" in data  # the URL is there, masked
    assert b"w=200" in data


def test_the_export_leaves_the_output_open():
    out = io.BytesIO()
    export(iter(ROWS), out, "jsonl")
    assert not out.closed  # standard output stays usable after an export


@pytest.mark.parametrize(("name", "fmt"), [("results.csv", "csv"), ("a.b.PARQUET", "parquet"),
                                           ("out.jsonl", "jsonl"), ("out", "jsonl"),
                                           ("", "jsonl")])
def test_format_from_the_file_name(name: str, fmt: str):
    assert format_of(name) == fmt


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_a_failed_export_leaves_the_file_that_was_there(tmp_path: Path, fmt: str):
    """Written to a temporary file and renamed: before, the output was truncated first."""
    output = tmp_path / f"labels.{fmt}"
    output.write_bytes(b"yesterday's export")
    output.chmod(0o640)

    def failing() -> Iterator[dict[str, Any]]:
        yield row("s3://b/1.jpg")
        raise ConnectionError("the database went away")

    with pytest.raises(ConnectionError), written(output) as out:
        export(failing(), out, fmt)
    assert output.read_bytes() == b"yesterday's export"
    assert [p.name for p in tmp_path.iterdir()] == [output.name]  # no temporary file left
    with written(output) as out:
        assert export([row("s3://b/1.jpg")], out, fmt) == 1
    assert output.read_bytes() != b"yesterday's export" and stat.S_IMODE(
        output.stat().st_mode) == 0o640
    with pytest.raises(ConfigError, match="cannot write"), written(tmp_path / "no" / "x.csv"):
        pass


def test_an_export_through_a_link_replaces_the_file_it_names(tmp_path: Path):
    real = tmp_path / "real.jsonl"
    real.write_bytes(b"old")
    (tmp_path / "link.jsonl").symlink_to(real)
    with written(tmp_path / "link.jsonl") as out:
        export([row("s3://b/1.jpg")], out, "jsonl")
    assert (tmp_path / "link.jsonl").is_symlink() and json.loads(real.read_text())["uri"]


@pytest.mark.parametrize("name", ["x.xlsx", "out.txt", "dir.v2/results.json"])
def test_a_suffix_no_writer_has_is_refused(name: str):
    """Before: x.xlsx silently held JSON lines."""
    with pytest.raises(ConfigError, match=r"is not a format this exports \(\.csv, \.jsonl, "
                                          r"\.parquet\)"):
        format_of(name)
