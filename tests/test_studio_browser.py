"""The studio driven in a real browser: Debian's chromium under playwright, against a real
``condiff studio`` process on a free localhost port.

It draws strokes on the sketch canvas with the mouse and runs sketch → image, paints a mask and
runs inpainting, and checks that the images the page shows are, pixel for pixel, what the same
pipeline call through Python gives with the same seed and the same input files (the studio offers
the drawn sketch and the painted mask as downloads). Also: Cancel stops a running job, an upload
over the server's ``--max-body-bytes`` shows an error in the page, and the page never requests
anything outside localhost (the network log of the whole session).
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
BODY_LIMIT = 2_000_000  # --max-body-bytes of the server under test
STEPS = 4

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"Debian's chromium is not installed ({CHROMIUM} is "
                       "missing; `apt-get install -y chromium`, as .ci/run does)"),
]
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """``condiff studio`` on a free port; yields its base URL. Outputs and the library go to a temp folder.
    (``CONDIFF_TEST_STUDIO_URL`` points the test at a studio already running instead.)"""
    from condiff.server.local import local_server

    if os.environ.get("CONDIFF_TEST_STUDIO_URL"):
        yield os.environ["CONDIFF_TEST_STUDIO_URL"].rstrip("/")
        return

    tmp = tmp_path_factory.mktemp("studio")
    # the page's pictures are compared with the pipeline's pixels: no watermark on them (its own tests are elsewhere)
    env = dict(TMPDIR=str(tmp), CONDIFF_CACHE=str(tmp / "cache"), CONDIFF_WATERMARK="0")
    with local_server(["--device", "cpu", "--max-body-bytes", str(BODY_LIMIT)], command="studio",
                      ready_path="/studio/config", env=env, log_path=tmp / "server.log", start_timeout=240) as (base, _):
        yield base


@pytest.fixture(scope="module")
def browser(studio, tmp_path_factory):
    """(page, network log): chromium with a fresh profile, offline-minded flags, every request recorded."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    requests: list[str] = []
    with playwright_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, viewport={"width": 1400, "height": 1100},
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = context.new_page()
        page.on("request", lambda r: requests.append(r.url))
        page.goto(studio + "/studio/")
        page.wait_for_selector("#cd-tab-sketch-button", timeout=60_000)
        yield page, requests
        context.close()


@pytest.fixture(scope="module")
def model():
    """The built-in model as the server loads it (fp32 on the CPU), one thread like the server."""
    import torch

    from condiff.models.registry import load_model

    torch.set_num_threads(1)
    return load_model("builtin", device="cpu", dtype=torch.float32).eval()


# ------------------------------------------------------------------------------------------ helpers


def _open_tab(page, name: str, canvas: str | None = None) -> None:
    page.click(f"#cd-tab-{name}-button")
    if canvas:
        page.wait_for_selector(f"#{canvas} canvas", timeout=30_000)
        time.sleep(1.0)  # the editor finishes its set-up after the canvas exists


def _set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")


def _select_brush(page, canvas: str, timeout: float = 60) -> None:
    """Click the editor's Brush tool until it is the active one (the editor sets itself up slowly)."""
    brush = page.locator(f"#{canvas} button[aria-label='Brush']").first
    end = time.time() + timeout
    while "highlight" not in (brush.get_attribute("class") or ""):
        assert time.time() < end, "the Brush tool never became active"
        brush.click()
        time.sleep(0.5)


def _upload_to_editor(page, canvas: str, path: Path, timeout: float = 60) -> None:
    """Upload ``path`` into an image editor; return once it shows it."""
    page.locator(f"#{canvas} input[type=file]").first.set_input_files(str(path))
    end = time.time() + timeout
    while "Upload an image" in page.inner_text(f"#{canvas}"):
        assert time.time() < end, "the editor did not show the uploaded picture"
        time.sleep(0.2)
    time.sleep(5.0)  # it zooms to fit the picture a few seconds later


def _painted(page, canvas: str, color: tuple[int, int, int]) -> int:
    """How many screen pixels of the editor show the brush colour (what the user sees)."""
    shot = _pixels(page.locator(f"#{canvas} canvas").first.screenshot()).astype(int)
    return int((np.abs(shot - np.array(color)).sum(-1) < 40).sum())


def _draw(page, canvas: str, strokes: list[list[tuple[float, float]]], color: tuple[int, int, int],
          reset=None) -> None:
    """Select the brush and draw ``strokes``; drawn again (after ``reset()``, default: Clear canvas) if
    the editor was not ready and shows none."""
    for _ in range(3):
        _select_brush(page, canvas)
        for points in strokes:
            _stroke(page, canvas, points)
        if _painted(page, canvas, color) > 100:
            return
        if reset is None:
            page.locator(f"#{canvas} button[aria-label='Clear canvas']").first.click()
            time.sleep(2)
        else:
            reset()
    raise AssertionError("the strokes never appeared on the canvas")


def _stroke(page, canvas: str, points: list[tuple[float, float]]) -> None:
    """Drag the mouse through ``points`` (fractions of the drawing area)."""
    box = page.locator(f"#{canvas} canvas").first.bounding_box()
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=2)
    page.mouse.up()
    time.sleep(1.0)  # the editor hands its new value to the page a moment after the stroke


def _wait_status(page, kind: str, state: str, timeout: float = 240) -> str:
    """Wait until the tab's progress line is in ``state`` (running, done, cancelled, error); its text."""
    locator = page.locator(f"#cd-{kind}-status .cd-status")
    end = time.time() + timeout
    text = ""
    while time.time() < end:
        if locator.count():
            classes, text = locator.first.get_attribute("class") or "", locator.first.inner_text()
            if f"cd-{state}" in classes.split():
                return text
            assert "cd-error" not in classes.split(), text
        time.sleep(0.1)
    raise AssertionError(f"{kind}: not {state} within {timeout} s (last: {text!r})")


def _fetch(page, url: str) -> bytes:
    response = page.request.get(url)
    assert response.ok, url
    return response.body()


def _downloads(page, kind: str) -> dict[str, bytes]:
    """The job's files offered for download, by file name (the accordion is opened first)."""
    if not page.locator(f"#cd-{kind}-files").count():
        page.locator(f"#cd-{kind}-downloads button").first.click()
        page.wait_for_selector(f"#cd-{kind}-files a[href]", timeout=10_000)
    links = page.eval_on_selector_all(f"#cd-{kind}-files a[href]", "els => els.map(e => e.href)")
    assert links, f"no downloads in #cd-{kind}-files"
    return {url.rsplit("/", 1)[-1].split("?")[0]: _fetch(page, url) for url in links}


def _gallery(page, kind: str) -> list[bytes]:
    srcs = page.eval_on_selector_all(f"#cd-{kind}-gallery img", "els => els.map(e => e.src)")
    return [_fetch(page, s) for s in dict.fromkeys(srcs)]


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _same_image(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a, b)


def _tensor_pixels(t) -> np.ndarray:
    from condiff.images import to_pil

    return np.asarray(to_pil(t[:1]).convert("RGB"))


# ------------------------------------------------------------------------------------------ tests


def test_sketch_to_image_equals_python(browser, model, tmp_path):
    from condiff.images import fit_image, load_image
    from condiff.pipelines.text2img import sdedit

    page, _ = browser
    _open_tab(page, "sketch", "cd-sketch-canvas")
    _draw(page, "cd-sketch-canvas", [[(0.3, 0.3), (0.7, 0.3), (0.7, 0.7), (0.3, 0.7), (0.3, 0.3)],
                                     [(0.4, 0.45), (0.6, 0.55)]], (0, 0, 0))
    _set_number(page, "cd-sketch-steps", STEPS)
    _set_number(page, "cd-sketch-seed", 7)
    page.click("#cd-sketch-run")
    _wait_status(page, "sketch", "done")
    shown = _gallery(page, "sketch")
    files = _downloads(page, "sketch")
    assert set(files) == {"sketch.png", "result.png"}
    sketch = tmp_path / "sketch.png"
    sketch.write_bytes(files["sketch.png"])
    drawn = _pixels(files["sketch.png"])
    assert drawn.shape[:2][0] >= 128 and drawn.min() < 64, "the strokes are not in the sketch"
    assert (drawn.mean(-1) > 200).mean() > 0.8, "the sheet should be mostly white paper"
    # the same call as `condiff sdedit sketch.png PROMPT --steps 4 --seed 7 --strength 0.6`
    img = fit_image(load_image(sketch), size=(model.image_size, model.image_size))
    want = _tensor_pixels(sdedit(model, img, "a woman, glossy shaded style", strength=0.6, steps=STEPS, seed=7,
                                 show_progress=False).images)
    assert _same_image(_pixels(files["result.png"]), want)
    assert any(_same_image(_pixels(s), want) for s in shown), "the result shown is not the computed one"


def test_inpaint_equals_python(browser, model, tmp_path):
    from condiff.data.experiment_inputs import EXPERIMENTS_DIR
    from condiff.images import load_image, load_mask
    from condiff.pipelines.inpaint import inpaint

    page, _ = browser
    _open_tab(page, "inpaint", "cd-inpaint-canvas")
    picture = EXPERIMENTS_DIR / "exp2_remove-sunglasses_image.png"
    upload = lambda: _upload_to_editor(page, "cd-inpaint-canvas", picture)  # noqa: E731 -- also the retry
    upload()
    # a closed stroke around the middle: inside the picture whether the editor shows it at 97 % or zoomed to fit
    _draw(page, "cd-inpaint-canvas", [[(0.45, 0.45), (0.55, 0.45), (0.55, 0.52), (0.45, 0.52), (0.45, 0.45)]],
          (255, 0, 255), reset=upload)
    _set_number(page, "cd-inpaint-steps", STEPS)
    _set_number(page, "cd-inpaint-seed", 3)
    page.click("#cd-inpaint-run")
    _wait_status(page, "inpaint", "done")
    files = _downloads(page, "inpaint")
    assert {"inpaint.png", "image.png", "mask.png"} <= set(files)
    (tmp_path / "image.png").write_bytes(files["image.png"])
    (tmp_path / "mask.png").write_bytes(files["mask.png"])
    image, mask = load_image(tmp_path / "image.png"), load_mask(tmp_path / "mask.png")
    assert _same_image(_tensor_pixels(image), _tensor_pixels(load_image(picture))), "the upload was altered"
    painted = mask[0, 0].numpy() > 0.5
    assert 0.02 < painted.mean() < 0.5 and painted[: image.shape[-2] // 5].sum() == 0, "mask is not the stroke"
    # the same call as `condiff inpaint image.png mask.png PROMPT --steps 4 --seed 3`
    want = _tensor_pixels(inpaint(model, image, mask, "a smiling face, glossy style", steps=STEPS, seed=3,
                                  show_progress=False).images)
    got = _pixels(files["inpaint.png"])
    assert _same_image(got, want)
    assert np.array_equal(got[mask[0, 0].numpy() == 0], _tensor_pixels(image)[mask[0, 0].numpy() == 0])
    assert any(_same_image(_pixels(s), want) for s in _gallery(page, "inpaint"))


def test_cancel_stops_the_job(browser):
    page, _ = browser
    _open_tab(page, "txt2img")
    _set_number(page, "cd-txt2img-steps", 150)
    page.click("#cd-txt2img-run")
    _wait_status(page, "txt2img", "running")
    page.click("#cd-txt2img-cancel")
    text = _wait_status(page, "txt2img", "cancelled", timeout=60)
    assert text.startswith("cancelled")


def test_oversized_upload_shows_an_error(browser, tmp_path):
    page, _ = browser
    _open_tab(page, "upscale")
    big = tmp_path / "big.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (1200, 1200, 3), dtype=np.uint8)).save(big)  # noise: ~4 MB as PNG
    assert big.stat().st_size > BODY_LIMIT
    page.locator("#cd-upscale-picture input[type=file]").first.set_input_files(str(big))
    toast = page.locator(".toast-body").filter(has_text="size")
    toast.first.wait_for(timeout=20_000)
    assert "Traceback" not in page.content()


def test_no_request_leaves_localhost(browser, studio):
    _, requests = browser
    assert requests, "the network log is empty"
    host = studio.split("//", 1)[1]
    outside = [u for u in requests if not u.startswith(("data:", "blob:")) and u.split("/")[2] != host]
    assert not outside, outside[:10]
