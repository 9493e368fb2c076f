"""Image/mask I/O conventions: loading, limits, mask formats, the resizing rule, PNG parameters."""

import numpy as np
import pytest
import torch
from PIL import Image

from condiff.images import (
    fit_image,
    fit_pair,
    from_model_range,
    load_image,
    load_mask,
    mask_from_alpha,
    read_png_parameters,
    save_png,
    to_model_range,
    to_pil,
)


def _rgb(w=40, h=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_load_image_sources_agree(tmp_path):
    arr = _rgb()
    Image.fromarray(arr).save(tmp_path / "a.png")
    from_path = load_image(tmp_path / "a.png")
    assert from_path.shape == (1, 3, 30, 40) and from_path.dtype == torch.float32
    assert torch.equal(from_path, load_image(Image.fromarray(arr)))
    assert torch.equal(from_path, load_image(arr))
    assert torch.equal(from_path, load_image(from_path))  # a [1, 3, H, W] tensor
    assert torch.equal(from_path, load_image(arr.astype(np.float64) / 255))
    gray = load_image(arr[..., 0])
    assert gray.shape == (1, 3, 30, 40) and torch.equal(gray[:, 0], gray[:, 2])


def test_rgba_image_is_composited_over_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red ...
    rgba[:2, :, 3] = 255  # ... opaque on the top half, transparent below
    img = load_image(rgba)
    assert img[0, :, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert img[0, :, 3, 0].tolist() == [1.0, 1.0, 1.0]


def test_uint8_round_trip_is_pixel_exact(tmp_path):
    arr = _rgb(17, 9)
    path = save_png(load_image(arr), tmp_path / "out.png")
    assert np.array_equal(np.asarray(Image.open(path)), arr)


def test_bad_files_and_sizes(tmp_path):
    (tmp_path / "notes.png").write_text("this is not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(tmp_path / "notes.png")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    Image.fromarray(_rgb(100, 80)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match="Mpx"):
        load_image(tmp_path / "big.png", max_pixels=5000)
    with pytest.raises(ValueError, match="64×64"):
        load_image(tmp_path / "big.png", size=(64, 64))
    assert load_image(tmp_path / "big.png", size=(100, 80)).shape == (1, 3, 80, 100)
    with pytest.raises(ValueError, match="float"):
        load_image(np.full((4, 4, 3), 2.0))
    with pytest.raises(ValueError, match="array must be"):
        load_image(np.zeros((4, 4, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="over the limit of 16.0 Mpx"):
        load_mask(Image.new("L", (5000, 4000)))  # the default limit, checked before any conversion
    with pytest.raises(ValueError, match="path, PIL image"):
        load_image(12345)


def test_mask_formats_white_is_repaint(tmp_path):
    lum = np.zeros((6, 6), dtype=np.uint8)
    lum[2:4, 2:4] = 255
    m = load_mask(lum)
    assert m.shape == (1, 1, 6, 6) and m.sum() == 4 and m[0, 0, 2, 2] == 1
    rgb = np.stack([lum] * 3, -1)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    assert torch.equal(load_mask(tmp_path / "m.png"), m)
    # RGBA brush layer: opaque white strokes on a transparent background; opaque black = keep
    layer = np.zeros((6, 6, 4), dtype=np.uint8)
    layer[..., :3] = 255
    layer[2:4, 2:4, 3] = 255
    layer[0, :, :3], layer[0, :, 3] = 0, 255
    assert torch.equal(load_mask(layer), m)
    # DALL·E convention: transparent pixels of a picture are the hole
    pic = np.full((6, 6, 4), 200, dtype=np.uint8)
    pic[..., 3] = 255 - lum
    assert torch.equal(mask_from_alpha(pic), m)
    with pytest.raises(ValueError, match="no alpha"):
        mask_from_alpha(rgb)
    with pytest.raises(ValueError, match="3×3"):
        load_mask(lum, size=(3, 3))


def test_fit_image_rule():
    x = torch.rand(1, 3, 50, 70)
    assert fit_image(x).shape == (1, 3, 48, 64)  # crop to multiples of 8, centred
    assert torch.equal(fit_image(x), x[..., 1:49, 3:67])
    assert fit_image(x, size=(32, 32)).shape == (1, 3, 32, 32)  # cover, then centre-crop
    assert fit_image(x, shorter_side=24).shape == (1, 3, 24, 32)  # 24 × 33.6 → 24 × 34 → 24 × 32
    with pytest.raises(ValueError, match="not both"):
        fit_image(x, size=(32, 32), shorter_side=32)


def test_fit_pair_keeps_image_and_mask_aligned():
    img = torch.zeros(1, 3, 60, 90)
    img[..., 20:40, 30:50] = 1
    mask = img[:, :1].clone()
    fi, fm = fit_pair(img, mask, size=(64, 48))
    assert fi.shape == (1, 3, 48, 64) and fm.shape == (1, 1, 48, 64)
    torch.testing.assert_close(fi[:, :1], fm)
    with pytest.raises(ValueError, match="differs from image size"):
        fit_pair(img, torch.zeros(1, 1, 30, 45))


def test_save_png_parameters_in_text_chunk(tmp_path):
    params = {"prompt": "a café at night ✨", "seed": 7, "strength": 0.6, "sampler": "euler", "t": torch.tensor(3)}
    path = save_png(torch.rand(1, 3, 8, 8), tmp_path / "img.png", params)
    raw = path.read_bytes()
    assert b"iTXtparameters" in raw and b"tEXtcondiff" in raw  # A1111 text (UTF-8: not Latin-1) + ASCII JSON
    back = read_png_parameters(path)
    assert back["prompt"] == params["prompt"] and back["seed"] == 7 and back["t"] == 3
    with pytest.raises(FileExistsError, match="overwrite"):
        save_png(torch.rand(1, 3, 8, 8), path, params)
    save_png(torch.zeros(1, 3, 8, 8), path, {"seed": 8}, overwrite=True)
    assert read_png_parameters(path) == {"seed": 8}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.png"]  # no temporary files left
    assert read_png_parameters(save_png(torch.rand(1, 1, 4, 4), tmp_path / "plain.png")) is None
    with pytest.raises(ValueError, match=".png"):
        save_png(torch.rand(1, 3, 8, 8), tmp_path / "img.jpg")
    with pytest.raises(ValueError, match="JSON"):
        save_png(torch.rand(1, 3, 8, 8), tmp_path / "x.png", {"bad": object()})


def test_conversions():
    x = torch.rand(1, 3, 4, 4)
    torch.testing.assert_close(from_model_range(to_model_range(x)), x)
    with pytest.raises(ValueError, match="batch of 2"):
        to_pil(torch.rand(2, 3, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        to_pil(torch.full((3, 4, 4), float("nan")))
    assert to_pil(torch.ones(1, 1, 4, 4)).mode == "L"
