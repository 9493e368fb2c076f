"""Textual inversion: learn new word embeddings v* for a subject (thesis §3.3.3, eq. 3.18; Gal et al. 2022).

    v* = argmin_v E_{z~E(x), y, ε~N(0,1), t} ‖ε − ε_θ(z_t, t, c_θ(y))‖²                 (3.18)

A placeholder word (``<sks>``, possibly n vectors ``<sks> <sks>_1 …``) is added to the tokenizer,
its embedding rows start at the embedding of an initializer word ("woman" in the thesis), and
**only those rows** are optimised: the U-Net, the autoencoder and every other parameter of the
text encoder stay frozen. Two mechanisms guarantee it: the gradient of the embedding table is
masked to the new rows, and after every optimizer step all other rows are copied back from a
snapshot (which also undoes AdamW's weight decay on them), so they stay bit-identical.

Prompts are drawn from neutral templates ("a photo of a {}") around the placeholder, as Gal et al.
do; the loss is the model's own objective (ε for eq. 3.18, or v for v-prediction models).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .embeddings import TextualEmbedding, add_placeholder_tokens, own_text_encoder, save_embedding, token_embedding
from .train_common import (TEXTUAL_INVERSION_LR, FlipLatents, ImageSet, LoopConfig, LoopResult, TrainSettings,
                           diffusion_loss, prompt_cond, run_training, training_device)

__all__ = ["OBJECT_TEMPLATES", "STYLE_TEMPLATES", "TextualInversionConfig", "TextualInversionResult",
           "train_textual_inversion"]

#: Neutral prompt templates around the placeholder (object / style), after Gal et al. (2022).
OBJECT_TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a picture of a {}", "a close-up photo of a {}",
    "a bright photo of the {}", "a good photo of a {}", "an illustration of a {}", "a drawing of the {}",
)
STYLE_TEMPLATES = (
    "a painting in the style of {}", "a picture in the style of {}", "an artwork in the style of {}",
    "a drawing in the style of {}", "a rendering in the style of {}",
)


@dataclass
class TextualInversionConfig(TrainSettings):
    """Settings of a textual-inversion run (thesis §4.4.4: lr 5e-4, batch 1, 400 steps; the loop's are
    :class:`TrainSettings`)."""

    token: str = "<sks>"
    initializer: str | None = "woman"
    num_vectors: int = 1
    learnable: str = "object"  # or "style": which templates
    templates: tuple[str, ...] | None = None
    lr: float = TEXTUAL_INVERSION_LR
    lr_schedule: str = "constant"
    weight_decay: float = 1e-2

    def prompt_templates(self) -> tuple[str, ...]:
        if self.templates:
            if any("{}" not in t for t in self.templates):
                raise ValueError("every template must contain '{}' where the placeholder goes")
            return tuple(self.templates)
        if self.learnable not in ("object", "style"):
            raise ValueError(f"learnable must be 'object' or 'style', got {self.learnable!r}")
        return OBJECT_TEMPLATES if self.learnable == "object" else STYLE_TEMPLATES

    def loop(self) -> LoopConfig:
        return self.loop_config("textual inversion", weight_decay=self.weight_decay)


@dataclass
class TextualInversionResult:
    embedding: TextualEmbedding
    token_ids: list[int]
    loop: LoopResult


def _placeholder_text(token: str, n: int) -> str:
    return " ".join([token] + [f"{token}_{i}" for i in range(1, n)])


def train_textual_inversion(
    model: Any,
    images: ImageSet,
    config: TextualInversionConfig | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    out: str | os.PathLike | None = None,
    out_format: str = "a1111",
    overwrite: bool = False,
) -> TextualInversionResult:
    """Learn ``config.num_vectors`` embedding vectors for ``config.token`` on ``images`` (eq. 3.18).

    ``model`` is a LatentDiffusion (U-Net, VAE, text encoder, schedule). The new tokens stay
    installed in its tokenizer/text encoder; the learned vectors are returned (and written to
    ``out`` in ``out_format`` when given).
    """
    config = config or TextualInversionConfig()
    loop = config.loop()
    templates = config.prompt_templates()
    device = training_device(model)
    text_encoder = own_text_encoder(model)
    ids = add_placeholder_tokens(text_encoder, config.token, config.num_vectors, config.initializer)
    emb = token_embedding(text_encoder)
    model.unet.requires_grad_(False)
    model.vae.requires_grad_(False)
    if isinstance(text_encoder, torch.nn.Module):
        text_encoder.requires_grad_(False)
    weight = emb.weight
    weight.requires_grad_(True)
    snapshot = weight.detach().clone()
    keep = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
    keep[ids] = False
    handle = weight.register_hook(lambda g: g.masked_fill(keep[:, None], 0.0))

    latents = FlipLatents(model, images)
    loss_fn = diffusion_loss(model)
    denoiser = model.denoiser()
    placeholder = _placeholder_text(config.token, config.num_vectors)

    def step_loss(step: int, g: torch.Generator) -> Tensor:
        _, z0 = latents.sample(loop.batch_size, g, device)
        t_idx = torch.randint(0, len(templates), (loop.batch_size,), generator=g)
        prompts = [templates[int(i)].format(placeholder) for i in t_idx]
        cond = prompt_cond(model, prompts, grad=True)
        return loss_fn(denoiser, z0, cond, g).mean()

    @torch.no_grad()
    def restore_frozen_rows(step: int) -> None:
        weight[keep] = snapshot[keep]

    try:
        result = run_training({"token_embedding": weight}, step_loss, loop, checkpoint=checkpoint, resume=resume,
                              after_step=restore_frozen_rows, device=device)
    finally:
        handle.remove()
        weight.requires_grad_(False)
    vectors = weight.detach()[ids].float().cpu().clone()
    embedding = TextualEmbedding(config.token, vectors, "condiff")
    if out is not None:
        save_embedding(embedding, Path(out), out_format, step=result.steps, overwrite=overwrite)
    return TextualInversionResult(embedding, list(ids), result)
