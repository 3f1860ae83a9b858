"""The workbench on PostgreSQL through Starlette's TestClient: pages that show text as text,
verdicts that need the reviewer's CSRF token and show at once, pictures only of known images
inside their roots, reviewers named by their token, paged galleries."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from producer.workbench.access import Access
from producer.workbench.app import create_app
from testkit.images import write_images
from testkit.runs import seed_run
from worker.core.contract import uri_hash
from worker.core.labels import LabelSet
from worker.core.settings import load_settings
from worker.db import corrections

SCRIPT = "<script>alert(1)</script>"
NAMED = "<img src=x onerror=alert(1)> {}.jpg"
HOSTILE = LabelSet(labels=(SCRIPT, "台灯", "家具"), parents=(None, "<i>家居</i>", None))
TOKEN = "ann=s3cret-token-0123456789"


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def scores(first: str, score: float) -> list[dict[str, object]]:
    rest = [label for label in HOSTILE.labels if label != first]
    return [{"label": first, "score": score, "parent": None},
            *({"label": label, "score": round((1 - score) / 2, 4), "parent": None}
              for label in rest)]


@pytest.fixture
def seeded(tmp_path: Path, pg_url: str) -> dict[str, object]:
    folder = tmp_path / "images"
    photos = write_images(folder, 3, name=NAMED)
    outside = write_images(tmp_path / "elsewhere", 1, name="outside {}.jpg")[0]
    uris = [p.as_uri() for p in [*photos, outside]]
    rng = np.random.default_rng(0)
    vectors = {uri: unit(rng.standard_normal(8)) for uri in uris}
    run = seed_run(pg_url, uris, HOSTILE, file_roots=[str(folder)], vectors=vectors,
                   labels={u: scores(label, 0.5 + i / 10) for i, (u, label) in enumerate(
                       zip(uris, [SCRIPT, "台灯", "台灯", "家具"], strict=True))})
    return {"url": pg_url, "run": run, "uris": uris, "outside": outside.as_uri()}


def client(url: str, home: Path, token: str = "", model: str | None = None
           ) -> Iterator[TestClient]:
    settings = load_settings({"DATABASE_URL": url, "TAGGER_HOME": str(home),
                              "TAGGER_DECODE_PROCESSES": "1",
                              **({"TAGGER_MODEL": model} if model else {})})
    access = Access.parse(token) if token else Access(local_reviewer="local-me")
    with TestClient(create_app(settings, access), base_url="http://127.0.0.1") as c:
        yield c


@pytest.fixture
def web(seeded: dict[str, object], tmp_path: Path) -> Iterator[TestClient]:
    yield from client(str(seeded["url"]), tmp_path / "home")


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert found, html
    return found.group(1)


def test_pages_show_labels_and_file_names_as_text(web, seeded):
    run, key = seeded["run"], uri_hash(seeded["uris"][0])
    for path in ["/", f"/runs/{run}", f"/runs/{run}/gallery?label={SCRIPT}",
                 f"/images/{key}", f"/labelsets/{HOSTILE.id}"]:
        page = web.get(path)
        assert page.status_code == 200, (path, page.text)
        assert "<script>alert" not in page.text and "<img src=x" not in page.text, path
        assert "<i>家居" not in page.text, path
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
    gallery = web.get(f"/runs/{run}/gallery", params={"label": SCRIPT}).text
    assert "&lt;img src=x onerror=alert(1)&gt; 0.jpg" in gallery  # its file name, as text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in gallery  # its label
    assert web.get("/runs/nope!").status_code == 404
    assert web.get("/runs/0000000000000000").status_code == 404


def test_a_verdict_needs_the_reviewers_csrf_token_and_shows_at_once(web, seeded):
    key = uri_hash(seeded["uris"][1])
    form = {"labelset": HOSTILE.id, "label": "家具", "verdict": "right", "reviewer": "mallory"}
    page = web.get(f"/images/{key}").text
    assert web.post(f"/images/{key}/verdicts", data=form).status_code == 403
    assert web.post(f"/images/{key}/verdicts", data={**form, "csrf": "0" * 64}
                    ).status_code == 403
    assert list(corrections.iter_all(_engine(seeded))) == []  # nothing stored
    done = web.post(f"/images/{key}/verdicts", data={**form, "csrf": csrf_of(page)},
                    follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"].startswith(f"/images/{key}")
    [stored] = corrections.iter_all(_engine(seeded))
    assert (stored["label"], stored["verdict"], stored["reviewer"]) == ("家具", "right",
                                                                        "local-me")
    shown = web.get(f"/images/{key}").text
    assert re.search(r'label: <span class="label">家具</span>\s*<span class="badge human"',
                     shown), shown
    gallery = web.get(f"/runs/{seeded['run']}/gallery", params={"label": "台灯"}).text
    assert 'class="badge human"' in gallery


def _engine(seeded):
    from worker.db.schema import engine_for

    return engine_for(str(seeded["url"]))


def test_pictures_only_of_known_images_inside_their_roots(web, seeded):
    inside = web.get(f"/images/{uri_hash(seeded['uris'][0])}/picture", params={"size": "large"})
    assert inside.status_code == 200 and inside.headers["content-type"] == "image/jpeg"
    assert inside.content[:2] == b"\xff\xd8"
    outside = web.get(f"/images/{uri_hash(seeded['outside'])}/picture")
    assert outside.status_code == 403 and "outside-roots" in outside.text
    assert web.get(f"/images/{uri_hash('file:///etc/passwd')}/picture").status_code == 404
    assert web.get("/images/..%2F..%2Fetc%2Fpasswd/picture").status_code == 404
    assert web.get("/images/x/picture", params={"uri": "file:///etc/passwd"}).status_code == 404
    assert web.get(f"/images/{uri_hash(seeded['uris'][0])}/picture",
                   params={"size": "huge"}).status_code == 400


def test_a_token_names_the_reviewer_and_the_host_is_checked(seeded, tmp_path):
    key = uri_hash(seeded["uris"][1])
    for web in client(str(seeded["url"]), tmp_path / "home", TOKEN):
        assert web.get("/").status_code == 401
        auth = {"authorization": "Basic " + base64.b64encode(
            b"mallory:s3cret-token-0123456789").decode()}
        page = web.get(f"/images/{key}", headers=auth)
        assert page.status_code == 200 and "reviewer: <b>ann</b>" in page.text
        web.post(f"/images/{key}/verdicts", headers=auth, data={
            "labelset": HOSTILE.id, "label": "台灯", "verdict": "wrong", "reviewer": "mallory",
            "csrf": csrf_of(page.text)})
    [stored] = corrections.iter_all(_engine(seeded))
    assert stored["reviewer"] == "ann" and stored["verdict"] == "wrong"
    for web in client(str(seeded["url"]), tmp_path / "home"):  # served to this machine only
        assert web.get("/", headers={"host": "attacker.example"}).status_code == 400


def test_galleries_are_paged_by_score_and_id(pg_url, tmp_path):
    labelset = LabelSet(labels=("台灯", "家具"), parents=(None, None))
    uris = [f"s3://shop/{i:03d}.jpg" for i in range(110)]
    run = seed_run(pg_url, uris, labelset, labels={
        u: [{"label": "台灯", "score": round(0.5 + (i % 7) / 20, 4), "parent": None}]
        for i, u in enumerate(uris)})
    seen: list[float] = []
    names: list[str] = []
    for web in client(pg_url, tmp_path / "home"):
        link = f"/runs/{run}/gallery?label=台灯"
        while link:
            page = web.get(link).text
            names += re.findall(r'<span class="name" title="[^"]*">([^<]+)</span>', page)
            seen += [float(s) for s in re.findall(r'<span class="score">([0-9.]+)</span>', page)]
            found = re.search(r'<a class="next" href="([^"]+)"', page)
            link = found.group(1).replace("&amp;", "&") if found else ""
    assert sorted(names) == sorted(f"{i:03d}.jpg" for i in range(110))  # each once
    assert seen == sorted(seen)  # least confident first, across pages


def test_thresholds_set_by_hand_or_proposed_mark_labels_unsure(web, seeded):
    run, page = seeded["run"], f"/labelsets/{HOSTILE.id}"
    csrf = csrf_of(web.get(page).text)
    gallery = f"/runs/{run}/gallery?label=台灯"
    assert 'badge unsure' not in web.get(gallery).text
    assert web.post(f"{page}/thresholds", data={"label": "台灯", "threshold": "2",
                                                 "csrf": csrf}).status_code == 400
    web.post(f"{page}/thresholds", data={"label": "台灯", "threshold": "0.65", "csrf": csrf})
    shown = web.get(gallery).text  # 台灯 at 0.6 (unsure) and 0.7 (sure)
    assert shown.count('class="badge unsure"') == 1
    assert "0.650" in web.get(page).text and "by hand, local-me" in web.get(page).text
    key = uri_hash(seeded["uris"][2])  # 台灯 at 0.7, which a reviewer says is wrong
    web.post(f"/images/{key}/verdicts", data={"labelset": HOSTILE.id, "label": "台灯",
                                               "verdict": "wrong", "csrf": csrf})
    web.post(f"/images/{uri_hash(seeded['uris'][1])}/verdicts", data={
        "labelset": HOSTILE.id, "label": "台灯", "verdict": "right", "csrf": csrf})
    # Reviewed 台灯 images, best first: 0.7 wrong, 0.6 right. Precision 1 is out of reach (the
    # hand-set threshold stays); 0.5 is kept from 0.6 on.
    web.post(f"{page}/thresholds", data={"action": "propose", "precision": "1", "csrf": csrf})
    assert "0.650" in web.get(page).text
    web.post(f"{page}/thresholds", data={"action": "propose", "precision": "0.5", "csrf": csrf})
    proposed = web.get(page).text
    assert "0.600" in proposed and "proposed for precision 0.5" in proposed


def test_an_images_page_shows_its_near_duplicates_and_similar_images(seeded, tmp_path):
    uris = seeded["uris"]
    rng = np.random.default_rng(1)
    base = unit(rng.standard_normal(8))
    near = unit(base + 0.05 * rng.standard_normal(8))  # cosine ~0.99
    far = unit(rng.standard_normal(8))
    folder = Path(seeded["uris"][0][len("file://"):]).parent
    copies = [p.as_uri() for p in write_images(folder, 3, name="copy {}.jpg", seed=50)]
    seed_run(str(seeded["url"]), copies, HOSTILE, file_roots=[str(folder)], vectors=dict(
        zip(copies, [base, near, far], strict=True)))
    for web in client(str(seeded["url"]), tmp_path / "home", model="test-model"):
        page = web.get(f"/images/{uri_hash(copies[0])}").text
        duplicates = page.partition('class="grid duplicates"')[2].partition('class="grid similar"')
        assert f'data-key="{uri_hash(copies[1])}"' in duplicates[0]  # its near copy
        assert f'data-key="{uri_hash(copies[2])}"' not in duplicates[0]
        assert f'data-key="{uri_hash(copies[0])}"' not in page.partition("nearby")[2]
        assert all(f'data-key="{uri_hash(u)}"' in duplicates[2] for u in [*uris, copies[2]])
        shown = [float(s) for s in re.findall(r'title="cosine">([0-9.-]+)<', page)]
        assert shown[0] > 0.95 and shown[1:] == sorted(shown[1:], reverse=True), shown
        more = web.get(f"/images/{uri_hash(copies[0])}/similar").text
        assert more.count('class="photo hit"') == len(uris) + len(copies)  # itself first
        assert more.index(uri_hash(copies[0])) < more.index(uri_hash(copies[1]))
        assert "&lt;img src=x onerror=alert(1)&gt; 0.jpg" in more  # file names as text
        assert web.get(f"/images/{uri_hash(copies[0])}/similar?page=11").status_code == 400


def test_a_search_narrowed_to_an_unknown_run_or_label_is_told(seeded, tmp_path):
    for web in client(str(seeded["url"]), tmp_path / "home", model="test-model"):
        for within, said in (({"run": "nosuchrun"}, "no run nosuchrun"),
                             ({"label": "<b>无</b>"}, "no image has the top label")):
            page = web.get("/search", params={"q": "台灯", **within})
            assert page.status_code == 400 and said in page.text, page.text[:500]
            assert "<b>无</b>" not in page.text


def test_empty_and_overlong_searches_are_told_not_failed(web):
    for query, said in (("", "the query is empty"), ("   ", "the query is empty"),
                        ("red dress " * 1000, "the query has 9999 characters"),
                        ("连衣裙" * 700, "the query has 2100 characters"),
                        (SCRIPT * 400, "characters")):
        page = web.get("/search", params={"q": query})
        assert page.status_code == 400 and said in page.text, page.text[:500]
        assert "<script>alert" not in page.text
        assert 'form class="search"' in page.text  # the box, to search again
    assert web.get("/search", params={"q": "台灯", "page": "0"}).status_code == 400
