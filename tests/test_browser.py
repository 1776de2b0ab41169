"""The demo in a real browser: upload a photo, restore it, see the before/after slider and the gallery.

Drives Debian's Chromium (/usr/bin/chromium) through Playwright; never downloads a browser.
Saves screenshots to test-artifacts/ (git-ignored) for a person to look at.
"""

import os
import shutil
import socket
import time
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")

import app  # noqa: E402
from bfr.api import method_status  # noqa: E402
from bfr.paths import data_dir  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PHOTO = data_dir() / "real-lq" / "whole_imgs" / "00.jpg"  # two children: several faces, the face-crop gallery
READY, WHY_NOT = method_status("difface", "compact")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
    pytest.mark.skipif(not READY, reason=f"compact DifFace weights are not here: {WHY_NOT}"),
    pytest.mark.skipif(not PHOTO.is_file(), reason=f"test photo not found: {PHOTO} (set BFR_DATA)"),
]


@pytest.fixture(scope="module")
def url():
    demo = app.build_demo()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                **app.LAUNCH)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def page(url):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url, wait_until="networkidle")
        try:
            yield page
        finally:
            browser.close()


def set_number(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(value)
    box.press("Enter")


def test_a_bad_upload_after_an_example_click_is_still_a_sentence(page, tmp_path):
    """An example click rebuilds the session's copy of the photo input (a property update): an unreadable
    upload after it must still say what is wrong, not leave red error badges without a word."""
    if [str(app.EXAMPLES_DIR / "face_1_lq.png")] not in app._examples()["restore"]:
        pytest.skip("the demo lists no face_1_lq example (examples/make_examples.py makes them)")
    example = page.locator('img[src*="face_1_lq"]').first
    example.wait_for(state="visible", timeout=30_000)  # the examples render after the page's first paint
    example.click()
    page.locator("#photo img").first.wait_for(state="visible", timeout=30_000)
    page.locator('#photo button[aria-label="Remove Image"]').click()
    text = tmp_path / "notes.png"
    text.write_text("not a photo")
    page.locator("#photo input[type=file]").set_input_files(str(text))
    toast = page.locator(".toast-body").filter(has_text="notes.png is not an image")
    toast.first.wait_for(state="visible", timeout=30_000)
    sync_api.expect(page.locator("#photo img")).to_have_count(0)  # taken out: the box invites another upload
    for close in page.locator(".toast-close").all():
        close.click()


def test_the_page_says_why_a_tier_or_a_file_cannot_be_used(page, tmp_path):
    """Said in the page, not only in the server's log (Gradio shows warnings of queued events only)."""
    def toast(text: str):
        page.locator(".toast-body").filter(has_text=text).first.wait_for(state="visible", timeout=30_000)

    text = tmp_path / "notes.png"
    text.write_text("not a photo")
    page.locator("#photo input[type=file]").set_input_files(str(text))
    toast("notes.png is not an image")  # at the upload, before any Restore
    sync_api.expect(page.locator("#photo img")).to_have_count(0)  # and taken out of the box
    if any(method_status(name, "paper")[0] for name in app.METHODS):
        return  # paper weights are here: nothing to explain
    page.locator("#tier").get_by_label("paper", exact=True).check()
    sync_api.expect(page.locator("#methods")).to_contain_text("DifFace cannot run on the paper tier here")  # why
    page.locator("#restore-button").click()
    toast("No method can run on the paper tier here")
    page.locator("#tier").get_by_label("compact", exact=True).check()
    sync_api.expect(page.locator("#methods").get_by_label("DifFace", exact=True)).to_be_checked()
    sync_api.expect(page.locator("#methods")).not_to_contain_text("cannot run")


def test_upload_restore_and_see_the_results(page, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    photo = tmp_path / "two_children.jpg"
    shutil.copy(PHOTO, photo)
    page.locator("#photo input[type=file]").set_input_files(str(photo))
    page.locator("#photo img").first.wait_for(state="visible", timeout=30_000)
    # one before/after slider per ticked method: IDM's appears when it is ticked and goes when it is not
    idm_slider = page.locator("#slider-idm")
    if method_status("idm", "compact")[0]:
        sync_api.expect(idm_slider).to_be_hidden()
        idm_box = page.locator("#methods").get_by_label("IDM", exact=True)
        idm_box.check()
        sync_api.expect(idm_slider).to_be_visible()
        idm_box.uncheck()
        sync_api.expect(idm_slider).to_be_hidden()
    steps_box = page.locator("#knob-steps input[type=number]")
    sync_api.expect(steps_box).to_be_hidden()  # "Sampling" starts closed: Restore and the examples stay in view
    page.get_by_text("Sampling", exact=True).click()
    assert steps_box.is_disabled()  # each method's own defaults, until the box is unticked
    page.locator("#knob-own-defaults input[type=checkbox]").uncheck()
    sync_api.expect(steps_box).to_be_enabled()
    set_number(page, "knob-steps", "20")
    set_number(page, "knob-start_step", "8")
    adapted = method_status("unsupervised", "compact")[0]  # one forward pass: cheap to run beside DifFace
    if adapted:
        page.locator("#methods").get_by_label("Unsupervised BFR (Kuai et al.)", exact=True).check()

    t0 = time.perf_counter()
    page.locator("#restore-button").click()
    slider = page.locator("#slider-difface")
    slider.locator("img").first.wait_for(state="visible", timeout=120_000)
    page.locator("#gallery img").first.wait_for(state="visible", timeout=30_000)
    page.locator("#faces img").first.wait_for(state="visible", timeout=30_000)
    seconds = time.perf_counter() - t0

    # before/after slider: two PNG images (lossless, not WebP)
    sources = [img.get_attribute("src") for img in slider.locator("img").all()]
    assert len(sources) >= 2 and all(src.split("?")[0].endswith(".png") for src in sources), sources
    # the gallery: the input and one result, captioned with method, tier and time
    page.locator("#gallery").get_by_text("Input", exact=True).wait_for()
    assert page.locator("#gallery").get_by_text("DifFace · compact ·").count() >= 1
    assert page.locator("#faces").get_by_text("Face 2: input · DifFace").count() >= 1  # one row per face
    assert page.locator("#faces img").count() == 2
    assert "faces found" in page.locator("#message").inner_text()
    page.locator("#files").get_by_text("two_children_difface_compact").wait_for()  # name and suffix in two spans
    unsupervised = page.locator("#slider-unsupervised")
    if adapted:  # its own slider and gallery entry; the knobs it has none of are not an error
        sync_api.expect(unsupervised).to_be_visible()
        assert len(unsupervised.locator("img").all()) >= 2
        assert page.locator("#gallery").get_by_text("Unsupervised BFR (Kuai et al.) · compact ·").count() >= 1
    else:
        assert unsupervised.count() == 0 or not unsupervised.is_visible()
    page.screenshot(path=str(ARTIFACTS / "app_restore.png"), full_page=True)
    assert seconds < 120


def test_degradation_preview_and_restore_this(page):
    page.get_by_role("tab", name="Degradation preview").click()
    face = data_dir() / "lfw150" / "Abbas_Kiarostami_0001.jpg"
    if not face.is_file():
        pytest.skip(f"LFW face not found: {face}")
    sync_api.expect(page.locator("#send-to-restore")).to_be_disabled()  # nothing degraded yet: nothing to send
    page.locator("#clean input[type=file]").set_input_files(str(face))
    page.locator("#clean img").first.wait_for(state="visible", timeout=30_000)
    page.locator("#degrade-button").click()
    page.locator("#degraded img").first.wait_for(state="visible", timeout=60_000)
    page.locator("#presets").get_by_text("Clean input", exact=True).wait_for(timeout=60_000)
    assert page.locator("#presets-table").get_by_text("camera, ↓").count() >= 1
    # every preset in view at once, and the gallery no taller than its two rows (no blank block under them)
    thumbs = page.locator("#presets img")
    assert thumbs.count() == 7 and all(thumbs.nth(i).is_visible() for i in range(7))
    box, tile = page.locator("#presets").bounding_box(), thumbs.first.bounding_box()
    assert box["height"] < 2 * tile["height"] + 120, (box, tile)
    assert page.get_by_text("FLIPNET degradation mode").count() == 1
    if method_status("flipnet", "compact")[0]:
        page.locator("#flipnet-button").click()
        page.locator("#flipnet-variants img").first.wait_for(state="visible", timeout=120_000)
        page.locator("#flipnet-note").get_by_text("variants from FLIPNET").wait_for(timeout=30_000)
        assert page.locator("#flipnet-variants img").count() >= 4
    else:  # no bundled weights: the section says why and its button is disabled
        assert page.locator("#flipnet-button").is_disabled()
        assert page.get_by_text("Unavailable here").count() == 1
    page.screenshot(path=str(ARTIFACTS / "app_degrade.png"), full_page=True)
    if method_status("flipnet", "compact")[0]:  # one row of variants, no blank block under it
        box = page.locator("#flipnet-variants").bounding_box()
        tile = page.locator("#flipnet-variants img").first.bounding_box()
        assert box["height"] < tile["height"] + 120, (box, tile)

    page.evaluate("window.scrollTo(0, 400)")  # where the variants are
    page.locator("#send-to-restore").click()
    page.locator("#restore-button").wait_for(state="visible", timeout=30_000)
    page.locator("#photo img").first.wait_for(state="visible", timeout=30_000)
    page.wait_for_function("window.scrollY === 0", timeout=10_000)  # back at the top, where the photo now is
