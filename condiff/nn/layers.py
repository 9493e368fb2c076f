"""Convolutional building blocks of the diffusion U-Net and the KL autoencoder (thesis §2.6).

* :func:`timestep_embedding` — sinusoidal embedding of the (possibly fractional) timestep,
  thesis eq. (2.22) (Vaswani et al. 2017; Ho et al. 2020 use it for t).
* :class:`TimestepEmbedding` — the two-layer MLP that lifts it to the time-embedding width.
* :class:`ResnetBlock` — residual block (thesis §2.6.2, He et al. 2015) with GroupNorm, SiLU and
  the time embedding injected between the two convolutions (Ho et al. 2020, appendix B).
* :class:`Downsample` / :class:`Upsample` — stride-2 convolution / nearest ×2 + convolution.

Attribute names (``norm1``, ``conv1``, ``time_emb_proj``, ``conv_shortcut``, ``linear_1``, ``conv``)
are those of the Stable Diffusion checkpoints in diffusers layout, so their state dicts load with
``strict=True`` and no key mapping.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "timestep_embedding",
    "SinusoidalEmbedding",
    "TimestepEmbedding",
    "ResnetBlock",
    "Downsample",
    "Upsample",
    "maybe_checkpoint",
]


def timestep_embedding(
    t: Tensor,
    dim: int,
    *,
    flip_sin_to_cos: bool = True,
    freq_shift: float = 0.0,
    max_period: float = 10000.0,
) -> Tensor:
    """Sinusoidal embedding of a [B] tensor of timesteps, thesis eq. (2.22).

    With ``half = dim // 2`` and frequencies ``ω_i = max_period^(-i / (half - freq_shift))``,
    the embedding is ``[sin(t·ω), cos(t·ω)]`` (or ``[cos, sin]`` with ``flip_sin_to_cos``, the
    Stable Diffusion convention). ``freq_shift = 0`` gives eq. (2.22) with pos = t and
    d_model = dim. Odd ``dim`` is padded with one zero column. Always computed in float32.
    """
    if t.ndim != 1:
        raise ValueError(f"timesteps must be a 1-D [B] tensor, got shape {tuple(t.shape)}")
    if dim < 2:
        raise ValueError(f"embedding dim must be at least 2, got {dim}")
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = t.float()[:, None] * freqs[None, :]
    sin, cos = torch.sin(args), torch.cos(args)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class SinusoidalEmbedding(nn.Module):
    """Parameter-free module form of :func:`timestep_embedding` (diffusers' ``time_proj``)."""

    def __init__(self, dim: int, *, flip_sin_to_cos: bool = True, freq_shift: float = 0.0):
        super().__init__()
        self.dim = dim
        self.flip_sin_to_cos = flip_sin_to_cos
        self.freq_shift = freq_shift

    def forward(self, t: Tensor) -> Tensor:
        return timestep_embedding(t, self.dim, flip_sin_to_cos=self.flip_sin_to_cos, freq_shift=self.freq_shift)


class TimestepEmbedding(nn.Module):
    """MLP ``linear_2(SiLU(linear_1(e)))`` mapping an embedding to the time-embedding width."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, e: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(e)))


class ResnetBlock(nn.Module):
    """Residual block with time-embedding injection (thesis §2.6.2).

    ``h = conv1(SiLU(GN(x)))``; ``h += W·SiLU(temb)`` (``time_scale_shift="default"``) or
    ``GN(h)·(1+s)+b`` (``"scale_shift"``, Dhariwal & Nichol 2021);
    ``h = conv2(dropout(SiLU(GN(h))))``; output ``(shortcut(x) + h) / output_scale``.
    ``temb_channels=None`` builds the time-free block of the autoencoder.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        temb_channels: int | None = None,
        groups: int = 32,
        eps: float = 1e-5,
        dropout: float = 0.0,
        time_scale_shift: str = "default",
        output_scale: float = 1.0,
    ):
        super().__init__()
        out_channels = out_channels or in_channels
        if time_scale_shift not in ("default", "scale_shift"):
            raise ValueError(f"time_scale_shift must be 'default' or 'scale_shift', got {time_scale_shift!r}")
        for ch in (in_channels, out_channels):
            if ch % groups:
                raise ValueError(f"{ch} channels are not divisible into {groups} GroupNorm groups; change norm_num_groups")
        self.time_scale_shift = time_scale_shift
        self.output_scale = output_scale
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = None
        if temb_channels is not None:
            mult = 2 if time_scale_shift == "scale_shift" else 1
            self.time_emb_proj = nn.Linear(temb_channels, mult * out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nonlinearity = nn.SiLU()
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        h = self.conv1(self.nonlinearity(self.norm1(x)))
        t = None
        if self.time_emb_proj is not None:
            if temb is None:
                raise ValueError("this residual block needs a time embedding (temb)")
            t = self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None]
        if self.time_scale_shift == "scale_shift" and t is not None:
            scale, shift = t.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + t if t is not None else h)
        h = self.conv2(self.dropout(self.nonlinearity(h)))
        skip = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        out = skip + h
        return out / self.output_scale if self.output_scale != 1.0 else out


class Downsample(nn.Module):
    """Stride-2 3×3 convolution. ``padding=0`` pads right/bottom by one (the LDM autoencoder)."""

    def __init__(self, channels: int, out_channels: int | None = None, *, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 upsampling (or to an explicit ``size``) followed by a 3×3 convolution."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        dtype = x.dtype
        if dtype == torch.bfloat16:  # nearest interpolation lacks bf16 kernels on some backends
            x = x.float()
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=tuple(size), mode="nearest")
        return self.conv(x.to(dtype))


def maybe_checkpoint(fn, *args, enabled: bool):
    """Run ``fn(*args)`` under activation checkpointing when ``enabled`` and gradients are on.

    Non-reentrant checkpointing recomputes the forward in the backward pass, trading compute for
    memory; outputs and gradients are identical to the plain call.
    """
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)
