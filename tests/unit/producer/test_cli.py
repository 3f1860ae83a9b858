"""The producer command without services: the embedded broker and SQLite, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from testkit.commands import invoke, one_line_error
from testkit.images import image_folder
from worker.core.contract import Item, Result
from worker.core.errors import Reason
from worker.core.settings import load_settings
from worker.db import migrate
from worker.db.schema import engine_for
from worker.db.writes import write_results


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return image_folder(tmp_path / "images")


@pytest.fixture(autouse=True)
def embedded_env(tmp_path: Path, labels_file: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Nothing configured but a home folder: a folder broker and SQLite under it."""
    for name in ("CELERY_BROKER_URL", "DATABASE_URL", "CATALOG_DATABASE_URL", "TAGGER_QUEUE",
                 "TAGGER_MODEL", "TAGGER_TEMPLATES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TAGGER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TAGGER_LABELS", str(labels_file))
    return tmp_path / "home"


def test_enqueue_needs_a_location_it_can_list(folder: Path):
    assert invoke("enqueue").exit_code == 2
    assert invoke("enqueue", "--prefix", "shoes/").exit_code == 2  # goes with --bucket
    assert "needs --query or --table" in one_line_error("enqueue", "--database-url",
                                                        "sqlite:///x.db")
    assert "no source for gs:// URIs (known: file://, s3://" in one_line_error(
        "enqueue", "gs://products/shoes/")


def test_a_folder_by_uri_path_or_flag_is_one_location(folder: Path):
    runs = [invoke("enqueue", *args, "--dry-run") for args in (
        [folder.as_uri()], [str(folder)], ["--dir", str(folder)])]
    assert [r.exit_code for r in runs] == [0, 0, 0], [r.output for r in runs]
    assert len({r.stdout for r in runs}) == 1 and runs[0].stdout.count("\n") == 3


def test_bad_label_file_is_one_line(folder: Path, tmp_path: Path):
    labels = tmp_path / "empty.txt"
    labels.write_text("# none\n", encoding="utf-8")
    assert "has no labels" in one_line_error("enqueue", "--dir", str(folder), "--labels",
                                             str(labels))
    labels.write_bytes("台灯\n".encode("gbk"))
    assert f"{labels}: not UTF-8" in one_line_error("enqueue", "--dir", str(folder),
                                                    "--labels", str(labels))


def test_bad_database_url_is_one_line(folder: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DATABASE_URL", "mysql://tagger:pw@db/tagger")
    error = one_line_error("enqueue", "--dir", str(folder))
    assert "DATABASE_URL" in error and "'mysql'" in error and ":pw" not in error


def test_unreachable_broker_is_one_line(folder: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://:s3cret@127.0.0.1:1/0")
    error = one_line_error("enqueue", "--dir", str(folder))
    assert error.startswith("Error: broker unreachable (redis://:***@127.0.0.1:1/0):"), error


def test_missing_folder_is_one_line(tmp_path: Path):
    assert "not a folder" in one_line_error("enqueue", "--dir", str(tmp_path / "missing"))


def test_dry_run_on_the_embedded_broker_sends_nothing(folder: Path, embedded_env: Path):
    result = invoke("enqueue", "--dir", str(folder), "--dry-run", "--chunk-size", "1")
    assert result.exit_code == 0, result.output
    shown = {Path(line.removeprefix("file://")).name for line in result.stdout.splitlines()}
    assert shown == {"0.png", "1.png", "2.png"}
    assert "would enqueue 3 in 3 chunks, skipped 1 (1 not-image)" in result.stderr
    queued = embedded_env / "broker" / "queue"
    assert not queued.exists() or not any(queued.iterdir())
    assert invoke("runs").stdout.strip() == "no runs yet"


def test_enqueue_on_the_embedded_broker(folder: Path, embedded_env: Path):
    result = invoke("enqueue", "--dir", str(folder), "--chunk-size", "2")
    assert result.exit_code == 0, result.output
    assert "listed 4, enqueued 3 in 2 chunks, skipped 1 (1 not-image)" in result.stdout
    assert (embedded_env / "results.db").is_file()  # the embedded database upgraded itself
    status = json.loads(invoke("status", "--json").stdout)
    assert (status["queue_depth"], status["pending"], status["done"]) == (2, 3, 0)
    run = status["run"]
    assert (run["enqueued"], run["state"], run["skipped_by_reason"]) == (
        3, "running", {"not-image": 1})
    assert run["finished_at"] and run["file_roots"] == [str(folder.resolve())]
    again = invoke("enqueue", "--dir", str(folder))
    assert "enqueued 0 in 0 chunks, skipped 4 (3 in-flight, 1 not-image)" in again.stdout


def test_database_commands(embedded_env: Path):
    url = f"sqlite:///{embedded_env / 'results.db'}"
    head = migrate.head()  # the newest shipped revision
    assert f"schema none, needs {head}: run `producer db upgrade`" in invoke("db", "current").stdout
    assert f"{url}: schema none -> {head}" in invoke("db", "upgrade").stdout
    assert f"schema {head}, up to date" in invoke("db", "current").stdout


def test_nothing_to_wait_for_or_retry():
    assert "no run yet" in one_line_error("wait", "--timeout", "1")
    assert "no run no-such-run" in one_line_error("status", "--run", "no-such-run")
    assert "no run no-such-run" in one_line_error("export", "--run", "no-such-run")
    assert invoke("wait", "--run", "x", "--all").exit_code == 2
    result = invoke("retry-failed")
    assert result.exit_code == 0 and "no failed images to retry" in result.stdout


def write_some_results() -> None:
    settings = load_settings()
    engine = engine_for(settings.database_url)
    invoke("db", "upgrade")
    labels = [{"label": "台灯", "score": 0.9, "parent": "家居"}]
    signed = "https://cdn.example.com/x.jpg?X-Amz-Signature=abcdef0123&w=2"
    write_results(engine, [
        Result(Item("s3://b/1.jpg", key="k1"), settings.model, "ls", run_id="r1", labels=labels),
        Result(Item(signed), settings.model, "ls", run_id="r2", reason=Reason.NOT_FOUND,
               error=f"HTTP 404 for {signed}"),
    ])


def test_export_formats(tmp_path: Path):
    write_some_results()
    result = invoke("export")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(x["uri"], x["status"]) for x in lines] == [
        ("s3://b/1.jpg", "done"),
        ("https://cdn.example.com/x.jpg?w=2", "failed")]  # stored without its signature
    assert "abcdef0123" not in result.stdout and "X-Amz-Signature=***" in result.stdout
    assert "exported 2 results" in result.stderr
    failed = invoke("export", "--status", "failed", "--format", "csv").stdout.splitlines()
    assert len(failed) == 2 and failed[0].startswith('"uri","key","status"')
    assert ',"failed",' in failed[1] and "not-found" in failed[1]
    out = tmp_path / "results.parquet"
    assert f"exported 1 results to {out}" in invoke("export", "--output", str(out),
                                                    "--status", "done").stderr
    table = pq.read_table(out).to_pylist()
    assert [(r["key"], r["top_parent"], r["top_label"]) for r in table] == [("k1", "家居", "台灯")]
