"""The producer command on real services: one-line errors, dry runs, no torch in the producer."""

from __future__ import annotations

import csv
import io
import json
import uuid
from pathlib import Path

import boto3
import pytest

from testkit.commands import invoke, one_line_error, producer
from testkit.images import image_bytes, image_folder
from testkit.imports import heavy_imports
from testkit.services import REDIS_URL, reset_s3_clients
from worker.core.contract import Item, Result
from worker.db import migrate
from worker.db.schema import engine_for
from worker.db.writes import write_results


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return image_folder(tmp_path / "images")


@pytest.fixture
def local_env(tmp_path, pg_url, labels_file, monkeypatch) -> dict[str, str]:
    env = {"DATABASE_URL": pg_url, "CELERY_BROKER_URL": REDIS_URL,
           "TAGGER_QUEUE": f"cli-{uuid.uuid4().hex[:12]}", "TAGGER_LABELS": str(labels_file),
           "TAGGER_HOME": str(tmp_path / "home")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_s3_clients()
    return env


def test_missing_bucket_is_one_line(local_env, aws_env):
    assert one_line_error("enqueue", "--bucket", "no-such-bucket") == (
        "Error: cannot list s3://no-such-bucket/: NoSuchBucket: "
        "The specified bucket does not exist")


def test_missing_credentials_are_one_line(local_env, aws_env, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    reset_s3_clients()
    assert "Unable to locate credentials" in one_line_error("enqueue", "--bucket", "products")


def test_unmigrated_database_says_what_to_do(local_env, folder, empty_pg_url, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", empty_pg_url)
    error = one_line_error("enqueue", "--dir", str(folder))
    assert "schema none" in error and "producer db upgrade" in error
    result = invoke("db", "upgrade")
    head = migrate.revisions(empty_pg_url)[1]
    assert result.exit_code == 0 and f"schema none -> {head}" in result.stdout
    assert invoke("enqueue", "--dir", str(folder), "--dry-run").exit_code == 0


def test_unreachable_database_is_one_line(local_env, folder, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://tagger:s3cret@127.0.0.1:1/none")
    error = one_line_error("enqueue", "--dir", str(folder))
    assert error.startswith("Error: database unreachable (postgresql://tagger:***@127.0.0.1:1")
    assert "s3cret" not in error


def test_dry_run_lists_and_sends_nothing(local_env, folder):
    result = invoke("enqueue", "--dir", str(folder), "--dry-run")
    assert result.exit_code == 0, result.output
    assert sorted(Path(line[len("file://"):]).name for line in result.stdout.splitlines()) == [
        "0.png", "1.png", "2.png"]
    assert "listed 4, would enqueue 3 in 1 chunk, skipped 1" in result.stderr
    status = json.loads(invoke("status", "--json").stdout)
    assert (status["queue_depth"], status["pending"], status["run"]) == (0, 0, None)


def test_enqueue_chunks_and_counts(local_env, folder):
    result = invoke("enqueue", "--dir", str(folder), "--chunk-size", "2")
    assert result.exit_code == 0, result.output
    assert "listed 4, enqueued 3 in 2 chunks, skipped 1" in result.stdout
    status = json.loads(invoke("status", "--json").stdout)
    assert (status["queue_depth"], status["pending"], status["done"]) == (2, 3, 0)
    assert status["run"]["enqueued"] == 3 and status["run"]["finished_at"]
    assert status["run"]["file_roots"] == [str(folder.resolve())]


def test_producer_never_imports_torch(local_env, folder, aws_env, bucket):
    boto3.client("s3").put_object(Bucket=bucket, Key="a.png", Body=image_bytes(1))
    loaded = heavy_imports(
        "from click.testing import CliRunner\n"
        "from producer.cli import main\n"
        f"for args in (['enqueue', '--dir', {str(folder)!r}], ['enqueue', '--bucket', "
        f"{bucket!r}], ['status', '--json'], ['runs'], ['export', '--format', 'csv'], "
        "['retry-failed']):\n"
        "    result = CliRunner().invoke(main, args)\n"
        "    assert result.exit_code == 0, (args, result.output)\n")  # this environment
    assert loaded == []


def test_csv_export_cells_never_start_a_formula(local_env, pg_url):
    labels = [{"label": '=HYPERLINK("http://evil.example/x","点我")', "score": 0.5},
              {"label": "@SUM(1+1)*cmd|' /C calc'!A0", "score": 0.3}]
    hostile = {"-2+3": "+cmd", "\tkey": "=1+1", "\rkey": "＝1+1"}
    write_results(engine_for(pg_url), [
        Result(item=Item(f"s3://b/{i}.jpg", key=key), model="m", labelset_id="ls",
               labels=[{"label": label, "score": 0.9}, *labels])
        for i, (key, label) in enumerate(hostile.items())])
    text = producer("export", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 3
    for cells in rows:
        for name, cell in cells.items():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r", "＝")), (name, cell)
    assert sorted(r["key"] for r in rows) == ["'\tkey", "'\rkey", "'-2+3"]
    assert sorted(r["top_label"] for r in rows) == ["'+cmd", "'=1+1", "'＝1+1"]
    # The labels cell is JSON: it starts with [, and the labels inside are kept as they are.
    assert json.loads(rows[0]["labels"])[1]["label"].startswith("=HYPERLINK")
    assert text.startswith('"uri","key"')  # every cell quoted


def test_a_label_file_with_a_nul_is_one_line(local_env, folder, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_bytes("台灯\n椅\0子\n".encode())
    assert one_line_error("enqueue", "--dir", str(folder), "--labels", str(labels)) == (
        f"Error: {labels}:2: invisible or control character U+0000; the file must be plain "
        "text, one entry per line")
