"""Text–image agreement from embeddings: CLIP score and top-k text retrieval accuracy.

Works with any paired image/text embedding space: real CLIP (Radford et al. 2021) when the user
has the weights, or condiff's own image encoder trained against the MiniLM text tower
(DESIGN.md §5). Scores must be reported with the name of the embedding model that produced them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["clip_score", "text_retrieval_accuracy", "similarity_ranks"]


def _as_emb(x: Tensor, name: str, ndim: int = 2) -> Tensor:
    t = torch.as_tensor(x)
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
    if not torch.is_floating_point(t):
        t = t.double()
    return t


def clip_score(image_emb: Tensor, text_emb: Tensor) -> Tensor:
    """``100 · max(cos(image_emb, text_emb), 0)`` per pair, ``[B]``.

    This is the scaling used by torchmetrics and most diffusion papers; CLIPScore as defined by
    Hessel et al. 2021 ("CLIPScore: A Reference-free Evaluation Metric for Image Captioning") uses
    the weight 2.5 instead of 100 — multiply by 0.025 to convert. Embeddings need not be
    normalised. ``image_emb`` and ``text_emb`` are ``[B, D]`` with row i of each forming a pair.
    """
    a, b = _as_emb(image_emb, "image_emb"), _as_emb(text_emb, "text_emb")
    if a.shape != b.shape:
        raise ValueError(f"image_emb {tuple(a.shape)} and text_emb {tuple(b.shape)} must pair row by row")
    return 100.0 * F.cosine_similarity(a, b, dim=-1, eps=1e-12).clamp_min(0.0)


def similarity_ranks(image_emb: Tensor, candidate_emb: Tensor, target: Tensor) -> Tensor:
    """Rank (0 = best) of the correct candidate for each image by cosine similarity, ``[B]``.

    ``candidate_emb`` is ``[C, D]`` (one shared candidate list) or ``[B, C, D]`` (a list per
    image); ``target`` ``[B]`` holds the index of the correct candidate. The rank counts
    candidates with a strictly higher similarity, so ties resolve in the target's favour.
    """
    img = _as_emb(image_emb, "image_emb")
    cand = torch.as_tensor(candidate_emb)
    if cand.ndim == 2:
        cand = cand.expand(img.shape[0], *cand.shape)
    if cand.ndim != 3 or cand.shape[0] != img.shape[0] or cand.shape[-1] != img.shape[-1]:
        raise ValueError(f"candidate_emb must be [C, D] or [B, C, D] with B={img.shape[0]}, "
                         f"D={img.shape[-1]}; got {tuple(torch.as_tensor(candidate_emb).shape)}")
    tgt = torch.as_tensor(target, dtype=torch.long).reshape(-1)
    if tgt.shape[0] != img.shape[0] or (tgt < 0).any() or (tgt >= cand.shape[1]).any():
        raise ValueError(f"target must hold {img.shape[0]} indices in [0, {cand.shape[1]})")
    sims = F.cosine_similarity(img[:, None, :].to(cand.dtype), cand, dim=-1, eps=1e-12)  # [B, C]
    correct = sims.gather(1, tgt[:, None])
    return (sims > correct).sum(1)


def text_retrieval_accuracy(image_emb: Tensor, candidate_emb: Tensor, target: Tensor, *, k: int = 1) -> Tensor:
    """Per-image top-k hit (1.0 or 0.0, ``[B]``): is the correct text among the k most similar?

    Mean over images = top-k accuracy of picking an image's prompt among the candidate prompts
    (as in CLIP's zero-shot classification, Radford et al. 2021). See :func:`similarity_ranks`.
    """
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    return (similarity_ranks(image_emb, candidate_emb, target) < k).float()
