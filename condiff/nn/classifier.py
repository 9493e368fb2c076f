"""Noisy classifier p_φ(y | x_t, t) on latents at every noise level (classifier guidance, thesis eq. 3.4).

Dhariwal & Nichol (2021) guide a diffusion model with the gradient of a classifier trained on
*noisy* inputs x_t. condiff's classifier is the contracting half of its U-Net (time-embedded
residual blocks + self-attention; :class:`condiff.nn.unet.UNetEncoder`) followed by a pooled
linear head. Like every network it knows nothing of σ: it sees the VP-scaled input and the
(fractional) timestep; :class:`NoisyClassifierGuide` adds the σ bookkeeping.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..denoisers import Cond, DiscreteTime, append_dims, sigma_batch
from ..schedules import DiscreteSchedule
from .unet import UNetConfig, UNetEncoder

__all__ = ["NoisyClassifier", "NoisyClassifierGuide", "classifier_config"]


def classifier_config(in_channels: int = 4, sample_size: int = 32) -> UNetConfig:
    """The built-in latent classifier: 3 levels, self-attention on the two coarse ones."""
    return UNetConfig(
        in_channels=in_channels, out_channels=in_channels, sample_size=sample_size,
        block_out_channels=(64, 128, 128), attention_levels=(False, True, True), layers_per_block=1,
        num_attention_heads=(1, 2, 2), cross_attention_dim=None, use_linear_projection=True,
    )


class NoisyClassifier(nn.Module):
    """logits = head(pool(UNetEncoder(x_t, t))) over ``num_classes`` labels."""

    def __init__(self, config: UNetConfig, num_classes: int):
        super().__init__()
        if config.cross_attention_dim is not None:
            raise ValueError("the noisy classifier takes no text context; set cross_attention_dim=None")
        self.config = config
        self.num_classes = int(num_classes)
        self.encoder = UNetEncoder(config)
        ch = config.block_out_channels[-1]
        self.norm = nn.GroupNorm(config.norm_num_groups, ch)
        self.head = nn.Linear(ch, self.num_classes)

    def forward(self, x: Tensor, t: Tensor | float, cond: Cond | None = None) -> Tensor:
        enc = self.encoder
        enc._check_input(x, None)
        emb = enc.embed(t, None, x.shape[0], x.dtype, x.device)
        h, _ = enc.encode(enc.conv_in(x), emb, None, None)
        h = enc.middle(h, emb, None, None)
        return self.head(F.silu(self.norm(h)).mean((2, 3)))

    def extra_config(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes}


class NoisyClassifierGuide(nn.Module):
    """log p(y | x, σ) for x in the σ-space (VE) view, as classifier guidance expects.

    The classifier was trained on x_vp = x / √(1+σ²) at the discrete timestep of σ, exactly the
    input an ε-model sees (:class:`condiff.denoisers.NetworkDenoiser`).
    """

    def __init__(self, classifier: NoisyClassifier, schedule: DiscreteSchedule):
        super().__init__()
        self.classifier = classifier
        self.time = DiscreteTime(schedule)

    def forward(self, x: Tensor, sigma: Tensor, labels: Tensor | None = None) -> Tensor:
        sigma = sigma_batch(sigma, x)
        logits = self.classifier(x / append_dims((sigma**2 + 1).sqrt(), x.ndim), self.time(sigma))
        logp = torch.log_softmax(logits.float(), dim=-1)
        if labels is None:
            return logp
        return logp.gather(1, labels.long().view(-1, 1)).squeeze(1)
