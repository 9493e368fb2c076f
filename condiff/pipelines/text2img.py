"""Text-to-image and SDEdit image-to-image on a :class:`LatentDiffusion` model.

* :func:`generate`: x_T = σ_max·z, then the sampler on CFG-guided denoising (thesis eq. 3.9).
* :func:`sdedit`: SDEdit (Meng et al. 2022; thesis 3.1.2): start from the input's latent noised to
  σ at strength t0 and denoise. t0 = 0 returns the input image itself (no VAE round trip);
  t0 = 1 is independent of the input.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..editing import sdedit_start, sdedit_steps
from ..models.ldm import LatentDiffusion
from .common import (
    PipelineResult, as_prompt_list, base_params, from_unit, guided_denoiser, noise_for, run_sampler, schedule_for,
    to_unit,
)

__all__ = ["generate", "sdedit"]


@torch.no_grad()
def generate(
    model: LatentDiffusion,
    prompt: str | Sequence[str],
    *,
    negative: str | Sequence[str] = "",
    guidance: float | None = None,
    steps: int | None = None,
    sampler: str = "dpmpp_2m",
    schedule: str | None = None,
    seed: int | Sequence[int] = 0,
    batch_size: int | None = None,
    height: int | None = None,
    width: int | None = None,
    show_progress: bool = True,
    base=None,
    extra_cond: dict | None = None,
    callback=None,
) -> PipelineResult:
    """Text-to-image. ``base`` replaces the U-Net denoiser (e.g. a ControlNet-wrapped one).

    ``batch_size`` defaults to the number of prompts (one image per prompt), or 1 for a string.
    """
    if batch_size is None:
        batch_size = 1 if isinstance(prompt, str) else len(list(prompt))
    prompts = as_prompt_list(prompt, batch_size)
    batch = len(prompts)
    guidance = model.info.get("default_guidance", 5.0) if guidance is None else float(guidance)
    height = height or model.image_size
    width = width or model.image_size
    shape = model.latent_shape(height, width)
    denoiser, cond = guided_denoiser(model, prompts, negative, guidance, base=base, extra_cond=extra_cond)
    sigmas = schedule_for(denoiser, sampler, steps, schedule, model.info.get("default_steps"))
    noise = noise_for(seed, batch)
    x = noise.randn(shape, device=model.device, dtype=torch.float32) * float(sigmas[0])
    latents = run_sampler(denoiser, x, sigmas, sampler, cond=cond, noise=noise, show_progress=show_progress,
                          callback=callback)
    images = to_unit(model.decode(latents))
    params = base_params(
        model, pipeline="text2img", prompt=prompts if len(set(prompts)) > 1 else prompts[0], negative=negative,
        guidance=guidance, steps=len(sigmas) - 1, sampler=sampler, schedule=schedule or "default",
        seeds=list(noise.seeds), height=height, width=width,
    )
    return PipelineResult(images, params, latents.cpu())


@torch.no_grad()
def sdedit(
    model: LatentDiffusion,
    image: Tensor,
    prompt: str | Sequence[str],
    *,
    strength: float = 0.6,
    negative: str | Sequence[str] = "",
    guidance: float | None = None,
    steps: int | None = None,
    sampler: str = "dpmpp_2m",
    schedule: str | None = None,
    seed: int | Sequence[int] = 0,
    show_progress: bool = True,
    base=None,
    extra_cond: dict | None = None,
    callback=None,
) -> PipelineResult:
    """SDEdit on images in [0, 1] ([B, 3, H, W]); ``steps`` counts the full schedule (k = ⌊t0·n⌋ run)."""
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W] in [0, 1], got {tuple(image.shape)}")
    batch = image.shape[0]
    prompts = as_prompt_list(prompt, batch)
    guidance = model.info.get("default_guidance", 5.0) if guidance is None else float(guidance)
    denoiser, cond = guided_denoiser(model, prompts, negative, guidance, base=base, extra_cond=extra_cond)
    sigmas = schedule_for(denoiser, sampler, steps, schedule, model.info.get("default_steps"))
    noise = noise_for(seed, batch)
    params = base_params(
        model, pipeline="sdedit", prompt=prompts[0] if len(set(prompts)) == 1 else prompts, negative=negative,
        guidance=guidance, steps=len(sigmas) - 1, strength=strength, sampler=sampler, seeds=list(noise.seeds),
        steps_run=sdedit_steps(len(sigmas) - 1, strength),
    )
    if sdedit_steps(len(sigmas) - 1, strength) == 0:
        return PipelineResult(image.float().cpu().clamp(0, 1).clone(), params)  # t0 = 0: the input itself
    z0 = model.encode(from_unit(image, model.device))
    tail, x = sdedit_start(z0, sigmas.to(z0.device), strength, noise)
    latents = run_sampler(denoiser, x, tail, sampler, cond=cond, noise=noise, show_progress=show_progress,
                          callback=callback)
    return PipelineResult(to_unit(model.decode(latents)), params, latents.cpu())
