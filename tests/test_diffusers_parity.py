"""condiff's U-Net, autoencoder and ControlNet reproduce diffusers' models numerically.

Tiny random-weight models are built in diffusers (test-only dependency), every parameter is
re-drawn from a seeded generator (so zero-initialised layers carry signal too), the state dict
is loaded into condiff's module with ``strict=True`` and no key mapping, and the fp32 outputs are
compared: max abs error ≤ 1e-5.
"""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers (test-only dependency) is not installed")

from condiff.denoisers import Cond  # noqa: E402
from condiff.nn import AutoencoderConfig, AutoencoderKL, ControlNet, ControlNetConfig, UNet, UNetConfig  # noqa: E402

TOL = 1e-5
TINY = dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, norm_num_groups=8, sample_size=16)


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Seeded re-draw of every parameter: weights ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.1²), biases ~ N(0, 0.1²)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim >= 2:
                p.copy_(noise / p[0].numel() ** 0.5)
            else:
                is_scale = name.endswith("weight") and "norm" in name.split(".")[-2]
                p.copy_(float(is_scale) + 0.1 * noise)
    return module


def _pair_unet(cfg: UNetConfig, seed: int = 0):
    ref = randomize_(diffusers.UNet2DConditionModel(**cfg.to_diffusers_config()), seed).eval()
    ours = UNet(UNetConfig.from_diffusers_config(dict(ref.config))).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert ours.config == cfg
    return ref, ours


def _inputs(cfg: UNetConfig, batch: int = 2, size: int = 16, tokens: int = 7, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, size, size, generator=g)
    t = torch.tensor([3.0, 617.25])[:batch]
    ctx = torch.randn(batch, tokens, cfg.cross_attention_dim, generator=g) if cfg.cross_attention_dim else None
    return x, t, ctx


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@torch.no_grad()
def test_unet_sd1_style_matches_diffusers():
    cfg = UNetConfig(**TINY, attention_levels=(True, False), num_attention_heads=2)
    ref, ours = _pair_unet(cfg)
    x, t, ctx = _inputs(cfg)
    assert sorted(ours.state_dict()) == sorted(ref.state_dict())
    out = ours(x, t, Cond(context=ctx))
    assert out.abs().mean() > 0.1  # real signal, not a zero output
    assert _err(ref(x, t, ctx).sample, out) <= TOL


@torch.no_grad()
def test_unet_sd2_style_linear_projection_per_level_heads_matches_diffusers():
    cfg = UNetConfig(**TINY, attention_levels=(True, True), num_attention_heads=(2, 4), use_linear_projection=True,
                     transformer_layers_per_block=(1, 2), upcast_attention=True)
    ref, ours = _pair_unet(cfg, seed=3)
    assert isinstance(ours.down_blocks[0].attentions[0].proj_in, torch.nn.Linear)
    x, t, ctx = _inputs(cfg, size=18)  # odd level size: upsampling must follow the skip's size
    mask = torch.tensor([[1, 1, 1, 0, 0, 1, 0], [1, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    want = ref(x, t, ctx, encoder_attention_mask=mask).sample
    got = ours(x, t, Cond(context=ctx, context_mask=mask))
    assert _err(want, got) <= TOL
    assert _err(got, ours(x, t, Cond(context=ctx))) > 1e-3  # the mask matters


@torch.no_grad()
def test_unet_deeper_decoder_transformers_match_diffusers():
    """reverse_transformer_layers_per_block: per-up-block and per-layer depths, contracting path unchanged."""
    cfg = UNetConfig(**TINY, attention_levels=(True, True), num_attention_heads=(2, 2), use_linear_projection=True,
                     reverse_transformer_layers_per_block=((3, 2), 2))
    ref, ours = _pair_unet(cfg, seed=5)
    assert [len(a.transformer_blocks) for a in ours.up_blocks[0].attentions] == [3, 2]
    assert [len(a.transformer_blocks) for a in ours.up_blocks[1].attentions] == [2, 2]
    assert all(len(a.transformer_blocks) == 1 for b in ours.down_blocks for a in b.attentions)
    x, t, ctx = _inputs(cfg)
    assert _err(ref(x, t, ctx).sample, ours(x, t, Cond(context=ctx))) <= TOL


@torch.no_grad()
def test_unet_nine_input_channels_matches_diffusers():
    cfg = UNetConfig(**{**TINY, "in_channels": 9}, attention_levels=(True, False), num_attention_heads=2)
    ref, ours = _pair_unet(cfg, seed=4)
    x, t, ctx = _inputs(cfg)
    assert _err(ref(x, t, ctx).sample, ours(x, t, Cond(context=ctx))) <= TOL


@torch.no_grad()
def test_unet_control_residuals_match_diffusers():
    cfg = UNetConfig(**TINY, attention_levels=(True, False), num_attention_heads=2)
    ref, ours = _pair_unet(cfg, seed=5)
    x, t, ctx = _inputs(cfg)
    g = torch.Generator().manual_seed(9)
    shapes = [(32, 16), (32, 16), (32, 8), (64, 8)]
    down = [torch.randn(2, c, s, s, generator=g) for c, s in shapes]
    mid = torch.randn(2, 64, 8, 8, generator=g)
    want = ref(x, t, ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    got = ours(x, t, Cond(context=ctx, control={"down": down, "mid": mid}))
    assert _err(want, got) <= TOL
    assert _err(got, ours(x, t, Cond(context=ctx))) > 1e-3


@torch.no_grad()
@pytest.mark.parametrize(
    "extra, labels",
    [
        (dict(num_class_embeds=10), torch.tensor([3, 7])),
        (dict(class_embed_type="projection", projection_class_embeddings_input_dim=12), torch.randn(2, 12)),
        (dict(class_embed_type="timestep", resnet_time_scale_shift="scale_shift"), torch.tensor([20.0, 350.0])),
    ],
    ids=["embedding", "projection", "timestep-scale_shift"],
)
def test_unet_class_conditioning_matches_diffusers(extra, labels):
    cfg = UNetConfig(**TINY, attention_levels=(True, False), num_attention_heads=2, **extra)
    ref, ours = _pair_unet(cfg, seed=6)
    x, t, ctx = _inputs(cfg)
    assert _err(ref(x, t, ctx, class_labels=labels).sample, ours(x, t, Cond(context=ctx, class_labels=labels))) <= TOL


@torch.no_grad()
def test_autoencoder_encode_decode_match_diffusers():
    cfg = AutoencoderConfig(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, sample_size=16)
    ref = randomize_(diffusers.AutoencoderKL(**cfg.to_diffusers_config()), seed=7).eval()
    ours = AutoencoderKL(AutoencoderConfig.from_diffusers_config(dict(ref.config))).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert sorted(ours.state_dict()) == sorted(ref.state_dict())
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    want, got = ref.encode(x).latent_dist, ours.encode(x)
    assert _err(want.mean, got.mean) <= TOL and _err(want.logvar, got.logvar) <= TOL
    assert _err(want.kl(), got.kl()) <= 1e-4 * want.kl().abs().max().item()
    z_ref = want.sample(torch.Generator().manual_seed(11))
    assert _err(z_ref, got.sample(torch.Generator().manual_seed(11))) <= TOL
    assert _err(ref.decode(z_ref).sample, ours.decode(z_ref)) <= TOL


@torch.no_grad()
def test_controlnet_residuals_match_diffusers():
    unet_cfg = UNetConfig(**TINY, attention_levels=(True, False), num_attention_heads=2)
    cfg = ControlNetConfig(unet=unet_cfg, conditioning_embedding_out_channels=(8, 16))
    ref = randomize_(diffusers.ControlNetModel(**cfg.to_diffusers_config()), seed=8).eval()
    ours = ControlNet(ControlNetConfig.from_diffusers_config(dict(ref.config))).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert sorted(ours.state_dict()) == sorted(ref.state_dict())
    x, t, ctx = _inputs(unet_cfg)
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    for guess in (False, True):
        want = ref(x, t, ctx, controlnet_cond=image, conditioning_scale=0.7, guess_mode=guess, return_dict=False)
        got = ours(x, t, Cond(context=ctx), image, 0.7, guess_mode=guess)
        assert len(got["down"]) == len(want[0]) == unet_cfg.num_skip_connections
        assert max(_err(a, b) for a, b in zip(want[0], got["down"])) <= TOL
        assert _err(want[1], got["mid"]) <= TOL
        assert got["mid"].abs().mean() > 1e-2


def test_controlnet_from_unet_has_diffusers_keys_and_copies_weights():
    unet_cfg = UNetConfig(**TINY, attention_levels=(True, False), num_attention_heads=2)
    ref_unet = randomize_(diffusers.UNet2DConditionModel(**unet_cfg.to_diffusers_config()), seed=10)
    ref = diffusers.ControlNetModel.from_unet(ref_unet, conditioning_embedding_out_channels=(8, 16))
    unet = UNet(unet_cfg)
    unet.load_state_dict(ref_unet.state_dict(), strict=True)
    ours = ControlNet.from_unet(unet, conditioning_embedding_out_channels=(8, 16))
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert sorted(our_sd) == sorted(ref_sd)
    assert all(our_sd[k].shape == ref_sd[k].shape for k in ref_sd)
    copied = [k for k in ref_sd if not k.startswith("controlnet_")]
    assert max(_err(our_sd[k], ref_sd[k]) for k in copied) == 0.0


@pytest.mark.parametrize("preset", ["sd15", "sd2-inpaint"])
def test_full_size_sd_state_dict_layouts_equal_diffusers(preset):
    """Real SD 1.x/2.x checkpoints load strict: same key set and shapes (built on the meta device)."""
    unet_cfg = UNetConfig.preset(preset)
    control_cfg = ControlNetConfig(unet=unet_cfg)
    vae_cfg = AutoencoderConfig.preset("sd")
    with torch.device("meta"):
        pairs = [
            (diffusers.UNet2DConditionModel(**unet_cfg.to_diffusers_config()), UNet(unet_cfg)),
            (diffusers.ControlNetModel(**control_cfg.to_diffusers_config()), ControlNet(control_cfg)),
            (diffusers.AutoencoderKL(**vae_cfg.to_diffusers_config()), AutoencoderKL(vae_cfg)),
        ]
    for ref, ours in pairs:
        ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == ref_shapes
