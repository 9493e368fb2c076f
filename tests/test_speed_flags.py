"""The speed options on the command line and the server (``--dtype``, ``--fast``, ``--compile``):
every sampling command applies them to the model it loads and gives the same image
as without (``--fast`` changes the summation order only: ≤ 1e-4, as tests/test_speed_options.py),
an option the device or model cannot run is one error line, and ``condiff serve`` applies them once
at start and reports them in ``/sdapi/v1/options``."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from condiff import cli
from condiff.nn.attention import Attention
from condiff.testing.tiny import tiny_ldm

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def invoke(capsys):
    def call(*args):
        code = cli.run([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return call


@pytest.fixture
def saved(monkeypatch):
    """The images each command saves, kept as float tensors (no 8-bit rounding)."""
    from condiff import images

    kept = []
    real_save = images.save_png

    def save_png(img, path, *args, **kw):
        kept.append(img.detach().float().clone())
        return real_save(img, path, *args, **kw)

    monkeypatch.setattr(images, "save_png", save_png)
    return kept


@pytest.fixture
def tiny(monkeypatch, tmp_path, saved):
    """Every command loads a fresh tiny random model (the last one is ``loaded[-1]``); the images
    each command saves are kept as float tensors in ``saved``."""
    from test_controlnet_pipeline import controlnet, save_int8, tiny_model

    from condiff.commands import control
    from condiff.models import registry

    loaded = []

    def load(factory):
        def loader(name, device="cpu", dtype=torch.float32, **_):
            loaded.append(factory().to(dtype=dtype if isinstance(dtype, torch.dtype) else torch.float32))
            return loaded[-1]
        return loader

    monkeypatch.setattr(registry, "load_model", load(tiny_ldm))
    monkeypatch.setattr(control, "load_model", load(tiny_model))
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path / "weights")
    save_int8(controlnet(tiny_model()), tmp_path / "weights" / "controlnet-canny")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    m = np.zeros((32, 32), np.uint8)
    m[8:20, 8:24] = 255
    Image.fromarray(m).save(tmp_path / "mask.png")
    return loaded, saved


COMMANDS = {
    "generate": ["generate", "a red circle"],
    "sdedit": ["sdedit", "{tmp}/in.png", "a red circle"],
    "inpaint": ["inpaint", "{tmp}/in.png", "{tmp}/mask.png", "a hat"],
    "control": ["control", "{tmp}/in.png", "a red cat", "--type", "canny"],
}


def _args(name, tmp_path, out, *extra):
    return [a.format(tmp=tmp_path) for a in COMMANDS[name]] + [
        "--steps", 2, "--seed", 3, "--device", "cpu", "--no-progress", "--no-provenance", "--out", out, *extra]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_fast_gives_the_same_image_on_every_sampling_command(name, tiny, tmp_path, invoke):
    loaded, saved = tiny
    code, _, err = invoke(*_args(name, tmp_path, tmp_path / "plain.png"))
    assert code == 0, err
    plain = saved[0]
    assert loaded[-1].info.get("speed") is None
    code, _, err = invoke(*_args(name, tmp_path, tmp_path / "fast.png", "--fast"))
    assert code == 0, err
    model = loaded[-1]
    assert model.info["speed"]["fused_qkv"] and model.info["speed"]["channels_last"]
    assert all(m.fused is not None for m in model.unet.modules() if isinstance(m, Attention))
    fast = saved[len(saved) // 2] if name == "control" else saved[-1]  # control also saves its condition
    assert fast.shape == plain.shape and (fast - plain).abs().max() <= 1e-4


def test_generate_applies_the_speed_options_after_loras(tiny, tmp_path, invoke, monkeypatch):
    from condiff.commands import _common as C

    loaded, _ = tiny
    order = []
    monkeypatch.setattr(C, "personalize", lambda m, loras, embeddings: order.append("personalize") or {})
    real = C.speed_up
    monkeypatch.setattr(C, "speed_up", lambda m, **kw: order.append("speed_up") or real(m, **kw))
    code, _, err = invoke(*_args("generate", tmp_path, tmp_path / "o.png", "--fast"))
    assert code == 0, err
    assert order == ["personalize", "speed_up"]


def test_prompt_file_run_applies_the_speed_options(tiny, tmp_path, invoke):
    loaded, _ = tiny
    (tmp_path / "p.txt").write_text("a red circle\n")
    code, _, err = invoke("generate", "--prompts", tmp_path / "p.txt", "--out", tmp_path / "outdir", "--steps", 1,
                          "--device", "cpu", "--fast")
    assert code == 0, err
    assert loaded[-1].info["speed"]["fused_qkv"] and (tmp_path / "outdir" / "00000.png").exists()


@pytest.mark.parametrize("name", [n for n in COMMANDS if n != "control"])  # the fixture replaces control's checking loader
def test_fp16_on_the_cpu_is_one_error_line(name, tiny, tmp_path, invoke):
    code, out, err = invoke(*_args(name, tmp_path, tmp_path / "o.png", "--dtype", "fp16"))
    assert code != 0 and not (tmp_path / "o.png").exists()
    assert err.strip().count("\n") == 0 and err.startswith("error: ") and "fp16" in err


PIXEL_COMMANDS = {"upscale": ["upscale", "{tmp}/in.png"], "variations": ["variations", "{tmp}/in.png", "--n", 1,
                                                                      "--sr-steps", 1]}


@pytest.mark.parametrize("name", list(PIXEL_COMMANDS))
def test_fast_gives_the_same_image_with_the_builtin_pixel_models(name, saved, tmp_path, invoke, monkeypatch):
    """upscale (pixel cascade) and variations (unCLIP) apply --fast to their step networks."""
    from condiff import acceleration

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    sped = []
    real = acceleration.accelerate
    monkeypatch.setattr(acceleration, "accelerate", lambda m, o=None, **kw: sped.append(real(m, o, **kw))
                        or sped[-1])
    args = [a.format(tmp=tmp_path) if isinstance(a, str) else a for a in PIXEL_COMMANDS[name]]
    for out, flags in (("plain.png", []), ("fast.png", ["--fast"])):
        code, _, err = invoke(*args, "--steps", 1, "--device", "cpu", "--no-progress", "--no-provenance", "--out",
                              tmp_path / out, *flags)
        assert code == 0, err
    model = sped[-1]  # the outer call (unCLIP's accelerates its upsampler cascade first)
    assert len(sped) == (2 if name == "variations" else 1)
    assert model.info["speed"]["fused_qkv"] and model.info["speed"]["channels_last"]
    assert all(m.fused is not None for net in acceleration.accelerated_networks(model) for m in net.modules()
               if isinstance(m, Attention))
    assert len(saved) == 2 and saved[0].shape == saved[1].shape
    assert (saved[1] - saved[0]).abs().max() <= 1e-4


def test_speed_flags_refuse_a_model_with_no_step_network(monkeypatch):
    from condiff.commands import _common as C
    from condiff.errors import InputError

    assert C.speed_up(object()) is not None  # no flag: nothing to apply, the model is returned
    with pytest.raises(InputError, match="--compile covers no network of 'Bare'; run without it"):
        C.speed_up(SimpleNamespace(name="Bare", info={}), compile=True)


def test_upscale_runs_in_bf16_on_the_cpu(tmp_path, invoke):
    Image.fromarray(np.full((16, 16, 3), 120, np.uint8)).save(tmp_path / "in.png")
    code, _, err = invoke("upscale", tmp_path / "in.png", "--steps", 1, "--device", "cpu", "--dtype", "bf16",
                          "--no-progress", "--no-provenance", "--out", tmp_path / "o.png")
    assert code == 0, err
    assert Image.open(tmp_path / "o.png").size == (32, 32)


# ------------------------------------------------------------------------------------------ condiff serve
@pytest.fixture
def served(monkeypatch):
    """``condiff serve`` in-process: uvicorn.run keeps the app in ``served.apps`` and runs
    ``served.check(app)`` (while the server's state is open) instead of binding a port."""
    import uvicorn

    box = SimpleNamespace(apps=[], check=lambda app: None)

    def run(app, **kw):
        box.apps.append(app)
        box.check(app)  # a failed assertion becomes the command's error line and exit status

    monkeypatch.setattr(uvicorn, "run", run)
    return box


def test_serve_applies_dtype_and_fast_once_and_reports_them(served, invoke):
    def check(app):
        with TestClient(app, raise_server_exceptions=False) as client:
            options = client.get("/sdapi/v1/options").json()
            assert options["condiff_dtype"] == "bf16"
            assert options["condiff_speed"]["fused_qkv"] and not options["condiff_speed"]["compile"]
            state = app.state.condiff
            assert state.model.dtype == torch.bfloat16 and state.model.info["speed"]["channels_last"]
            res = client.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", "steps": 2, "width": 64,
                                                         "height": 64, "seed": 1})
            assert res.status_code == 200, res.text
            assert len(res.json()["images"]) == 1

    served.check = check
    code, _, err = invoke("serve", "--device", "cpu", "--dtype", "bf16", "--fast", "--no-studio", "--port", 7901)
    assert code == 0, err
    assert len(served.apps) == 1 and "(bf16, fused_qkv+channels_last)" in err


def test_server_state_without_speed_options_says_so():
    from condiff.server.state import ServerState

    state = ServerState(model=tiny_ldm(), model_name="tiny", device=torch.device("cpu"))
    assert state.options["condiff_dtype"] == "fp32" and state.options["condiff_speed"] is None
    assert ServerState(model=None, model_name="x", device="cpu").options["condiff_speed"] is None


@pytest.mark.parametrize("flags", [["--dtype", "fp16"]])
def test_serve_stops_before_binding_on_an_option_the_device_cannot_run(flags, served, invoke):
    code, _, err = invoke("serve", "--device", "cpu", "--no-studio", *flags)
    assert code == 1 and not served.apps  # the port was never bound
    assert err.startswith("error: ") and err.strip().count("\n") == 0


def test_studio_takes_the_same_speed_options(invoke):
    code, out, _ = invoke("studio", "--help")
    assert code == 0 and all(flag in out for flag in ("--dtype", "--fast", "--compile"))
