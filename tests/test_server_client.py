"""The real `condiff serve` process on a free localhost port, driven by the PyPI A1111 client `webuiapi`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from condiff.server.local import local_server

webuiapi = pytest.importorskip("webuiapi")


@pytest.fixture(scope="module")
def server():
    with local_server(["--device", "cpu", "--max-pixels", "16384", "--max-steps", "20"]) as (base, _):
        yield int(base.rsplit(":", 1)[1])


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


@pytest.mark.slow
def test_webuiapi_client_end_to_end(server):
    from condiff.models.registry import load_model
    from condiff.pipelines.text2img import generate

    api = webuiapi.WebUIApi(host="127.0.0.1", port=server, sampler="Euler a", steps=4)
    common = dict(prompt="a red square", seed=11, width=64, height=64, cfg_scale=5.0, alwayson_scripts={})
    res = api.txt2img(**common)
    assert res.info["all_seeds"] == [11] and res.image.size == (64, 64)

    torch.set_num_threads(1)
    model = load_model("builtin", device="cpu")
    ref = generate(model, "a red square", guidance=5.0, steps=4, sampler="euler_ancestral", seed=11, height=64, width=64,
                   show_progress=False)
    want = (ref.images[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(pixels(res.image), want)

    info = api.png_info(res.image)
    assert info.parameters["seed"] == 11 and info.parameters["sampler"] == "euler_ancestral"

    sd = api.img2img(images=[res.image], denoising_strength=0.5, **common)
    assert sd.image.size == (64, 64) and not np.array_equal(pixels(sd.image), pixels(res.image))

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    inp = api.img2img(images=[res.image], mask_image=mask, denoising_strength=1.0, inpaint_full_res=False,
                      mask_blur=0, **common)
    keep = np.asarray(mask) == 0
    np.testing.assert_array_equal(pixels(inp.image)[keep], pixels(res.image)[keep])
    assert not np.array_equal(pixels(inp.image)[~keep], pixels(res.image)[~keep])

    unit = webuiapi.ControlNetUnit(image=res.image, module="canny", model="controlnet-canny", weight=1.0)
    ctl = api.txt2img(controlnet_units=[unit], **{**common, "alwayson_scripts": {}})
    assert ctl.image.size == (64, 64) and not np.array_equal(pixels(ctl.image), pixels(res.image))
    assert "controlnet-canny" in api.controlnet_model_list()

    with pytest.raises(RuntimeError, match="413"):
        api.txt2img(**{**common, "width": 512, "height": 512})  # over --max-pixels: refused, not run
    assert api.get_progress()["state"]["job_count"] == 0
