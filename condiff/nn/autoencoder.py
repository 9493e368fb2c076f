"""KL-regularised autoencoder of latent diffusion (thesis §3.2.3, Rombach et al. 2022).

The encoder ℰ maps an image x ∈ R^{H×W×3} to the parameters of a diagonal Gaussian over latents
z ∈ R^{h×w×c} with downsampling factor f = H/h = 2^(levels−1); the decoder 𝒟 maps z back. The
KL term to N(0, I) regularises the latent space ("KL-reg." in the paper). Diffusion runs on
``scaling_factor · z`` (0.18215 for Stable Diffusion 1.x/2.x) so the latents have ≈ unit variance.

State-dict keys equal those of diffusers' ``AutoencoderKL`` (``encoder.down_blocks.N.resnets.M``,
``encoder.mid_block.attentions.0.to_q``, ``quant_conv``, ``post_quant_conv``,
``decoder.up_blocks.N.upsamplers.0.conv`` …), so its weights load with ``strict=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .attention import SpatialSelfAttention
from .config_dict import ConfigDict, config_preset
from .layers import ResnetBlock, Upsample
from .unet import DownBlock

__all__ = ["AutoencoderConfig", "AUTOENCODER_PRESETS", "DiagonalGaussian", "Encoder", "Decoder", "AutoencoderKL"]


@dataclass
class AutoencoderConfig(ConfigDict):
    """Architecture of an :class:`AutoencoderKL`; f = 2^(len(block_out_channels) − 1)."""

    # A field table in diffusers' names; other configs' tables have the same shape but nothing to share.
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    sample_size: int = 512
    scaling_factor: float = 0.18215
    shift_factor: float = 0.0
    mid_block_attention: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True

    def __post_init__(self):
        self.block_out_channels = tuple(self.block_out_channels)
        if not self.block_out_channels or any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(
                f"block_out_channels {self.block_out_channels} must be non-empty and divisible by "
                f"norm_num_groups={self.norm_num_groups}"
            )
        if self.layers_per_block < 1 or self.latent_channels < 1:
            raise ValueError("layers_per_block and latent_channels must be >= 1")
        if self.scaling_factor <= 0:
            raise ValueError("scaling_factor must be positive")

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def preset(cls, name: str) -> "AutoencoderConfig":
        return config_preset(cls, AUTOENCODER_PRESETS, name, "autoencoder")

    @classmethod
    def from_diffusers_config(cls, d: dict[str, Any]) -> "AutoencoderConfig":
        """Build from a diffusers ``AutoencoderKL`` ``config.json`` dict."""
        n = len(d.get("block_out_channels", (64,)))
        if d.get("act_fn", "silu") != "silu":
            raise ValueError(f"act_fn={d['act_fn']!r} is not supported (needs 'silu')")
        for key, kind in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
            if key in d and any(t != kind for t in d[key]):
                raise ValueError(f"{key} {tuple(d[key])} not supported: condiff's autoencoder uses {kind} only")
            if key in d and len(d[key]) != n:
                raise ValueError(f"{key} has {len(d[key])} entries; block_out_channels has {n}")
        if d.get("latents_mean") is not None or d.get("latents_std") is not None:
            raise ValueError("per-channel latents_mean/latents_std normalisation is not supported")
        return cls(
            in_channels=d.get("in_channels", 3),
            out_channels=d.get("out_channels", 3),
            latent_channels=d.get("latent_channels", 4),
            block_out_channels=d.get("block_out_channels", (64,)),
            layers_per_block=d.get("layers_per_block", 1),
            norm_num_groups=d.get("norm_num_groups", 32),
            sample_size=d.get("sample_size", 32),
            scaling_factor=d.get("scaling_factor", 0.18215),
            shift_factor=d.get("shift_factor") or 0.0,
            mid_block_attention=d.get("mid_block_add_attention", True),
            use_quant_conv=d.get("use_quant_conv", True),
            use_post_quant_conv=d.get("use_post_quant_conv", True),
        )

    def to_diffusers_config(self) -> dict[str, Any]:
        n = len(self.block_out_channels)
        return {
            "in_channels": self.in_channels, "out_channels": self.out_channels,
            "down_block_types": ("DownEncoderBlock2D",) * n, "up_block_types": ("UpDecoderBlock2D",) * n,
            "block_out_channels": tuple(self.block_out_channels), "layers_per_block": self.layers_per_block,
            "latent_channels": self.latent_channels, "norm_num_groups": self.norm_num_groups,
            "sample_size": self.sample_size, "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor or None, "mid_block_add_attention": self.mid_block_attention,
            "use_quant_conv": self.use_quant_conv, "use_post_quant_conv": self.use_post_quant_conv,
        }


AUTOENCODER_PRESETS: dict[str, dict[str, Any]] = {
    # Stable Diffusion 1.x and 2.x share this f=8 autoencoder (2.x 768 models use sample_size 768).
    "sd": dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, sample_size=512, scaling_factor=0.18215),
    # condiff built-in: 128×128 RGB <-> 32×32×4 latents (f=4). scaling_factor is re-estimated
    # after training (1 / std of the latents) and stored in the model's config.json.
    "builtin-f4": dict(block_out_channels=[64, 128, 128], layers_per_block=1, sample_size=128, scaling_factor=1.0),
}


class DiagonalGaussian:
    """Posterior q(z|x) = N(mean, diag(exp(logvar))) of the KL autoencoder.

    ``logvar`` is clamped to [−30, 20] as in the LDM code. ``kl()`` is the per-sample
    KL(q ‖ N(0, I)) = ½ Σ (μ² + σ² − 1 − log σ²) summed over C, H, W.
    """

    def __init__(self, moments: Tensor):
        if moments.ndim != 4 or moments.shape[1] % 2:
            raise ValueError(f"moments must be [B, 2C, h, w], got {tuple(moments.shape)}")
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """z = μ + σ·ε with ε drawn from ``generator`` (seeded by the caller for reproducibility)."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        return 0.5 * torch.sum(self.mean**2 + self.var - 1.0 - self.logvar, dim=(1, 2, 3))

    def nll(self, z: Tensor) -> Tensor:
        """−log q(z|x) per sample (natural log)."""
        log2pi = torch.log(torch.tensor(2 * torch.pi, dtype=z.dtype, device=z.device))
        return 0.5 * torch.sum(log2pi + self.logvar + (z - self.mean) ** 2 / self.var, dim=(1, 2, 3))


class _MidBlock(nn.Module):
    """resnet → single-head self-attention → resnet (no time embedding)."""

    def __init__(self, channels: int, *, groups: int, attention: bool):
        super().__init__()
        self.attentions = nn.ModuleList([SpatialSelfAttention(channels, groups=groups, eps=1e-6)]) if attention else None
        self.resnets = nn.ModuleList(ResnetBlock(channels, channels, groups=groups, eps=1e-6) for _ in range(2))

    def forward(self, h: Tensor) -> Tensor:
        h = self.resnets[0](h)
        if self.attentions is not None:
            h = self.attentions[0](h)
        return self.resnets[1](h)


class _DecoderUpBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, *, num_layers: int, groups: int, add_upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups=groups, eps=1e-6)
            for i in range(num_layers)
        )
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if add_upsample else None

    def forward(self, h: Tensor) -> Tensor:
        for resnet in self.resnets:
            h = resnet(h)
        return self.upsamplers[0](h) if self.upsamplers is not None else h


class Encoder(nn.Module):
    """ℰ: image -> 2·latent_channels moments (mean, log-variance) at 1/f resolution."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        boc, g = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, boc[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownBlock(boc[max(i - 1, 0)], boc[i], num_layers=cfg.layers_per_block, temb_channels=None,
                      add_downsample=i < len(boc) - 1, downsample_padding=0, groups=g, eps=1e-6)
            for i in range(len(boc))
        )
        self.mid_block = _MidBlock(boc[-1], groups=g, attention=cfg.mid_block_attention)
        self.conv_norm_out = nn.GroupNorm(g, boc[-1], eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(boc[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for block in self.down_blocks:
            h, _ = block(h)
        h = self.mid_block(h)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))


class Decoder(nn.Module):
    """𝒟: latent -> image."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        rev, g = list(reversed(cfg.block_out_channels)), cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.latent_channels, rev[0], 3, padding=1)
        self.mid_block = _MidBlock(rev[0], groups=g, attention=cfg.mid_block_attention)
        self.up_blocks = nn.ModuleList(
            _DecoderUpBlock(rev[max(i - 1, 0)], rev[i], num_layers=cfg.layers_per_block + 1, groups=g,
                            add_upsample=i < len(rev) - 1)
            for i in range(len(rev))
        )
        self.conv_norm_out = nn.GroupNorm(g, rev[-1], eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(rev[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            h = block(h)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))


class AutoencoderKL(nn.Module):
    """The LDM KL autoencoder: :meth:`encode` -> :class:`DiagonalGaussian`, :meth:`decode` z -> x.

    Images are in [−1, 1]. :meth:`encode_latents` / :meth:`decode_latents` apply the diffusion
    scaling ``z_diff = scaling_factor · (z − shift_factor)`` and its inverse.
    """

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        c = config.latent_channels
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1) if config.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(c, c, 1) if config.use_post_quant_conv else None

    def _check(self, x: Tensor, channels: int, what: str) -> None:
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"{what} must be [B, {channels}, H, W], got {tuple(x.shape)}")

    def encode(self, x: Tensor) -> DiagonalGaussian:
        self._check(x, self.config.in_channels, "image")
        f = self.config.downsampling_factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"image height and width must be multiples of {f}, got {tuple(x.shape[-2:])}")
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussian(moments)

    def decode(self, z: Tensor) -> Tensor:
        self._check(z, self.config.latent_channels, "latent")
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def forward(self, x: Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Reconstruction 𝒟(z) with z the posterior mean, or a sample when ``sample``."""
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator) if sample else posterior.mode())

    def encode_latents(self, x: Tensor, *, generator: torch.Generator | None = None, sample: bool = True) -> Tensor:
        """Image in [−1, 1] -> scaled diffusion latent (sampled with ``generator``, or the mean)."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return (z - self.config.shift_factor) * self.config.scaling_factor

    def decode_latents(self, z: Tensor) -> Tensor:
        """Scaled diffusion latent -> image (≈ [−1, 1])."""
        return self.decode(z / self.config.scaling_factor + self.config.shift_factor)
