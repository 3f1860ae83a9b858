"""Flower against the real broker: the tagging queue's depth, behind basic auth."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from testkit.commands import ROOT, producer
from testkit.images import image_bytes
from testkit.processes import QUIET
from testkit.services import free_port, wait_until
from worker.core.celeryconf import tagging_queue
from worker.core.settings import load_settings

CHUNKS = 3
USER, PASSWORD = "ops", "flower-test-pw"


@pytest.fixture(params=["flag", "env"])
def flower(request: pytest.FixtureRequest, tagger_env: dict[str, str], tmp_path: Path
           ) -> Iterator[str]:
    """``celery -A worker flower`` behind basic auth on a free loopback port; no worker runs.

    Auth given as ``--basic-auth``, or as FLOWER_BASIC_AUTH the way docker-compose.yml does.
    """
    port = free_port()
    log_path = tmp_path / "flower.log"
    args = [f"--port={port}", "--address=127.0.0.1", "--inspect_timeout=500"]
    env = {**os.environ, **QUIET, **tagger_env}
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
    proc.terminate()
    proc.wait(10)


def test_flower_reports_queue_depth_behind_auth(tagger_env, flower, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(CHUNKS):
        (images / f"{i}.png").write_bytes(image_bytes(i))
    out = producer("enqueue", "--dir", str(images), "--chunk-size", "1")
    assert f"in {CHUNKS} chunks" in out

    response = requests.get(f"{flower}/api/queues/length", auth=(USER, PASSWORD), timeout=30)
    assert response.status_code == 200, response.text
    depth = {q["name"]: q["messages"] for q in response.json()["active_queues"]}
    assert depth[tagging_queue(load_settings())] == CHUNKS

    for auth in (None, (USER, "wrong")):
        refused = requests.get(f"{flower}/api/queues/length", auth=auth, timeout=30)
        assert refused.status_code == 401
    assert requests.get(f"{flower}/api/workers", timeout=30).status_code == 401
