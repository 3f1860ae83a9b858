"""The first hour, continued: what a new user meets in the first commands, as separate processes.

A mistyped database path, two `tag`s of one folder at once, workers without S3 credentials,
Flower started by hand, catalogue rows that share a URL or point outside the file roots.
"""

from __future__ import annotations

import json
import re
import signal
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from testkit.commands import (
    PRODUCER,
    assert_nothing_left,
    invoke,
    jsonl,
    producer,
    rows,
    run_id,
    run_producer,
    user_env,
)
from testkit.images import image_bytes, scan_bomb, write_images
from testkit.processes import Command
from testkit.services import wait_until
from worker.db.schema import engine_for


@pytest.fixture
def env(tmp_path: Path, tiny_model: Path) -> dict[str, str]:
    """A user's environment: no services configured, a fresh TAGGER_HOME, the tiny model."""
    return user_env(TAGGER_HOME=str(tmp_path / "home"), TAGGER_MODEL=str(tiny_model),
                    TAGGER_BACKEND="torch")


def test_a_mistyped_sqlite_path_is_refused_unless_created_on_purpose(tmp_path, env):
    """Before: `db upgrade` made the folder and an empty database at any mistyped path."""
    typo = tmp_path / "nonexistent" / "dir" / "x.db"
    env["DATABASE_URL"] = f"sqlite:///{typo}"
    for args in (["db", "upgrade"], ["db", "current"], ["status"], ["runs"]):
        done = run_producer(*args, env=env)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert done.stderr.splitlines() == [
            f"Error: no SQLite database at {typo} (DATABASE_URL): check the path, or create it "
            "with `producer db upgrade --create`"], args
        assert not (tmp_path / "nonexistent").exists(), args
    relative = run_producer("db", "upgrade", env={**env, "DATABASE_URL": "sqlite:///a/x.db"},
                            cwd=tmp_path)  # three slashes: a path under the working folder
    assert f"no SQLite database at {tmp_path / 'a' / 'x.db'} " in relative.stderr
    created = run_producer("db", "upgrade", "--create", env=env)
    assert created.returncode == 0 and typo.is_file(), created.stderr
    assert "schema none ->" in created.stdout
    assert run_producer("status", env=env).returncode == 0
    # The default database (under TAGGER_HOME) is created when first needed, as before.
    del env["DATABASE_URL"]
    assert run_producer("db", "upgrade", env=env).returncode == 0
    assert (tmp_path / "home" / "results.db").is_file()


def test_the_same_folder_tagged_twice_at_once_follows_the_first_run(tmp_path, env):
    """Before: the second `tag` printed `enqueued 0, skipped 30 (30 in-flight)`, wrote an empty
    results file and exited 0. The first here has no worker of its own, so its images are
    surely still in flight when the second lists them; the second's worker tags them."""
    paths = write_images(tmp_path / "images", 30)
    env["TAGGER_CHUNK_SIZE"] = "4"
    with Command([PRODUCER, "tag", "images", "--no-worker"], env, cwd=tmp_path) as first:
        first.wait_for_stderr("enqueued 30", 60)
        first_run = run_id(first.stderr)
        with Command([PRODUCER, "tag", "images"], env, cwd=tmp_path) as second:
            assert second.wait(300) == 0, second.stderr + second.stdout
            assert_nothing_left(second, env)
        assert first.wait(120) == 0, first.stderr + first.stdout
    assert "enqueued 0, skipped 30 (30 in-flight)" in second.stderr
    assert f"(this run 0; the rest by run {first_run} or before)" in second.stdout
    assert (f"30 images are being tagged by run {first_run} (started " in second.stderr
            and "): following it" in second.stderr), second.stderr
    found = re.search(r"^labels of (\d+) images: (.+)$", second.stdout, re.M)
    assert found and found.group(1) == "30", second.stdout
    records = jsonl(Path(found.group(2)))
    assert {r["uri"] for r in records} == {p.as_uri() for p in paths}
    assert {r["status"] for r in records} == {"done"} and {r["run_id"] for r in records} == {
        first_run}
    # The report's previews show progress too (before: seconds of silence after tagging).
    assert re.search(r"^report previews: \d+/\d+ previews", second.stderr, re.M), second.stderr
    # `wait` on a run answered before it began: no rate of thousands of images a second.
    waited = run_producer("wait", "--run", first_run, env=env, cwd=tmp_path)
    assert waited.returncode == 0, waited.stderr
    assert "waiting: 30/30 images, 0.00 images/s" in waited.stderr, waited.stderr


@pytest.fixture
def catalogue(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'catalogue.db'}"


def test_catalogue_rows_sharing_a_url_and_files_outside_the_roots(tagger_env, start_worker,
                                                                  tmp_path, catalogue,
                                                                  monkeypatch):
    """Before: two rows with one URL and two versions were sent again every night (`enqueued
    1`, each row in turn), and a row naming a file outside TAGGER_FILE_ROOTS was sent without
    a word, to fail later as outside-roots."""
    files, elsewhere = tmp_path / "files", tmp_path / "elsewhere"
    for folder in (files, elsewhere):
        folder.mkdir()
    (files / "a.png").write_bytes(image_bytes(1))
    (elsewhere / "b.png").write_bytes(image_bytes(2))
    monkeypatch.setenv("TAGGER_FILE_ROOTS", str(files))
    with engine_for(catalogue).begin() as conn:
        conn.execute(sa.text("CREATE TABLE products (id TEXT, image_url TEXT, version TEXT)"))
        conn.execute(sa.text("INSERT INTO products VALUES ('1', :a, 'v1'), ('2', :a, 'v2'), "
                             "('3', :b, 'v1')"),
                     {"a": str(files / "a.png"), "b": str(elsewhere / "b.png")})
    start_worker({**tagger_env, "TAGGER_FILE_ROOTS": str(files)})
    table = ("--database-url", catalogue, "--table", "products", "--version-column", "version")
    first = invoke_enqueue(table)
    assert "listed 3, enqueued 2 in 1 chunk, skipped 1 (1 in-flight)" in first.stdout
    assert first.stderr.splitlines()[-1] == (
        f"warning: 1 file is outside the folders workers may read files from "
        f"({elsewhere / 'b.png'}): they will fail as outside-roots; add their folders to "
        "TAGGER_FILE_ROOTS (:-separated) for the producer and the workers")
    producer("wait", "--timeout", "120")
    assert {(r.item_key, r.status, r.reason) for r in rows(tagger_env["DATABASE_URL"]).values()
            } == {("1", "done", None), ("3", "failed", "outside-roots")}
    for _ in range(3):  # unchanged nights
        again = invoke_enqueue(table)
        assert "listed 3, enqueued 0 in 0 chunks, skipped 3 (2 done, 1 failed-before)" in (
            again.stdout), again.stdout


def invoke_enqueue(args: tuple[str, ...]) -> object:
    done = invoke("enqueue", *args)
    assert done.exit_code == 0, done.output
    return done


@pytest.fixture
def refusing_s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """moto checks every request's signature from here on: keys it never issued are refused
    (InvalidAccessKeyId). Returns keys it did issue, allowed everything."""
    import boto3
    from moto import settings as moto_settings

    iam = boto3.client("iam", endpoint_url=s3_endpoint, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    user = f"tagger-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


def forget_s3_clients() -> None:
    from worker.sources import s3

    s3.client.cache_clear()
    s3._store.cache_clear()


NO_AWS_FILES = {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
                "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.mark.parametrize("case", ["missing", "refused"])
def test_workers_without_s3_credentials_fail_fast_and_say_why(case, tagger_env, bucket,
                                                             start_worker, request,
                                                             monkeypatch):
    """Before: `Unable to locate credentials` was transient (8 retries over 2.5 min, then
    `transient` failures); refused keys failed each image as `forbidden`, said nowhere once."""
    import boto3

    s3 = boto3.client("s3")
    for i in range(10):
        s3.put_object(Bucket=bucket, Key=f"p/{i}.png", Body=image_bytes(i))
    keys = {"AWS_ACCESS_KEY_ID": "AKIANOTISSUED0000000", "AWS_SECRET_ACCESS_KEY": "wrong"}
    producer_keys = {name: tagger_env[name] for name in keys}
    if case == "refused":
        producer_keys = request.getfixturevalue("refusing_s3")  # keys S3 accepts
    for name in keys:  # a worker inherits this environment: none of the producer's keys
        monkeypatch.delenv(name)
    worker = start_worker({**{k: v for k, v in tagger_env.items() if k not in keys},
                           **NO_AWS_FILES, "TAGGER_CHUNK_RETRIES": "8",
                           **(keys if case == "refused" else {})})
    for name, value in producer_keys.items():
        monkeypatch.setenv(name, value)
    forget_s3_clients()  # this process's clients hold the keys they were made with
    request.addfinalizer(forget_s3_clients)
    run = run_id(producer("enqueue", f"s3://{bucket}/p/", "--chunk-size", "4"))
    waited = invoke("wait", "--timeout", "300")
    assert waited.exit_code == 0, waited.output
    assert waited.stdout.strip() == f"run {run}: 0 done, 10 failed (10 credentials)"
    status = producer("status", "--run", run)
    assert "  failed: 10 credentials" in status
    found = rows(tagger_env["DATABASE_URL"])
    assert {(r.status, r.reason, r.attempts) for r in found.values()} == {
        ("failed", "credentials", 1)}  # the first delivery: no retry
    error = next(iter(found.values())).error
    assert "give the workers AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in error
    assert "retry-failed --reason credentials" in error
    said = [line for line in worker.log().splitlines() if "credentials missing or" in line]
    assert len(said) == 1, worker.log()[-3000:]
    assert "retry" not in worker.log().lower().replace("retry-failed", "")


def test_counts_after_ctrl_c_agree(tmp_path, env):
    """Before: the run was withdrawn while its worker still tagged the chunk in hand, whose
    images were then answered too: `runs` said "2 images answered, 3 withdrawn" beside 3 done,
    and `tag` said nothing of either. The worker is stopped first now."""
    images = tmp_path / "images"
    write_images(images, 2, name="a-{}.jpg")
    bomb = scan_bomb(4096, 1500)  # a few seconds of decoding each
    for i in range(3):
        (images / f"b-slow-{i}.jpg").write_bytes(bomb + f"\0copy {i}".encode())
    env |= {"TAGGER_DECODE_PROCESSES": "1", "TAGGER_ITEM_TIMEOUT": "120",
            "TAGGER_CHUNK_SIZE": "1"}
    url = f"sqlite:///{tmp_path / 'home' / 'results.db'}"
    with Command([PRODUCER, "tag", "images"], env, cwd=tmp_path) as command:
        command.wait_for_stderr("enqueued 5", 60)
        wait_until(lambda: rows(url), 120, message="no image was answered")
        command.proc.send_signal(signal.SIGINT)
        assert command.wait(120) == 130, command.stderr
        assert_nothing_left(command, env)
    said = re.search(r"^run (\w+): (\d+) images answered \((\d+) done, (\d+) failed\), (\d+) "
                     r"withdrawn; the same command tags the rest$", command.stderr, re.M)
    assert said, command.stderr
    answered, done, failed, withdrawn = map(int, said.groups()[1:])
    listed = json.loads(run_producer("runs", "--json", env=env, cwd=tmp_path).stdout)
    run = {r["id"]: r for r in listed}[said.group(1)]
    assert (run["done"], run["failed"], run["pending"]) == (done, failed, 0), run
    assert answered == done + failed and answered + withdrawn == 5
    assert run["error"].startswith(f"{answered} images answered ({done} done, {failed} "
                                   f"failed), {withdrawn} withdrawn"), run


def test_relabel_counts_what_it_says(tmp_path, env, labels_file):
    """Before: "about 3 images in 1 ranges", then "relabelled 6" past a bar of 6/3: the
    estimate counts kept embeddings (one per content) and the run answers every image."""
    images = tmp_path / "images"
    for i, path in enumerate(write_images(images, 3)):
        (images / f"copy-{i}.jpg").write_bytes(path.read_bytes())  # the same content twice
    tagged = run_producer("tag", "images", env=env, cwd=tmp_path, timeout=300)
    assert tagged.returncode == 0, tagged.stderr
    done = run_producer("relabel", "--labels", str(labels_file), env=env, cwd=tmp_path,
                        timeout=300)
    assert done.returncode == 0, done.stderr
    assert ": 3 kept embeddings (one per distinct image content) in 1 range" in done.stderr
    assert re.search(r"^relabelling: 6/6 images", done.stderr, re.M), done.stderr
    assert "relabelled 6 images" in done.stdout


def test_a_followed_run_that_stops_is_said(tmp_path, env):
    """The run being followed is withdrawn (its `tag` got Ctrl-C): the follower says so and
    what to do, instead of a results file silently short. No worker runs at all here."""
    write_images(tmp_path / "images", 3)
    with Command([PRODUCER, "tag", "images", "--no-worker"], env, cwd=tmp_path) as first:
        first.wait_for_stderr("enqueued 3", 60)
        first_run = run_id(first.stderr)
        with Command([PRODUCER, "tag", "images", "--no-worker"], env, cwd=tmp_path) as second:
            second.wait_for_stderr("following it", 60)
            first.proc.send_signal(signal.SIGINT)
            assert first.wait(60) == 130, first.stderr
            assert second.wait(120) == 0, second.stderr + second.stdout
    assert (f"run {first_run} stopped early (0 images answered (0 done, 0 failed), 3 "
            "withdrawn: interrupted): the same command again tags what it left") in second.stderr
    assert "labels of 0 images" in second.stdout
