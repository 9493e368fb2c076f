"""The command line on the built-in model: outputs with parameters, no overwrite, clear errors."""

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from condiff import cli
from condiff.images import read_png_parameters

cli._register_commands()
runner = CliRunner()


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


def test_generate_writes_png_with_parameters_and_refuses_overwrite(tmp_path):
    out = tmp_path / "cat.png"
    res = invoke("generate", "a cat face", "--steps", 2, "--seed", 5, "--out", out, "--no-progress")
    assert res.exit_code == 0, res.output
    params = read_png_parameters(out)
    assert params["prompt"] == "a cat face" and params["seed"] == 5 and params["steps"] == 2
    res = invoke("generate", "a cat face", "--steps", 2, "--out", out, "--no-progress")
    assert res.exit_code != 0 and "exists" in str(res.exception or res.output)


def test_unknown_sampler_is_a_clear_error(tmp_path):
    res = invoke("generate", "x", "--sampler", "magic", "--out", tmp_path / "a.png", "--no-progress")
    assert res.exit_code != 0
    assert "unknown sampler" in str(res.exception)


def test_inpaint_and_sdedit_bad_inputs(tmp_path):
    img = tmp_path / "img.png"
    Image.fromarray(np.full((128, 128, 3), 200, np.uint8)).save(img)
    small_mask = tmp_path / "mask.png"
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(small_mask)
    res = invoke("inpaint", img, small_mask, "a hat", "--out", tmp_path / "o.png", "--no-progress")
    assert res.exit_code != 0 and "mask size" in str(res.exception)
    res = invoke("sdedit", img, "a cat", "--strength", 1.5, "--out", tmp_path / "s.png", "--no-progress")
    assert res.exit_code != 0 and "strength" in str(res.exception)
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    res = invoke("sdedit", not_image, "a cat", "--out", tmp_path / "t.png", "--no-progress")
    assert res.exit_code != 0


def test_inpaint_cli_exact_outside_mask(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
    img = tmp_path / "img.png"
    Image.fromarray(arr).save(img)
    m = np.zeros((128, 128), np.uint8)
    m[40:80, 40:90] = 255
    mask = tmp_path / "mask.png"
    Image.fromarray(m).save(mask)
    out = tmp_path / "out.png"
    res = invoke("inpaint", img, mask, "a red heart", "--steps", 3, "--out", out, "--no-progress")
    assert res.exit_code == 0, res.output
    got = np.asarray(Image.open(out))
    assert np.array_equal(got[m == 0], arr[m == 0])


def test_classifier_guidance_option(tmp_path):
    out = tmp_path / "g.png"
    res = invoke("generate", "a heart", "--steps", 2, "--classifier-guidance", "twemoji:2", "--out", out, "--no-progress")
    assert res.exit_code == 0, res.output
    assert read_png_parameters(out)["classifier_guidance"] == {"style": "twemoji", "scale": 2.0}
    res = invoke("generate", "a heart", "--steps", 2, "--classifier-guidance", "cubism", "--out", tmp_path / "h.png",
                 "--no-progress")
    assert res.exit_code != 0 and "unknown style" in str(res.exception)


def test_models_list_shows_both_image_towers():
    import json

    res = invoke("models", "list", "--json")
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)["components"]}
    assert rows["evalenc"]["kind"] == rows["unclip-embedder"]["kind"] == "image-encoder"
    assert "metric" in rows["evalenc"]["role"] and "unCLIP" in rows["unclip-embedder"]["role"]
    assert rows["unclip-embedder"]["bytes"] > 0 and rows["unclip-embedder"]["present"]
    text = invoke("models", "list")
    assert text.exit_code == 0 and "unclip-embedder" in text.output and "total" in text.output
