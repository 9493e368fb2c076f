"""condiff's U-Net, autoencoder, text path, ControlNet and sampler == diffusers, on tiny random SD models.

The tiny models (tests/test_sd_loading.py) are saved as diffusers folders and as original-key single
files, loaded by condiff with no network, and compared with the diffusers modules they came from.
Tolerance: max abs error ≤ 1e-4 in fp32 for every component and for a full text-to-image run
(DDIM, 10 steps, classifier-free guidance 7.5, fixed start noise). The GPU test repeats the U-Net
comparison at the full SD 1.5 shape (859.5M parameters) in bf16.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
from test_sd_loading import HIDDEN, build_world  # noqa: E402  (shared tiny-model helpers)

from condiff.denoisers import Cond  # noqa: E402
from condiff.models.offline import no_network  # noqa: E402
from condiff.models.sd_configs import SD_VARIANTS  # noqa: E402
from condiff.models.sd_loader import load_controlnet, load_sd  # noqa: E402
from condiff.models.sd_text import text_core  # noqa: E402

TOL = 1e-4
TABLE: list[tuple[str, str, str, float]] = []


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny networks: see conftest.single_thread


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("sdp"))


@pytest.fixture(scope="module", autouse=True)
def _print_table():
    yield
    if TABLE:
        print("\nparity (max abs error, fp32):")
        for fam, fmt, comp, err in TABLE:
            print(f"  {fam:<4} {fmt:<16} {comp:<22} {err:.2e}")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("fmt", ["folder", "single"])
@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_components_match_diffusers(world, family, fmt):
    ref = world[family]
    with no_network():
        model = load_sd(ref[fmt])
    assert model.prediction == ("eps" if family == "sd1" else "v")
    x = torch.randn(2, 4, 8, 8, generator=_gen(0))
    ctx = torch.randn(2, 77, HIDDEN, generator=_gen(1))
    t = torch.tensor([10.0, 731.0])
    img = torch.rand(2, 3, 16, 16, generator=_gen(2)) * 2 - 1
    z = torch.randn(2, 4, 8, 8, generator=_gen(3))
    prompts = ["a photo of a cat", ""]
    with torch.no_grad():
        errs = {
            "unet": (model.unet(x, t, Cond(context=ctx)) - ref["unet"](x, t, encoder_hidden_states=ctx).sample),
            "vae encode (mean)": model.vae.encode(img).mean - ref["vae"].encode(img).latent_dist.mean,
            "vae decode": model.vae.decode(z) - ref["vae"].decode(z).sample,
        }
        ids, _ = model.text_encoder.tokenize(prompts)
        if family == "sd1":
            text_ref = ref["text"](ids).last_hidden_state
        else:  # SD 2.x: penultimate layer of the full OpenCLIP tower, then the final LayerNorm
            hidden = ref["text"](ids, output_hidden_states=True).hidden_states[-2]
            text_ref = text_core(ref["text"]).final_layer_norm(hidden)
        errs["text encoder"] = model.encode_prompts(prompts).context - text_ref
    for comp, diff in errs.items():
        err = diff.abs().max().item()
        TABLE.append((family, fmt, comp, err))
        assert err <= TOL, f"{family} {fmt} {comp}: {err}"
    assert errs["unet"].numel() > 0 and text_ref.abs().mean() > 0.1  # outputs are not trivially zero


@pytest.mark.parametrize("fmt", ["folder", "single"])
def test_controlnet_matches_diffusers(world, fmt):
    from condiff.nn.controlnet import ControlledUNet

    cn_ref, unet_ref = world["controlnet"]["net"], world["sd1"]["unet"]
    with no_network():
        net = load_controlnet(world["controlnet"][fmt], family="sd1")
        base = load_sd(world["sd1"]["single"], text_encoder=False)
    x = torch.randn(2, 4, 8, 8, generator=_gen(0))
    ctx = torch.randn(2, 77, HIDDEN, generator=_gen(1))
    t = torch.tensor([20.0, 640.0])
    hint = torch.rand(2, 3, 64, 64, generator=_gen(2))
    with torch.no_grad():
        down, mid = cn_ref(x, t, encoder_hidden_states=ctx, controlnet_cond=hint, conditioning_scale=0.8,
                           return_dict=False)
        ours = net(x, t, Cond(context=ctx), hint, 0.8)
        err = max((a - b).abs().max().item() for a, b in zip(down, ours["down"]))
        err = max(err, (mid - ours["mid"]).abs().max().item())
        ref_out = unet_ref(x, t, encoder_hidden_states=ctx, down_block_additional_residuals=down,
                           mid_block_additional_residual=mid).sample
        out = ControlledUNet(base.unet, [(net, hint, 0.8)])(x, t, Cond(context=ctx))
    assert len(ours["down"]) == len(down) == 9 and mid.abs().mean() > 1e-3
    TABLE.append(("sd1", f"controlnet-{fmt}", "residuals", err))
    TABLE.append(("sd1", f"controlnet-{fmt}", "controlled unet", (out - ref_out).abs().max().item()))
    assert err <= TOL
    assert (out - ref_out).abs().max().item() <= TOL


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_text_to_image_matches_diffusers_pipeline(world, family):
    """Same start noise, DDIM (η = 0, 10 trailing steps, final ᾱ = 1), CFG 7.5: images agree to 1e-4."""
    registry = pytest.importorskip("condiff.samplers.registry")
    guidance = pytest.importorskip("condiff.guidance")
    import condiff.samplers  # noqa: F401  (registers the samplers)
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    ref = world[family]
    folder = ref["folder"]
    scheduler = DDIMScheduler.from_pretrained(folder / "scheduler", timestep_spacing="trailing", set_alpha_to_one=True)
    pipe = StableDiffusionPipeline(
        vae=ref["vae"], text_encoder=ref["tower"], tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        unet=ref["unet"], scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn(1, 4, 8, 8, generator=_gen(7))
    prompt, steps, scale = "a photo of a cat", 10, 7.5
    expected = pipe(prompt, height=16, width=16, num_inference_steps=steps, guidance_scale=scale,
                    latents=noise.clone(), output_type="pt").images

    with no_network():
        model = load_sd(folder)
    cond, uncond = model.encode_prompts([prompt]), model.encode_prompts([""])
    denoiser = guidance.ClassifierFreeGuidance(model.denoiser(), scale, uncond)
    sigmas = model.schedule.timestep_sigmas(steps, spacing="trailing").float()
    x = noise * (1 + sigmas[0] ** 2).sqrt()  # the VP state x_T in the σ view: x = x_T / √ᾱ_T
    latents = registry.get_sampler("ddim")(denoiser, x, sigmas, cond=cond)
    image = (model.decode(latents) + 1) / 2
    err = (image - expected).abs().max().item()
    TABLE.append((family, "folder", f"txt2img ddim{steps} cfg{scale}", err))
    assert expected.std() > 0.05
    assert err <= TOL


@pytest.mark.gpu
def test_full_sd15_unet_bf16_parity_on_gpu():
    """Full SD 1.5 U-Net shape, random weights, through the single-file key map; bf16 on a GPU.

    condiff in bf16 must be as close to the fp32 reference as diffusers in bf16 is (≤ 1.5× its
    error), and condiff fp32 must equal diffusers fp32 to 1e-3 (TF32 off).
    """
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from diffusers import UNet2DConditionModel

    from condiff.models import sd_keymap as km
    from condiff.models.sd_configs import unet_config_from_ldm
    from condiff.models.sd_loader import build_unet

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    cfg = SD_VARIANTS["sd1"].unet
    ref = UNet2DConditionModel(**cfg).eval()
    ldm = km.unet_diffusers_to_ldm(ref.state_dict())
    ours_cfg = unet_config_from_ldm({k: tuple(v.shape) for k, v in ldm.items()}, "sd1")
    ours = build_unet(ours_cfg, km.unet_ldm_to_diffusers(ldm), torch.float32).cuda()
    ref = ref.cuda()
    assert sum(p.numel() for p in ours.parameters()) == 859_520_964
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, 4, 64, 64, device="cuda", generator=g)
    ctx = torch.randn(2, 77, 768, device="cuda", generator=g)
    t = torch.tensor([999.0, 250.0], device="cuda")
    with torch.no_grad():
        truth = ref(x, t, encoder_hidden_states=ctx).sample
        fp32_err = (ours(x, t, Cond(context=ctx)) - truth).abs().max().item()
        ref.to(torch.bfloat16)
        ours.to(torch.bfloat16)
        ref_bf16 = ref(x.bfloat16(), t, encoder_hidden_states=ctx.bfloat16()).sample.float()
        ours_bf16 = ours(x.bfloat16(), t, Cond(context=ctx.bfloat16())).float()
    ref_err = (ref_bf16 - truth).abs().max().item()
    our_err = (ours_bf16 - truth).abs().max().item()
    print(f"\nSD1.5 U-Net on GPU: fp32 max err {fp32_err:.2e}; bf16 max err condiff {our_err:.3e} "
          f"diffusers {ref_err:.3e}; |condiff-diffusers| bf16 {(ours_bf16 - ref_bf16).abs().max().item():.3e}; "
          f"output scale {truth.abs().max().item():.3f}")
    assert fp32_err <= 1e-3
    assert our_err <= 1.5 * ref_err + 1e-3
