"""ControlNet pipeline: schedule gating, multi-ControlNet sums, int8 weights, conditions, `condiff control`."""

import json
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from condiff.images import read_png_parameters
from condiff.models.ldm import LatentDiffusion
from condiff.models.weights import quantize_int8, save_weights
from condiff.nn.autoencoder import AutoencoderConfig, AutoencoderKL
from condiff.nn.controlnet import ControlNet, sum_controls
from condiff.nn.unet import UNet, UNetConfig
from condiff.pipelines.control import (
    ControlSchedule, ControlUnit, control, load_controlnet_folder, prepare_condition, schedule_progress,
)
from condiff.pipelines.text2img import generate
from condiff.preprocess import canny
from condiff.schedules import DiscreteSchedule

DIM = 8


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny networks: see conftest.single_thread


class HashText(nn.Module):
    """Deterministic stand-in text encoder: each prompt -> a fixed random context [4, DIM]."""

    def forward(self, prompts):
        ctx = torch.stack([torch.randn(4, DIM, generator=torch.Generator().manual_seed(zlib.crc32(p.encode())))
                           for p in prompts])
        return ctx, torch.ones(len(prompts), 4, dtype=torch.bool)


def tiny_model(name="builtin"):
    torch.manual_seed(0)
    unet = UNet(UNetConfig(in_channels=4, out_channels=4, sample_size=8, block_out_channels=(16, 32),
                           attention_levels=(False, True), layers_per_block=1, num_attention_heads=2,
                           cross_attention_dim=DIM, norm_num_groups=8)).eval().requires_grad_(False)
    vae = AutoencoderKL(AutoencoderConfig(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4,
                                          sample_size=16, scaling_factor=1.0)).eval().requires_grad_(False)
    return LatentDiffusion(name, unet, vae, HashText(), DiscreteSchedule.named("scaled_linear", 1000), "eps", 1.0, 16)


def controlnet(model, seed=1, trained=True):
    """A ControlNet for the tiny model; ``trained`` replaces the zero convolutions by random ones."""
    net = ControlNet.from_unet(model.unet, conditioning_embedding_out_channels=(16, 32))
    if trained:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]:
                m.weight.copy_(0.3 * torch.randn(m.weight.shape, generator=g))
    return net.eval().requires_grad_(False)


def cond_image(seed=0, batch=1):
    return torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


FAST = dict(steps=3, seed=0, guidance=3.0, show_progress=False)


def test_zero_scale_or_outside_window_or_zero_init_leaves_generate_bit_identical():
    model = tiny_model()
    ref = generate(model, "a red cat", **FAST)
    c = cond_image()
    fresh = {"canny": controlnet(model, trained=False)}
    trained = {"canny": controlnet(model)}
    same = [
        control(model, c, "a red cat", kinds="canny", controlnets=fresh, preprocess=False, **FAST),
        control(model, c, "a red cat", kinds="canny", controlnets=trained, scales=0.0, preprocess=False, **FAST),
        # the 3 Karras steps sit at progress 0, 0.57 and 1 (σ_max … σ_min): none inside [0.1, 0.5]
        control(model, c, "a red cat", kinds="canny", controlnets=trained, start=0.1, end=0.5, preprocess=False, **FAST),
    ]
    for r in same:
        assert torch.equal(r.images, ref.images) and torch.equal(r.latents, ref.latents)
    active = control(model, c, "a red cat", kinds="canny", controlnets=trained, preprocess=False, **FAST)
    assert (active.latents - ref.latents).abs().max() > 1e-3  # the same ControlNet does act inside its window
    assert active.params["pipeline"] == "control" and active.params["control"][0]["type"] == "canny"
    assert torch.equal(active.extras["conditions"]["canny"], c)


def test_schedule_window_matches_step_fractions():
    model = tiny_model()
    net = controlnet(model)
    calls = []
    net.register_forward_hook(lambda m, args, out: calls.append(float(args[1].reshape(-1)[0])))
    steps = 10
    sigmas = model.schedule.timestep_sigmas(steps)
    den = ControlSchedule(model.denoiser(), [ControlUnit(net, cond_image(), 1.0, 0.2, 0.6)])
    x, cond = torch.randn(1, 4, 8, 8), model.encode_prompts(["a cat"])
    active_steps = []
    for i, s in enumerate(sigmas[:-1]):
        before = len(calls)
        den(x, s.float(), cond)
        if len(calls) > before:
            active_steps.append(i)
    # diffusers' rule: step i of N is controlled iff i/N >= start and (i+1)/N <= end
    assert active_steps == [i for i in range(steps) if i / steps >= 0.2 and (i + 1) / steps <= 0.6] == [2, 3, 4, 5]
    p = schedule_progress(model.denoiser(), sigmas[:-1].float())
    assert p[0] < 1e-6 and torch.all(p[1:] > p[:-1]) and abs(p[-1] - 0.9) < 0.01


def _manual(model, x, sigma, cond, units):
    """x − σ·ε̂ with the residuals of ``units`` summed by hand (ε-model, VP input scaling)."""
    den = model.denoiser()
    xin = x / (sigma**2 + 1) ** 0.5
    t = den.time(torch.full((x.shape[0],), sigma))
    res = [net(xin, t, cond, img.repeat(x.shape[0] // img.shape[0], 1, 1, 1), s) for net, img, s in units]
    ctl = sum_controls(res) if res else None
    return x - sigma * model.unet(xin, t, cond.replace(control=ctl))


def test_two_controlnets_sum_their_residuals_and_mixed_sigma_rows_use_their_own_units():
    model = tiny_model()
    n1, n2 = controlnet(model, 1), controlnet(model, 2)
    i1, i2 = cond_image(1), cond_image(2)
    x, cond = torch.randn(2, 4, 8, 8), model.encode_prompts(["a cat", "a dog"])
    sigma = float(model.schedule.sigmas[700])
    both = ControlSchedule(model.denoiser(), [ControlUnit(n1, i1, 0.7), ControlUnit(n2, i2, 1.3)])
    out = both(x, sigma, cond)
    expected = _manual(model, x, sigma, cond, [(n1, i1, 0.7), (n2, i2, 1.3)])
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    only1 = _manual(model, x, sigma, cond, [(n1, i1, 0.7)])
    assert (out - only1).abs().max() > 1e-3 and (only1 - _manual(model, x, sigma, cond, [])).abs().max() > 1e-3
    # per-row σ: row 0 early (both active), row 1 late (unit 2 ends at 0.5) -> only unit 1
    late = ControlSchedule(model.denoiser(), [ControlUnit(n1, i1, 0.7), ControlUnit(n2, i2, 1.3, end=0.5)])
    s_hi, s_lo = float(model.schedule.sigmas[900]), float(model.schedule.sigmas[100])
    mixed = late(x, torch.tensor([s_hi, s_lo]), cond)
    r0 = _manual(model, x[:1], s_hi, cond.select(slice(0, 1)), [(n1, i1, 0.7), (n2, i2, 1.3)])
    r1 = _manual(model, x[1:], s_lo, cond.select(slice(1, 2)), [(n1, i1, 0.7)])
    torch.testing.assert_close(mixed, torch.cat([r0, r1]), rtol=1e-4, atol=1e-5)


def save_int8(net, folder):
    return save_weights(quantize_int8(net.state_dict()), folder,
                        {"kind": "controlnet", "network": net.controlnet_config.to_dict()}, dtype=None)


def test_int8_controlnet_folder_loads_close_to_the_float_network(tmp_path):
    model = tiny_model()
    net = controlnet(model)
    files = save_int8(net, tmp_path / "cn")
    stored = sum((tmp_path / "cn" / f).stat().st_size for f in files)
    assert stored < 0.3 * sum(v.numel() * 4 for v in net.state_dict().values())
    loaded, config = load_controlnet_folder(tmp_path / "cn")
    assert config["kind"] == "controlnet" and all(p.dtype == torch.float32 for p in loaded.parameters())
    x, c = torch.randn(1, 4, 8, 8), model.encode_prompts(["a cat"])
    a, b = net(x, 500.0, c, cond_image()), loaded(x, 500.0, c, cond_image())
    rel = (a["mid"] - b["mid"]).norm() / a["mid"].norm()
    assert 0 < rel < 0.02
    (tmp_path / "cn" / "config.json").write_text(json.dumps({**config, "kind": "unet"}))
    with pytest.raises(ValueError, match="not a ControlNet"):
        load_controlnet_folder(tmp_path / "cn")


def test_prepare_condition_runs_the_preprocessor_after_fitting(tmp_path):
    rng = np.random.default_rng(0)
    arr = np.zeros((24, 32, 3), np.uint8)
    arr[4:20, 8:24] = rng.integers(0, 255, 3, dtype=np.uint8)  # a flat rectangle: clean Canny edges
    path = tmp_path / "in.png"
    Image.fromarray(arr).save(path)
    c = prepare_condition(path, "canny", size=(16, 16))
    assert c.shape == (1, 3, 16, 16) and c.min() >= 0 and c.max() <= 1
    fitted = prepare_condition(path, "canny", size=(16, 16), preprocess=False)
    expected = canny((fitted[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
    assert np.array_equal((c[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy(), expected)
    assert set(np.unique(expected)) <= {0, 255} and expected.max() == 255
    with pytest.raises(ValueError, match="unknown control type"):
        prepare_condition(path, "sketch")


# ------------------------------------------------------------------------------ CLI


@pytest.fixture
def cli(tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from condiff.commands import control as cmd
    from condiff.models import registry

    model = tiny_model()
    monkeypatch.setattr(cmd, "load_model", lambda name, device, dtype: model)
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path / "weights")
    save_int8(controlnet(model), tmp_path / "weights" / "controlnet-canny")
    app = typer.Typer()
    cmd.register(app)
    app.command("noop")(lambda: None)  # keep `control` a named sub-command
    arr = np.full((20, 20, 3), 250, np.uint8)
    arr[5:15, 6:14] = (200, 40, 40)
    Image.fromarray(arr).save(tmp_path / "in.png")
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["control", *map(str, args)])


def test_cli_writes_result_and_condition(tmp_path, cli):
    out = tmp_path / "res" / "cat.png"
    res = cli(tmp_path / "in.png", "a red cat", "--type", "canny", "--steps", "2", "--out", out, "--no-progress", "--json",
              "--device", "cpu", "--seed", "3")
    assert res.exit_code == 0, (res.output, res.exception)
    report = json.loads(res.stdout.strip().splitlines()[-1])
    cond_path = tmp_path / "res" / "cat.canny.png"
    assert report["out"] == str(out) and report["conditions"]["canny"] == str(cond_path)
    assert np.asarray(Image.open(out)).shape == (16, 16, 3)
    params = read_png_parameters(out)
    assert params["pipeline"] == "control" and params["seed"] == 3 and params["control"][0]["type"] == "canny"
    fitted = prepare_condition(tmp_path / "in.png", "canny", size=(16, 16), preprocess=False)
    expected = canny((fitted[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
    assert np.array_equal(np.asarray(Image.open(cond_path)), expected) and expected.max() == 255
    again = cli(tmp_path / "in.png", "a red cat", "--type", "canny", "--steps", "2", "--out", out, "--no-progress")
    assert isinstance(again.exception, FileExistsError)  # no silent overwrite


def test_cli_bad_input_gives_clear_errors(tmp_path, cli):
    base = ["--steps", "1", "--no-progress", "--out", tmp_path / "o.png"]
    res = cli(tmp_path / "in.png", "x", "--type", "sketch", *base)
    assert isinstance(res.exception, ValueError) and "unknown control type" in str(res.exception)
    assert "canny" in str(res.exception)
    res = cli(tmp_path / "in.png", "x", "--type", "canny", "--type", "depth", *base)
    assert isinstance(res.exception, ValueError) and "no ControlNet of type 'depth'" in str(res.exception)
    assert "installed types: canny" in str(res.exception)
    (tmp_path / "notes.png").write_text("not an image")
    res = cli(tmp_path / "notes.png", "x", "--type", "canny", *base)
    assert isinstance(res.exception, ValueError) and "not a readable image" in str(res.exception)
    res = cli(tmp_path / "missing.png", "x", "--type", "canny", *base)
    assert isinstance(res.exception, FileNotFoundError)
    assert not (tmp_path / "o.png").exists()


def test_non_builtin_model_needs_an_explicit_controlnet():
    model = tiny_model(name="my-sd")
    with pytest.raises(ValueError, match="no ControlNet of type 'canny' for model 'my-sd'"):
        control(model, cond_image(), "x", kinds="canny", preprocess=False, steps=1, show_progress=False)
    res = control(model, cond_image(), "x", kinds="canny", controlnets={"canny": controlnet(model)}, preprocess=False,
                  steps=1, show_progress=False)
    assert res.images.shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="start ≤ end"):
        control(model, cond_image(), "x", kinds="canny", controlnets={"canny": controlnet(model)}, start=0.8, end=0.2,
                preprocess=False, steps=1, show_progress=False)
