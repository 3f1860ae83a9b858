"""The producer command: one-line errors, dry runs, and no torch in the producer."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner

from producer.cli import main
from tests.conftest import REDIS_URL
from tests.helpers import ROOT, image_bytes


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"{i}.png").write_bytes(image_bytes(i))
    (images / "notes.txt").write_text("not an image")
    return images


@pytest.fixture
def local_env(tmp_path, sqlite_url, labels_file, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.setenv("CELERY_BROKER_URL", REDIS_URL)
    monkeypatch.setenv("TAGGER_QUEUE", f"cli-{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("TAGGER_LABELS", str(labels_file))


def test_missing_bucket_is_one_line(local_env, aws_env):
    code, output = run("enqueue", "--bucket", "no-such-bucket")
    assert code == 1
    assert output.strip() == ("Error: cannot list s3://no-such-bucket/: NoSuchBucket: "
                              "The specified bucket does not exist")


def test_missing_credentials_are_one_line(local_env, aws_env, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    code, output = run("enqueue", "--bucket", "products")
    assert code == 1 and "Unable to locate credentials" in output
    assert len(output.strip().splitlines()) == 1


def test_unreachable_broker_is_one_line(local_env, folder, monkeypatch):
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")
    code, output = run("enqueue", "--dir", str(folder))
    assert code == 1 and output.startswith("Error: broker unreachable:")
    assert len(output.strip().splitlines()) == 1


def test_unmigrated_database_says_what_to_do(local_env, folder, monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'fresh.db'}")
    code, output = run("enqueue", "--dir", str(folder))
    assert code == 1 and "alembic upgrade head" in output


def test_exactly_one_source(local_env, folder):
    assert run("enqueue")[0] == 2
    assert run("enqueue", "--dir", str(folder), "--bucket", "b")[0] == 2


def test_bad_label_file_is_one_line(local_env, folder, tmp_path):
    labels = tmp_path / "empty.txt"
    labels.write_text("# none\n", encoding="utf-8")
    code, output = run("enqueue", "--dir", str(folder), "--labels", str(labels))
    assert code == 1 and "has no labels" in output


def test_dry_run_lists_and_sends_nothing(local_env, folder):
    result = CliRunner().invoke(main, ["enqueue", "--dir", str(folder), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert sorted(Path(line[len("file://"):]).name for line in result.stdout.splitlines()) == [
        "0.png", "1.png", "2.png"]
    assert "listed 4, would enqueue 3 in 1 chunks, skipped 1" in result.stderr
    status = json.loads(CliRunner().invoke(main, ["status", "--json"]).stdout)
    assert (status["queue_depth"], status["pending"], status["run"]) == (0, 0, None)


def test_enqueue_chunks_and_counts(local_env, folder):
    result = CliRunner().invoke(main, ["enqueue", "--dir", str(folder), "--chunk-size", "2"])
    assert result.exit_code == 0, result.output
    assert "listed 4, enqueued 3 in 2 chunks, skipped 1" in result.stdout
    status = json.loads(CliRunner().invoke(main, ["status", "--json"]).stdout)
    assert (status["queue_depth"], status["pending"], status["done"]) == (2, 3, 0)
    assert status["run"]["enqueued"] == 3 and status["run"]["finished_at"]


def test_producer_never_imports_torch(local_env, folder, aws_env, bucket):
    boto3.client("s3").put_object(Bucket=bucket, Key="a.png", Body=image_bytes(1))
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from producer.cli import main\n"
        f"for args in (['enqueue', '--dir', {str(folder)!r}], ['enqueue', '--bucket', "
        f"{bucket!r}], ['status', '--json'], ['export']):\n"
        "    result = CliRunner().invoke(main, args)\n"
        "    assert result.exit_code == 0, result.output\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules)\n"
        "print('heavy:', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "heavy: ['" not in out.stdout and "heavy: []" in out.stdout
