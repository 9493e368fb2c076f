"""Recipe: the evaluation image encoder, contrastive against frozen MiniLM caption embeddings.

Loss: symmetric InfoNCE (:func:`condiff.nn.image_encoder.contrastive_loss`) between the image
tower's embedding and the mean-pooled MiniLM embedding of one of the record's captions; other
records of the same concept are masked out as negatives. Light augmentation: horizontal flips
where the picture allows it, ±8 px translations.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...nn.image_encoder import contrastive_loss

__all__ = ["EvalEncoderObjective", "retrieval_accuracy"]


def _augment(x: Tensor, flippable: Tensor, g: torch.Generator) -> Tensor:
    b = x.shape[0]
    flip = (torch.rand(b, generator=g, device=g.device).to(x.device) < 0.5) & flippable.to(x.device)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    shift = torch.randint(-8, 9, (2,), generator=g, device=g.device).tolist()
    x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(2, 3))
    return x


class EvalEncoderObjective:
    """Batch dict: images uint8, text (pooled caption embeddings [B, K, D]), concept [B], flippable [B]."""

    def __call__(self, model: nn.Module, batch: dict, g: torch.Generator) -> Tensor:
        x = _augment(batch["images"].float() / 255, batch["flippable"], g)
        b, k = batch["text"].shape[:2]
        variant = torch.randint(0, k, (b,), generator=g, device=g.device).to(x.device)
        text = batch["text"][torch.arange(b, device=x.device), variant].float()
        emb = model(x)
        return contrastive_loss(emb.float(), text, model.logit_scale, batch["concept"])


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
