"""The command line on the built-in model: outputs with parameters, no overwrite, clear errors."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from condiff import cli
from condiff.images import read_png_parameters

pytestmark = pytest.mark.usefixtures("single_thread")


class Result:
    def __init__(self, code, out, err):
        self.exit_code, self.output, self.stderr = code, out, err


@pytest.fixture
def invoke(capsys):
    def call(*args):
        code = cli.run([str(a) for a in args])
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return call


def test_generate_writes_png_with_parameters_and_refuses_overwrite(tmp_path, invoke):
    out = tmp_path / "cat.png"
    res = invoke("generate", "a cat face", "--steps", 2, "--seed", 5, "--out", out, "--no-progress")
    assert res.exit_code == 0, res.output
    params = read_png_parameters(out)
    assert params["prompt"] == "a cat face" and params["seed"] == 5 and params["steps"] == 2
    res = invoke("generate", "a cat face", "--steps", 2, "--out", out, "--no-progress")
    assert res.exit_code == 2 and "exists" in res.stderr


def test_unknown_sampler_is_a_clear_error(tmp_path, invoke):
    res = invoke("generate", "x", "--sampler", "magic", "--out", tmp_path / "a.png", "--no-progress")
    assert res.exit_code == 2
    assert "unknown sampler" in res.stderr


def test_inpaint_and_sdedit_bad_inputs(tmp_path, invoke):
    img = tmp_path / "img.png"
    Image.fromarray(np.full((128, 128, 3), 200, np.uint8)).save(img)
    small_mask = tmp_path / "mask.png"
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(small_mask)
    res = invoke("inpaint", img, small_mask, "a hat", "--out", tmp_path / "o.png", "--no-progress")
    assert res.exit_code == 2 and "mask size" in res.stderr
    res = invoke("sdedit", img, "a cat", "--strength", 1.5, "--out", tmp_path / "s.png", "--no-progress")
    assert res.exit_code == 2 and "strength" in res.stderr
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    res = invoke("sdedit", not_image, "a cat", "--out", tmp_path / "t.png", "--no-progress")
    assert res.exit_code == 2 and "not a readable image" in res.stderr


def test_inpaint_cli_exact_outside_mask(tmp_path, invoke):
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


def test_classifier_guidance_option(tmp_path, invoke):
    out = tmp_path / "g.png"
    res = invoke("generate", "a heart", "--steps", 2, "--classifier-guidance", "twemoji:2", "--out", out, "--no-progress")
    assert res.exit_code == 0, res.output
    assert read_png_parameters(out)["classifier_guidance"] == {"style": "twemoji", "scale": 2.0}
    res = invoke("generate", "a heart", "--steps", 2, "--classifier-guidance", "cubism", "--out", tmp_path / "h.png",
                 "--no-progress")
    assert res.exit_code == 2 and "unknown style" in res.stderr


def test_models_list_shows_both_image_towers(invoke):
    import json

    res = invoke("models", "list", "--json")
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)["components"]}
    assert rows["evalenc"]["kind"] == rows["unclip-embedder"]["kind"] == "image-encoder"
    assert "metric" in rows["evalenc"]["role"] and "unCLIP" in rows["unclip-embedder"]["role"]
    assert rows["unclip-embedder"]["bytes"] > 0 and rows["unclip-embedder"]["present"]
    text = invoke("models", "list")
    assert text.exit_code == 0 and "unclip-embedder" in text.output and "total" in text.output


# ------------------------------------------------------------------------------ issue 28: one consistent CLI
def _commands():
    """(command path, click command) of every leaf command."""
    import typer.main

    cli._register_commands()
    todo, leaves = [((), typer.main.get_command(cli.app))], []
    while todo:
        path, cmd = todo.pop()
        subs = getattr(cmd, "commands", None)
        if subs:
            todo.extend(((*path, name), sub) for name, sub in subs.items())
        else:
            leaves.append((path, cmd))
    return leaves


def test_help_shows_every_option_name_untruncated(invoke):
    leaves = _commands()
    assert len(leaves) > 15
    for path, cmd in leaves:
        res = invoke(*path, "--help")
        assert res.exit_code == 0, (path, res.stderr)
        for param in cmd.params:
            for name in param.opts + param.secondary_opts:
                if name.startswith("-"):
                    assert name in res.output, (path, name)


def test_samplers_lists_nfe_and_defaults(invoke):
    import json

    res = invoke("samplers", "--json")
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert rows["heun"]["nfe_per_step"] == 2 and rows["ddim"]["eta"] and not rows["heun"]["eta"]
    assert rows["dpmpp_2m"]["default_schedule"] == "karras"
    text = invoke("samplers").output
    assert all(name in text for name in rows) and "NFE/step" in text


def test_every_output_records_its_parameters(tmp_path, invoke):
    import json

    arr = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "img.png")
    m = np.zeros((32, 32), np.uint8)
    m[8:20, 8:20] = 255
    Image.fromarray(m).save(tmp_path / "mask.png")
    runs = {
        "inpaint": ["inpaint", tmp_path / "img.png", tmp_path / "mask.png", "a hat", "--method", "blend",
                    "--steps", 2, "--eta", 0.5, "--sampler", "ddim"],
        "upscale": ["upscale", tmp_path / "img.png", "--steps", 2],
        "variations": ["variations", tmp_path / "img.png", "--n", 2, "--steps", 2, "--sr-steps", 1],
        "generate": ["generate", "a cat", "--steps", 2, "--schedule", "karras", "--width", 64, "--height", 32],
    }
    for name, args in runs.items():
        out = tmp_path / f"{name}.png"
        res = invoke(*args, "--out", out, "--no-progress", "--json", "--threads", 1)
        assert res.exit_code == 0, (name, res.stderr)
        written = json.loads(res.output.strip().splitlines()[-1])["wrote"]
        assert written and all(Path(p).exists() for p in written)
        for i, p in enumerate(written):
            params = read_png_parameters(p)
            assert params["steps"] == 2 and params["sampler"] and params["seed"] == i, (name, params)
    assert read_png_parameters(tmp_path / "inpaint.png")["eta"] == 0.5
    gen = read_png_parameters(tmp_path / "generate.png")
    assert (gen["width"], gen["height"], gen["schedule"]) == (64, 32, "karras")
    assert Image.open(tmp_path / "generate.png").size == (64, 32)
    assert read_png_parameters(tmp_path / "variations-1.png")["sr_steps"] == 1
    res = invoke("generate", "a cat", "--steps", 1, "--eta", 0.5, "--out", tmp_path / "e.png")
    assert res.exit_code == 2 and "--eta applies" in res.stderr
