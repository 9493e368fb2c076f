"""Data augmentation for the text-to-image U-Net (``--ldm-augment``), aimed at binding a concept's name to
its shape independently of the drawing style.

Session 6–8 breakdowns found the model right on 75 % of *training* (concept, style) pairs of concepts with
3–5 pictures but on 29 % of held-out pairs (an unseen style of a seen concept), against 52 % for the
evaluation encoder on the real held-out pictures: it memorises pairs more than it composes them. Two
remedies, both off by default:

* ``flip``: a flippable picture (the world marks which are; arrows and text are not) is drawn mirrored with
  probability ½ — its latent is the VAE's encoding of the mirrored picture, encoded once up front.
* ``plain=p``: with probability p the caption is replaced by the concept's plain prompt ("a door"), with no
  style words, so the concept tokens alone must carry the shape (a caption-level dropout of the style, as
  caption dropout of the whole prompt trains ε(x|∅) for classifier-free guidance, thesis eq. 3.9).

Measured (session 8, docs/training_log.md): continuing the shipped ``ldm`` 2400 steps with ``flip,plain=0.2``
scored *worse* than the same continuation without it (−3.5 points of top-5 adherence on 934 held-out prompts,
95 % interval [−5.4, −1.7]; −0.5 [−2.3, +1.2] on the 1000 reported ones), so it is not part of the recipe.
Session 9 ran ``flip`` alone: −2.7 points [−4.5, −0.9] on the 934 prompts, so the mirroring is what hurts (the
evaluation encoder, trained on pictures as drawn, ranks mirrored emoji lower).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .latent import encode_posteriors

__all__ = ["parse_ldm_augment", "check_ldm_augment", "active_ldm_augment", "concept_contexts", "add_augment_data"]


def parse_ldm_augment(text: str) -> dict:
    """``"flip,plain=0.2"`` -> ``{"flip": True, "plain": 0.2}``; ValueError naming the bad item."""
    out: dict = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        if name == "flip" and not sep:
            out["flip"] = True
        elif name == "plain" and sep:
            try:
                out["plain"] = float(value)
            except ValueError:
                raise ValueError(f"--ldm-augment: plain={value!r} is not a number") from None
        else:
            raise ValueError(f"--ldm-augment: unknown item {item!r}; use flip and/or plain=P (e.g. flip,plain=0.2)")
    check_ldm_augment(out)
    return active_ldm_augment(out)


def check_ldm_augment(aug: dict) -> None:
    bad = set(aug) - {"flip", "plain"}
    if bad:
        raise ValueError(f"--ldm-augment: unknown augmentation(s) {sorted(bad)}; use flip and/or plain=P")
    if "flip" in aug and not isinstance(aug["flip"], bool):
        raise ValueError(f"--ldm-augment: flip must be True or False, got {aug['flip']!r}")
    if "plain" in aug and not (isinstance(aug["plain"], (int, float)) and 0.0 <= aug["plain"] < 1.0):
        raise ValueError(f"--ldm-augment: plain must lie in [0, 1), got {aug['plain']!r}")


def active_ldm_augment(aug: dict) -> dict:
    """``aug`` without its no-op items (flip False, plain 0): what a run and its model card record."""
    return {k: v for k, v in aug.items() if v}


@torch.no_grad()
def concept_contexts(encoder, prompts: list[str], batch: int = 1024) -> Tensor:
    """Token contexts [C, L, D] (fp16) of the concepts' plain prompts."""
    return torch.cat([encoder(prompts[i:i + batch])[0].half() for i in range(0, len(prompts), batch)])


def add_augment_data(data: dict, aug: dict, world, train: Tensor, vae, device) -> Tensor | None:
    """Add what ``aug`` needs to the training table ``data`` (rows = ``world`` records where ``train``):
    mirrored latents and the flippable flags for ``flip``, concept ids for ``plain``. Returns the plain
    prompts' contexts [C, L, D] for ``plain``, else None."""
    if aug.get("flip"):
        data["mean_flip"], data["std_flip"] = encode_posteriors(vae, world.images[train], device, mirror=True)
        data["flippable"] = world.flippable[train].to(device)
    if not aug.get("plain"):
        return None
    from ...nn.text_encoder import MiniLMTextEncoder

    enc = MiniLMTextEncoder(max_length=24).to(device)
    data["concept"] = world.concept_id[train].to(device)
    return concept_contexts(enc, [world.concept_prompt(c) for c in world.concepts]).to(device)
