"""Take the studio screenshots of the README (docs/studio/*.png) with the browser test's set-up.

    condiff studio --port 7860 &            # the built-in models
    python docs/studio/screenshots.py http://127.0.0.1:7860

Each tab is shown after a small run on the built-in models; the PNGs are reduced to a 256-colour
palette so each stays well under 300 kB.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import test_studio_browser as T  # noqa: E402 -- the browser test's helpers (canvas strokes, uploads, waits)

from condiff.data.experiment_inputs import EXPERIMENTS_DIR  # noqa: E402

OUT = Path(__file__).resolve().parent
SIZE = {"width": 1280, "height": 900}


def save(page, name: str) -> None:
    path = OUT / f"{name}.png"
    page.evaluate("window.scrollTo(0, 0)")
    time.sleep(0.5)
    page.screenshot(path=str(path))
    Image.open(path).convert("RGB").quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"{path.name}: {path.stat().st_size // 1024} kB", flush=True)


def run(page, kind: str, steps: int | None = None) -> None:
    if steps:
        T._set_number(page, f"cd-{kind}-steps", steps)
    page.click(f"#cd-{kind}-run")
    T._wait_status(page, kind, "done", timeout=600)
    time.sleep(1.5)


def main(base: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=T.CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport=SIZE)
        page.goto(base.rstrip("/") + "/studio/")
        page.wait_for_selector("#cd-tab-txt2img-button", timeout=60_000)

        time.sleep(3)
        T._set_number(page, "cd-txt2img-batch", 4)
        run(page, "txt2img", 12)
        save(page, "txt2img")

        T._open_tab(page, "sketch", "cd-sketch-canvas")
        T._draw(page, "cd-sketch-canvas", [[(0.35, 0.25), (0.65, 0.25), (0.75, 0.6), (0.5, 0.8), (0.25, 0.6),
                                            (0.35, 0.25)], [(0.42, 0.45), (0.45, 0.45)], [(0.55, 0.45), (0.58, 0.45)],
                                           [(0.42, 0.62), (0.5, 0.67), (0.58, 0.62)]], (0, 0, 0))
        run(page, "sketch", 12)
        save(page, "sketch")

        T._open_tab(page, "inpaint", "cd-inpaint-canvas")
        T._upload_to_editor(page, "cd-inpaint-canvas", EXPERIMENTS_DIR / "exp2_remove-sunglasses_image.png")
        try:
            T._draw(page, "cd-inpaint-canvas", [[(0.3, 0.4), (0.7, 0.4), (0.7, 0.5), (0.3, 0.5)]], (255, 0, 255))
            run(page, "inpaint", 12)
        except AssertionError as err:  # a busy machine: show the tab as it is
            print(f"inpaint: {err}", flush=True)
        save(page, "inpaint")

        T._open_tab(page, "control")
        page.locator("#cd-control-picture input[type=file]").first.set_input_files(str(EXPERIMENTS_DIR / "exp1_reference.png"))
        time.sleep(2)
        page.click("#cd-control-preview-all")
        T._wait_status(page, "control", "done", timeout=300)
        time.sleep(1.5)
        save(page, "control")

        for tab in ("upscale", "variations"):
            T._open_tab(page, tab)
            page.locator(f"#cd-{tab}-picture input[type=file]").first.set_input_files(str(EXPERIMENTS_DIR / "exp3_subject_0.png"))
            time.sleep(2)
            save(page, tab)

        for tab in ("personalize", "experiments"):
            T._open_tab(page, tab)
            time.sleep(1)
            save(page, tab)
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:7860")
