"""The Space in a real browser: Debian's headless Chromium, driven by Playwright, clicks Generate,
uploads a file that is not an image, and paints a mask on the Edit tab.

Every wait is on the page's own state (the status line, the images' load, the editor's empty state,
its Undo button), never a sleep or a retry.

Needs /usr/bin/chromium (``apt-get install chromium``; never ``playwright install``). The screenshot is
saved under the test's tmp_path and copied to test-artifacts/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import _tiny_unet
from PIL import Image

from hf_ddpm import HFDDPMPipeline, HFDDPMScheduler
from spaces_app import app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
DIGIT = Path(app.__file__).resolve().parent / "examples" / "mnist_test_digit_7.png"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
)


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    unet = _tiny_unet(in_channels=1, sample_size=16)
    folder = tmp_path_factory.mktemp("tiny_ddpm")
    HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler(num_train_timesteps=10)).save_pretrained(
        folder
    )
    state = app.load_model(str(folder))
    assert state.model is not None, state.message
    demo = app.build_demo(state)
    _, url, _ = demo.launch(
        prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, css=app.CSS
    )
    yield url, folder
    demo.close()


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    os.environ.setdefault("NO_PROXY", "localhost,127.0.0.1")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(url, wait_until="domcontentloaded", timeout=60_000)
    return page


def _keep_screenshot(page, tmp_path, name: str) -> None:
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / shot.name)


def test_generate_in_a_real_browser_shows_the_pipelines_samples(page_url, browser, tmp_path):
    """The default request's four samples, as the browser shows them (the PNGs its img elements load),
    are the pipeline's own samples for the seed, steps and variance the status line names."""
    from playwright.sync_api import expect

    url, folder = page_url
    page = _open(browser, url)
    page.get_by_role("button", name="Generate", exact=True).click(timeout=60_000)
    status = page.locator("#generate_status")
    expect(status).to_contain_text("Done: 4 image(s)", timeout=120_000)
    # All four have arrived and decoded.
    page.wait_for_function(
        "() => { const imgs = document.querySelectorAll('#samples img');"
        " return imgs.length >= 4 && [...imgs].every(i => i.complete && i.naturalWidth > 0); }",
        timeout=120_000,
    )
    _keep_screenshot(page, tmp_path, "space_generate.png")

    images = page.locator("#samples img")
    assert images.first.is_visible()
    sources = list(dict.fromkeys(images.evaluate_all("imgs => imgs.map(img => img.src)")))
    assert len(sources) == 4, sources
    shown = np.stack(
        [
            np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("L"))
            for src in sources
        ]
    ).astype(np.int16)
    assert shown.shape == (4, 16, 16)
    done = re.search(
        r"Done: 4 image\(s\), (\d+) steps, seed (\d+), fixed_small variance", status.inner_text()
    )
    assert done, status.inner_text()
    steps, seed = int(done.group(1)), int(done.group(2))
    pipe = HFDDPMPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        batch_size=4,
        generator=torch.Generator().manual_seed(seed),
        num_inference_steps=steps,
        output_type="np",
    ).images[..., 0]
    np.testing.assert_allclose(shown, np.rint(expected * 255), atol=1)
    # A random UNet's samples differ from one another: four copies of one image would not pass.
    assert len({image.tobytes() for image in shown}) == 4


def test_a_text_file_named_png_gets_a_message_in_the_browser(page_url, browser, tmp_path):
    """The Forward tab redraws x_t on upload; a file that is not an image must say so in words."""
    fake = tmp_path / "not_a_picture.png"
    fake.write_text("a text file with a picture's name")
    page = _open(browser, page_url[0])
    page.get_by_role("tab", name="Forward process").click(timeout=60_000)
    page.locator("input[type=file]").first.set_input_files(str(fake))
    toast = page.get_by_text("`not_a_picture.png` is not an image this Space can read")
    toast.first.wait_for(timeout=60_000)
    _keep_screenshot(page, tmp_path, "space_fake_png.png")
    assert "Upload a PNG, JPEG or WebP picture" in toast.first.inner_text()


def _upload_into_editor(page, picture) -> Any:
    """Upload ``picture`` into the Edit tab's ImageEditor and return its canvas once the editor says the
    picture is drawn. The editor's own DOM tells each moment:

    - it is ready for an upload once both of its drawing surfaces (the editor's and the crop tool's,
      each a PixiJS app under ``.pixi-target`` and ``.pixi-target-crop``) have put their canvas in
      the page: Gradio appends each canvas at the end of that surface's asynchronous set-up, right
      after its layers exist. The empty state ("Upload an image") shows earlier, and an upload that
      arrives before the layers exist is dropped with a page error ("reading 'reset_layers'");
      on a busy 2-core machine that happened in 2 of 10 pages;
    - it removes the empty state and shows the brush's size control once it has the upload;
    - its Undo button is enabled once the upload is drawn as its background, the first entry of its
      history."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from playwright.sync_api import expect

    editor = page.locator("#edit_input")
    editor.locator(".empty").get_by_text("Upload an image").wait_for(timeout=60_000)
    for surface in (".pixi-target", ".pixi-target-crop"):
        editor.locator(f"{surface} > canvas").wait_for(state="attached", timeout=60_000)
    page_errors: list[str] = []
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    editor.locator("input[type=file]").first.set_input_files(str(picture))
    try:
        editor.locator(".empty").wait_for(state="detached", timeout=60_000)
    except PlaywrightTimeoutError:
        pytest.fail(f"the editor did not take the upload; the page's errors: {page_errors}")
    editor.get_by_role("button", name="Brush Size").wait_for(timeout=60_000)
    expect(editor.get_by_role("button", name="Undo", exact=True)).to_be_enabled(timeout=60_000)
    canvas = editor.locator(".pixi-target > canvas")
    canvas.wait_for(timeout=60_000)
    return canvas


def _wait_until_a_stroke_is_registered(page) -> None:
    """Return once the editor's history holds a painted stroke above the uploaded picture.

    The editor commits a stroke to its history when the mouse button is released and changes nothing
    else in its DOM, so the history is read through its own buttons: one Undo takes back the last entry
    and enables Redo. With a stroke above the upload, Undo stays enabled (the upload is left); with
    none, that Undo took back the upload and is disabled. Redo then puts the entry back, and is
    disabled again once the history is whole."""
    from playwright.sync_api import expect

    editor = page.locator("#edit_input")
    undo = editor.get_by_role("button", name="Undo", exact=True)
    redo = editor.get_by_role("button", name="Redo", exact=True)
    expect(redo).to_be_disabled(timeout=60_000)
    undo.click(timeout=60_000)
    expect(redo).to_be_enabled(timeout=60_000)
    # Set in the same update as Redo: no wait needed, and none could make a missing stroke appear.
    assert undo.is_enabled(), (
        "no painted stroke registered: one Undo took back the uploaded picture"
    )
    redo.click(timeout=60_000)
    expect(redo).to_be_disabled(timeout=60_000)


def test_paint_a_mask_with_the_mouse_and_inpaint(page_url, browser, tmp_path):
    """Upload a digit into the Edit tab's ImageEditor, paint its lower half with the brush (the
    default tool), and once the editor holds the strokes run the inpainting and wait for the result."""
    from playwright.sync_api import expect

    page = _open(browser, page_url[0])
    page.get_by_role("tab", name="Edit").click(timeout=60_000)
    canvas = _upload_into_editor(page, DIGIT)
    box = canvas.bounding_box()
    centre_x, centre_y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    for dy in (20, 50, 80, 110):  # strokes across the picture's lower half
        page.mouse.move(centre_x - 120, centre_y + dy)
        page.mouse.down()
        page.mouse.move(centre_x + 120, centre_y + dy, steps=12)
        page.mouse.up()
    _wait_until_a_stroke_is_registered(page)
    page.locator("#edit").click(timeout=60_000)
    expect(page.locator("#edit_status")).to_contain_text("Done: inpainted", timeout=120_000)
    page.wait_for_function(
        "() => { const img = document.querySelector('#edit_result img');"
        " return img && img.complete && img.naturalWidth > 0; }",
        timeout=120_000,
    )
    _keep_screenshot(page, tmp_path, "space_edit.png")
    result = page.locator("#edit_result img").first
    assert result.evaluate("img => img.naturalWidth") == 16
