"""A real browser: headless Chromium (Debian's ``chromium``, installed by .ci/run) drives every tab of the
studio and checks what a user sees: results, errors that stay on the page with the form still usable,
Stop saying it stopped, seeds that survive the browser exactly, and two sessions at once each getting their
own images. No request may leave 127.0.0.1.

Screenshots of the first test go to pytest's tmp dir, or to $ARSTUDIO_SCREENSHOTS (docs/img/ was made that
way with ARSTUDIO_SCREENSHOT_PRESET=shapes-c2i).
"""

import os
import re
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (.ci/run installs Debian's)")
TIMEOUT_MS = 60_000
PRESET = os.environ.get("ARSTUDIO_SCREENSHOT_PRESET", "test-tiny-c2i")
PRESETS = [
    PRESET,
    "test-tiny-t2i",
    "test-tiny-continuous",
    "test-tiny-bridge",
    "llamagen-b-256",
    "test-tiny-video",
    "test-tiny-control",
]
BIG_SEED = 2**63 - 2  # a browser number field would round it (doubles are exact only below 2^53)


@pytest.fixture(scope="module")
def studio_url():
    from arstudio.ui import create_app

    app = create_app(preset=PRESET, presets=PRESETS)
    app.launch(
        server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True, ssr_mode=False
    )
    yield app.local_url
    app.close()


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


def _off_machine(url: str) -> bool:
    return urlparse(url).hostname not in ("127.0.0.1", "localhost", None) and not url.startswith(
        ("data:", "blob:")
    )


@pytest.fixture
def open_page(browser, studio_url):
    """A fresh browser session on the studio (its own context: cookies, Gradio session); asserts at the end
    that none of its requests left the machine."""
    outside, contexts = [], []

    def open_one():
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        contexts.append(context)
        page = context.new_page()
        page.on("request", lambda r: outside.append(r.url) if _off_machine(r.url) else None)
        page.goto(studio_url, timeout=TIMEOUT_MS)
        page.wait_for_selector("#generate", timeout=TIMEOUT_MS)
        return page

    yield open_one
    for context in contexts:
        context.close()
    assert not outside, f"the page made requests off this machine: {outside[:5]}"


def wait_text(page, selector: str, pattern: str, timeout: int = TIMEOUT_MS) -> str:
    """Wait until the element's text matches the regex ``pattern``; return the text."""
    try:
        page.wait_for_function(
            "([s, p]) => { const e = document.querySelector(s); return e && new RegExp(p).test(e.innerText) }",
            arg=[selector, pattern],
            timeout=timeout,
        )
    except playwright.Error:
        pytest.fail(f"{selector} never matched {pattern!r}; it shows {page.locator(selector).inner_text()!r}")
    return page.locator(selector).inner_text()


def pick(page, selector: str, option: str) -> None:
    page.locator(f"{selector} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def test_browser_generates_and_every_tab_renders(open_page, tmp_path):
    shots = Path(os.environ.get("ARSTUDIO_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page = open_page()
    page.click("#generate")
    wait_text(page, "#status", r"image\(s\) in")
    page.wait_for_selector("#gallery img", timeout=TIMEOUT_MS)
    assert page.locator("#gallery img").count() >= 4  # the default is 4 images
    page.wait_for_timeout(800)  # let charts and images finish laying out
    page.screenshot(path=str(shots / "studio-image.png"), full_page=True)

    page.get_by_role("tab", name="Decoding lab").click()
    page.click("#compare", timeout=TIMEOUT_MS)
    page.wait_for_selector("#decoding-gallery img", timeout=TIMEOUT_MS)
    page.wait_for_timeout(800)
    page.screenshot(path=str(shots / "studio-decoding-lab.png"), full_page=True)

    page.get_by_role("tab", name="Tokenizer lab").click()
    page.click("#tokenize", timeout=TIMEOUT_MS)
    page.wait_for_selector("#tokenizer-gallery img", timeout=TIMEOUT_MS)
    page.wait_for_timeout(800)
    page.screenshot(path=str(shots / "studio-tokenizer-lab.png"), full_page=True)
    assert (shots / "studio-image.png").stat().st_size > 10_000


def test_image_tab_a_preset_without_weights_says_why_and_keeps_the_form(open_page):
    page = open_page()
    page.click("#generate")
    wait_text(page, "#status", r"image\(s\) in")
    pick(page, "#preset", "llamagen-b-256 (needs weights)")  # marked in the list: no local copy
    notice = wait_text(page, "#preset-notice", "cannot be loaded")
    assert f"the form stays on {PRESET}" in notice and "ARSTUDIO_WEIGHTS_DIR" in notice  # why, and the fix
    assert page.locator("#preset input").input_value() == PRESET  # back on the preset it had, not stuck
    page.wait_for_timeout(300)
    assert page.get_by_text(re.compile(r"^Error$")).count() == 0  # no red badges on the controls
    # A bad value is refused with a message that replaces the old status (no stale "4 image(s) in ...").
    page.locator("#num-images input").fill("1000")
    page.click("#generate")
    status = wait_text(page, "#status", "Error")
    assert "images=1000 is not allowed: use an integer in [1, 16]" in status and "image(s) in" not in status
    assert page.locator("#seed-used input").input_value() == ""
    page.locator("#num-images input").fill("1")  # the form still works, and the notice is still there
    page.click("#generate")
    wait_text(page, "#status", r"1 image\(s\) in")
    assert page.locator("#preset-notice").is_visible()


def test_image_tab_seeds_round_trip_exactly_and_nonsense_prompts_warn(open_page, tmp_path):
    from arstudio.export import read_png_metadata
    from arstudio.ui.common import OUTPUT_ROOT

    page = open_page()
    page.locator("#randomize input").uncheck()
    page.locator("#seed input").fill(str(BIG_SEED - 1))
    page.locator("#num-images input").fill("2")
    page.click("#generate")
    wait_text(page, "#status", r"2 image\(s\) in")
    assert page.locator("#seed-used input").input_value() == str(BIG_SEED - 1)
    second = max(OUTPUT_ROOT.glob(f"*/arstudio_{PRESET}_{BIG_SEED}_1.png"), key=lambda p: p.stat().st_mtime)
    assert read_png_metadata(second)["seed"] == BIG_SEED
    # A fresh session loads the recipe from the PNG: the seed field gets the batch's first seed, exactly.
    page = open_page()
    page.locator("#recipe input[type=file]").set_input_files(str(second))
    wait_text(page, "#status", "loaded the recipe of seed " + str(BIG_SEED))
    assert page.locator("#seed input").input_value() == str(BIG_SEED - 1)
    assert not page.locator("#randomize input").is_checked()
    # A prompt with no word the model knows still generates, with a warning that it understood nothing.
    pick(page, "#preset", "test-tiny-t2i")
    page.locator("#prompt textarea, #prompt input").first.fill("asdkjh qwe zzz 123")
    page.click("#generate")
    status = wait_text(page, "#status", r"image\(s\) in")
    assert "understood no word of 'asdkjh qwe zzz 123'" in status


def test_image_tab_stop_says_it_stopped_and_clears_the_previews(open_page):
    page = open_page()
    pick(page, "#preset", "test-tiny-continuous")
    page.get_by_text("Advanced sampling and decoding").click()
    steps = page.locator("#num-steps input")  # continuous presets show their diffusion steps
    steps.wait_for(state="visible", timeout=TIMEOUT_MS)
    page.wait_for_function("document.querySelector('#num-steps input').value === '8'", timeout=TIMEOUT_MS)
    steps.fill("300")
    page.locator("#num-images input").fill("16")
    assert steps.input_value() == "300"
    page.click("#generate")
    wait_text(page, "#status", r"token \d+ / 16")  # a preview is on screen, half grey
    page.click("#stop")
    wait_text(page, "#status", "Stopped")
    page.wait_for_timeout(500)  # nothing of the cancelled request arrives after the message
    assert "Stopped" in page.locator("#status").inner_text() and page.locator("#gallery img").count() == 0
    steps.fill("2")
    page.locator("#num-images input").fill("1")
    page.click("#generate")
    wait_text(page, "#status", r"1 image\(s\) in")  # the model is free again


def test_tokenizer_lab_shows_each_kind_and_a_failing_preset_hides_nothing(open_page):
    page = open_page()
    page.get_by_role("tab", name="Tokenizer lab").click()
    for name in ("test-tiny-continuous", "test-tiny-bridge", "llamagen-b-256"):
        page.locator("#tokenizer-presets").get_by_label(name, exact=True).check()
    page.click("#tokenize")
    page.wait_for_function(
        "document.querySelectorAll('#tokenizer-gallery img').length >= 9", timeout=TIMEOUT_MS
    )
    table = page.locator("#tokenizer-table").inner_text()
    assert "codebook usage %" in table and "levels per dim" in table and "latent dims" in table
    assert "needs the official checkpoints" in table and page.get_by_text(re.compile(r"^Error$")).count() == 0


def test_video_tab_refuses_a_fake_clip_in_one_clean_line(open_page, tmp_path):
    fake = tmp_path / "holiday.gif"
    fake.write_bytes(b"GIF89a this is not really a gif")
    page = open_page()
    page.get_by_role("tab", name="Video").click()
    page.locator("#video-seed input").fill(str(BIG_SEED))
    page.locator("#video-randomize input").uncheck()
    page.get_by_text("Sampling and context").click()
    page.locator("#video-context input[type=file]").set_input_files(str(fake))
    page.click("#generate-video")
    status = wait_text(page, "#video-status", "Error")
    assert "context clip 'holiday.gif' could not be decoded as a video" in status
    assert "/tmp" not in status and "gradio" not in status.lower() and len(status.strip().splitlines()) <= 2
    page.locator("#video-context button[aria-label='Clear']").first.click()
    page.click("#generate-video")
    status = wait_text(page, "#video-status", r"video\(s\)")
    assert f"seed {BIG_SEED}" in status


def test_control_tab_guidance_follows_its_switch_and_stop_and_seed_exist(open_page):
    page = open_page()
    page.get_by_role("tab", name="Control").click()
    control_guidance = page.locator("#control-guidance input")
    assert control_guidance.is_disabled()  # used only with separate control guidance
    page.locator("#control-separate input").check()
    page.wait_for_function("!document.querySelector('#control-guidance input').disabled", timeout=TIMEOUT_MS)
    page.locator("#control-seed input").fill(str(BIG_SEED))
    page.click("#control-generate")
    status = wait_text(page, "#control-status", r"image\(s\) in|Error")
    assert page.locator("#control-stop").is_visible()
    if "Error" in status:  # an empty canvas: a readable message
        assert "upload or draw a control image first" in status
    else:
        assert page.locator("#control-seed-used input").input_value() == str(BIG_SEED)


def test_two_sessions_generating_at_once_each_get_their_own_images(open_page):
    requests = {"red circle": 1111, "blue square": 2222}
    pages = {}
    for class_name, seed in requests.items():
        page = open_page()
        pick(page, "#preset", "test-tiny-continuous")  # its diffusion steps make a request last a while
        page.get_by_text("Advanced sampling and decoding").click()
        page.wait_for_function(
            "document.querySelector('#num-steps input')?.value === '8'", timeout=TIMEOUT_MS
        )
        page.locator("#num-steps input").fill("150")
        pick(page, "#class-name", class_name)
        page.locator("#randomize input").uncheck()
        page.locator("#seed input").fill(str(seed))
        page.locator("#num-images input").fill("3")
        pages[class_name] = page
    first, second = pages.values()
    first.click("#generate")
    second.click("#generate")
    assert "image(s) in" not in first.locator("#status").inner_text()  # both requests are in at once
    for class_name, page in pages.items():
        wait_text(page, "#status", r"3 image\(s\) in")
        assert page.locator("#seed-used input").input_value() == str(requests[class_name])
        page.locator("#gallery button").first.click()  # a thumbnail opens with its caption
        caption = page.locator("#gallery").inner_text()
        assert f"{class_name} · seed {requests[class_name]}" in caption
        other = next(c for c in requests if c != class_name)
        assert other not in caption and str(requests[other]) not in caption
