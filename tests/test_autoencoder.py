"""Behaviour of the KL autoencoder (thesis §3.2.3): shapes, posterior maths, scaling, sizes."""

from __future__ import annotations

import json

import pytest
import torch

from condiff.nn import AUTOENCODER_PRESETS, AutoencoderConfig, AutoencoderKL, DiagonalGaussian, count_parameters

TINY = dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, sample_size=16, scaling_factor=0.5)


def _vae(seed: int = 0, **overrides) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(AutoencoderConfig(**{**TINY, **overrides})).eval()


@torch.no_grad()
def test_builtin_f4_maps_128_images_to_32x32x4_latents():
    torch.manual_seed(0)
    vae = AutoencoderKL(AutoencoderConfig.preset("builtin-f4")).eval()
    x = torch.rand(1, 3, 128, 128) * 2 - 1
    z = vae.encode_latents(x, generator=torch.Generator().manual_seed(0))
    assert z.shape == (1, 4, 32, 32) and vae.config.downsampling_factor == 4
    assert vae.decode_latents(z).shape == x.shape


@torch.no_grad()
def test_posterior_kl_and_sampling():
    g = torch.Generator().manual_seed(3)
    moments = torch.randn(2, 6, 4, 4, generator=g)
    post = DiagonalGaussian(moments)
    q = torch.distributions.Normal(post.mean, post.std)
    p = torch.distributions.Normal(torch.zeros_like(post.mean), torch.ones_like(post.std))
    torch.testing.assert_close(post.kl(), torch.distributions.kl_divergence(q, p).sum(dim=(1, 2, 3)))
    z = post.sample(torch.Generator().manual_seed(5))
    torch.testing.assert_close(z, post.sample(torch.Generator().manual_seed(5)))  # seeded
    torch.testing.assert_close(post.nll(z), -q.log_prob(z).sum(dim=(1, 2, 3)))
    assert (DiagonalGaussian(torch.zeros(1, 8, 2, 2)).kl() == 0).all()
    big = DiagonalGaussian(torch.cat([torch.zeros(1, 1, 64, 64), torch.full((1, 1, 64, 64), 2 * torch.log(torch.tensor(0.5)))], 1))
    s = big.sample(torch.Generator().manual_seed(0))
    assert abs(s.std().item() - 0.5) < 0.02 and abs(s.mean().item()) < 0.02
    assert DiagonalGaussian(torch.full((1, 2, 1, 1), 100.0)).logvar.item() == 20.0  # clamped
    with pytest.raises(ValueError, match="2C"):
        DiagonalGaussian(torch.zeros(1, 3, 2, 2))


@torch.no_grad()
def test_latent_scaling_round_trip_and_forward():
    vae = _vae(shift_factor=0.1)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    post = vae.encode(x)
    z = vae.encode_latents(x, sample=False)
    torch.testing.assert_close(z, (post.mean - 0.1) * 0.5)
    torch.testing.assert_close(vae.decode_latents(z), vae(x), atol=1e-5, rtol=1e-5)
    sampled = vae(x, sample=True, generator=torch.Generator().manual_seed(2))
    assert (sampled - vae(x)).abs().max() > 1e-6


@torch.no_grad()
def test_mid_block_attention_is_optional_and_effective():
    with_attn, without = _vae(seed=1), _vae(seed=1, mid_block_attention=False)
    assert "encoder.mid_block.attentions.0.to_q.weight" in with_attn.state_dict()
    assert not any("attentions" in k for k in without.state_dict())
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert with_attn.encode(x).mean.shape == without.encode(x).mean.shape == (1, 4, 8, 8)


def test_bad_inputs_and_configs():
    vae = _vae()
    with pytest.raises(ValueError, match="multiples of 2"):
        vae.encode(torch.zeros(1, 3, 15, 16))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        vae.encode(torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\]"):
        vae.decode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="norm_num_groups"):
        AutoencoderConfig(block_out_channels=(20, 40), norm_num_groups=8)
    with pytest.raises(ValueError, match="unknown AutoencoderConfig keys"):
        AutoencoderConfig.from_dict({"down_block_types": []})
    with pytest.raises(ValueError, match="DownEncoderBlock2D"):
        AutoencoderConfig.from_diffusers_config({"block_out_channels": [32], "down_block_types": ["DownBlock2D"]})


def test_configs_round_trip_and_sd_config_json():
    for name in AUTOENCODER_PRESETS:
        cfg = AutoencoderConfig.preset(name)
        assert AutoencoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    sd_vae = {  # the vae/config.json of Stable Diffusion 1.5
        "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4,
        "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 512,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    }
    assert AutoencoderConfig.from_diffusers_config(sd_vae) == AutoencoderConfig.preset("sd")


def test_parameter_counts():
    with torch.device("meta"):
        sd = AutoencoderKL(AutoencoderConfig.preset("sd"))
        builtin = AutoencoderKL(AutoencoderConfig.preset("builtin-f4"))
    assert count_parameters(sd) == 83_653_863  # SD 1.x/2.x VAE (83.7M)
    assert count_parameters(builtin) == 3_789_095
