"""The built book in a real browser: every page opens, shows its pictures, has no error output, and links only
to pages that exist.

Serves ``runs/book`` (``make book``) on 127.0.0.1 with the standard library's HTTP server, visits every HTML page
in headless Chromium (Playwright), and saves one full-page screenshot per page in ``runs/book-shots/``. Fails on:
an image that did not load, a cell error or traceback in a page, an internal link to a missing page or anchor,
and any script, stylesheet or image requested from outside the loopback (the book must be readable offline).
"""
from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

import pytest

from test_step_size_in_browser import CHROMIUM, CHROMIUM_ARGS, require_browser

ROOT = Path(__file__).resolve().parents[1]
BOOK = Path(os.environ.get("SLUGKIT_BOOK", ROOT / "runs" / "book"))
SHOTS = ROOT / "runs" / "book-shots"
SKIP_PAGES = {"genindex.html", "search.html"}  # Sphinx's generated index and search pages


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output for failures
        pass


@pytest.fixture
def book_server():
    if not (BOOK / "index.html").exists():
        pytest.fail(f"{BOOK}/index.html is missing: run `make book` first")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(BOOK)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _pages() -> list[str]:
    return sorted(str(p.relative_to(BOOK)) for p in BOOK.rglob("*.html")
                  if p.name not in SKIP_PAGES and "_static" not in p.parts and "_sources" not in p.parts)


def test_every_book_page_renders_with_pictures_and_working_links(book_server, tmp_path):
    require_browser()
    from playwright.sync_api import sync_playwright

    pages = _pages()
    assert len(pages) >= 5, f"the book has only {pages}"
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    problems: list[str] = []
    outside: list[str] = []
    anchors: dict[str, set[str]] = {}
    links: list[tuple[str, str]] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: outside.append(f"{page.url} -> {r.url}")
                    if urlparse(r.url).hostname not in ("127.0.0.1", None) and not r.url.startswith("data:") else None)
            for rel in pages:
                url = urljoin(book_server, rel)
                response = page.goto(url, wait_until="load", timeout=60_000)
                assert response is not None and response.ok, f"{rel}: HTTP {response.status if response else '?'}"
                broken = page.evaluate("() => [...document.images].filter(i => !i.complete || i.naturalWidth === 0)"
                                       ".map(i => i.getAttribute('src').slice(0, 80))")
                problems += [f"{rel}: image did not load: {src}" for src in broken]
                errors = page.evaluate(
                    "() => [...document.querySelectorAll('.output.error, .output.traceback, .output.stderr')]"
                    ".map(e => e.innerText).filter(t => /Traceback|Error\\b/.test(t)).map(t => t.slice(0, 300))")
                problems += [f"{rel}: error output: {e}" for e in errors]
                anchors[rel] = set(page.evaluate("() => [...document.querySelectorAll('[id]')].map(e => e.id)"))
                for href in page.evaluate("() => [...document.querySelectorAll('a[href]')]"
                                          ".map(a => a.getAttribute('href'))"):
                    target = urljoin(url, href)
                    if target.startswith(book_server):
                        links.append((rel, target[len(book_server):]))
                shot = SHOTS / (re.sub(r"[^A-Za-z0-9_.-]+", "_", rel[:-len(".html")]) + ".png")
                page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    for rel, target in links:
        path, frag = urldefrag(target)
        path = path or rel
        if path.endswith("/"):
            path += "index.html"
        if not (BOOK / path).is_file():
            problems.append(f"{rel}: broken link to {target}")
        elif frag and path in anchors and frag not in anchors[path]:
            problems.append(f"{rel}: link to a missing anchor {target}")
    assert not outside, "the book requested resources from outside the loopback:\n" + "\n".join(outside[:10])
    assert not problems, "\n".join(problems[:30])
    assert sorted(p.name for p in SHOTS.glob("*.png")) and len(list(SHOTS.glob("*.png"))) == len(pages)
