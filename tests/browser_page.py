"""Open a self-contained results page in headless Chromium and report what a reader would see.

Shared by the comparison's and the lab's ``results.html`` tests. ``open_page`` skips the
calling test without Debian's chromium or playwright."""
from dataclasses import dataclass
from pathlib import Path
from typing import List

import pytest

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium (apt-get install chromium)")


@dataclass
class PageView:
    messages: List[str]  # console messages and page errors
    failed: List[str]  # URLs of failed requests
    images: List[list]  # [alt, complete, naturalWidth]
    videos: List[list]  # [src, readyState, error code]
    links: List[str]  # hrefs
    screenshot: Path

    @property
    def errors(self) -> List[str]:
        return [m for m in self.messages if m.startswith(("error", "pageerror"))]


def open_page(page_path: Path, screenshot: Path) -> PageView:
    playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e '.[test]')")
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            messages, failed = [], []
            page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.goto(page_path.as_uri())
            page.wait_for_load_state("load")
            images = page.evaluate("[...document.images].map(i => [i.alt, i.complete, i.naturalWidth])")
            videos = page.evaluate(
                """() => Promise.all([...document.querySelectorAll('video')].map(v => new Promise(done => {
                    const report = () => done([v.getAttribute('src'), v.readyState, v.error && v.error.code]);
                    if (v.readyState >= 1 || v.error) return report();
                    v.addEventListener('loadedmetadata', report);
                    v.addEventListener('error', report);
                })))"""
            )
            links = page.evaluate("[...document.querySelectorAll('a')].map(a => a.getAttribute('href'))")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    print(f"screenshot: {screenshot}")
    return PageView(messages, failed, images, videos, links, screenshot)


def assert_relative_and_present(page_path: Path, view: PageView) -> None:
    """Every video plays its metadata and every link and video is relative and exists."""
    for src, ready, error in view.videos:
        assert not Path(src).is_absolute() and error is None and ready >= 1, (src, ready, error)
    for href in view.links:
        assert not Path(href).is_absolute() and (page_path.parent / href).exists(), href
