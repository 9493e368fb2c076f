"""Half-precision U-Nets through every pipeline, on the CPU in bf16 (the same code path as fp16/bf16
on a GPU: the denoiser casts the network's input and conditioning to the network's dtype and its
output back to float32, and samplers keep float32 state).

Tolerances. bf16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.2 % per operation); one
denoiser call of the built-in U-Net then differs from float32 by ≈ 1 % relative at σ ≤ 3 (checked
below at ≤ 3 %). Whole pipelines integrate that error over the steps of a sampler, with CFG
amplifying it (the small built-in model's trajectories are sensitive), so images are compared
with a PSNR floor: every image finite, at least ``PSNR_FLOOR`` dB from the float32 image
(measured 19-50 dB for these short schedules), the mean absolute difference below ``MEAN_ABS``
(in [0, 1] pixel units), and far closer to the float32 image of the same seed than that image
is to another seed's (the difference is rounding, not a different sample).
"""

from __future__ import annotations

import copy

import pytest
import torch

from condiff.denoisers import Cond, NetworkDenoiser, DiscreteTime
from condiff.models.registry import load_model
from condiff.pipelines import inpaint as inpaint_pipe
from condiff.pipelines import text2img
from condiff.schedules import DiscreteSchedule

pytestmark = pytest.mark.usefixtures("single_thread", "onednn")


@pytest.fixture(scope="module")
def onednn():
    """bf16 CPU convolutions need oneDNN (load_model turns it on for half precision; the test
    suite's conftest turns it off for steady fp32 timings)."""
    was = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = True
    yield
    torch.backends.mkldnn.enabled = was

PSNR_FLOOR = 15.0
MEAN_ABS = 0.08
FAST = dict(steps=5, show_progress=False)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return 99.0 if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def assert_close_images(full: torch.Tensor, half: torch.Tensor) -> None:
    assert full.shape == half.shape
    assert torch.isfinite(half).all()
    assert half.dtype == torch.float32
    p = psnr(full, half)
    mean_abs = float((full - half).abs().mean())
    assert p >= PSNR_FLOOR and mean_abs <= MEAN_ABS, f"bf16 vs fp32: PSNR {p:.1f} dB, mean |Δ| {mean_abs:.4f}"


@pytest.fixture(scope="module")
def models():
    full = load_model("builtin", dtype=torch.float32)
    half = copy.deepcopy(full).to(dtype=torch.bfloat16)
    torch.backends.mkldnn.enabled = True  # load_model in fp32 turned it off (the onednn fixture restores it)
    assert half.dtype == torch.bfloat16 and next(half.vae.parameters()).dtype == torch.bfloat16
    return full, half


def _image(size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    img = torch.stack([xx, yy, (xx * yy)]).unsqueeze(0)
    return (img + 0.05 * torch.rand(1, 3, size, size, generator=g)).clamp(0, 1)


def test_denoiser_call_in_bf16_returns_float32_close_to_fp32(models):
    full, half = models
    cond = full.encode_prompts(["a red circle", "a blue square"])
    x = torch.randn(2, *full.latent_shape(64, 64), generator=torch.Generator().manual_seed(0))
    for s in (3.0, 0.5, 0.05):
        want = full.denoiser()(x * s, torch.tensor([s, s]), cond)
        got = half.denoiser()(x * s, torch.tensor([s, s]), half.encode_prompts(["a red circle", "a blue square"]))
        assert got.dtype == torch.float32
        rel = float((want - got).norm() / want.norm())
        assert rel < 0.03, f"σ={s}: relative error {rel:.4f}"


def test_network_denoiser_casts_every_conditioning_field():
    """Context, float labels, concat channels and control residuals reach the network in its dtype."""
    seen = {}

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones((), dtype=torch.bfloat16))

        def forward(self, x, t, cond):
            seen.update(x=x.dtype, t=t.dtype, ctx=cond.context.dtype, lab=cond.class_labels.dtype,
                        down=cond.control["down"][0].dtype, mid=cond.control["mid"].dtype,
                        mask=cond.context_mask.dtype, extra=cond.extra["level"].dtype)
            return x[:, :2] * self.w

    den = NetworkDenoiser(Probe(), "eps", DiscreteTime(DiscreteSchedule.named("linear")), sigma_min=0.01, sigma_max=100)
    cond = Cond(context=torch.randn(2, 3, 4), context_mask=torch.ones(2, 3, dtype=torch.bool),
                class_labels=torch.randn(2, 5), concat=torch.randn(2, 1, 4, 4),
                control={"down": [torch.randn(2, 2, 4, 4)], "mid": torch.randn(2, 2, 2, 2)},
                extra={"level": torch.rand(2)})
    out = den(torch.randn(2, 2, 4, 4), torch.tensor([1.0, 2.0]), cond)
    assert out.dtype == torch.float32
    assert seen == dict(x=torch.bfloat16, t=torch.float32, ctx=torch.bfloat16, lab=torch.bfloat16,
                        down=torch.bfloat16, mid=torch.bfloat16, mask=torch.bool, extra=torch.bfloat16)


def test_text_to_image_and_sdedit(models):
    full, half = models
    kw = dict(height=64, width=64, batch_size=2, **FAST)
    want = text2img.generate(full, "a red circle", **kw).images
    got = text2img.generate(half, "a red circle", **kw).images
    assert_close_images(want, got)
    other_seed = text2img.generate(full, "a red circle", seed=7, **kw).images
    assert psnr(want, got) > psnr(want, other_seed) + 6.0
    img = _image()
    assert_close_images(text2img.sdedit(full, img, "a red circle", strength=0.5, **FAST).images,
                        text2img.sdedit(half, img, "a red circle", strength=0.5, **FAST).images)


@pytest.mark.parametrize("method", ["model", "blend", "repaint"])
def test_inpainting(models, method):
    full, half = models
    img = _image()
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    kw = dict(method=method, steps=4, show_progress=False, resamples=1, jump_length=2)
    assert_close_images(inpaint_pipe.inpaint(full, img, mask, "a red circle", **kw).images,
                        inpaint_pipe.inpaint(half, img, mask, "a red circle", **kw).images)


def test_controlnet(models):
    from condiff.pipelines.control import control

    full, half = models
    edges = (_image()[:, :1] > 0.5).float().expand(1, 3, 64, 64)
    kw = dict(kinds="canny", preprocess=False, height=64, width=64, **FAST)
    assert_close_images(control(full, edges, "a red circle", **kw).images,
                        control(half, edges, "a red circle", **kw).images)


def test_cascade_and_unclip():
    from condiff.models.cascade import load_cascade
    from condiff.models.unclip import load_unclip
    from condiff.pipelines import cascade, unclip

    for loader, pipe in ((load_cascade, cascade), (load_unclip, unclip)):
        full = pipe.generate(loader(dtype=torch.float32), "a red circle", steps=4, sr_steps=3, show_progress=False)
        half = pipe.generate(loader(dtype=torch.bfloat16), "a red circle", steps=4, sr_steps=3, show_progress=False)
        assert_close_images(full.images, half.images)


def test_lora_training_on_a_bf16_model(models, tmp_path):
    """A LoRA trained on the bf16 model (float32 adapters over frozen bf16 weights)
    generates finite images close to the same LoRA on the fp32 model."""
    from condiff.personalize import ImageSet, LoRATrainConfig, train_lora
    from condiff.personalize.lora_formats import load_lora, lora_components

    full, half = models
    half = copy.deepcopy(half)
    images = ImageSet(_image(128) * 2 - 1)
    cfg = LoRATrainConfig(rank=2, lr=1e-2, steps=2, batch_size=1, progress=False, checkpoint_every=0)
    result = train_lora(half, images, ["sks, a photo"], cfg, out=tmp_path / "l.safetensors")
    assert all(p.dtype == torch.float32 for p in result.network.parameters())
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.loop.history)
    ref = copy.deepcopy(full)
    load_lora(tmp_path / "l.safetensors", lora_components(ref))
    kw = dict(height=64, width=64, **FAST)
    assert_close_images(text2img.generate(ref, "sks, a photo", **kw).images,
                        text2img.generate(half, "sks, a photo", **kw).images)


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_stable_diffusion_folder_in_bf16(tmp_path, family):
    """A (tiny, random) Stable Diffusion folder loaded with dtype=bfloat16 generates like fp32."""
    pytest.importorskip("diffusers")
    from condiff.models.sd_loader import load_sd
    from test_sd_loading import save_folder, tiny_text, tiny_unet, tiny_vae

    pred = "epsilon" if family == "sd1" else "v_prediction"
    folder = save_folder(tmp_path / family, tiny_unet(family), tiny_vae(), tiny_text(family), family, pred)
    kw = dict(height=64, width=64, steps=4, show_progress=False)
    full = text2img.generate(load_sd(folder, dtype=torch.float32), "a red circle", **kw).images
    half_model = load_sd(folder, dtype=torch.bfloat16)
    assert half_model.dtype == torch.bfloat16
    torch.backends.mkldnn.enabled = True
    assert_close_images(full, text2img.generate(half_model, "a red circle", **kw).images)


def test_textual_inversion_on_a_bf16_unet(models):
    """The learned token rows (float32, in the text encoder) train through a bf16 U-Net."""
    from condiff.personalize import ImageSet, TextualInversionConfig, train_textual_inversion

    _, half = models
    half = copy.deepcopy(half)
    cfg = TextualInversionConfig(token="<zq>", initializer="circle", steps=2, batch_size=1, progress=False,
                                 checkpoint_every=0)
    res = train_textual_inversion(half, ImageSet(_image(128) * 2 - 1), cfg)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in res.loop.history)
    vectors = res.embedding.vectors
    assert torch.isfinite(vectors).all() and vectors.dtype == torch.float32
    images = text2img.generate(half, "a photo of <zq>", height=64, width=64, **FAST).images
    assert torch.isfinite(images).all()


def test_cli_generates_in_bf16(tmp_path):
    from typer.testing import CliRunner

    from condiff import cli

    if not any("generate" in (c.name or getattr(c.callback, "__name__", "")) for c in cli.app.registered_commands):
        cli._register_commands()
    out = tmp_path / "bf16.png"
    res = CliRunner().invoke(cli.app, ["generate", "a red circle", "--steps", "2", "--dtype", "bf16", "--device", "cpu",
                                       "--no-progress", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.exists()
