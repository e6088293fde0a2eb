"""A real browser: headless Chromium (Debian's ``chromium``, installed by .ci/run) loads the studio, clicks
Generate, waits for the gallery, runs each lab, sees a bad request answered with a readable message, and
saves screenshots; no request may leave 127.0.0.1.

Screenshots go to pytest's tmp dir, or to $ARSTUDIO_SCREENSHOTS (docs/img/ was made that way with
ARSTUDIO_SCREENSHOT_PRESET=shapes-c2i).
"""

import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (.ci/run installs Debian's)")
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def studio_url():
    from arstudio.ui import create_app

    preset = os.environ.get("ARSTUDIO_SCREENSHOT_PRESET", "test-tiny-c2i")
    app = create_app(preset=preset, presets=[preset, "test-tiny-t2i"])
    app.launch(
        server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True, ssr_mode=False
    )
    yield app.local_url
    app.close()


def test_browser_generates_and_every_tab_renders(studio_url, tmp_path):
    shots = Path(os.environ.get("ARSTUDIO_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    outside = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("request", lambda r: outside.append(r.url) if urlparse(r.url).hostname not in (
            "127.0.0.1", "localhost", None) and not r.url.startswith(("data:", "blob:")) else None)  # fmt: skip
        page.goto(studio_url, timeout=TIMEOUT_MS)
        page.click("#generate", timeout=TIMEOUT_MS)
        page.wait_for_function(
            "document.querySelector('#status') && /image\\(s\\) in/.test(document.querySelector('#status').innerText)",
            timeout=TIMEOUT_MS,
        )
        page.wait_for_selector("#gallery img", timeout=TIMEOUT_MS)
        assert page.locator("#gallery img").count() >= 4  # the default is 4 images
        page.wait_for_timeout(800)  # let charts and images finish laying out
        page.screenshot(path=str(shots / "studio-image.png"), full_page=True)

        page.get_by_role("tab", name="Decoding lab").click()
        page.click("#compare", timeout=TIMEOUT_MS)
        page.wait_for_selector("#decoding-gallery img", timeout=TIMEOUT_MS)
        page.wait_for_timeout(800)  # let charts and images finish laying out
        page.screenshot(path=str(shots / "studio-decoding-lab.png"), full_page=True)

        page.get_by_role("tab", name="Tokenizer lab").click()
        # A bad request shows a readable message, not a traceback, and the app keeps serving.
        chosen = page.locator("#tokenizer-presets input[type=checkbox]").first
        chosen.uncheck()
        page.click("#tokenize", timeout=TIMEOUT_MS)
        page.get_by_text("tick at least one preset").first.wait_for(timeout=TIMEOUT_MS)
        assert "Traceback" not in page.content()
        page.locator(".toast-close").first.click()  # dismiss it, for a clean screenshot
        chosen.check()
        page.click("#tokenize", timeout=TIMEOUT_MS)
        page.wait_for_selector("#tokenizer-gallery img", timeout=TIMEOUT_MS)
        page.wait_for_timeout(800)  # let charts and images finish laying out
        page.screenshot(path=str(shots / "studio-tokenizer-lab.png"), full_page=True)
        browser.close()
    assert not outside, f"the page made requests off this machine: {outside[:5]}"
    assert (shots / "studio-image.png").stat().st_size > 10_000
