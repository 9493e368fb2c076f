"""Training a LoRA on a few captioned subject images (thesis §3.3.2 and §4.4.3).

Everything of the model is frozen (W0 locked, eq. 3.17); fresh adapters (A ~ N(0, σ²), B = 0) on
the cross-attention projections (thesis default, configurable, optionally also on the text
encoder) are trained with the model's own diffusion objective on (image, caption) pairs, with the
thesis's settings: lr 1e-4, cosine schedule, batch 1, 400 steps. Captions come from
:mod:`condiff.personalize.captions` and carry the trigger word ("sks").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import torch

from .embeddings import own_text_encoder
from .lora import LoRAConfig, LoRANetwork
from .lora_formats import lora_components, save_lora
from .train_common import (LORA_LR, FlipLatents, ImageSet, LoopConfig, LoopResult, TrainSettings, diffusion_loss,
                           prompt_cond, run_training, training_device)

__all__ = ["LoRATrainConfig", "LoRATrainResult", "train_lora"]


@dataclass
class LoRATrainConfig(LoRAConfig, TrainSettings):
    """LoRA training settings (thesis §4.4.3): the adapters' (:class:`LoRAConfig`) and the loop's
    (:class:`TrainSettings`: lr 1e-4, cosine schedule)."""

    lr: float = LORA_LR
    lr_schedule: str = "cosine"
    mixed_precision: str = "auto"

    def lora(self) -> LoRAConfig:
        adapters = {f.name: getattr(self, f.name) for f in fields(LoRAConfig)}
        return LoRAConfig(**{**adapters, "targets": dict(self.targets)}).validate()

    def loop(self) -> LoopConfig:
        return self.loop_config("lora", mixed_precision=self.mixed_precision)


@dataclass
class LoRATrainResult:
    network: LoRANetwork
    loop: LoopResult
    path: Path | None = None


def train_lora(model: Any, images: ImageSet, captions: Sequence[str], config: LoRATrainConfig | None = None, *,
               checkpoint: str | os.PathLike | None = None, resume: bool = False,
               out: str | os.PathLike | None = None, layout: str = "diffusers", overwrite: bool = False,
               name: str = "lora") -> LoRATrainResult:
    """Train a new LoRA on ``images`` with ``captions`` (one per image); it stays attached to ``model``."""
    config = config or LoRATrainConfig()
    loop = config.loop()
    if len(captions) != len(images):
        raise ValueError(f"got {len(captions)} captions for {len(images)} images")
    device = training_device(model)
    if "text_encoder" in config.targets:
        own_text_encoder(model)
    for module in (model.unet, model.vae, model.text_encoder):
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
    net = LoRANetwork.inject(lora_components(model), config.lora(), name=name,
                             generator=torch.Generator().manual_seed(config.seed))
    net.to(device)
    text_lora = "text_encoder" in net.components
    latents = FlipLatents(model, images)
    loss_fn = diffusion_loss(model)
    denoiser = model.denoiser()

    def step_loss(step: int, g: torch.Generator):
        idx, z0 = latents.sample(loop.batch_size, g, device)
        cond = prompt_cond(model, [captions[int(i)] for i in idx], grad=text_lora)
        return loss_fn(denoiser, z0, cond, g).mean()

    trainable = dict(net.named_parameters())
    result = run_training(trainable, step_loss, loop, checkpoint=checkpoint, resume=resume, device=device)
    path = save_lora(net, out, layout, overwrite=overwrite) if out is not None else None
    return LoRATrainResult(net, result, path)
