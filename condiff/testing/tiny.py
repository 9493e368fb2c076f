"""A tiny random-weight :class:`LatentDiffusion` for fast pipeline tests (no trained weights)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..models.ldm import LatentDiffusion
from ..nn.autoencoder import AutoencoderConfig, AutoencoderKL
from ..nn.unet import UNet, UNetConfig
from ..schedules import DiscreteSchedule

__all__ = ["HashTextEncoder", "tiny_unet_config", "tiny_ldm"]


class HashTextEncoder(nn.Module):
    """A deterministic stand-in text encoder: each word maps to a fixed random vector."""

    def __init__(self, dim: int = 32, max_length: int = 8):
        super().__init__()
        self.dim, self.max_length = dim, max_length

    def _vec(self, word: str) -> Tensor:
        g = torch.Generator().manual_seed(sum(ord(c) * 31**i for i, c in enumerate(word)) % (2**31))
        return torch.randn(self.dim, generator=g)

    def forward(self, prompts):
        if isinstance(prompts, str):
            prompts = [prompts]
        ctx = torch.zeros(len(prompts), self.max_length, self.dim)
        mask = torch.zeros(len(prompts), self.max_length, dtype=torch.bool)
        for i, p in enumerate(prompts):
            words = ["<bos>"] + p.lower().replace(",", " ").split()[: self.max_length - 1]
            for j, w in enumerate(words):
                ctx[i, j] = self._vec(w)
                mask[i, j] = True
        return ctx, mask


def tiny_unet_config(in_channels: int = 4, context_dim: int = 32) -> UNetConfig:
    return UNetConfig(
        in_channels=in_channels, out_channels=4, sample_size=8, block_out_channels=(16, 32),
        attention_levels=(False, True), layers_per_block=1, num_attention_heads=(1, 2), norm_num_groups=8,
        cross_attention_dim=context_dim, use_linear_projection=True,
    )


def tiny_ldm(seed: int = 0, with_inpaint: bool = True, image_size: int = 32) -> LatentDiffusion:
    """U-Net 16/32 channels, f=4 VAE (32 px images -> 8×8×4 latents), hash text encoder."""
    torch.manual_seed(seed)
    unet = UNet(tiny_unet_config()).eval()
    inpaint = UNet(tiny_unet_config(in_channels=9)).eval() if with_inpaint else None
    vae = AutoencoderKL(AutoencoderConfig(block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=8,
                                          sample_size=image_size)).eval()
    return LatentDiffusion(
        name="tiny", unet=unet, vae=vae, text_encoder=HashTextEncoder(), schedule=DiscreteSchedule.named("scaled_linear"),
        prediction="eps", scaling_factor=1.0, image_size=image_size, inpaint_unet=inpaint,
        info={"default_guidance": 3.0, "default_steps": 4},
    )
