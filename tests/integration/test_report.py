"""The report page on PostgreSQL: text never markup, no secret, bounded galleries, previews
through the workers' guards and under a time budget, rendered in headless Chromium."""

from __future__ import annotations

import io
import os
import signal
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from producer import figures
from producer.report import write_report
from producer.thumbnails import SIZE, previews
from testkit.browser import contrast, report_facts
from testkit.commands import one_line_error, producer
from testkit.images import image_bytes, png_bomb, save, scan_bomb, write_images
from testkit.runs import seed_run, weights_of
from worker.core.errors import Reason
from worker.core.labels import LabelSet
from worker.core.settings import load_settings
from worker.db.runs import result_filter
from worker.db.schema import engine_for
from worker.prep.pool import PrepPool

HOSTILE_LABEL = "<b>x</b>"
SECRET = "hunter2"
HOSTILE = LabelSet(labels=(HOSTILE_LABEL, "台灯", "家具"), parents=("<i>p</i>", "家居", "家居"))


def labels(first: str, score: float, then: str = "家具") -> list[dict[str, object]]:
    """Stored labels: ``first`` at ``score``, then a runner-up."""
    return [{"label": first, "score": score, "parent": None},
            {"label": then, "score": round(score / 2, 3), "parent": None}]


@pytest.fixture
def settings(tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DATABASE_URL", pg_url)
    monkeypatch.setenv("TAGGER_HOME", str(tmp_path / "home"))
    return load_settings()


def test_page_shows_text_not_markup_and_no_secret(tmp_path, settings, browser):
    folder = tmp_path / "images"
    photos = write_images(folder, 3, name="<img src=x onerror=alert(1)> {}.jpg")
    gone = write_images(folder, 1, name="gone {}.jpg", seed=7)[0]
    outside = write_images(tmp_path / "elsewhere", 1, name="outside {}.jpg", seed=8)[0]
    signed = f"https://shop:{SECRET}@img.example.com/a.jpg?X-Amz-Signature={SECRET}"
    failures = {signed: (Reason.HTTP_ERROR, f"GET {signed}: 403 <script>alert(1)</script>"),
                "s3://bucket/<script>.jpg": (Reason.NOT_FOUND, "no such key")}
    chosen = {p.as_uri(): labels(label, 0.9 - i / 10)
              for i, (p, label) in enumerate(zip([*photos, gone, outside],
                                                 [HOSTILE_LABEL, HOSTILE_LABEL, "台灯",
                                                  "家具", "家具"], strict=True))}
    run_id = seed_run(settings.database_url, [*chosen, *failures], HOSTILE, labels=chosen,
                      failures=failures, file_roots=[str(folder)], source=signed)
    gone.unlink()  # tagged, then removed: its preview says why it is missing
    page = write_report(settings, tmp_path / "report.html", run_id)
    html = page.read_text(encoding="utf-8")
    assert SECRET not in html
    assert f"<dd>{weights_of('test-model')[:12]}</dd>" in html  # which weights tagged them

    with browser.load(page) as loaded:
        facts = report_facts(loaded.page)
        loaded.page.fill("#filter", "台灯")  # the inline script's filter box
        hidden = loaded.page.eval_on_selector_all(
            "section.label", "all => all.map(s => [s.querySelector('.name').textContent, "
                             "s.hidden])")
        shot = loaded.page.screenshot()
    assert loaded.requests == [page.as_uri()]
    assert not [line for line in loaded.console if line.startswith("error")], loaded.console
    assert facts["markup"] == 0 and facts["handlers"] == 0 and facts["scripts"] == 1
    assert [p["name"] for p in facts["labels"][HOSTILE_LABEL]] == [p.name for p in photos[:2]]
    assert all(p["picture"] for p in facts["labels"][HOSTILE_LABEL])
    found = {p["name"]: p for p in facts["labels"]["家具"]}
    assert found[gone.name]["problem"].startswith("not-found")
    assert found[outside.name]["problem"].startswith("outside-roots")  # the workers' root rule
    assert dict(hidden) == {HOSTILE_LABEL: True, "台灯": False, "家具": True}
    assert facts["failures"]["not-found"] == [["<script>.jpg", "no such key"]]
    [[file, error]] = facts["failures"]["http-error"]
    assert file == "a.jpg" and "<script>alert(1)</script>" in error and SECRET not in error
    assert contrast(shot) > 20


def test_a_file_name_that_is_not_utf8_is_shown_as_its_bytes(tmp_path, settings):
    folder = tmp_path / "images"
    [photo] = write_images(folder, 1, name="caf{}.jpg")
    latin1 = photo.rename(folder / os.fsdecode(b"caf\xe9.jpg"))
    run_id = seed_run(settings.database_url, [latin1.as_uri()], HOSTILE,
                      file_roots=[str(folder)])
    html = write_report(settings, tmp_path / "report.html", run_id).read_text(encoding="utf-8")
    assert "caf\\xe9.jpg" in html  # its place, as the file system has it


def test_galleries_are_bounded(settings, monkeypatch):
    many = LabelSet(labels=tuple(f"标签{i}" for i in range(70)), parents=(None,) * 70)
    chosen = {f"s3://b/a{i}.jpg": labels("标签0", i / 100) for i in range(60)}
    chosen |= {f"s3://b/b{i}.jpg": labels("标签1", i / 100) for i in range(50)}
    chosen |= {f"s3://b/c{i}.jpg": labels(f"标签{2 + i}", 0.5) for i in range(60)}
    failed = {f"s3://b/f{i}.jpg": (Reason.NOT_FOUND, "no such key") for i in range(60)}
    run_id = seed_run(settings.database_url, [*chosen, *failed], many, labels=chosen,
                      failures=failed)
    engine = engine_for(settings.database_url)
    run = {"id": run_id, "labelset_id": many.id, "started_at": "2026-01-01T00:00:00",
           "done": 170, "failed": 60}
    shown = figures.gather(engine, run, result_filter(run_id=run_id))
    by_label = {g.label: g for g in shown.galleries}
    assert [len(by_label[label].photos) for label in ("标签0", "标签1")] == [48, 48]
    assert by_label["标签0"].count == 60 and by_label["标签0"].photos[0].score == 0.59
    assert len(shown.review) == figures.REVIEW and shown.review[0].score == 0.0
    assert sum(shown.histogram) == 170
    [failures] = shown.failures
    assert failures.count == 60 and len(failures.items) == figures.PER_REASON

    monkeypatch.setattr(figures, "PHOTOS", 50)  # fewer photos in all than labels have images
    shown = figures.gather(engine, run, result_filter(run_id=run_id))
    counts = [len(g.photos) for g in shown.galleries]
    assert counts[:2] == [1, 1] and sum(counts) == 50 and len(counts) == 62
    assert figures.per_label_cap([60, 50], 48, 50) == 25


def test_hostile_images_get_no_preview_in_bounded_time(tmp_path, monkeypatch):
    monkeypatch.setenv("TAGGER_ITEM_TIMEOUT", "1")
    monkeypatch.setenv("TAGGER_MAX_IMAGE_MEMORY", str(64 * 2**20))
    folder = tmp_path / "images"
    folder.mkdir()
    upright = Image.new("RGB", (300, 100), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated 90 degrees
    files = {"turned.jpg": save(upright, "JPEG", exif=exif.tobytes()),
             "bomb.png": png_bomb(20_000, 20_000),  # 400 megapixels in kilobytes
             "heavy.png": png_bomb(3_000, 3_000, bit_depth=8, color_type=6),  # ~110 MiB
             "slow.jpg": scan_bomb(2048, 80_000), "empty.jpg": b""}  # seconds to decode
    for name, data in files.items():
        (folder / name).write_bytes(data)
    uris = [(folder / name).as_uri() for name in files]
    # A budget only a hang reaches: each image is bounded by its own limits, "timeout" for
    # the slow one (the 1 s TAGGER_ITEM_TIMEOUT), none by the budget.
    made = previews(uris, load_settings(), [str(folder)], seconds=240)
    problems = {Path(uri).name: made[uri].problem.split(":")[0] for uri in uris}
    assert problems == {"turned.jpg": "", "bomb.png": "too-many-pixels",
                        "heavy.png": "too-much-memory", "slow.jpg": "timeout", "empty.jpg": "empty"}
    with Image.open(io.BytesIO(made[uris[0]].jpeg or b"")) as preview:
        assert preview.format == "JPEG" and preview.size[1] == SIZE > preview.size[0]


def test_previews_stop_at_the_report_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("TAGGER_ITEM_TIMEOUT", "60")
    folder = tmp_path / "images"
    folder.mkdir()
    slow = scan_bomb(8192, 6000)  # several seconds of decoding
    uris = []
    for i in range(4):
        (folder / f"slow-{i}.jpg").write_bytes(slow + f"\0copy {i}".encode())
        uris.append((folder / f"slow-{i}.jpg").as_uri())
    ended: list[subprocess.Popen] = []  # the decode processes as the budget ran out
    close = PrepPool.close

    def closing(pool: PrepPool) -> None:
        ended.extend(slot.process.proc for slot in pool.slots if slot.process is not None)
        close(pool)

    monkeypatch.setattr(PrepPool, "close", closing)
    made = previews(uris, load_settings(), [str(folder)], seconds=2)
    assert all("for previews ran out" in made[uri].problem for uri in uris)
    # Running decodes were stopped (killed), not waited for (they would exit 0 when done).
    assert ended and all(proc.returncode == -signal.SIGKILL for proc in ended), ended


def test_mistakes_are_one_line(settings, tmp_path):
    assert one_line_error("report") == ("Error: no run yet: `producer tag FOLDER` or "
                                        "`producer enqueue` starts one")
    run_id = seed_run(settings.database_url, ["s3://b/a.jpg"], HOSTILE)
    assert one_line_error("report", "--run", "nope") == (
        "Error: no run nope: `producer runs` lists them")
    (tmp_path / "file").write_text("")
    assert one_line_error("report", "--output", str(tmp_path / "file" / "page.html")).startswith(
        f"Error: cannot write the report to {tmp_path / 'file' / 'page.html'}: ")
    # By default the page goes beside the run's results file under TAGGER_HOME.
    assert producer("report").strip() == f"report: {settings.home / 'results' / run_id}.html"


def test_the_page_fills_the_width_opens_previews_and_lists_the_rest(tmp_path, settings,
                                                                      browser, monkeypatch):
    """Before: the grid stopped at ~850 of 1,280 px, a preview could not be opened larger,
    "N more" could not be expanded, the histogram spanned 0..1 (every bar in one bin with 147
    labels) and 5,000 labels' scores printed 0.000."""
    monkeypatch.setattr(figures, "PER_LABEL", 10)
    folder = tmp_path / "images"
    folder.mkdir()
    photos = [folder / f"{i}.jpg" for i in range(30)]
    for i, photo in enumerate(photos):  # large enough for a large preview
        photo.write_bytes(image_bytes(i, (640, 480), "JPEG"))
    many = LabelSet(labels=tuple(f"标签{i}" for i in range(5000)), parents=(None,) * 5000)
    chosen = {p.as_uri(): labels("标签0" if i < 24 else "标签1", 0.0002 + i * 0.00001)
              for i, p in enumerate(photos)}
    failed = {f"s3://b/f{i}.jpg": (Reason.NOT_FOUND, f"no such key f{i}") for i in range(60)}
    run_id = seed_run(settings.database_url, [*chosen, *failed], many, labels=chosen,
                      failures=failed, file_roots=[str(folder)])
    page = write_report(settings, tmp_path / "report.html", run_id)
    with browser.load(page, width=1280) as loaded:
        view = loaded.page
        widths = view.evaluate("""() => {
          const grid = document.querySelector("#labels .photos").getBoundingClientRect();
          const figures = [...document.querySelectorAll("#labels .photos figure")];
          return {page: document.documentElement.clientWidth, grid: grid.right,
                  right: Math.max(...figures.map(f => f.getBoundingClientRect().right)),
                  tile: figures[0].getBoundingClientRect().width};
        }""")
        # The last column ends within one gap of the grid's edge, at the page's padding.
        assert widths["right"] >= widths["grid"] - 11 and widths["grid"] >= widths["page"] - 40
        first = view.locator("#labels figure.photo img").first
        assert not view.locator("#viewer").is_visible()
        first.click()
        assert view.locator("#viewer").is_visible()
        big = view.evaluate("""() => {
          const img = document.querySelector("#viewer img");
          return {shown: img.getBoundingClientRect().width, natural: img.naturalWidth,
                  text: document.getElementById("viewer").textContent};
        }""")
        assert big["natural"] >= 256 and big["shown"] > 2 * widths["tile"], (big, widths)
        assert "23.jpg 0.000430" in big["text"] and "标签0" in big["text"], big
        view.keyboard.press("Escape")
        assert not view.locator("#viewer").is_visible()
        # "14 more" under 标签0 opens to the names (and scores) of the other 14.
        more = view.locator("section.label", has_text="标签0").locator("details.more")
        assert more.locator("summary").inner_text() == "14 more"
        assert not more.locator("ol.names").is_visible()
        more.locator("summary").click()
        names = more.locator("ol.names li").all_inner_texts()
        assert len(names) == 14 and names[0] == "13.jpg 0.000330", names
        failures = view.locator("section.reason details.more")
        assert failures.locator("summary").inner_text() == "10 more"
        failures.locator("summary").click()
        assert failures.locator("tbody tr").count() == 10
        scores = view.locator("#labels figure .score").all_inner_texts()
        assert scores[0] == "0.000430" and "0.000" not in scores, scores
        ticks = view.locator("svg.histogram text[text-anchor]").all_text_contents()
        assert ticks[0] == "0.00020" and ticks[-1] == "0.00050", ticks
        bars = view.evaluate("() => [...document.querySelectorAll('svg.histogram rect')]"
                             ".filter(r => r.getAttribute('height') > 0).length")
        assert bars >= 10, bars  # spread over the scores found, not all in the first bin
        assert not [line for line in loaded.console if line.startswith("error")], loaded.console
        loaded.page.screenshot(path=str(tmp_path / "page.png"), full_page=False)
