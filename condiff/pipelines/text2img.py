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
from .. import validate as V
from .common import (
    PipelineResult, as_prompt_list, base_params, check_request, from_unit, noise_for, prepare, prompt_param,
    run_sampler, sampler_knobs, to_unit,
)

__all__ = ["generate", "sdedit"]


@torch.no_grad()
def generate(
    model: LatentDiffusion,
    prompt: str | Sequence[str],
    *,
    # The request options every pipeline takes (see check_request), spelled out: the signature is the API.
    negative: str | Sequence[str] = "",
    guidance: float | None = None,
    steps: int | None = None,
    sampler: str = "dpmpp_2m",
    schedule: str | None = None,
    seed: int | Sequence[int] = 0,
    batch_size: int | None = None,
    height: int | None = None,
    width: int | None = None,
    eta: float | None = None,
    deterministic: bool = False,
    show_progress: bool = True,
    base=None,
    extra_cond: dict | None = None,
    callback=None,
) -> PipelineResult:
    """Text-to-image. ``base`` replaces the U-Net denoiser (e.g. a ControlNet-wrapped one).

    ``batch_size`` defaults to the number of prompts (one image per prompt), or 1 for a string.
    Image i of a batch uses seed + i. Batched, it equals the single image of that seed up to float
    rounding in the batched network (at most one grey level); ``deterministic=True`` runs the
    pipeline once per image instead, so image i is bit-identical to the single image of seed + i
    (cost: no batching speed-up, about batch × the time of one image).
    """
    V.check_prompts(prompt)
    if batch_size is None:
        batch_size = 1 if isinstance(prompt, str) else len(prompt)
    check_request(prompt=prompt, negative=negative, guidance=guidance, steps=steps, sampler=sampler,
                  schedule=schedule, seed=seed, batch=batch_size, eta=eta)
    prompts = as_prompt_list(prompt, batch_size)
    batch = len(prompts)
    height, width = V.check_size(height or model.image_size, width or model.image_size, multiple=model.downscale)
    noise = noise_for(seed, batch)
    if deterministic and batch > 1:
        kw = dict(negative=negative, guidance=guidance, steps=steps, sampler=sampler, schedule=schedule,
                  height=height, width=width, eta=eta, show_progress=show_progress, base=base,
                  extra_cond=extra_cond, callback=callback)
        parts = [generate(model, p, seed=s, batch_size=1, **kw) for p, s in zip(prompts, noise.seeds)]
        params = dict(parts[0].params, seeds=list(noise.seeds), deterministic=True,
                      prompt=prompt_param(prompts))
        return PipelineResult(torch.cat([r.images for r in parts]), params, torch.cat([r.latents for r in parts]))
    shape = model.latent_shape(height, width)
    guidance, denoiser, cond, sigmas = prepare(model, prompts, negative, guidance, steps, sampler, schedule,
                                               base=base, extra_cond=extra_cond)
    x = noise.randn(shape, device=model.device, dtype=torch.float32) * float(sigmas[0])
    latents = run_sampler(denoiser, x, sigmas, sampler, cond=cond, noise=noise, show_progress=show_progress,
                          callback=callback, **sampler_knobs(sampler, eta))
    images = to_unit(model.decode(latents))
    params = base_params(
        model, pipeline="text2img", prompt=prompt_param(prompts), negative=negative,
        guidance=guidance, steps=len(sigmas) - 1, sampler=sampler, schedule=schedule or "default",
        seeds=list(noise.seeds), height=height, width=width, eta=eta,
    )
    return PipelineResult(images, params, latents.cpu())


@torch.no_grad()
def sdedit(
    model: LatentDiffusion,
    image: Tensor,
    prompt: str | Sequence[str],
    *,
    strength: float = 0.6,
    # The request options every pipeline takes (see check_request), spelled out: the signature is the API.
    negative: str | Sequence[str] = "",
    guidance: float | None = None,
    steps: int | None = None,
    sampler: str = "dpmpp_2m",
    schedule: str | None = None,
    seed: int | Sequence[int] = 0,
    eta: float | None = None,
    show_progress: bool = True,
    base=None,
    extra_cond: dict | None = None,
    callback=None,
) -> PipelineResult:
    """SDEdit on images in [0, 1] ([B, 3, H, W]; uint8 0-255 accepted); ``steps`` counts the full
    schedule (k = ⌊t0·n⌋ run)."""
    image = V.check_image_tensor(image)
    batch = image.shape[0]
    check_request(prompt=prompt, negative=negative, guidance=guidance, steps=steps, sampler=sampler,
                  schedule=schedule, seed=seed, batch=batch, eta=eta)
    strength = V.check_fraction("strength", strength)
    prompts = as_prompt_list(prompt, batch)
    guidance, denoiser, cond, sigmas = prepare(model, prompts, negative, guidance, steps, sampler, schedule,
                                               base=base, extra_cond=extra_cond)
    noise = noise_for(seed, batch)
    params = base_params(
        model, pipeline="sdedit", prompt=prompt_param(prompts), negative=negative,
        guidance=guidance, steps=len(sigmas) - 1, strength=strength, sampler=sampler, seeds=list(noise.seeds),
        steps_run=sdedit_steps(len(sigmas) - 1, strength), schedule=schedule or "default", eta=eta,
    )
    if sdedit_steps(len(sigmas) - 1, strength) == 0:
        return PipelineResult(image.float().cpu().clamp(0, 1).clone(), params)  # t0 = 0: the input itself
    z0 = model.encode(from_unit(image, model.device))
    tail, x = sdedit_start(z0, sigmas.to(z0.device), strength, noise)
    latents = run_sampler(denoiser, x, tail, sampler, cond=cond, noise=noise, show_progress=show_progress,
                          callback=callback, **sampler_knobs(sampler, eta))
    return PipelineResult(to_unit(model.decode(latents)), params, latents.cpu())
