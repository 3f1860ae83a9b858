"""A page in a real browser: the system's headless Chromium, driven by Playwright."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NAMES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
INSTALL = "apt-get install -y chromium fonts-wqy-microhei (.ci/run does)"


def find_chromium() -> str | None:
    """CHROMIUM, or the first Chromium on PATH."""
    return os.environ.get("CHROMIUM") or next(filter(None, map(shutil.which, NAMES)), None)


@dataclass
class Loaded:
    """A page after loading, and what it asked for and said on the way."""

    page: Any
    requests: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)


class Browser:
    """One headless Chromium (Playwright's own profile: new and empty) for a test session."""

    def __init__(self, executable: str) -> None:
        from playwright.sync_api import sync_playwright

        self._stack = contextlib.ExitStack()
        playwright = self._stack.enter_context(sync_playwright())
        self.browser = playwright.chromium.launch(executable_path=executable, args=FLAGS)
        self._stack.callback(self.browser.close)

    @contextlib.contextmanager
    def load(self, path: Path | str, width: int = 1280, height: int = 1600,
             credentials: dict[str, str] | None = None) -> Iterator[Loaded]:
        """``path`` (a file, or a URL) in a fresh context, loaded and its scripts run; every
        request recorded. ``credentials``: basic auth for the server (username, password)."""
        context = self.browser.new_context(viewport={"width": width, "height": height},
                                           http_credentials=credentials)
        try:
            page = context.new_page()
            loaded = Loaded(page)
            page.on("request", lambda request: loaded.requests.append(request.url))
            page.on("console", lambda message: loaded.console.append(
                f"{message.type}: {message.text}"))
            page.goto(path.as_uri() if isinstance(path, Path) else path, wait_until="load")
            yield loaded
        finally:
            context.close()

    def close(self) -> None:
        self._stack.close()


# What a report page shows, read from its DOM after scripts ran: photos by label (name, whether
# a decoded picture is there, or why not), failures by reason, and any markup inside text.
_REPORT_FACTS = """() => {
  const text = (root, selector) => root.querySelector(selector)?.textContent ?? null;
  const photos = root => [...root.querySelectorAll("figure.photo")].map(figure => {
    const img = figure.querySelector("img");
    return {name: text(figure, ".name"), picture: !!img && img.complete && img.naturalWidth > 0,
            problem: text(figure, ".none small")};
  });
  const texts = "h3 .name, h3 .parent, figcaption span, td.file, td.error, dd";
  return {
    labels: Object.fromEntries([...document.querySelectorAll("section.label")].map(
      section => [text(section, "h3 .name"), photos(section)])),
    failures: Object.fromEntries([...document.querySelectorAll("section.reason")].map(
      section => [section.dataset.reason, [...section.querySelectorAll("tbody tr")].map(
        row => [text(row, ".file"), text(row, ".error")])])),
    review: photos(document.getElementById("review")),
    markup: [...document.querySelectorAll(texts)].filter(e => e.children.length).length,
    handlers: document.querySelectorAll("[onerror], [onload], [onmouseover]").length,
    scripts: document.scripts.length,
  };
}"""


def report_facts(page: Any) -> dict[str, Any]:
    return dict(page.evaluate(_REPORT_FACTS))


def contrast(png: bytes) -> float:
    """The standard deviation of a screenshot's grey levels: 0 for a blank page."""
    from PIL import Image, ImageStat

    with Image.open(io.BytesIO(png)) as image:
        return float(ImageStat.Stat(image.convert("L")).stddev[0])
