"""A user tags a folder, then looks at it: `producer report` in headless Chromium."""

from __future__ import annotations

import re
from pathlib import Path

from testkit.browser import contrast, report_facts
from testkit.commands import run_id, run_producer, tag_as_user, user_env
from testkit.images import image_bytes, write_images


def test_tag_then_report_in_a_browser(tmp_path: Path, tiny_model: Path, browser):
    images = write_images(tmp_path / "images", 4)
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "images" / "cut.png").write_bytes(image_bytes(9)[:60])
    env = user_env(TAGGER_HOME=str(tmp_path / "home"), TAGGER_MODEL=str(tiny_model),
                   TAGGER_BACKEND="torch")  # the embedded default: no broker, no database
    command, records = tag_as_user(str(tmp_path / "images"), env, cwd=tmp_path)
    # `producer tag` writes the page beside its results file and says where.
    said = re.search(r"^report: (.+)$", command.stdout, re.M)
    assert said and Path(said.group(1)).suffix == ".html", command.stdout
    assert Path(said.group(1)).with_suffix(".jsonl").is_file()

    done = run_producer("report", "--output", "page.html", env=env, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "report: page.html", done.stderr
    page = tmp_path / "page.html"
    html = page.read_text(encoding="utf-8")
    # Self-contained: nothing in it points anywhere but into itself.
    assert not re.search(r"""(?:src|href)\s*=\s*(?!["']?(?:data:|#))|url\(|@import""", html)

    with browser.load(page) as loaded:
        facts = report_facts(loaded.page)
        shot = loaded.page.screenshot(full_page=True)
    assert loaded.requests == [page.as_uri()]  # no request leaving the file
    assert not [line for line in loaded.console if line.startswith("error")], loaded.console
    assert contrast(shot) > 20  # not a blank page

    by_uri = {r["uri"]: r for r in records}
    for path in images:  # every tagged photo by name, with a picture, under its label
        label = by_uri[path.as_uri()]["top_label"]
        shown = {photo["name"]: photo for photo in facts["labels"][label]}
        assert shown[path.name]["picture"], (path.name, label, facts["labels"])
    failed = {file: error for rows in facts["failures"].values() for file, error in rows}
    assert set(failed) == {"broken.jpg", "cut.png"}, facts["failures"]
    assert set(facts["failures"]) == {"undecodable"} and all(failed.values())


def test_a_relabel_runs_report_shows_its_pictures(tmp_path: Path, tiny_model: Path, browser):
    """A relabel run reads no file: its previews may read what the runs that tagged its images
    could (before, every tile said outside-roots)."""
    images = write_images(tmp_path / "images", 3)
    env = user_env(TAGGER_HOME=str(tmp_path / "home"), TAGGER_MODEL=str(tiny_model),
                   TAGGER_BACKEND="torch")
    tag_as_user(str(tmp_path / "images"), env, cwd=tmp_path)
    labels = tmp_path / "styles.txt"
    labels.write_text("简约\n复古\n北欧\n", encoding="utf-8")
    relabelled = run_producer("relabel", "--labels", str(labels), env=env, cwd=tmp_path)
    assert relabelled.returncode == 0, relabelled.stderr
    done = run_producer("report", "--run", run_id(relabelled.stdout), "--output", "styles.html",
                        env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with browser.load(tmp_path / "styles.html") as loaded:
        facts = report_facts(loaded.page)
    shown = [photo for photos in facts["labels"].values() for photo in photos]
    assert sorted(photo["name"] for photo in shown) == sorted(path.name for path in images)
    assert all(photo["picture"] for photo in shown), shown
