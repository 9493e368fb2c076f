"""Recipe: the evaluation image encoder, contrastive against frozen MiniLM caption embeddings.

Loss, per sample (both terms LiT, Zhai et al. 2022: the MiniLM text tower stays frozen):

* symmetric InfoNCE (:func:`condiff.nn.image_encoder.contrastive_loss`, CLIP, Radford et al. 2021)
  between the image tower's embedding and the mean-pooled MiniLM embedding of one of the record's
  captions; other records of the same concept are masked out as negatives;
* with ``concept_text`` given, ``concept_weight`` × the cross-entropy of the image against **every**
  concept prompt of the world (logits = s·⟨f(x), t_c⟩ over all c, CLIP's zero-shot classifier used as
  the training head). In-batch negatives almost never include a concept's near-twins (the six skin
  tones of one emoji, the phases of the moon), which are exactly what the zero-shot ranking of the
  evaluation has to tell apart; the full-vocabulary term sees them at every step.

Augmentation: horizontal flips where the picture allows it, and a random zoom (scale 0.8–1.15) with
±8 px translation, edge pixels repeated (``augment``). No colour changes: colour is part of many
concepts ("yellow heart", skin tones).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from condiff.nn.image_encoder import contrastive_loss

__all__ = ["EvalEncoderObjective", "retrieval_accuracy", "augment", "ZOOM", "SHIFT_PX"]

#: random zoom range of the augmentation (1 = unchanged; > 1 enlarges the picture)
ZOOM = (0.8, 1.15)
#: largest translation of the augmentation, in pixels
SHIFT_PX = 8


def augment(x: Tensor, flippable: Tensor, g: torch.Generator, zoom: tuple[float, float] = ZOOM,
            shift_px: int = SHIFT_PX) -> Tensor:
    """Flip (where ``flippable``), zoom and translate a batch [B, C, H, W] with one affine resampling per image."""
    b, _, h, w = x.shape
    r = torch.rand(b, 4, generator=g, device=g.device).to(x.device)
    flip = (r[:, 0] < 0.5) & flippable.to(x.device)
    scale = zoom[0] + (zoom[1] - zoom[0]) * r[:, 1]
    # affine_grid maps output coordinates to input ones: a zoom by s samples the input at 1/s
    sx = torch.where(flip, -1.0, 1.0) / scale
    sy = 1.0 / scale
    tx = (2 * r[:, 2] - 1) * (2 * shift_px / w)
    ty = (2 * r[:, 3] - 1) * (2 * shift_px / h)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = sx, sy, tx, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class EvalEncoderObjective:
    """Batch dict: images uint8, text (pooled caption embeddings [B, K, D]), concept [B], flippable [B].

    ``concept_text`` [C, D] (the pooled embeddings of all concept prompts, row = concept id) switches
    on the full-vocabulary term with weight ``concept_weight``.
    """

    def __init__(self, concept_text: Tensor | None = None, concept_weight: float = 1.0):
        self.concept_text = None if concept_text is None else concept_text.float()
        self.concept_weight = float(concept_weight)

    def __call__(self, model: nn.Module, batch: dict, g: torch.Generator) -> Tensor:
        x = augment(batch["images"].float() / 255, batch["flippable"], g)
        b, k = batch["text"].shape[:2]
        variant = torch.randint(0, k, (b,), generator=g, device=g.device).to(x.device)
        text = batch["text"][torch.arange(b, device=x.device), variant].float()
        emb = model(x).float()
        loss = contrastive_loss(emb, text, model.logit_scale, batch["concept"])
        if self.concept_text is not None and self.concept_weight > 0:
            ct = self.concept_text.to(emb.device)
            logits = model.logit_scale.exp().clamp(max=100) * emb @ ct.t()
            loss = loss + self.concept_weight * F.cross_entropy(logits, batch["concept"].to(emb.device), reduction="none")
        return loss


@torch.no_grad()
def retrieval_accuracy(encoder: nn.Module, images: Tensor, concept_ids: Tensor, concept_text: Tensor,
                       k: int = 5, batch: int = 512) -> dict[str, float]:
    """Zero-shot concept retrieval: is the true concept among the top-k of all concept prompts?"""
    device = next(encoder.parameters()).device
    hits1, hitsk = [], []
    ct = concept_text.to(device).float()
    for i in range(0, len(images), batch):
        emb = encoder(images[i:i + batch].to(device).float() / 255).float()
        sims = emb @ ct.t()
        top = sims.topk(min(k, ct.shape[0]), dim=1).indices
        truth = concept_ids[i:i + batch].to(device)
        hits1.append((top[:, 0] == truth).float())
        hitsk.append((top == truth[:, None]).any(1).float())
    return {"top1": float(torch.cat(hits1).mean()), f"top{k}": float(torch.cat(hitsk).mean())}
