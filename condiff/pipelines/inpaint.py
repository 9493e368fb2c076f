"""Inpainting on a :class:`LatentDiffusion` model, three ways (thesis 3.2.3, 4.3.4; Fig. 4.16).

* ``method="model"``: the dedicated inpainting U-Net (5 extra input channels: the mask at latent
  resolution and the latent of the masked image, passed as ``cond.concat``);
* ``method="blend"``: any text-to-image U-Net; the known region's latent is pasted back at every
  step (:class:`condiff.editing.BlendInpaint`, re-noised to the current σ);
* ``method="repaint"``: RePaint resampling (:func:`condiff.editing.repaint_sample`).

Afterwards the result is put back into the original image (:func:`condiff.compositing.blend`):
by default a hard composite, so **pixels outside the mask are the input's exactly**; the
seam-aware ``blend="laplacian"|"poisson"`` and ``color_match`` go further than a plain alpha
paste. ``crop_to_mask`` works on a window around the mask at full model resolution and pastes
it back ("inpaint only the masked area").
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..compositing import blend as blend_back
from ..compositing import check_mask, crop_box, mask_box, paste_box, resize_mask
from ..editing import BlendInpaint, repaint_sample
from ..models.ldm import LatentDiffusion
from ..noise import NoiseSource
from .common import (
    PipelineResult, as_prompt_list, base_params, from_unit, guided_denoiser, noise_for, progress, run_sampler,
    schedule_for, to_unit,
)

__all__ = ["inpaint", "INPAINT_METHODS"]

INPAINT_METHODS = ("model", "blend", "repaint")


def _latent_mask(mask: Tensor, shape: tuple[int, int]) -> Tensor:
    """Mask at latent resolution: a latent cell is repainted when any of its pixels is."""
    return resize_mask(mask, shape, mode="max")


@torch.no_grad()
def _run(model: LatentDiffusion, image: Tensor, mask: Tensor, prompts: list[str], *, method: str, negative,
         guidance: float, steps, sampler: str, schedule, noise: NoiseSource, show_progress: bool,
         jump_length: int, resamples: int, callback=None) -> Tensor:
    """Inpaint images [B, 3, H, W] in [0, 1] at model resolution; returns the raw decoded images in [0, 1]."""
    z_known = model.encode(from_unit(image, model.device))
    m_lat = _latent_mask(mask.to(model.device), tuple(z_known.shape[-2:])).expand(z_known.shape[0], 1, -1, -1)
    extra = None
    if method == "model":
        if model.inpaint_unet is None:
            raise ValueError(
                f"model {model.name!r} has no dedicated inpainting U-Net; use method 'blend' or 'repaint'"
            )
        keep = 1 - (mask > 0).float().to(model.device)
        z_masked = model.encode(from_unit(image, model.device) * keep)  # masked pixels = 0 (grey) in [-1, 1], as SD
        extra = {"concat": torch.cat([(m_lat > 0).float(), z_masked], 1)}
        base = model.denoiser(model.inpaint_unet)
    else:
        base = model.denoiser()
    denoiser, cond = guided_denoiser(model, prompts, negative, guidance, base=base, extra_cond=extra)
    sigmas = schedule_for(denoiser, sampler, steps, schedule, model.info.get("default_steps"))
    x = noise.randn(z_known.shape[1:], device=model.device) * float(sigmas[0])
    if method == "blend":
        wrapped = BlendInpaint(denoiser, m_lat, z_known, renoise=noise)
        z = run_sampler(wrapped, x, sigmas, sampler, cond=cond, noise=noise, show_progress=show_progress)
        z = wrapped.finalize(z)
    elif method == "repaint":
        cb, close = progress(len(sigmas) * resamples, "repaint", show_progress)
        try:
            z = repaint_sample(denoiser, x, sigmas.to(x.device), cond=cond, noise=noise, callback=cb, mask=m_lat,
                               known=z_known, jump_length=jump_length, resamples=resamples)
        finally:
            close()
    else:
        z = run_sampler(denoiser, x, sigmas, sampler, cond=cond, noise=noise, show_progress=show_progress,
                        callback=callback)
    return to_unit(model.decode(z))


@torch.no_grad()
def inpaint(
    model: LatentDiffusion,
    image: Tensor,
    mask: Tensor,
    prompt: str | Sequence[str],
    *,
    method: str = "model",
    negative: str | Sequence[str] = "",
    guidance: float | None = None,
    steps: int | None = None,
    sampler: str = "dpmpp_2m",
    schedule: str | None = None,
    seed: int | Sequence[int] = 0,
    blend: str = "alpha",
    color_match: bool = False,
    feather: float = 0.0,
    composite: bool = True,
    crop_to_mask: bool = False,
    crop_padding: int = 16,
    jump_length: int = 5,
    resamples: int = 4,
    show_progress: bool = True,
    callback=None,
) -> PipelineResult:
    """Inpaint ``image`` [B, 3, H, W] in [0, 1] where ``mask`` ([B|1, 1, H, W], 1 = repaint) is set.

    ``result.images`` is the composited output (exact outside the mask when ``composite``);
    ``result.extras["raw"]`` the decoded model output before compositing.
    """
    if method not in INPAINT_METHODS:
        raise ValueError(f"unknown inpainting method {method!r}; choose one of {', '.join(INPAINT_METHODS)}")
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W] in [0, 1], got {tuple(image.shape)}")
    mask = check_mask(mask.float(), image)
    batch = image.shape[0]
    prompts = as_prompt_list(prompt, batch)
    guidance = model.info.get("default_guidance", 5.0) if guidance is None else float(guidance)
    noise = noise_for(seed, batch)
    kw = dict(method=method, negative=negative, guidance=guidance, steps=steps, sampler=sampler, schedule=schedule,
              noise=noise, show_progress=show_progress, jump_length=jump_length, resamples=resamples,
              callback=callback)
    size = model.image_size
    if crop_to_mask:
        if batch != 1:
            raise ValueError("crop_to_mask works on one image at a time")
        box = mask_box(mask, padding=crop_padding, multiple=model.downscale, aspect=1.0)
        img_c = F.interpolate(crop_box(image, box), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        msk_c = resize_mask(crop_box(mask, box), (size, size))
        raw_c = _run(model, img_c.clamp(0, 1), msk_c, prompts, **kw)
        raw = paste_box(image.clone(), raw_c, box)
    else:
        h, w = image.shape[-2:]
        work = image if (h, w) == (size, size) else F.interpolate(image, size=(size, size), mode="bilinear",
                                                                  antialias=True, align_corners=False).clamp(0, 1)
        wmask = mask if (h, w) == (size, size) else resize_mask(mask, (size, size))
        raw = _run(model, work, wmask, prompts, **kw)
        if (h, w) != (size, size):
            raw = F.interpolate(raw, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
    out = blend_back(image.float().cpu(), raw, mask.cpu(), method=blend, color_match=color_match, feather=feather) \
        if composite else raw
    params = base_params(
        model, pipeline="inpaint", method=method, prompt=prompts[0] if len(set(prompts)) == 1 else prompts,
        negative=negative, guidance=guidance, steps=steps, sampler=sampler, seeds=list(noise.seeds), blend=blend,
        color_match=color_match, feather=feather, composite=composite, crop_to_mask=crop_to_mask,
        **({"jump_length": jump_length, "resamples": resamples} if method == "repaint" else {}),
    )
    return PipelineResult(out, params, extras={"raw": raw})
