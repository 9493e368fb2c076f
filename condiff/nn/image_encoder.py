"""condiff's evaluation image encoder: a small CLIP-style image tower for the built-in world.

No pretrained CLIP/Inception weights can be had offline, so condiff measures its built-in models
with an image tower of its own, trained contrastively (InfoNCE, Radford et al. 2021) against the
**frozen** MiniLM sentence embeddings of the captions. This is LiT (Zhai et al. 2022) with the
roles swapped: the text tower is the locked one. Its embeddings give, *in this domain only*:

* a CLIP-style score 100·cos(image, caption)   (:mod:`condiff.metrics.clip_score`),
* CMMD / Fréchet-style distances between image sets (:mod:`condiff.metrics.distribution`),
* zero-shot concept retrieval (rank of the requested concept among all concept prompts).

Every table names it "condiff-evalenc (LiT vs. MiniLM)", never "CLIP".
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config_dict import ConfigDict
from .layers import Downsample, ResnetBlock

__all__ = ["ImageEncoderConfig", "ImageEncoder", "contrastive_loss", "EVALENC_NAME"]

EVALENC_NAME = "condiff-evalenc (LiT vs. MiniLM)"


@dataclass
class ImageEncoderConfig(ConfigDict):
    in_channels: int = 3
    image_size: int = 128
    block_out_channels: tuple[int, ...] = (32, 64, 128, 256)
    layers_per_block: int = 1
    embed_dim: int = 384
    norm_num_groups: int = 16
    init_temperature: float = 0.07

    def __post_init__(self):
        self.block_out_channels = tuple(self.block_out_channels)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ImageEncoderConfig":
        """Unlike the other configs (:class:`ConfigDict`), keys it does not know are dropped."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class ImageEncoder(nn.Module):
    """Images in [0, 1] [B, 3, H, W] -> L2-normalised embeddings [B, embed_dim].

    A residual CNN (the U-Net's residual blocks without time input), strided downsampling,
    global average + max pooling and a linear projection; ``logit_scale`` is CLIP's learnable
    inverse temperature.
    """

    def __init__(self, config: ImageEncoderConfig | None = None):
        super().__init__()
        cfg = self.config = config or ImageEncoderConfig()
        boc = cfg.block_out_channels
        g = cfg.norm_num_groups
        self.stem = nn.Conv2d(cfg.in_channels, boc[0], 3, padding=1)
        blocks: list[nn.Module] = []
        ch = boc[0]
        for i, out in enumerate(boc):
            for _ in range(cfg.layers_per_block):
                blocks.append(ResnetBlock(ch, out, groups=g))
                ch = out
            if i < len(boc) - 1:
                blocks.append(Downsample(ch))
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.GroupNorm(g, ch)
        self.proj = nn.Linear(2 * ch, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(1.0 / cfg.init_temperature).log())
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(f"expected images [B, {self.config.in_channels}, H, W] in [0, 1], got {tuple(images.shape)}")
        h = self.stem((images - self.mean) / 0.5)
        h = F.silu(self.norm(self.blocks(h)))
        pooled = torch.cat([h.mean((2, 3)), h.amax((2, 3))], dim=1)
        return F.normalize(self.proj(pooled), dim=-1)


def contrastive_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor, labels: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE (CLIP, Radford et al. 2021 Fig. 3) over a batch of matched pairs.

    ``labels`` (optional, [B] concept ids): pairs that show the same concept are not counted
    as negatives of each other (several styles of one concept share its caption semantics).
    Returns the per-sample loss [B].
    """
    scale = logit_scale.exp().clamp(max=100)
    logits = scale * image_emb @ text_emb.t()
    target = torch.arange(len(image_emb), device=image_emb.device)
    if labels is not None:
        same = labels[:, None] == labels[None, :]
        off = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        logits = logits.masked_fill(off, float("-inf"))
    return 0.5 * (F.cross_entropy(logits, target, reduction="none") + F.cross_entropy(logits.t(), target, reduction="none"))
