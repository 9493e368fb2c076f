"""Behaviour of condiff's U-Net: embedding (eq. 2.22), shapes, configs, checkpointing, sizes."""

from __future__ import annotations

import json
import math

import pytest
import torch

from condiff.denoisers import Cond
from condiff.nn import UNET_PRESETS, UNet, UNetConfig, count_parameters
from condiff.nn.layers import timestep_embedding

TINY = dict(block_out_channels=(32, 64), attention_levels=(True, False), layers_per_block=1, num_attention_heads=2,
            cross_attention_dim=32, norm_num_groups=8, sample_size=16)


def _net(seed: int = 0, **overrides) -> UNet:
    torch.manual_seed(seed)
    net = UNet(UNetConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():  # the default init is fine, but make the output conv non-trivial and seeded
        net.conv_out.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(seed))
    return net


def _batch(cfg: UNetConfig, b: int = 3, size: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cfg.in_channels, size, size, generator=g)
    ctx = torch.randn(b, 5, cfg.cross_attention_dim, generator=g) if cfg.cross_attention_dim else None
    return x, torch.linspace(0, 999, b), ctx


def test_timestep_embedding_is_eq_2_22():
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...): with flip_sin_to_cos=False
    the first half holds the sines and the second the cosines of the same frequencies."""
    d, t = 16, torch.tensor([0.0, 1.0, 37.5, 999.0])
    emb = timestep_embedding(t, d, flip_sin_to_cos=False, freq_shift=0)
    for i in range(d // 2):
        arg = t / 10000 ** (2 * i / d)
        torch.testing.assert_close(emb[:, i], torch.sin(arg))
        torch.testing.assert_close(emb[:, d // 2 + i], torch.cos(arg))
    flipped = timestep_embedding(t, d)  # SD convention: [cos, sin]
    torch.testing.assert_close(flipped, torch.cat([emb[:, d // 2:], emb[:, : d // 2]], dim=1))
    assert timestep_embedding(t, 7).shape == (4, 7) and (timestep_embedding(t, 7)[:, -1] == 0).all()
    with pytest.raises(ValueError, match="1-D"):
        timestep_embedding(torch.zeros(2, 1), 8)


@torch.no_grad()
def test_output_shape_scalar_and_fractional_timesteps():
    net = _net()
    x, _, ctx = _batch(net.config)
    out = net(x, torch.tensor(250.0), Cond(context=ctx))
    assert out.shape == x.shape
    torch.testing.assert_close(out, net(x, torch.full((3,), 250.0), Cond(context=ctx)))
    frac = net(x, torch.full((3,), 250.5), Cond(context=ctx))
    assert (frac - out).abs().max() > 1e-6  # fractional timesteps are not rounded


@torch.no_grad()
def test_batch_elements_are_independent_and_channels_last_agrees():
    net = _net(seed=2)
    x, t, ctx = _batch(net.config)
    full = net(x, t, Cond(context=ctx))
    one = net(x[1:2], t[1:2], Cond(context=ctx[1:2]))
    torch.testing.assert_close(full[1:2], one, atol=1e-5, rtol=1e-5)
    cl = net.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last), t, Cond(context=ctx))
    torch.testing.assert_close(cl, full, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_context_changes_output_and_odd_sizes_work():
    net = _net(seed=3)
    x, t, ctx = _batch(net.config, size=18)
    a = net(x, t, Cond(context=ctx))
    assert a.shape == x.shape
    assert (a - net(x, t, Cond(context=ctx + 1))).abs().max() > 1e-4  # cross-attention is live


def test_gradient_checkpointing_gives_same_output_and_gradients():
    net = _net(seed=4, attention_levels=(True, True)).train()
    x, t, ctx = _batch(net.config, b=2, size=8)

    def run():
        net.zero_grad()
        out = net(x, t, Cond(context=ctx))
        (out**2).mean().backward()
        return out.detach(), [p.grad.clone() for p in net.parameters()]

    calls, resnet = [], net.down_blocks[0].resnets[0]
    inner_forward = resnet.forward
    resnet.forward = lambda *a: calls.append(1) or inner_forward(*a)  # counts (re)computations
    plain_out, plain_grads = run()
    assert len(calls) == 1
    net.set_gradient_checkpointing(True)
    ckpt_out, ckpt_grads = run()
    assert len(calls) == 3  # forward recomputed during backward: checkpointing is really on
    torch.testing.assert_close(ckpt_out, plain_out)
    for g1, g2 in zip(plain_grads, ckpt_grads):
        torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_self_attention_only_and_class_conditioned_networks():
    net = _net(cross_attention_dim=None, num_class_embeds=4)
    x, t, _ = _batch(net.config)
    labels = torch.tensor([0, 1, 3])
    out = net(x, t, Cond(class_labels=labels))
    assert out.shape == x.shape
    assert (out - net(x, t, Cond(class_labels=torch.tensor([2, 1, 3])))).abs()[0].max() > 1e-6
    torch.testing.assert_close(out[1:], net(x, t, Cond(class_labels=torch.tensor([2, 1, 3])))[1:])
    assert net.down_blocks[0].attentions[0].transformer_blocks[0].attn2 is None
    with pytest.raises(ValueError, match="class-conditioned"):
        net(x, t, Cond())
    with pytest.raises(ValueError, match="no cross-attention"):
        net(x, t, Cond(context=torch.zeros(3, 2, 8), class_labels=labels))


def test_bad_inputs_raise_clear_errors():
    net = _net()
    x, t, ctx = _batch(net.config)
    with pytest.raises(ValueError, match="in_channels"):
        net(torch.zeros(3, 5, 16, 16), t, Cond(context=ctx))
    with pytest.raises(ValueError, match="cond.context"):
        net(x, t, Cond())
    with pytest.raises(ValueError, match="cross_attention_dim"):
        net(x, t, Cond(context=torch.zeros(3, 5, 16)))
    with pytest.raises(ValueError, match="timesteps"):
        net(x, torch.zeros(2), Cond(context=ctx))
    with pytest.raises(ValueError, match="down residuals"):
        net(x, t, Cond(context=ctx, control={"down": [torch.zeros(1)], "mid": None}))
    with pytest.raises(ValueError, match="no class embedding"):
        net(x, t, Cond(context=ctx, class_labels=torch.zeros(3, dtype=torch.long)))


def test_config_validation_and_round_trip():
    with pytest.raises(ValueError, match="attention heads"):
        UNetConfig(**{**TINY, "num_attention_heads": 3})
    with pytest.raises(ValueError, match="norm_num_groups"):
        UNetConfig(**{**TINY, "norm_num_groups": 24})
    with pytest.raises(ValueError, match="resolution levels"):
        UNetConfig(**{**TINY, "num_attention_heads": (1, 2, 4)})
    with pytest.raises(ValueError, match="unknown UNetConfig keys"):
        UNetConfig.from_dict({"attention_head_dim": 8})
    with pytest.raises(ValueError, match="unknown U-Net preset"):
        UNetConfig.preset("sd3")
    for name in UNET_PRESETS:
        cfg = UNetConfig.preset(name)
        assert UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_from_diffusers_config_reads_sd_configs():
    """The config.json files of SD 1.5, SD 2.1 (768-v) and the SD 1.5 inpainting U-Net."""
    sd15 = {
        "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False, "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], "downsample_padding": 1,
        "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1,
        "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    }
    assert UNetConfig.from_diffusers_config(sd15) == UNetConfig.preset("sd15")
    assert UNetConfig.from_diffusers_config({**sd15, "in_channels": 9}) == UNetConfig.preset("sd15-inpaint")
    sd21 = {**sd15, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024, "sample_size": 96,
            "use_linear_projection": True, "upcast_attention": True, "dual_cross_attention": False,
            "num_class_embeds": None, "only_cross_attention": False}
    assert UNetConfig.from_diffusers_config(sd21) == UNetConfig.preset("sd2")
    with pytest.raises(ValueError, match="addition_embed_type"):
        UNetConfig.from_diffusers_config({**sd15, "addition_embed_type": "text_time"})
    with pytest.raises(ValueError, match="mirror"):
        UNetConfig.from_diffusers_config({**sd15, "up_block_types": ["UpBlock2D"] * 4})


def test_parameter_counts():
    """SD 1.5 has the well-known 859.5M-parameter U-Net; SD 2.x 865.9M; built-ins are pinned."""
    expected = {
        "sd15": 859_520_964, "sd15-inpaint": 859_535_364, "sd2": 865_910_724, "sd2-inpaint": 865_925_124,
        "builtin-ldm": 16_983_684, "builtin-ldm-inpaint": 16_986_564, "builtin-pixel64": 18_449_315,
        "builtin-sr128": 5_274_307,
    }
    with torch.device("meta"):
        counts = {name: count_parameters(UNet(UNetConfig.preset(name))) for name in expected}
    assert counts == expected
    assert math.isclose(counts["sd15"] / 1e6, 859.5, abs_tol=0.05)


@torch.no_grad()
@pytest.mark.parametrize("name", ["builtin-ldm", "builtin-pixel64", "builtin-sr128"])
def test_builtin_presets_run(name):
    torch.manual_seed(0)
    cfg = UNetConfig.preset(name)
    net = UNet(cfg).eval()
    size = 32 if name == "builtin-ldm" else 16
    x = torch.randn(1, cfg.in_channels, size, size)
    cond = Cond(context=torch.randn(1, 4, cfg.cross_attention_dim) if cfg.cross_attention_dim else None,
                class_labels=torch.tensor([0.25]) if cfg.class_embed_type == "timestep" else None)
    out = net(x, torch.tensor([500.0]), cond)
    assert out.shape == (1, cfg.out_channels, size, size) and torch.isfinite(out).all()
