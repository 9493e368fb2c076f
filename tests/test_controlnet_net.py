"""Behaviour of the ControlNet network (thesis §3.1.3): zero convolutions, scaling, multi-control."""

from __future__ import annotations

import json

import pytest
import torch

from condiff.denoisers import Cond
from condiff.nn import ControlledUNet, ControlNet, ControlNetConfig, UNet, UNetConfig, count_parameters, sum_controls

TINY = UNetConfig(block_out_channels=(32, 64), attention_levels=(True, False), layers_per_block=1,
                  num_attention_heads=2, cross_attention_dim=32, norm_num_groups=8, sample_size=16)
EMB = (8, 16)  # condition image at 2× the network input


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    unet = UNet(TINY).eval()
    net = ControlNet.from_unet(unet, conditioning_embedding_out_channels=EMB).eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(2, 4, 16, 16, generator=g)
    ctx = torch.randn(2, 5, 32, generator=g)
    image = torch.rand(2, 3, 32, 32, generator=g)
    return unet, net, x, torch.tensor([10.0, 700.0]), Cond(context=ctx), image


def _wake_zero_convs(net: ControlNet, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]:
            conv.weight.copy_(0.1 * torch.randn(conv.weight.shape, generator=g))


@torch.no_grad()
def test_fresh_controlnet_is_a_copy_with_zero_residuals_and_leaves_unet_unchanged():
    unet, net, x, t, cond, image = _setup()
    for name in ("conv_in", "time_embedding", "down_blocks", "mid_block"):
        a, b = getattr(unet, name).state_dict(), getattr(net, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    res = net(x, t, cond, image)
    assert len(res["down"]) == TINY.num_skip_connections == 4
    assert all((r == 0).all() for r in res["down"]) and (res["mid"] == 0).all()
    torch.testing.assert_close(ControlledUNet(unet, [(net, image, 1.0)])(x, t, cond), unet(x, t, cond), rtol=0, atol=0)


def test_zero_convolutions_still_receive_gradients():
    unet, net, x, t, cond, image = _setup(seed=1)
    net.train()
    out = ControlledUNet(unet, [(net, image, 1.0)])(x, t, cond)
    (out**2).mean().backward()
    assert net.controlnet_mid_block.weight.grad.abs().sum() > 0
    assert all(c.weight.grad.abs().sum() > 0 for c in net.controlnet_down_blocks)


@torch.no_grad()
def test_scale_guess_mode_and_condition_dependence():
    unet, net, x, t, cond, image = _setup(seed=2)
    _wake_zero_convs(net)
    one, two = net(x, t, cond, image, 1.0), net(x, t, cond, image, 2.0)
    for a, b in zip(one["down"] + [one["mid"]], two["down"] + [two["mid"]]):
        torch.testing.assert_close(b, 2 * a)
    assert one["mid"].abs().max() > 1e-4
    other = net(x, t, cond, torch.rand(2, 3, 32, 32), 1.0)
    assert (other["mid"] - one["mid"]).abs().max() > 1e-5  # the condition image matters
    guess = net(x, t, cond, image, 1.0, guess_mode=True)
    torch.testing.assert_close(guess["down"][0], 0.1 * one["down"][0])
    torch.testing.assert_close(guess["mid"], one["mid"])
    assert (unet(x, t, cond.replace(control=one)) - unet(x, t, cond)).abs().max() > 1e-5


@torch.no_grad()
def test_multi_controlnet_sums_residuals_and_cfg_batches_repeat_the_image():
    unet, net_a, x, t, cond, image = _setup(seed=3)
    net_b = ControlNet.from_unet(unet, conditioning_embedding_out_channels=EMB).eval()
    _wake_zero_convs(net_a, 1)
    _wake_zero_convs(net_b, 2)
    ra, rb = net_a(x, t, cond, image, 0.5), net_b(x, t, cond, image, 1.5)
    want = unet(x, t, cond.replace(control=sum_controls([ra, rb])))
    got = ControlledUNet(unet, [(net_a, image, 0.5), (net_b, image, 1.5)])(x, t, cond)
    torch.testing.assert_close(got, want)
    single = ControlledUNet(unet, [(net_a, image[:1], 1.0)])(x, t, cond)
    torch.testing.assert_close(single[:1], ControlledUNet(unet, [(net_a, image, 1.0)])(x, t, cond)[:1])


def test_bad_inputs_raise_clear_errors():
    unet, net, x, t, cond, image = _setup()
    with pytest.raises(ValueError, match="resize"):
        net(x, t, cond, torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        net(x, t, cond, torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="divide"):
        ControlledUNet(unet, [(net, torch.zeros(3, 3, 32, 32), 1.0)])(x, t, cond)
    with pytest.raises(ValueError, match="at least one"):
        sum_controls([])
    with pytest.raises(ValueError, match="channel_order"):
        ControlNetConfig(unet=TINY, conditioning_channel_order="hsv")


def test_config_round_trip_and_parameter_counts():
    cfg = ControlNetConfig.for_unet("builtin-ldm")
    assert cfg.condition_downsampling == 4
    assert ControlNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with torch.device("meta"):
        sd15 = ControlNet(ControlNetConfig.for_unet("sd15"))
        builtin = ControlNet(cfg)
    assert count_parameters(sd15) == 361_279_120  # SD 1.5 ControlNet (diffusers ControlNetModel)
    assert count_parameters(builtin) == 7_585_360
