"""A user's first hour: `producer tag` and the worker when things go wrong, as a user sees them.

A dead worker, a wrong model, Ctrl-C, another working directory, a chunk for another model, and
every mistake shown as one line (exit code 1, no traceback).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import time
from pathlib import Path

import pytest

from testkit.commands import (
    PRODUCER,
    assert_nothing_left,
    count,
    producer,
    rows,
    run_id,
    run_producer,
    tag_as_user,
    user_env,
    wait_for_results,
)
from testkit.faults import ImageServer, Reply
from testkit.images import scan_bomb, write_images
from testkit.processes import Command, Worker

OTHER_MODEL = "OFA-Sys/chinese-clip-vit-large-patch14"


@pytest.fixture
def env(tmp_path: Path, tiny_model: Path) -> dict[str, str]:
    """A user's environment: no services configured, a fresh TAGGER_HOME, the tiny model."""
    return user_env(TAGGER_HOME=str(tmp_path / "home"), TAGGER_MODEL=str(tiny_model),
                    TAGGER_BACKEND="torch")


def error_line(command: Command) -> str:
    """The one line a mistake prints: exit code 1, nothing else on stderr or stdout."""
    lines = command.stderr.splitlines()
    assert command.proc.returncode == 1, command.stderr + command.stdout
    assert len(lines) == 1 and lines[0].startswith("Error: "), command.stderr
    assert "Traceback" not in command.stderr and command.stdout == ""
    return lines[0]


def test_tag_ends_when_its_worker_dies_at_start(tmp_path, env):
    write_images(tmp_path / "images", 2)
    (tmp_path / "empty-model").mkdir()
    env["TAGGER_MODEL"] = str(tmp_path / "empty-model")
    started = time.monotonic()
    with Command([PRODUCER, "tag", "images"], env, cwd=tmp_path) as command:
        assert command.wait(60) != 0
        assert time.monotonic() - started < 60
        last = command.stderr.strip().splitlines()[-1]
        assert last.startswith("Error: ") and f"TAGGER_MODEL={tmp_path / 'empty-model'}" in last
        assert "Traceback" not in command.stderr
        assert_nothing_left(command, env)
    # What it had enqueued is released: the next `producer tag` sends it again.
    assert count(f"sqlite:///{tmp_path / 'home' / 'results.db'}", "pending") == 0


def broken_checkpoint(folder: Path, tiny_model: Path) -> str:
    """A folder with every file a checkpoint needs, and weights that are not weights."""
    shutil.copytree(tiny_model, folder)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    return str(folder)


@pytest.mark.parametrize("case", ["hub-offline", "hub-unreachable", "broken-weights"])
def test_worker_with_a_wrong_model_exits_with_one_message(case, tmp_path, env, tiny_model):
    env |= {"TAGGER_QUEUE": "tagger", "HF_HOME": str(tmp_path / "hf")}  # an empty hub cache
    with ImageServer() as hub:
        hub.fallback = Reply(b'{"error": "overloaded"}', status=503)
        if case == "broken-weights":  # passes the parent's checks; the pool child cannot load it
            env["TAGGER_MODEL"], code = broken_checkpoint(tmp_path / "model", tiny_model), 3
        else:  # a hub id that is not in the cache
            env["TAGGER_MODEL"], code = "OFA-Sys/not-in-the-cache", 1
            env["HF_HUB_OFFLINE"] = "1" if case == "hub-offline" else "0"
            env["HF_ENDPOINT"] = hub.url("")  # a hub that answers 503: worth no retry either
        started = time.monotonic()
        worker = Worker(env, tmp_path / "worker.log").launch()
        try:
            worker.proc.wait(60)
        finally:
            worker.stop()
        hub_calls = sum(n for path, n in hub.hits.items() if "not-in-the-cache" in path)
    assert time.monotonic() - started < 60
    assert worker.exited() == code, worker.log()[-3000:]
    said = [str(r["message"]) for r in worker.records() if "TAGGER_MODEL" in str(r["message"])]
    assert len(said) == 1 and "refusing to start" in said[0], said
    assert hub_calls <= (1 if case == "hub-unreachable" else 0)  # no retries, no storm


def test_ctrl_c_while_waiting(tmp_path, env):
    # Images that take long to decode, one at a time: the run cannot end before the Ctrl-C.
    bomb = scan_bomb(8192, 3000)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"slow-{i}.jpg").write_bytes(bomb + f"\0copy {i}".encode())
    env |= {"TAGGER_DECODE_PROCESSES": "1", "TAGGER_ITEM_TIMEOUT": "120"}
    with Command([PRODUCER, "tag", "images"], env, cwd=tmp_path) as command:
        command.wait_for_stderr("enqueued 3", 60)
        time.sleep(0.5)  # in the wait loop now
        command.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
        assert command.wait(60) == 130
        assert command.stderr.strip().splitlines()[-1] == "interrupted"
        assert "Traceback" not in command.stderr
        assert_nothing_left(command, env)

    run = run_id(command.stderr)
    assert count(f"sqlite:///{tmp_path / 'home' / 'results.db'}", "pending") == 0  # released
    listed = run_producer("runs", "--json", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    state = {r["id"]: r for r in json.loads(listed.stdout)}[run]
    assert (state["state"], state["pending"]) == ("stopped", 0), state
    assert "stopped early" in run_producer("runs", env=env, cwd=tmp_path).stdout


def test_tag_a_relative_folder_from_another_directory(tmp_path, env):
    work = tmp_path / "work"
    images = write_images(work / "shop" / "photos", 2, name="{}.png", fmt="PNG")
    before = sorted(work.rglob("*"))
    # No TAGGER_HOME: the per-user default, under this HOME.
    del env["TAGGER_HOME"]
    env["HOME"] = str(tmp_path / "user")
    _, records = tag_as_user("shop/photos", env, cwd=work)

    assert {r["uri"] for r in records} == {p.as_uri() for p in images}
    assert {r["status"] for r in records} == {"done"}
    assert sorted(work.rglob("*")) == before, "producer tag wrote into the working directory"
    results = tmp_path / "user" / ".local" / "share" / "catalog-tagger" / "results"
    assert len(list(results.glob("*.jsonl"))) == 1


def test_a_chunk_for_another_model_is_failed_not_tagged(tagger_env, start_worker, tmp_path,
                                                        monkeypatch):
    images = write_images(tmp_path / "images", 3)
    url, served = tagger_env["DATABASE_URL"], tagger_env["TAGGER_MODEL"]
    worker = start_worker(tagger_env)  # serves the tiny model
    monkeypatch.setenv("TAGGER_MODEL", OTHER_MODEL)  # the producer's side says another model
    run = run_id(producer("enqueue", "--dir", str(tmp_path / "images")))

    uris = [p.as_uri() for p in images]
    by_uri = wait_for_results(url, uris, 60)
    assert rows(url, model=served) == {}, "tagged with a model the chunk did not ask for"
    for row in by_uri.values():
        assert (row.model, row.status, row.reason) == (OTHER_MODEL, "failed", "model-mismatch")
        assert OTHER_MODEL in row.error and served in row.error and row.labels == []
    text = producer("status", "--run", run)
    assert "3 model-mismatch" in text and f"model {OTHER_MODEL}" in text
    status = json.loads(producer("status", "--run", run, "--json"))
    assert status["failed_by_reason"] == {"model-mismatch": 3} and status["pending"] == 0
    assert worker.exited() is None  # the worker lives on
    assert any("chunk is for model" in str(r["message"]) for r in worker.records())


def test_mistakes_are_one_line(tmp_path, env):
    write_images(tmp_path / "images", 1)
    (tmp_path / "empty").mkdir()
    bad_labels = tmp_path / "labels.txt"
    bad_labels.write_bytes("台灯\n".encode("gbk"))  # not UTF-8
    cases = {  # args, environment, what the line must say
        "not a url": (["tag", "images"], {"DATABASE_URL": "not a url"}, "DATABASE_URL"),
        "mysql": (["tag", "images"], {"DATABASE_URL": "mysql://x/y"}, "'mysql'"),
        "labels": (["tag", "images", "--labels", str(bad_labels)], {}, str(bad_labels)),
        "export": (["export", "--run", "nosuchrun"], {}, "no run nosuchrun"),
        "status": (["status", "--run", "nosuchrun"], {}, "no run nosuchrun"),
        "folder": (["tag", "/no/such/folder"], {}, "not a folder: /no/such/folder"),
    }
    with contextlib.ExitStack() as running:  # all at once; each cleaned up at the end
        commands = {name: running.enter_context(Command(
            [PRODUCER, *args], {**env, **extra, "TAGGER_HOME": str(tmp_path / name)},
            cwd=tmp_path)) for name, (args, extra, _) in cases.items()}
        empty = running.enter_context(Command([PRODUCER, "tag", "empty"], env, cwd=tmp_path))
        for name, command in commands.items():
            command.wait(60)
            assert cases[name][2] in error_line(command), name

        # An empty folder is no mistake, but worth a warning.
        assert empty.wait(60) == 0, empty.stderr
        assert "warning: no files found under empty" in empty.stderr.splitlines()
        assert "Traceback" not in empty.stderr and "tagged 0 images" in empty.stdout
        assert_nothing_left(empty, env)
