"""Recipe: the noisy latent classifier for classifier guidance (thesis eq. 3.4; Dhariwal & Nichol 2021).

Cross-entropy of p_φ(y | x_t, t) with t ~ U{0..T−1} and x_t ~ q(x_t | x_0) (eq. 2.10) on the
VP-scaled latents, so the classifier sees exactly the input of an ε-model at that timestep.
Labels: the style (emoji vendor / clip art / figure) of each record.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from condiff.schedules import DiscreteSchedule, q_sample

__all__ = ["NoisyClassifierObjective"]


class NoisyClassifierObjective:
    """Batch dict: mean, std (latent posterior), label [B]."""

    def __init__(self, schedule: DiscreteSchedule, scaling_factor: float):
        self.abar = schedule.alphas_cumprod.float()
        self.T = schedule.num_steps
        self.scale = scaling_factor

    def __call__(self, model: nn.Module, batch: dict, g: torch.Generator) -> Tensor:
        mean = batch["mean"].float()
        eps = torch.randn(mean.shape, generator=g, device=g.device).to(mean.device)
        z0 = (mean + batch["std"].float() * eps) * self.scale
        t = torch.randint(0, self.T, (mean.shape[0],), generator=g, device=g.device).to(mean.device)
        noise = torch.randn(mean.shape, generator=g, device=g.device).to(mean.device)
        xt = q_sample(z0, t, self.abar.to(mean.device), noise)
        logits = model(xt, t.float())
        return F.cross_entropy(logits.float(), batch["label"].to(mean.device), reduction="none")
