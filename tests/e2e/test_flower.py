"""Flower against the real broker: the tagging queue's depth, behind basic auth."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from testkit.commands import ROOT, producer
from testkit.images import image_bytes
from testkit.processes import QUIET
from testkit.services import RedisServer, free_port, wait_until
from worker.core.celeryconf import tagging_queue
from worker.core.settings import load_settings

CHUNKS = 3
USER, PASSWORD = "ops", "flower-test-pw"


@pytest.fixture
def own_broker(tagger_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
               ) -> Iterator[dict[str, str]]:
    """A private Redis: Flower lists the queues of every worker that answers on its broker, and
    other tests' workers answer on the shared one."""
    with RedisServer(tmp_path / "redis", appendonly=False) as server:
        monkeypatch.setenv("CELERY_BROKER_URL", server.url)
        yield {**tagger_env, "CELERY_BROKER_URL": server.url}


@pytest.fixture(params=["flag", "env"])
def flower(request: pytest.FixtureRequest, own_broker: dict[str, str], tmp_path: Path
           ) -> Iterator[str]:
    """``celery -A worker flower`` behind basic auth on a free loopback port; no worker runs.

    Auth given as ``--basic-auth``, or as FLOWER_BASIC_AUTH the way docker-compose.yml does.
    """
    port = free_port()
    log_path = tmp_path / "flower.log"
    args = [f"--port={port}", "--address=127.0.0.1", "--inspect_timeout=500"]
    env = {**os.environ, **QUIET, **own_broker}
    if request.param == "flag":
        args.append(f"--basic-auth={USER}:{PASSWORD}")
    else:
        env["FLOWER_BASIC_AUTH"] = f"{USER}:{PASSWORD}"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "flower", *args],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"flower exited {proc.returncode}:\n{log_path.read_text()}")
        try:
            return requests.get(f"{url}/healthcheck", timeout=2).text == "OK"
        except requests.ConnectionError:
            return False

    wait_until(healthy, 60, message="flower did not answer")
    yield url
    ended(proc)


def test_flower_reports_queue_depth_behind_auth(flower, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(CHUNKS):
        (images / f"{i}.png").write_bytes(image_bytes(i))
    out = producer("enqueue", "--dir", str(images), "--chunk-size", "1")
    assert f"in {CHUNKS} chunks" in out

    response = requests.get(f"{flower}/api/queues/length", auth=(USER, PASSWORD), timeout=30)
    assert response.status_code == 200, response.text
    depth = {q["name"]: q["messages"] for q in response.json()["active_queues"]}
    assert depth.get(tagging_queue(load_settings())) == CHUNKS, depth

    for auth in (None, (USER, "wrong")):
        refused = requests.get(f"{flower}/api/queues/length", auth=auth, timeout=30)
        assert refused.status_code == 401
    assert requests.get(f"{flower}/api/workers", timeout=30).status_code == 401


def start_by_hand(env: dict[str, str], args: list[str], log_path: Path) -> subprocess.Popen:
    """``celery -A worker flower ARGS`` as docs/operations.md says to start it outside compose."""
    with log_path.open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker", "flower", *args],
                                cwd=ROOT, env={**os.environ, **QUIET, **env}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def test_flower_started_by_hand_needs_auth_and_listens_on_loopback(tagger_env, tmp_path):
    """Before: `celery -A worker flower` served every page without auth on all addresses."""
    port = free_port()
    bare = start_by_hand(tagger_env, [f"--port={port}"], tmp_path / "bare.log")
    assert bare.wait(60) == 1
    said = (tmp_path / "bare.log").read_text().strip().splitlines()
    assert said == ["catalog-tagger: Flower shows and controls the workers, so it runs behind "
                    "basic auth: set FLOWER_BASIC_AUTH=user:password (or pass "
                    "--basic-auth=user:password); it listens on 127.0.0.1 unless --address "
                    "says otherwise"], said

    env = {**tagger_env, "FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"}
    proc = start_by_hand(env, [f"--port={port}"], tmp_path / "flower.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: listening(proc.pid, port), 60, message="flower did not listen")
        assert listening(proc.pid, port) == {"127.0.0.1"}  # not 0.0.0.0 nor ::
        assert requests.get(f"{url}/api/workers", timeout=30).status_code == 401
        assert requests.get(f"{url}/", timeout=30).status_code == 401
        answered = requests.get(f"{url}/api/queues/length", auth=(USER, PASSWORD), timeout=30)
        assert answered.status_code == 200, answered.text
    finally:
        ended(proc)


def ended(proc: subprocess.Popen) -> None:
    """Flower killed with its process group: its graceful stop waits for its inspectors (over
    10 s on a busy machine) and proves nothing here."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def listening(pid: int, port: int) -> set[str]:
    """The addresses a process listens on at ``port``."""
    import psutil

    return {c.laddr.ip for c in psutil.Process(pid).net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
