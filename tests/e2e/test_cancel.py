"""`producer cancel RUN` against a real worker, Redis and PostgreSQL: queued chunks leave the
queue, the running one finishes and keeps its results, nothing of the run stays pending."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from testkit.commands import count, one_line_error, producer, rows, send
from testkit.faults import ImageServer, Reply
from testkit.images import image_bytes
from testkit.services import wait_until
from worker.db.schema import deliveries, engine_for

pytestmark = pytest.mark.timeout(240)


def test_cancel_withdraws_queued_chunks_and_keeps_what_the_running_one_tags(
        tagger_env, start_worker, monkeypatch):
    env = {**tagger_env, "TAGGER_ALLOW_PRIVATE_URLS": "1"}
    monkeypatch.setenv("TAGGER_ALLOW_PRIVATE_URLS", "1")
    url = env["DATABASE_URL"]
    with ImageServer() as origin:
        for i in range(12):
            origin.routes[f"/img{i}.png"] = Reply(image_bytes(300 + i), delay=1.0)
        uris = [origin.url(f"/img{i}.png") for i in range(12)]
        start_worker(env)
        run = send(uris, chunk_size=4).run_id  # three chunks: one runs, two wait
        assert origin.started.wait(60), "the first chunk never started"
        said = producer("cancel", run)
        assert said.startswith(f"run {run} cancelled: 0 images answered, 12 no longer "
                               "pending; 2 messages taken off the queue"), said
        producer("wait", "--run", run, "--timeout", "30")  # nothing of it is pending now
        # The running chunk finishes and writes its four results; the others never run.
        with engine_for(url).connect() as conn:
            wait_until(lambda: conn.scalar(sa.select(sa.func.count()).select_from(deliveries)
                                           .where(deliveries.c.finished_at.is_not(None))), 60,
                       message="the running chunk never finished")
        tagged = rows(url)
        assert len(tagged) == 4 and {r.status for r in tagged.values()} == {"done"}
        assert sum(origin.hits.values()) == 4
    assert count(url, "pending") == 0
    info = json.loads(producer("status", "--run", run, "--json"))["run"]
    assert (info["state"], info["done"], info["pending"]) == ("stopped", 4, 0)
    assert "8 withdrawn" not in info["error"] and "12 withdrawn" in info["error"]


def test_cancel_without_a_run_is_a_usage_mistake(tagger_env):
    from testkit.commands import invoke

    result = invoke("cancel")
    assert result.exit_code == 2 and "Missing argument 'RUN'" in result.output
    assert one_line_error("cancel", "0123456789abcdef").endswith("`producer runs` lists them")
