"""Provenance stamps: sign → verify, tampering detected, watermark, keys, CLI; all offline."""

import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from condiff import cli
from condiff.images import png_bytes, read_png_info, read_png_parameters, save_png
from condiff.provenance import keys, watermark
from condiff.provenance.c2pa_sign import sign_png
from condiff.provenance.recipe import rerun_arguments

cli._register_commands()
runner = CliRunner()


@pytest.fixture
def local_key(tmp_path, monkeypatch):
    """An isolated config folder with a fresh local key (and none of the user's settings)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for var in ("CONDIFF_C2PA_CERT", "CONDIFF_C2PA_KEY", "CONDIFF_C2PA_ALG", "CONDIFF_C2PA_TRUST", "CONDIFF_PROVENANCE",
                "CONDIFF_WATERMARK"):
        monkeypatch.delenv(var, raising=False)
    return keys.keygen()


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "tiny-model.safetensors"
    path.write_bytes(b"weights" * 100)
    return path


def picture(seed=0, size=128):
    """A smooth picture with flat areas, like the built-in model's clip-art."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(6 * x + rng.random()), np.cos(5 * y), x * y], -1) * 0.5 + 0.5
    base[size // 4: size // 2, size // 4: size // 2] = [1.0, 0.2, 0.2]
    return Image.fromarray((base * 255).round().astype(np.uint8))


def params(model_file, **kw):
    return {"model": str(model_file), "pipeline": "text2img", "prompt": "a red square, flat", "negative": "",
            "steps": 4, "sampler": "dpmpp_2m", "guidance": 5.0, "seed": 3, **kw}


# --------------------------------------------------------------------------- PNG chunk surgery for tampering


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        out.append((data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]))
        pos += 12 + n
    return out


def assemble(parts) -> bytes:
    body = b"".join(struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d)) for t, d in parts)
    return b"\x89PNG\r\n\x1a\n" + body


def flip_one_pixel(data: bytes) -> bytes:
    """The same file with pixel (5, 7) changed and every other chunk (text, manifest) kept."""
    arr = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    arr[7, 5, 0] ^= 0x01
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    new_idat = [c for c in chunks(buf.getvalue()) if c[0] == b"IDAT"]
    parts, done = [], False
    for t, d in chunks(data):
        if t == b"IDAT":
            if not done:
                parts += new_idat
                done = True
            continue
        parts.append((t, d))
    return assemble(parts)


def strip_manifest(data: bytes) -> bytes:
    return assemble([c for c in chunks(data) if c[0] != b"caBX"])


# --------------------------------------------------------------------------- tests


def test_sign_then_verify_passes(local_key, model_file):
    data = png_bytes(picture(), params(model_file))
    assert b"caBX" in data
    info = read_png_info(data)
    m = info["manifest"]
    assert info["ok"] and info["problems"] == []
    assert m["signature_valid"] and m["hash_match"] and m["trusted"]
    assert {"c2pa.actions.v2", "c2pa.hash.data", "org.condiff.generation"} <= set(m["assertions"])
    assert m["actions"][0]["action"] == "c2pa.created"
    assert m["actions"][0]["digitalSourceType"].endswith("/trainedAlgorithmicMedia")
    gen = m["generation"]
    assert gen["model_hash"] == info["provenance"]["model_hash"] and len(gen["model_hash"]) == 10
    assert gen["parameters"]["prompt"] == "a red square, flat"
    assert info["watermark"]["found"] and info["watermark"]["payload"] == watermark.PAYLOAD_TEXT
    assert info["a1111"].startswith("a red square, flat\nSteps: 4, Sampler: DPM++ 2M, CFG scale: 5, Seed: 3")


def test_model_hash_is_a1111_short_sha256(local_key, model_file):
    import hashlib

    info = read_png_info(png_bytes(picture(), params(model_file)))
    assert info["fields"]["Model hash"] == hashlib.sha256(model_file.read_bytes()).hexdigest()[:10]
    assert info["fields"]["Model"] == "tiny-model"


def test_flipped_pixel_stripped_manifest_and_other_key_are_reported(local_key, model_file, tmp_path):
    data = png_bytes(picture(), params(model_file))
    flipped = read_png_info(flip_one_pixel(data))
    assert not flipped["ok"] and not flipped["manifest"]["hash_match"]
    assert any("hash binding" in p for p in flipped["problems"])

    stripped_bytes = strip_manifest(data)
    stripped = read_png_info(stripped_bytes)
    assert not stripped["ok"] and not stripped["manifest"]["present"]
    assert stripped["watermark"]["found"] and "stripped" in stripped["problems"][0]
    assert stripped["parameters"]["prompt"] == "a red square, flat"  # the text chunks are still there

    other = keys.keygen(tmp_path / "other")
    creds = keys.Credentials((other / keys.CHAIN_FILE).read_bytes(), (other / keys.KEY_FILE).read_bytes(), "es256",
                             "test")
    resigned = read_png_info(sign_png(stripped_bytes, params(model_file), {}, creds))
    m = resigned["manifest"]
    assert m["signature_valid"] and m["hash_match"] and not m["trusted"] and not resigned["ok"]
    assert any("trusted anchor" in p for p in resigned["problems"])
    # trusting the other CA explicitly makes it verify
    assert read_png_info(sign_png(stripped_bytes, params(model_file), {}, creds), trust=[other / keys.CA_FILE])["ok"]


def test_edit_records_the_input_as_ingredient(local_key, model_file, tmp_path):
    src = tmp_path / "input.png"
    picture(1).save(src)
    info = read_png_info(png_bytes(picture(), params(model_file, pipeline="sdedit", strength=0.6, input=str(src))))
    m = info["manifest"]
    assert [a["action"] for a in m["actions"]] == ["c2pa.opened", "c2pa.edited"]
    assert m["ingredients"] == [{"title": "input.png", "relationship": "parentOf"}]
    assert info["fields"]["Denoising strength"] == "0.6"
    upload = ("upload.png", src.read_bytes())  # how the HTTP server passes an uploaded picture
    guided = read_png_info(png_bytes(picture(), params(model_file, pipeline="control"), ingredients=[upload]))
    assert [a["action"] for a in guided["manifest"]["actions"]] == ["c2pa.created", "c2pa.placed"]
    assert guided["manifest"]["ingredients"] == [{"title": "upload.png", "relationship": "componentOf"}]


def test_inpainting_keeps_pixels_outside_the_mask_exact(local_key, model_file):
    img = picture()
    data = png_bytes(img, params(model_file, pipeline="inpaint", composite=True))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), np.asarray(img))
    info = read_png_info(data)
    assert info["ok"] and info["provenance"]["watermark"]["embedded"] is False
    assert info["manifest"]["actions"][0]["action"] == "c2pa.created"  # no input file: created, not edited


def test_no_provenance_and_no_key(local_key, model_file, monkeypatch, tmp_path):
    off = png_bytes(picture(), params(model_file), provenance=False)
    assert b"caBX" not in off and np.array_equal(np.asarray(Image.open(io.BytesIO(off))), np.asarray(picture()))
    assert read_png_info(off)["parameters"]["seed"] == 3
    monkeypatch.setenv("CONDIFF_PROVENANCE", "0")
    assert b"caBX" not in png_bytes(picture(), params(model_file), provenance=None)
    monkeypatch.delenv("CONDIFF_PROVENANCE")
    monkeypatch.setenv("CONDIFF_WATERMARK", "0")  # manifest only
    info = read_png_info(png_bytes(picture(), params(model_file)))
    assert info["ok"] and not info["watermark"]["found"] and info["provenance"]["watermark"]["embedded"] is False
    monkeypatch.delenv("CONDIFF_WATERMARK")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "empty"))  # no key: watermark only
    data = png_bytes(picture(), params(model_file))
    info = read_png_info(data)
    assert b"caBX" not in data and info["watermark"]["found"] and not info["ok"]
    assert "without a signing key" in info["problems"][0]


def test_watermark_round_trip_and_limits():
    arr = np.asarray(picture(2))
    marked, rec = watermark.embed(arr)
    assert rec["embedded"] and rec["bits_read_back"] == 64
    assert watermark.detect(marked)["found"]
    assert not watermark.detect(arr)["found"]
    mse = np.mean((marked.astype(float) - arr) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) > 30  # PSNR
    small, rec = watermark.embed(arr[:64, :64])
    assert not rec["embedded"] and "minimum" in rec["reason"] and small is not None


def test_keys_are_private_and_not_replaced_silently(local_key, tmp_path, monkeypatch):
    assert oct(local_key.stat().st_mode & 0o777) == "0o700"
    assert oct((local_key / keys.KEY_FILE).stat().st_mode & 0o777) == "0o600"
    with pytest.raises(OSError, match="--force"):
        keys.keygen()
    other = keys.keygen(tmp_path / "mine")
    monkeypatch.setenv("CONDIFF_C2PA_CERT", str(other / keys.CHAIN_FILE))
    with pytest.raises(ValueError, match="CONDIFF_C2PA_KEY"):
        keys.load_credentials()
    monkeypatch.setenv("CONDIFF_C2PA_KEY", str(other / keys.KEY_FILE))
    assert keys.load_credentials().source == "environment"
    monkeypatch.setenv("CONDIFF_C2PA_KEY", str(tmp_path / "missing.key"))
    with pytest.raises(ValueError, match="does not exist"):
        keys.load_credentials()


def test_save_png_writes_stamps_and_reads_back(local_key, model_file, tmp_path):
    p = params(model_file, prompt='cat, "grumpy"\nsecond line', loras=[{"file": str(model_file), "weight": 0.5}])
    path = save_png(picture(), tmp_path / "out.png", p)
    assert read_png_parameters(path) == p
    info = read_png_info(path)
    assert info["ok"] and info["fields"]["Prompt"] == 'cat, "grumpy"\nsecond line'
    assert info["fields"]["Lora hashes"] == f"tiny-model: {info['provenance']['lora_hashes']['tiny-model']}"


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


def test_verify_command_exit_status_and_json(local_key, model_file, tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(png_bytes(picture(), params(model_file)))
    bad = tmp_path / "bad.png"
    bad.write_bytes(flip_one_pixel(good.read_bytes()))
    res = invoke("provenance", "verify", good)
    assert res.exit_code == 0, res.output
    assert "OK" in res.output and "trusted" in res.output
    res = invoke("provenance", "verify", "--json", good, bad)
    assert res.exit_code == 1
    out = json.loads(res.output)
    assert [o["ok"] for o in out] == [True, False] and not out[1]["manifest"]["hash_match"]
    res = invoke("provenance", "keygen")
    assert res.exit_code == 2 and "--force" in res.output


def test_generate_from_png_reruns_the_recipe(local_key, tmp_path):
    first, again = tmp_path / "a.png", tmp_path / "b.png"
    res = invoke("generate", "a red heart", "--steps", 2, "--seed", 4, "--out", first, "--no-progress")
    assert res.exit_code == 0, res.output
    res = invoke("generate", "--from-png", first, "--out", again, "--no-progress")
    assert res.exit_code == 0, res.output
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
    assert read_png_parameters(again)["seed"] == 4
    res = invoke("generate", "--out", tmp_path / "d.png", "--no-progress")
    assert res.exit_code != 0 and "--from-png" in str(res.exception)
    assert read_png_info(first)["ok"]
    assert os.environ["XDG_CONFIG_HOME"].startswith(str(tmp_path))


class _Typed:
    """A stand-in for the command's context: ``seed`` and ``steps`` were typed on the command line."""

    class _Source:
        name = "COMMANDLINE"

    def get_parameter_source(self, name):
        return self._Source() if name in ("seed", "steps") else None


def test_options_typed_on_the_command_line_override_the_recipe(local_key, model_file, tmp_path):
    path = save_png(picture(), tmp_path / "r.png", params(model_file, model="builtin", negative="dull"))
    args = rerun_arguments(_Typed(), path, None, "", None, 9, "euler", 5, "builtin", [], None)
    assert args == ("a red square, flat", "dull", 5.0, 9, "dpmpp_2m", 5, "builtin", [], None)
    edit = save_png(picture(), tmp_path / "e.png", params(model_file, pipeline="sdedit"))
    with pytest.raises(ValueError, match="condiff sdedit"):
        rerun_arguments(None, edit, None, "", None, None, "euler", 0, "builtin", [], None)
    lora = save_png(picture(), tmp_path / "l.png", params(model_file, loras=[{"file": "/nowhere.safetensors"}]))
    with pytest.raises(ValueError, match="--lora"):
        rerun_arguments(None, lora, None, "", None, None, "euler", 0, "builtin", [], None)


def test_a1111_recipe_reruns_with_a_note_about_the_model(tmp_path, capsys):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat, sitting\nNegative prompt: dog\nSteps: 12, Sampler: Euler a, CFG scale: 6, "
                                "Seed: 42, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly")
    path = tmp_path / "a1111.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    args = rerun_arguments(None, path, None, "", None, None, "dpmpp_2m", 0, "builtin", [], None)
    assert args == ("a cat, sitting", "dog", 6.0, 12, "euler_ancestral", 42, "builtin", [], None)
    err = capsys.readouterr().err
    assert "v1-5-pruned-emaonly" in err and "not here" in err and "6ce0161689" in err


def test_hashes_are_cached_on_disk(tmp_path, monkeypatch, model_file):
    import hashlib

    from condiff.provenance import hashes

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    hashes._CACHE.clear()
    want = hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert hashes.model_hash(str(model_file)) == want[:10] and hashes.lora_hash(model_file) == want[:12]
    stored = json.loads((tmp_path / "cache" / "condiff" / "hashes.json").read_text())
    assert list(stored.values()) == [want]
    key = next(iter(stored))
    stored[key] = "f" * 64  # the disk cache is what a new process reads (same path, size and mtime)
    (tmp_path / "cache" / "condiff" / "hashes.json").write_text(json.dumps(stored))
    hashes._CACHE.clear()
    assert hashes.model_hash(str(model_file)) == "f" * 10


def test_configure_own_certificate(local_key, tmp_path, model_file):
    mine = keys.keygen(tmp_path / "mine", common_name="my studio")
    res = invoke("provenance", "configure", "--cert", mine / keys.CHAIN_FILE, "--key", mine / keys.KEY_FILE)
    assert res.exit_code == 0, res.output
    assert keys.load_credentials().source.endswith("config.json")
    out = tmp_path / "s.png"
    out.write_bytes(png_bytes(picture(), params(model_file)))
    info = read_png_info(out)
    assert info["manifest"]["signer"]["common_name"] == "my studio" and not info["ok"]  # its CA is not trusted yet
    res = invoke("provenance", "verify", "--trust", mine / keys.CA_FILE, out)
    assert res.exit_code == 0, res.output
