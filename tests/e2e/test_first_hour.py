"""A user's first hour: `producer tag` and the worker when things go wrong, as a user sees them.

A dead worker, a wrong model, Ctrl-C, another working directory, a chunk for another model, and
every mistake shown as one line (exit code 1, no traceback).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from producer.sending import send
from testkit.commands import (
    PRODUCER,
    assert_nothing_left,
    count,
    jsonl,
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
from testkit.processes import Command, Worker, with_environment
from testkit.services import wait_until
from worker.core.celeryconf import tagging_queue
from worker.core.contract import Chunk, Item
from worker.core.labels import load_labelset
from worker.core.settings import load_settings
from worker.db import status as db_status
from worker.db.schema import engine_for

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


def test_a_missing_model_then_the_printed_command_then_a_clean_run(tmp_path, env):
    """The model is missing: `tag` fails at once with one line whose command works from where
    the user is (outside the virtualenv), and withdraws what it had enqueued; the next run, on
    the model that command built, shows no failure that never happened (before: 92 failed)."""
    write_images(tmp_path / "images", 3)
    env |= {"TAGGER_MODEL": "./model", "TAGGER_CHUNK_SIZE": "1"}
    with Command([PRODUCER, "tag", "images"], env, cwd=tmp_path) as command:
        assert command.wait(60) == 1  # at once: no worker waited for (a hang times out here)
        last = command.stderr.strip().splitlines()[-1]
        assert last.startswith("Error: ") and f"TAGGER_MODEL={tmp_path / 'model'}" in last
        assert "Traceback" not in command.stderr
        assert_nothing_left(command, env)
    home = tmp_path / "home"
    assert list((home / "broker" / "queue").glob("*.msg")) == []  # withdrawn: nothing queued
    assert count(f"sqlite:///{home / 'results.db'}", "pending") == 0

    printed = re.search(r"build a small random one: (.+ --tiny)", last)
    assert printed, last
    elsewhere = tmp_path / "elsewhere"  # not the checkout, and no virtualenv on PATH
    elsewhere.mkdir()
    built = subprocess.run(["/bin/sh", "-c", printed.group(1)], cwd=elsewhere, text=True,
                           capture_output=True, timeout=120,
                           env={"PATH": "/usr/bin:/bin", "HOME": env["HOME"]})
    assert built.returncode == 0, built.stderr
    env["TAGGER_MODEL"] = str(elsewhere / "model")
    command, records = tag_as_user("images", env, cwd=tmp_path)
    assert len(records) == 3 and {r["status"] for r in records} == {"done"}
    status = json.loads(run_producer("status", "--json", env=env, cwd=tmp_path).stdout)
    assert (status["done"], status["failed"], status["pending"]) == (3, 0, 0), status
    runs = json.loads(run_producer("runs", "--json", env=env, cwd=tmp_path).stdout)
    first = runs[-1]
    assert first["state"] == "stopped" and "3 withdrawn" in first["error"], first


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
        worker = Worker(env, tmp_path / "worker.log").launch()
        try:
            worker.proc.wait(60)  # it exits by itself (a hang or a retry storm times out here)
        finally:
            worker.stop()
        hub_calls = sum(n for path, n in hub.hits.items() if "not-in-the-cache" in path)
    assert worker.exited() == code, worker.log()[-3000:]
    said = [str(r["message"]) for r in worker.records() if "TAGGER_MODEL" in str(r["message"])]
    assert len(said) == 1 and "refusing to start" in said[0], said
    assert hub_calls <= (1 if case == "hub-unreachable" else 0)  # no retries, no storm


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_tag_stopped_while_waiting(sig, tmp_path, env):
    """Ctrl-C (SIGINT) or SIGTERM: the run's unstarted chunks are withdrawn and `tag` returns
    only once its worker has exited. SIGKILL: the worker stops by itself, its owner gone."""
    # Images that take long to decode, one at a time: the run cannot end before the signal.
    bomb = scan_bomb(8192, 3000)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"slow-{i}.jpg").write_bytes(bomb + f"\0copy {i}".encode())
    env |= {"TAGGER_DECODE_PROCESSES": "1", "TAGGER_ITEM_TIMEOUT": "120",
            "TAGGER_CHUNK_SIZE": "1"}
    with Command([PRODUCER, "tag", "images"], env, cwd=tmp_path) as command:
        # The line is printed inside the block that withdraws the run when a signal comes.
        command.wait_for_stderr("enqueued 3", 60)
        command.proc.send_signal(getattr(signal, sig))  # SIGINT: what Ctrl-C sends
        code = command.wait(60)
        if sig == "SIGKILL":
            assert code == -signal.SIGKILL
            wait_until(lambda: not with_environment("TAGGER_HOME", env["TAGGER_HOME"]), 90,
                       message="the worker outlived the command that started it")
            return
        assert (code, command.stderr.strip().splitlines()[-1]) == (
            {"SIGINT": (130, "interrupted"), "SIGTERM": (143, "terminated")}[sig])
        assert "Traceback" not in command.stderr
        assert_nothing_left(command, env)  # at once: the worker has exited already

    run, home = run_id(command.stderr), tmp_path / "home"
    assert count(f"sqlite:///{home / 'results.db'}", "pending") == 0  # released
    assert list((home / "broker" / "queue").glob("*.msg")) == []  # withdrawn
    listed = run_producer("runs", "--json", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    state = {r["id"]: r for r in json.loads(listed.stdout)}[run]
    assert (state["state"], state["pending"]) == ("stopped", 0), state
    assert "withdrawn: interrupted" in state["error"], state
    assert "stopped early" in run_producer("runs", env=env, cwd=tmp_path).stdout


class CtrlCOnceAnswered(threading.Thread):
    """Sends this process a SIGINT once a new run has all its images answered, unless the
    command ended before."""

    def __init__(self, url: str, images: int) -> None:
        super().__init__(daemon=True)
        self.url, self.images = url, images
        self.runs_before = len(db_status.find_runs(engine_for(url), limit=1000))
        self.lock, self.running = threading.Lock(), True

    def answered(self) -> bool:
        found = db_status.find_runs(engine_for(self.url), limit=self.runs_before + 1)
        return (len(found) > self.runs_before
                and len(rows(self.url, run_id=found[0]["id"])) == self.images)

    def run(self) -> None:
        wait_until(self.answered, 60, interval=0.005)
        with self.lock:
            if self.running:
                os.kill(os.getpid(), signal.SIGINT)

    def ended(self) -> None:
        with self.lock:
            self.running = False


def test_an_interrupt_after_every_image_was_answered_is_no_cancellation(
        tagger_env, start_worker, tmp_path):
    """Ctrl-C just after the last image was answered, while `tag` still waits: the run is
    complete, not "cancelled before it finished"."""
    from producer.tag import tag

    images = write_images(tmp_path / "images", 2)
    start_worker(tagger_env)
    settings = load_settings()
    labelset = load_labelset(settings.labels_path)
    for attempt in range(3):  # the wait may notice the answers first (its poll takes ~1 %)
        interrupter = CtrlCOnceAnswered(settings.database_url, len(images))
        interrupter.start()
        try:
            tag(settings, str(tmp_path / "images"), labelset=labelset, output=None,
                chunk_size=8, timeout=60, force=attempt > 0, own_worker=False,
                echo=lambda _: None)
        except KeyboardInterrupt:
            break
        finally:
            interrupter.ended()
    else:
        pytest.fail("the interrupt never came while `tag` waited")
    run = db_status.find_runs(engine_for(settings.database_url))[0]
    assert (run["state"], run["error"], run["done"]) == ("complete", None, 2), run


def test_tag_a_relative_folder_from_another_directory(tmp_path, env):
    """One folder, one identity for each file in it, however the folder is spelled; a link in
    it to a photo elsewhere is tagged; failures are told apart from done ones, with the command
    that tries them again."""
    work, outside = tmp_path / "work", tmp_path / "outside"
    photos = work / "shop" / "photos"
    write_images(photos, 2, name="{}.png", fmt="PNG")
    write_images(outside, 1, name="real.png", fmt="PNG")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (photos / "elsewhere.png").symlink_to(outside / "real.png")  # the user's own link
    (photos / "gone.jpg").symlink_to(outside / "nowhere.jpg")
    (photos / "folder.jpg").symlink_to(outside, target_is_directory=True)
    (tmp_path / "alias").symlink_to(work, target_is_directory=True)
    before = sorted(work.rglob("*"))
    # No TAGGER_HOME: the per-user default, under this HOME.
    del env["TAGGER_HOME"]
    env["HOME"] = str(tmp_path / "user")
    command, records = tag_as_user("shop/photos", env, cwd=work)

    names = ["0.png", "1.png", "broken.jpg", "elsewhere.png"]
    assert sorted(r["uri"] for r in records) == [(photos / n).as_uri() for n in names]
    assert {r["uri"]: r["status"] for r in records if r["status"] != "done"} == {
        (photos / "broken.jpg").as_uri(): "failed"}
    assert skips(command.stderr) == (4, {"broken-link": 1, "not-a-file": 1})
    assert sorted(work.rglob("*")) == before, "producer tag wrote into the working directory"
    results = tmp_path / "user" / ".local" / "share" / "catalog-tagger" / "results"
    assert len(list(results.glob("*.jsonl"))) == 1

    # Through a symlinked parent, '..', '.' and a trailing slash: the same files, known already.
    other = tmp_path / "other"
    other.mkdir()
    with Command([PRODUCER, "tag", "../alias/shop/./photos/"], env, other) as again:
        assert again.wait(120) == 0, again.stderr
    assert skips(again.stderr) == (0, {"done": 3, "failed-before": 1, "broken-link": 1,
                                       "not-a-file": 1})
    hint = re.search(r"1 image failed .*: `(.+ --retry-failed)` tries it again", again.stdout)
    assert hint and "tagged 3 images, 1 failed" in again.stdout, again.stdout
    exported = Path(re.search(r"^labels of \d+ images: (.+)$", again.stdout, re.M).group(1))
    assert sorted(r["uri"] for r in jsonl(exported)) == [(photos / n).as_uri() for n in names]

    # The printed command, as typed from there, tries the failed image again.
    retried = subprocess.run(["/bin/sh", "-c", hint.group(1)], cwd=other, env=env, text=True,
                             capture_output=True, timeout=120)
    assert retried.returncode == 0, retried.stderr
    assert skips(retried.stderr) == (1, {"done": 3, "broken-link": 1, "not-a-file": 1})


def skips(output: str) -> tuple[int, dict[str, int]]:
    """How many ``run ...: listed N, enqueued E, skipped S (n reason, ...)`` enqueued, and why
    it skipped the rest."""
    found = re.search(r"^run \w+: listed \d+, enqueued (\d+), skipped \d+(?: \((.*)\))?$",
                      output, re.M)
    assert found, output
    parts = (part.split(" ") for part in (found.group(2) or "").split(", ") if part)
    return int(found.group(1)), {reason: int(n) for n, reason in parts}


def test_a_chunk_reaches_only_workers_of_its_model(tagger_env, start_worker, tmp_path,
                                                  monkeypatch):
    images = write_images(tmp_path / "images", 3)
    own = write_images(tmp_path / "own", 1)
    url, served = tagger_env["DATABASE_URL"], tagger_env["TAGGER_MODEL"]
    worker = start_worker(tagger_env)  # serves the tiny model
    monkeypatch.setenv("TAGGER_MODEL", OTHER_MODEL)  # the producer's side says another model
    run = run_id(producer("enqueue", "--dir", str(tmp_path / "images")))
    monkeypatch.setenv("TAGGER_MODEL", served)
    producer("enqueue", "--dir", str(tmp_path / "own"))  # behind it, in the same Redis
    wait_for_results(url, [own[0].as_uri()], 60)

    # The other model's chunk waits on its own queue for a worker of that model.
    assert rows(url, model=OTHER_MODEL) == {}
    monkeypatch.setenv("TAGGER_MODEL", OTHER_MODEL)
    status = json.loads(producer("status", "--run", run, "--json"))
    assert status["queue"] == tagging_queue(load_settings()) != tagging_queue(
        load_settings({**tagger_env}))
    assert (status["queue_depth"], status["pending"], status["failed"]) == (1, 3, 0), status

    # One sent by hand to this worker's queue is still never scored by the wrong model.
    stray = Chunk(items=tuple(Item(p.as_uri()) for p in images), model=OTHER_MODEL,
                  labelset_id=status["run"]["labelset_id"])
    send(load_settings({**tagger_env}), stray)
    by_uri = wait_for_results(url, [p.as_uri() for p in [*images, *own]], 60)
    for image in images:
        row = by_uri[image.as_uri()]
        assert (row.model, row.status, row.reason) == (OTHER_MODEL, "failed", "model-mismatch")
        assert OTHER_MODEL in row.error and served in row.error and row.labels == []
    assert worker.exited() is None  # the worker lives on
    assert any("chunk is for model" in str(r["message"]) for r in worker.records())

    # A worker told to take another queue (say the one-queue default of old) refuses to start.
    stray_worker = Worker(tagger_env, tmp_path / "stray.log", extra=["-Q", "tagger"]).launch()
    try:
        assert stray_worker.proc.wait(120) == 1
    finally:
        stray_worker.kill()
    assert "drop -Q" in stray_worker.log()


def test_mistakes_are_one_line(tmp_path, env):
    write_images(tmp_path / "images", 1)
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "notes.txt").write_text("no image here")
    bad_labels = tmp_path / "labels.txt"
    bad_labels.write_bytes("台灯\n".encode("gbk"))  # not UTF-8
    no_labels = tmp_path / "no-labels.txt"
    no_labels.write_text("# only a comment\n\n", encoding="utf-8")
    cases = {  # args, environment, what the line must say
        "not a url": (["tag", "images"], {"DATABASE_URL": "not a url"}, "DATABASE_URL"),
        "mysql": (["tag", "images"], {"DATABASE_URL": "mysql://x/y"}, "'mysql'"),
        "labels": (["tag", "images", "--labels", str(bad_labels)], {}, str(bad_labels)),
        "no labels": (["tag", "images", "--labels", str(no_labels)], {}, str(no_labels)),
        "export": (["export", "--run", "nosuchrun"], {}, "no run nosuchrun"),
        "status": (["status", "--run", "nosuchrun"], {}, "no run nosuchrun"),
        "folder": (["tag", "/no/such/folder"], {}, "not a folder: /no/such/folder"),
    }
    empty = {"empty": f"nothing to tag at {tmp_path / 'empty'} (no files)",
             "texts": f"nothing to tag at {tmp_path / 'texts'} (listed 1, none an image: "
                      "1 not-image)"}
    with contextlib.ExitStack() as running:  # all at once; each cleaned up at the end
        commands = {name: running.enter_context(Command(
            [PRODUCER, *args], {**env, **extra, "TAGGER_HOME": str(tmp_path / name)},
            cwd=tmp_path)) for name, (args, extra, _) in cases.items()}
        nothing = {name: running.enter_context(Command(
            [PRODUCER, "tag", name], {**env, "TAGGER_HOME": str(tmp_path / f"home-{name}")},
            cwd=tmp_path)) for name in empty}
        for name, command in commands.items():
            command.wait(60)
            assert cases[name][2] in error_line(command), name

        # A location without images: one line, exit code 3 (README), and nothing started.
        for name, command in nothing.items():
            assert command.wait(60) == 3, command.stderr
            assert command.stderr.splitlines() == [empty[name]] and command.stdout == ""
            assert command.descendants == set(), "a worker was started"
            assert not (tmp_path / f"home-{name}" / "logs").exists()
