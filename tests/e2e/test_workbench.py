"""A reviewer's way through the workbench in headless Chromium: a tagged folder's run, a
gallery or a text search, an image and its near-duplicate, a corrected label, learning, and the
corrected image (and its near-duplicate) taking the label in the learned version; no console
error, nothing asked of any other server, script in a search shown as text. And the refusal to
serve other machines without a token."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from testkit.browser import contrast
from testkit.commands import PRODUCER, run_producer, tag_as_user, user_env
from testkit.images import save, write_images
from testkit.processes import Command
from testkit.services import free_port
from worker.backends.probe import probe_images
from worker.core.contract import uri_hash
from worker.core.pixels import Preprocess

SCRIPT = "<script>alert(1)</script>"


def test_correct_learn_and_see_the_label_taken(tmp_path, tiny_model, labels_file, browser):
    folder = tmp_path / "images"
    write_images(folder, 12)
    env = user_env(TAGGER_HOME=str(tmp_path / "home"), TAGGER_MODEL=str(tiny_model),
                   TAGGER_LABELS=str(labels_file), TAGGER_BACKEND="torch",
                   TAGGER_DECODE_PROCESSES="2")
    tag_as_user(str(folder), env, cwd=tmp_path, timeout=300)
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    with Command([PRODUCER, "serve", "--port", str(port)], env, tmp_path) as server:
        server.wait_for_stderr("Uvicorn running", 60)
        with browser.load(origin + "/") as loaded:
            page = loaded.page
            page.click("table.runs a")  # the tagged folder's run
            page.click("ul.labels a")  # its first label's gallery, least confident first
            page.click("figure.photo a")
            page.wait_for_selector("section.result")
            image_url = page.url
            picked = correct(page)
            assert page.is_visible("section.result .verdict .badge.human")  # shown at once
            learned_id = learn(page)
            page.goto(image_url)
            (tmp_path / "image.png").write_bytes(page.screenshot(full_page=True))
            assert learned_top(page, learned_id) == picked
            learned = page.locator(f"section.result[data-labelset='{learned_id}']")
            assert learned.locator(".verdict .badge.human").count() == 1
            page.goto(origin + f"/labelsets/{learned_id}/changes")
            page.click(f"ul.labels a:has-text('{picked}')")  # the images that took it, to review
            names = page.eval_on_selector_all("figure.photo", "f => f.map(x => x.dataset.key)")
            assert image_url.rpartition("/")[2] in names
            shot = page.screenshot(full_page=True)
            (tmp_path / "changes.png").write_bytes(shot)
        assert not [line for line in loaded.console if line.startswith("error")], loaded.console
        assert all(url.startswith(origin + "/") for url in loaded.requests), loaded.requests
        assert contrast(shot) > 10


def photos(folder: Path) -> tuple[str, str]:
    """Photo-like pictures, and a re-encoded, slightly resized copy of the first: the keys of
    the first and of its copy (random checkpoints put such copies at cosine 0.98-0.9998)."""
    folder.mkdir(parents=True)
    for i, array in enumerate(probe_images(Preprocess(96, 96), 8, seed=7)):
        (folder / f"商品 {i}.png").write_bytes(save(Image.fromarray(array), "PNG"))
    original = Image.open(io.BytesIO((folder / "商品 0.png").read_bytes())).convert("RGB")
    (folder / "商品 0 copy.jpg").write_bytes(save(original.resize((90, 90)), "JPEG",
                                                  quality=90))
    real = folder.resolve()
    return uri_hash((real / "商品 0.png").as_uri()), uri_hash((real / "商品 0 copy.jpg").as_uri())


def correct(page) -> str:
    """On an image's page: pick a label other than the model's, see it shown; the label."""
    model_label = page.inner_text("section.result .verdict .label")
    options = page.eval_on_selector_all("form.pick option", "o => o.map(x => x.value)")
    picked = next(label for label in options if label != model_label)
    page.select_option("form.pick select", picked)
    page.click("form.pick button")
    assert page.inner_text("section.result .verdict .label") == picked
    return picked


def learn(page) -> str:
    """From an image's page: its label set's page, the learn button, the job done; the id of
    the learned version."""
    page.click("section.result a[href^='/labelsets/']")
    page.click("#learn")
    page.wait_for_selector(".job.done, .job.failed", timeout=240_000)
    assert page.query_selector(".job.done"), page.inner_text(".job")
    return page.get_attribute(".job a[href^='/labelsets/']", "href").split("/")[2]


def learned_top(page, labelset: str) -> str:
    """The top label an image's page shows under ``labelset``."""
    section = page.locator(f"section.result[data-labelset='{labelset}']")
    return section.locator("table.scores tr").first.get_attribute("data-label")


@pytest.mark.timeout(900)  # tagging, the text tower's export and learning, on a busy machine
def test_search_a_near_duplicate_and_learn_from_a_correction(tmp_path, tiny_model, labels_file,
                                                               browser):
    original, copy = photos(tmp_path / "images")
    env = user_env(TAGGER_HOME=str(tmp_path / "home"), TAGGER_MODEL=str(tiny_model),
                   TAGGER_LABELS=str(labels_file), TAGGER_BACKEND="torch",
                   TAGGER_DECODE_PROCESSES="2")
    tag_as_user(str(tmp_path / "images"), env, cwd=tmp_path, timeout=300)
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    dialogs: list[str] = []
    with Command([PRODUCER, "serve", "--port", str(port)], env, tmp_path) as server:
        server.wait_for_stderr("Uvicorn running", 60)
        with browser.load(origin + "/") as loaded:
            page = loaded.page
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.click("table.runs a")  # the tagged folder's run
            page.fill("form.search input[name=q]", SCRIPT)  # shown as text, never run
            with page.expect_navigation(timeout=240_000):  # the text tower, once loaded
                page.click("form.search button", no_wait_after=True)
            page.wait_for_selector("section.hits", timeout=240_000)
            assert page.inner_text("h1 q.query") == SCRIPT
            assert page.input_value("form.search input[name=q]") == SCRIPT
            page.fill("form.search input[name=q]", "台灯")
            page.click("form.search button")
            page.wait_for_selector("section.hits figure.hit")
            assert page.locator("section.hits figure.hit").count() == 9  # every image, ranked
            labels = page.locator("section.hits figure.hit .label").all_inner_texts()
            page.fill("form.within input[name=label]", labels[-1])  # narrowed to one label
            page.click("form.within button")
            page.wait_for_selector("section.hits figure.hit")
            narrowed = page.locator("section.hits figure.hit .label").all_inner_texts()
            assert set(narrowed) == {labels[-1]} and len(narrowed) == labels.count(labels[-1])
            assert page.inner_text("p.muted b.within") == labels[-1]  # and says so
            page.fill("form.search input[name=q]", "台灯")
            page.click("form.search button")
            page.wait_for_selector("section.hits figure.hit")
            page.click(f"section.hits figure[data-key='{original}'] a")
            page.wait_for_selector("section.nearby")
            duplicate = page.locator(f".grid.duplicates figure[data-key='{copy}']")
            assert duplicate.count() == 1, page.inner_text("section.nearby")
            assert float(duplicate.locator(".score").inner_text()) >= 0.95
            picked = correct(page)
            learned_id = learn(page)
            page.goto(f"{origin}/images/{original}")
            assert learned_top(page, learned_id) == picked  # the corrected image
            page.click(f".grid.duplicates figure[data-key='{copy}'] a")
            page.wait_for_selector("section.result")
            assert learned_top(page, learned_id) == picked  # and its near-duplicate
            assert page.locator(f".grid.duplicates figure[data-key='{original}']").count() == 1
            shot = page.screenshot(full_page=True)
            (tmp_path / "duplicate.png").write_bytes(shot)
        assert not dialogs, dialogs
        assert not [line for line in loaded.console if line.startswith("error")], loaded.console
        assert all(url.startswith(origin + "/") for url in loaded.requests), loaded.requests
        assert contrast(shot) > 10


def test_another_machines_address_needs_a_token(tmp_path):
    env = user_env(TAGGER_HOME=str(tmp_path / "home"))
    refused = run_producer("serve", "--host", "0.0.0.0", "--port", str(free_port()), env=env)
    assert refused.returncode == 1 and refused.stdout == ""
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "TAGGER_SERVE_TOKEN" in refused.stderr and "Traceback" not in refused.stderr
