"""AUTOMATIC1111 infotext: examples written from the documented format, and write → read round trips."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from condiff.images import read_png_parameters
from condiff.provenance.a1111 import format_infotext, parse_infotext, quote, recipe_from_fields, unquote

EXAMPLE = (
    "a knight, (silver armour:1.2), \"dramatic\" lighting\n"
    "second line of the prompt\n"
    "Negative prompt: blurry, lowres\n"
    "extra negative line\n"
    'Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 965400086, Size: 512x768, '
    'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.75, '
    'ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny, Weight: 1, Guidance Start: 0, Guidance End: 0.8", '
    'Lora hashes: "add_detail: 7c6bad76eb54, flat2: 0123456789ab", Version: v1.10.1'
)


def test_documented_example_parses_to_fields_and_condiff_names():
    f = parse_infotext(EXAMPLE)
    assert f["Prompt"] == 'a knight, (silver armour:1.2), "dramatic" lighting\nsecond line of the prompt'
    assert f["Negative prompt"] == "blurry, lowres\nextra negative line"
    assert f["Steps"] == "20" and f["Size"] == "512x768" and f["Model hash"] == "6ce0161689"
    assert f["Lora hashes"] == "add_detail: 7c6bad76eb54, flat2: 0123456789ab"  # unquoted JSON string
    r = recipe_from_fields(f)
    assert r["sampler"] == "dpmpp_2m" and r["schedule"] == "karras"
    assert (r["steps"], r["guidance"], r["seed"], r["width"], r["height"]) == (20, 7.0, 965400086, 512, 768)
    assert r["strength"] == 0.75 and r["model"] == "v1-5-pruned-emaonly" and r["model_hash"] == "6ce0161689"
    assert r["loras"] == [{"name": "add_detail", "hash": "7c6bad76eb54"}, {"name": "flat2", "hash": "0123456789ab"}]
    assert r["control"] == [{"type": "canny", "scale": 1.0, "start": 0.0, "end": 0.8}]
    assert r["a1111"] == {"Version": "v1.10.1"}


def test_old_sampler_names_and_prompt_only_text():
    text = "a cat\nSteps: 30, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 1, Size: 64x64"
    r = recipe_from_fields(parse_infotext(text))
    assert (r["sampler"], r["schedule"], r["guidance"]) == ("dpmpp_2m", "karras", 6.5)
    r = recipe_from_fields(parse_infotext("x\nSteps: 5, Sampler: Euler a, CFG scale: 7, Seed: 2"))
    assert r["sampler"] == "euler_ancestral"
    r = recipe_from_fields(parse_infotext("x\nSteps: many, Sampler: Euler, CFG scale: 7, Seed: 2"))
    assert "steps" not in r and r["a1111"] == {"Steps": "many"} and r["seed"] == 2
    # fewer than three "Key: value" pairs on the last line: it is prompt text, not fields
    f = parse_infotext("portrait, style: ink")
    assert f["Prompt"] == "portrait, style: ink" and set(f) == {"Prompt", "Negative prompt"}


def test_quote_rules():
    assert quote("Euler a") == "Euler a"
    assert quote("a, b") == '"a, b"' and quote("k: v") == '"k: v"' and quote("l1\nl2") == '"l1\\nl2"'
    assert unquote(quote('he said "hi", then left')) == 'he said "hi", then left'
    assert unquote('"broken') == '"broken'


PARAMS = {
    "prompt": 'a "quoted" cat, sitting\non a mat: flat style',
    "negative": "blurry, text\nwatermark",
    "steps": 25, "sampler": "euler_ancestral", "schedule": "karras", "guidance": 7.5, "seed": 123456789,
    "model": "/models/my, model.safetensors", "strength": 0.6,
    "control": [{"type": "depth", "scale": 0.8, "start": 0.1, "end": 0.9}],
}


def test_condiff_parameters_round_trip_through_a1111_text():
    text = format_infotext(PARAMS, size=(128, 96), model_hash="abcdef0123", lora_hashes={"detail": "0123456789ab"},
                           version="condiff 0.1.0")
    assert text.splitlines()[2] == "Negative prompt: blurry, text"
    assert 'Model: "my, model"' in text and "Sampler: Euler a" in text and "Size: 128x96" in text
    r = recipe_from_fields(parse_infotext(text))
    for k in ("prompt", "negative", "steps", "sampler", "schedule", "guidance", "seed", "strength", "control"):
        assert r[k] == PARAMS[k], k
    assert (r["width"], r["height"], r["model"], r["model_hash"]) == (128, 96, "my, model", "abcdef0123")
    assert r["loras"] == [{"name": "detail", "hash": "0123456789ab"}]


_line = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30).map(str.strip)


@settings(max_examples=60, deadline=None)
@given(prompt=st.lists(_line, min_size=1, max_size=3).map("\n".join),
       negative=st.lists(_line, max_size=3).map("\n".join),
       model=st.text("abc XYZ,:\"'-_()0é", min_size=1, max_size=20).map(str.strip))
def test_round_trip_of_arbitrary_prompts(prompt, negative, model):
    prompt, negative = prompt.strip(), negative.strip()
    if any(line.startswith("Negative prompt:") for line in prompt.split("\n") + negative.split("\n")) or not model:
        return  # ambiguous in A1111's format itself
    params = {"prompt": prompt, "negative": negative, "steps": 3, "sampler": "ddim", "guidance": 2.0, "seed": 9,
              "model": model}
    r = recipe_from_fields(parse_infotext(format_infotext(params, size=(8, 8))))
    assert (r["prompt"], r["negative"], r["model"]) == (prompt, negative, model)
    assert (r["steps"], r["sampler"], r["seed"]) == (3, "ddim", 9)


def _png_with_text(path, **chunks):
    info = PngImagePlugin.PngInfo()
    for k, v in chunks.items():
        info.add_text(k, v)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def test_reads_a1111_files_and_older_condiff_files(tmp_path):
    a = _png_with_text(tmp_path / "a1111.png", parameters=EXAMPLE)
    p = read_png_parameters(a)
    assert p["prompt"].startswith("a knight") and p["seed"] == 965400086 and p["sampler"] == "dpmpp_2m"
    old = _png_with_text(tmp_path / "old.png", parameters=json.dumps({"prompt": "x", "seed": 4}))
    assert read_png_parameters(old) == {"prompt": "x", "seed": 4}
    bad = _png_with_text(tmp_path / "bad.png", parameters="{not json")
    with pytest.raises(ValueError, match="bad.png"):
        read_png_parameters(bad)
