"""Cascaded diffusion (thesis 3.2.2): SR3 stage with noise-conditioning augmentation, pipelines, loading."""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F

from condiff.denoisers import Cond, append_dims, sigma_batch
from condiff.metrics import psnr
from condiff.models.cascade import (AUG_LABEL_SCALE, CascadeModel, ResidualDenoiser, augmentation_gamma,
                                    cascade_base_config, cascade_sr_config, downsample, load_cascade, noise_augment,
                                    upsample_low_res)
from condiff.nn.unet import UNet
from condiff.pipelines import cascade as pipe
from training.export import export_component

CTX_DIM = 32


class FakeText:
    """Deterministic stand-in for MiniLM: prompt -> 4 tokens of width 32 (seeded by a hash of the prompt)."""

    def __call__(self, prompts):
        rows = [torch.randn(4, CTX_DIM, generator=torch.Generator().manual_seed(zlib.crc32(p.encode()))) for p in prompts]
        return torch.stack(rows), torch.ones(len(prompts), 4, dtype=torch.bool)


TINY = dict(block_out_channels=(16, 32), attention_levels=(False, True), num_attention_heads=(1, 1),
            norm_num_groups=8, cross_attention_dim=CTX_DIM)
# the SR stage attends only at 1/8 of its resolution (16² for a 128² output), like the built-in one
TINY_SR = dict(block_out_channels=(8, 8, 8, 16), attention_levels=(False, False, False, True),
               num_attention_heads=(1, 1, 1, 1), norm_num_groups=8, cross_attention_dim=CTX_DIM)


def tiny_cascade(base_size=16, with_base=True, seed=0) -> CascadeModel:
    torch.manual_seed(seed)
    base = UNet(cascade_base_config(sample_size=base_size, **TINY)).eval() if with_base else None
    sr = UNet(cascade_sr_config(sample_size=2 * base_size, **TINY_SR)).eval()
    for net in (base, sr):
        if net is not None:  # a non-trivial output layer (the default init is near zero there)
            torch.nn.init.normal_(net.conv_out.weight, std=0.05)
    return CascadeModel(base, sr, FakeText(), base_size=base_size, info={"default_steps": 2})


def smooth_images(n=1, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, size // 8, size // 8, generator=g), size=(size, size), mode="bilinear",
                         align_corners=False)


class ConcatEcho(torch.nn.Module):
    """x0-network that returns the (noise-augmented, upsampled) low-resolution channels: the SR stage
    is then the identity on the low-resolution content."""

    def forward(self, x, t, cond=None):
        self.labels = cond.class_labels.clone()
        return x[:, 3:6]


class ExactGaussianSR:
    """The exact denoiser E[y | x, ỹ] for y ~ N(0, I), x = y + σ ε (VE) and the augmented
    conditioning ỹ = √γ y + √(1−γ) ε′, with γ read from the told level in cond.class_labels.
    Precision-weighted fusion of the two noisy views of y."""

    sigma_min, sigma_max = 0.002, 80.0

    def __call__(self, x, sigma, cond):
        level = cond.class_labels / AUG_LABEL_SCALE
        gamma = append_dims(augmentation_gamma(level).to(x), x.ndim).clamp(max=1 - 1e-6)
        s2 = append_dims(torch.as_tensor(sigma, dtype=x.dtype).expand(x.shape[0]), x.ndim) ** 2
        prec = 1 + gamma / (1 - gamma) + 1 / s2
        return (gamma.sqrt() * cond.concat / (1 - gamma) + x / s2) / prec


def test_noise_augment_levels():
    y = torch.randn(2000, 3)
    eps = torch.randn(2000, 3)
    assert torch.equal(noise_augment(y, 0.0, eps), y)  # level 0: the conditioning itself
    assert torch.allclose(noise_augment(y, 1.0, eps), eps, atol=1e-6)  # level 1: pure noise
    out = noise_augment(torch.zeros(2000, 3), 0.5, eps)
    assert abs(out.std().item() - (1 - augmentation_gamma(0.5)).sqrt().item()) < 0.03
    per_sample = noise_augment(y[:2], torch.tensor([0.0, 1.0]), eps[:2])
    assert torch.equal(per_sample[0], y[0]) and torch.allclose(per_sample[1], eps[1], atol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        noise_augment(y, 1.5, eps)


def test_sr_stage_output_is_128_and_seeded():
    model = tiny_cascade(base_size=64, with_base=False)
    low = smooth_images(2, 64)
    a = pipe.upscale(model, low, noise_level=0.2, steps=2, seed=3, show_progress=False)
    assert a.images.shape == (2, 3, 128, 128) and 0 <= a.images.min() and a.images.max() <= 1
    assert a.params["output_size"] == [128, 128] and a.params["noise_level"] == 0.2
    one = pipe.upscale(model, low[1:], noise_level=0.2, steps=2, seed=4, show_progress=False)
    assert torch.allclose(one.images[0], a.images[1], atol=1e-5)  # sample i uses seed + i, whatever the batch
    other = pipe.upscale(model, low[:1], noise_level=0.2, steps=2, seed=99, show_progress=False)
    assert not torch.allclose(other.images[0], a.images[0], atol=1e-3)
    with pytest.raises(ValueError, match="no base stage"):
        model.base_denoiser()
    with pytest.raises(ValueError, match="multiple of 4"):
        pipe.upscale(model, low[:, :, :62, :62], show_progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pipe.upscale(model, low, noise_level=-0.1, show_progress=False)


def test_identity_sr_downsamples_back_to_its_input():
    model = tiny_cascade(base_size=64, with_base=False)
    echo = ConcatEcho()
    model.sr_unet, model.sr_prediction = echo, "x0"
    low = smooth_images(1, 64, seed=1)
    out = pipe.upscale(model, low, noise_level=0.0, steps=3, show_progress=False).images
    assert out.shape == (1, 3, 128, 128)
    err = (downsample(out, 2) - low).abs()
    # bicubic up + box down is not exactly the identity; on smooth images it is close (measured 45 dB)
    assert err.max() < 0.02 and psnr(downsample(out, 2), low) > 40
    assert torch.allclose(echo.labels, torch.zeros(1))  # level 0 told to the network


def test_noise_augmentation_level_is_honoured():
    model = tiny_cascade(base_size=64, with_base=False)
    echo = ConcatEcho()
    model.sr_unet, model.sr_prediction = echo, "x0"
    low = smooth_images(1, 64, seed=2)
    scores = []
    for level in (0.0, 0.3, 0.6, 0.9):
        out = pipe.upscale(model, low, noise_level=level, steps=2, seed=0, show_progress=False).images
        assert torch.allclose(echo.labels, torch.full((1,), level * AUG_LABEL_SCALE))  # the level reaches the net
        scores.append(psnr(downsample(out, 2), low).item())
    assert all(a > b + 1 for a, b in zip(scores, scores[1:])), scores

    # with the exact posterior denoiser, which uses the told level, the output's dependence on the
    # low-resolution input falls with the level and vanishes at level 1
    model.sr_denoiser = lambda upsampled=None: ExactGaussianSR()
    low = smooth_images(4, 64, seed=3)
    corr = []
    for level in (0.0, 0.5, 0.8, 1.0):
        out = pipe.upscale(model, low, noise_level=level, steps=8, seed=0, show_progress=False).images
        a, b = downsample(out, 2).flatten() - 0.5, low.flatten() - 0.5
        corr.append(float((a * b).sum() / (a.norm() * b.norm())))
    assert corr[0] > 0.99 and all(x > y for x, y in zip(corr, corr[1:])) and abs(corr[-1]) < 0.1, corr


def test_cascade_text_to_image_plumbing():
    model = tiny_cascade()
    res = pipe.generate(model, ["a red cat", "a blue dog"], guidance=3.0, steps=2, seed=5, show_progress=False)
    assert res.images.shape == (2, 3, 32, 32) and res.extras["stage1"].shape == (2, 3, 16, 16)
    again = pipe.generate(model, "a blue dog", guidance=3.0, steps=2, seed=6, show_progress=False)
    assert torch.allclose(again.images[0], res.images[1], atol=1e-5)  # batch-invariant, prompt-dependent
    assert not torch.allclose(res.images[0], res.images[1], atol=1e-3)
    assert res.params["seeds"] == [5, 6] and res.params["pipeline"] == "cascade-text2img"


@pytest.mark.parametrize("method", ["blend", "repaint"])
def test_cascade_inpainting_keeps_known_pixels(method):
    model = tiny_cascade()
    image = smooth_images(1, 32, seed=4)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:20, 10:26] = 1
    res = pipe.inpaint(model, image, mask, "a scarf", method=method, guidance=2.0, steps=3, seed=0,
                       jump_length=1, resamples=2, show_progress=False)
    keep = mask == 0
    assert torch.equal(res.images.masked_select(keep), image.masked_select(keep))  # composite: exact outside
    assert (res.extras["raw"] - image).abs().masked_select(keep).max() < 1e-5  # stage 2 blended the known pixels
    inside = (res.images - image).abs().masked_select(mask > 0)
    assert inside.mean() > 0.01  # something was generated inside
    low_known = F.adaptive_max_pool2d(mask, 16) == 0
    assert (res.extras["stage1"] - downsample(image, 2)).abs().masked_select(low_known).max() < 1e-5
    with pytest.raises(ValueError, match="multiple of 16"):
        pipe.inpaint(model, image[..., :24, :24], mask[..., :24, :24], "x", show_progress=False)
    with pytest.raises(ValueError, match="unknown inpainting method"):
        pipe.inpaint(model, image, mask, "x", method="magic", show_progress=False)


def test_load_cascade_from_exported_components(tmp_path):
    model = tiny_cascade()
    extra = {"schedule": {"name": "cosine", "steps": 1000}, "prediction": "v", "image_size": 16}
    export_component(model.base_unet, tmp_path / "cascade-base", kind="unet",
                     network_config=model.base_unet.config.to_dict(), extra=extra)
    with pytest.raises(ValueError, match="no cascade weights"):
        load_cascade(tmp_path / "nothing", text_encoder=FakeText())
    loaded = load_cascade(tmp_path, text_encoder=FakeText())
    assert loaded.sr_unet is None and loaded.base_size == 16
    x, t, cond = torch.randn(1, 3, 16, 16), torch.tensor([10.0]), Cond(context=torch.randn(1, 4, CTX_DIM))
    with torch.no_grad():
        assert torch.allclose(loaded.base_unet(x, t, cond), model.base_unet(x, t, cond), atol=2e-2)
    with pytest.raises(ValueError, match="cascade-sr"):
        loaded.sr_denoiser()


def test_upsample_low_res_shapes():
    x = torch.rand(2, 3, 8, 12) * 2 - 1
    up = upsample_low_res(x, (16, 24))
    assert up.shape == (2, 3, 16, 24) and up.abs().max() <= 1
    with pytest.raises(ValueError, match="divisible"):
        downsample(torch.zeros(1, 3, 5, 5), 2)


def test_upscale_command(tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    import condiff.models.cascade as cascade_models
    from condiff.commands import upscale as upscale_cmd
    from condiff.images import read_png_parameters, save_png

    model = tiny_cascade(base_size=16, with_base=False)
    monkeypatch.setattr(cascade_models, "load_cascade", lambda **kw: model)
    app = typer.Typer()
    app.callback()(lambda: None)
    upscale_cmd.register(app)
    src = save_png(smooth_images(1, 32)[..., :30], tmp_path / "in.png")  # W×H 30×32: cropped to 28×32
    run = CliRunner().invoke(app, ["upscale", str(src), "--noise-level", "0.3", "--steps", "2", "--no-progress"])
    assert run.exit_code == 0, run.output
    out = tmp_path / "in-x2.png"
    from PIL import Image

    assert Image.open(out).size == (56, 64)
    params = read_png_parameters(out)
    assert params["noise_level"] == 0.3 and params["pipeline"] == "cascade-upscale" and params["input"] == str(src)
    again = CliRunner().invoke(app, ["upscale", str(src), "--no-progress"])
    assert again.exit_code != 0 and "exists" in str(again.exception)


# --------------------------------------------------------------------------- residual SR


class GaussianDenoiser:
    """The exact denoiser of data ~ N(mean, std² I) in the VE view: (std² x + σ² mean) / (std² + σ²)."""

    def __init__(self, mean, std, sigma_min=0.002, sigma_max=80.0):
        self.mean, self.std, self.sigma_min, self.sigma_max = mean, std, sigma_min, sigma_max

    def __call__(self, x, sigma, cond=None):
        s2 = append_dims(sigma_batch(sigma, x), x.ndim) ** 2
        return (self.std ** 2 * x + s2 * self.mean) / (self.std ** 2 + s2)


class ZeroX0(torch.nn.Module):
    """x0-network that predicts 0 whatever it sees (as residual model: "nothing to add to bicubic")."""

    def forward(self, x, t, cond=None):
        return torch.zeros_like(x[:, :3])


def test_residual_denoiser_is_the_exact_x_space_denoiser():
    # r0 = k·(x0 − u) ~ N(m, s²)  <=>  x0 ~ N(u + m/k, (s/k)²): the wrapper must turn the exact
    # r-space denoiser into the exact x-space one, at every σ and with k ≠ 1
    g = torch.Generator().manual_seed(0)
    k, s = 3.0, 0.7
    m = torch.randn(1, 3, 8, 8, generator=g)
    u = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    inner = GaussianDenoiser(m, s)
    wrapped = ResidualDenoiser(inner, u, k)
    x = torch.randn(2, 3, 8, 8, generator=g) * 2
    for sigma in (torch.tensor([0.01, 0.3]), torch.tensor([2.0, 20.0]), 0.05):
        exact = GaussianDenoiser(u + m / k, s / k)(x, sigma)
        assert torch.allclose(wrapped(x, sigma), exact, atol=1e-5)
    assert wrapped.sigma_max == pytest.approx(80.0 / k) and wrapped.sigma_min == pytest.approx(0.002 / k)
    # a doubled batch (the stacked branches of CFG) reuses u per half; other batch sizes are refused
    xx = torch.cat([x, x + 0.5])
    assert torch.allclose(wrapped(xx, 0.4)[2:], wrapped(x + 0.5, 0.4), atol=1e-6)
    with pytest.raises(ValueError, match="does not fit"):
        wrapped(x[:1].expand(3, -1, -1, -1), 0.4)
    with pytest.raises(ValueError, match="positive"):
        ResidualDenoiser(inner, u, 0.0)


def test_residual_sampling_reaches_the_target_distribution():
    """Samplers are unchanged: the PF-ODE through the wrapper samples N(u + m/k, (s/k)²)."""
    from condiff.samplers import sample

    k, s = 4.0, 0.8
    u = torch.tensor([-0.5, 0.2, 0.9]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    m = torch.tensor([1.0, -2.0, 0.0]).view(1, 3, 1, 1)
    den = ResidualDenoiser(GaussianDenoiser(m, s), u, k)
    out = sample(den, (3000, 3, 2, 2), sampler="heun", steps=30, seed=0)
    mean, std = out.mean(0), out.std(0)
    assert torch.allclose(mean, (u + m / k)[0], atol=0.02), mean
    assert torch.allclose(std, torch.full_like(std, s / k), rtol=0.06), std


def test_residual_denoiser_scales_the_model_schedule():
    """schedule="model" through the wrapper gives the network exactly its own table's timesteps."""
    from condiff.denoisers import NetworkDenoiser
    from condiff.models.cascade import pixel_denoiser
    from condiff.samplers import make_sigmas
    from condiff.schedules import DiscreteSchedule

    sched = DiscreteSchedule.named("cosine", 1000)
    inner = pixel_denoiser(ZeroX0(), sched, "x0")
    wrapped = ResidualDenoiser(inner, torch.zeros(1, 3, 4, 4), 8.0)
    assert isinstance(inner, NetworkDenoiser)
    assert torch.allclose(make_sigmas(wrapped, 10, "model") * 8.0, make_sigmas(inner, 10, "model"), rtol=1e-9)
    sig = torch.tensor([0.01, 0.5, 30.0])
    assert torch.allclose(wrapped.time(sig), inner.time(8.0 * sig), atol=1e-3)


@pytest.mark.parametrize("level", [0.0, 0.5, 1.0])
def test_zero_residual_sr_is_bicubic_and_consistent(level):
    """A residual model whose network predicts r̂ = 0 returns the bicubic upsample exactly (with CFG
    too); the same network as a full-image model returns flat grey, nowhere near its input."""
    import dataclasses

    base = tiny_cascade(base_size=64, with_base=False)
    residual = dataclasses.replace(base, sr_unet=ZeroX0(), sr_prediction="x0", sr_residual=True, sr_residual_scale=8.0)
    low = smooth_images(2, 64, seed=5)
    out = pipe.upscale(residual, low, noise_level=level, guidance=2.0, steps=3, show_progress=False).images
    bicubic = (upsample_low_res(low * 2 - 1, 128) + 1) / 2
    assert torch.allclose(out, bicubic, atol=1e-5)
    assert psnr(downsample(out, 2), low).min() > 40  # consistency PSNR(↓SR(x), x)
    full = dataclasses.replace(residual, sr_residual=False)
    grey = pipe.upscale(full, low, noise_level=level, steps=3, show_progress=False).images
    assert psnr(downsample(grey, 2), low).max() < 20


def _export_sr(model, folder, **keys):
    extra = {"schedule": {"name": "cosine", "steps": 1000}, "prediction": "v", "low_res_size": 16, "sr_factor": 2,
             **keys}
    export_component(model.sr_unet, folder / "cascade-sr", kind="unet", network_config=model.sr_unet.config.to_dict(),
                     extra=extra)


def test_sr_configs_without_residual_keys_load_as_full_image_models(tmp_path):
    from condiff.denoisers import NetworkDenoiser
    from condiff.models.weights import WeightsError

    model = tiny_cascade(base_size=16, with_base=False)
    u = torch.zeros(1, 3, 32, 32)
    _export_sr(model, tmp_path / "old")
    old = load_cascade(tmp_path / "old", text_encoder=FakeText(), stages=("sr",))
    assert (old.sr_residual, old.sr_residual_scale) == (False, 1.0)
    assert type(old.sr_denoiser()) is NetworkDenoiser and type(old.sr_denoiser(upsampled=u)) is NetworkDenoiser

    _export_sr(model, tmp_path / "new", residual=True, residual_scale=8.0)
    new = load_cascade(tmp_path / "new", text_encoder=FakeText(), stages=("sr",))
    assert (new.sr_residual, new.sr_residual_scale) == (True, 8.0)
    den = new.sr_denoiser(upsampled=u)
    assert isinstance(den, ResidualDenoiser) and den.scale == 8.0
    with pytest.raises(ValueError, match="residual"):
        new.sr_denoiser()
    new.require("sr")  # what the experiments check before using a stage
    with pytest.raises(ValueError, match="cascade-base"):
        new.require("sr", "base")

    for bad, match in (({"residual": True}, "residual_scale"), ({"residual": "yes"}, "true or false"),
                       ({"residual": True, "residual_scale": -1.0}, "positive")):
        _export_sr(model, tmp_path / "bad", **bad)
        with pytest.raises(WeightsError, match=match):
            load_cascade(tmp_path / "bad", text_encoder=FakeText(), stages=("sr",))


def test_shipped_sr_config_is_read_with_its_residual_keys():
    from condiff.denoisers import NetworkDenoiser
    from condiff.models.registry import WEIGHTS_DIR
    from condiff.models.weights import read_config

    folder = WEIGHTS_DIR / "cascade-sr"
    if not (folder / "config.json").exists():
        pytest.skip("no shipped cascade-sr weights")
    cfg = read_config(folder)
    model = load_cascade(WEIGHTS_DIR, text_encoder=FakeText(), stages=("sr",))
    assert model.sr_residual is cfg.get("residual", False)
    den = model.sr_denoiser(upsampled=torch.zeros(1, 3, 128, 128))
    assert type(den) is (ResidualDenoiser if model.sr_residual else NetworkDenoiser)


@pytest.mark.parametrize("k", [None, 8.0])
def test_sr_objective_targets_the_scaled_residual(k):
    from condiff.models.cascade import pixel_denoiser
    from condiff.schedules import DiscreteSchedule
    from training.cascade import SRObjective

    sched = DiscreteSchedule.named("cosine", 1000)
    obj = SRObjective(pixel_denoiser(ZeroX0(), sched, "v"), sched, torch.zeros(4, CTX_DIM), residual_scale=k)
    seen = {}
    obj.loss = lambda den, x0, cond, g: seen.update(x0=x0, cond=cond) or x0.new_zeros(x0.shape[0])
    images = (smooth_images(3, 32, seed=6) * 255).round().to(torch.uint8)
    batch = {"images": images, "ctx": torch.randn(3, 2, 4, CTX_DIM), "flippable": torch.zeros(3, dtype=torch.bool)}
    obj(None, batch, torch.Generator().manual_seed(0))
    hi = images.float() / 127.5 - 1
    up = upsample_low_res(downsample(hi, 2), 32)
    assert torch.allclose(seen["x0"], hi if k is None else k * (hi - up), atol=1e-5)
    level = seen["cond"].class_labels / AUG_LABEL_SCALE  # the concat input is ỹ at the told level, in both modes
    resid = seen["cond"].concat - augmentation_gamma(level).sqrt().view(-1, 1, 1, 1) * up
    assert torch.allclose(resid.flatten(1).std(1), (1 - augmentation_gamma(level)).sqrt(), rtol=0.15, atol=0.02)
