"""Inpainting on a :class:`LatentDiffusion` model, three ways (thesis 3.2.3, 4.3.4; Fig. 4.16).

* ``method="model"``: the dedicated inpainting U-Net (5 extra input channels: the mask at latent
  resolution and the latent of the masked image, passed as ``cond.concat``);
* ``method="blend"``: any text-to-image U-Net; the known region's latent is pasted back at every
  step (:class:`condiff.editing.BlendInpaint`, re-noised to the current σ);
* ``method="repaint"``: RePaint resampling (:func:`condiff.editing.repaint_sample`).

Afterwards the result is put back into the original image (:func:`condiff.compositing.blend`):
**pixels outside the mask are the input's exactly**. The default ``blend="laplacian"`` (a
Laplacian-pyramid composite) is the mode whose fill measured closest to the truth on held-out
pictures (condiff/weights/ldm-inpaint/MODEL_CARD.md); ``"alpha"`` is the plain hard paste,
``"poisson"`` and ``color_match`` the other seam-aware options. ``crop_to_mask`` works on a window around the mask at full model resolution and pastes
it back ("inpaint only the masked area").
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..compositing import blend as blend_back
from ..compositing import BLEND_METHODS, check_mask, crop_box, mask_box, paste_box, resize_mask
from ..editing import BlendInpaint, repaint_sample
from ..models.ldm import LatentDiffusion
from ..noise import NoiseSource
from .. import validate as V
from .common import (
    PipelineResult, as_prompt_list, base_params, chain_callbacks, check_request, from_unit, noise_for, prepare,
    progress, prompt_param, run_sampler, sampler_knobs, to_unit,
)

__all__ = ["inpaint", "INPAINT_METHODS", "DEFAULT_BLEND"]

#: the built-in default compositing: the most coherent fill measured (ldm-inpaint model card)
DEFAULT_BLEND = "laplacian"

INPAINT_METHODS = ("model", "blend", "repaint")


def _latent_mask(mask: Tensor, shape: tuple[int, int]) -> Tensor:
    """Mask at latent resolution: a latent cell is repainted when any of its pixels is."""
    return resize_mask(mask, shape, mode="max")


@torch.no_grad()
def _run(model: LatentDiffusion, image: Tensor, mask: Tensor, prompts: list[str], *, method: str, negative,
         guidance: float, steps, sampler: str, schedule, noise: NoiseSource, show_progress: bool,
         jump_length: int, resamples: int, eta: float | None, callback=None) -> tuple[Tensor, int]:
    """Inpaint images [B, 3, H, W] in [0, 1] at model resolution: (raw decoded images in [0, 1], steps)."""
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
    _, denoiser, cond, sigmas = prepare(model, prompts, negative, guidance, steps, sampler, schedule, base=base,
                                        extra_cond=extra)
    knobs = sampler_knobs(sampler, eta)
    x = noise.randn(z_known.shape[1:], device=model.device) * float(sigmas[0])
    if method == "blend":
        wrapped = BlendInpaint(denoiser, m_lat, z_known, renoise=noise)
        z = run_sampler(wrapped, x, sigmas, sampler, cond=cond, noise=noise, show_progress=show_progress,
                        callback=callback, **knobs)
        z = wrapped.finalize(z)
    elif method == "repaint":
        bar, close = progress(len(sigmas) * resamples, "repaint", show_progress)
        try:
            z = repaint_sample(denoiser, x, sigmas.to(x.device), cond=cond, noise=noise,
                               callback=chain_callbacks(bar, callback), mask=m_lat, known=z_known,
                               jump_length=jump_length, resamples=resamples)
        finally:
            close()
    else:
        z = run_sampler(denoiser, x, sigmas, sampler, cond=cond, noise=noise, show_progress=show_progress,
                        callback=callback, **knobs)
    return to_unit(model.decode(z)), len(sigmas) - 1


@torch.no_grad()
def inpaint(
    model: LatentDiffusion,
    image: Tensor,
    mask: Tensor,
    prompt: str | Sequence[str],
    *,
    method: str = "model",
    # The request options every pipeline takes (see check_request), spelled out: the signature is the API.
    negative: str | Sequence[str] = "",
    guidance: float | None = None,
    steps: int | None = None,
    sampler: str = "dpmpp_2m",
    schedule: str | None = None,
    seed: int | Sequence[int] = 0,
    blend: str = DEFAULT_BLEND,
    color_match: bool = False,
    feather: float = 0.0,
    composite: bool = True,
    crop_to_mask: bool = False,
    crop_padding: int = 16,
    jump_length: int = 5,
    resamples: int = 4,
    eta: float | None = None,
    show_progress: bool = True,
    callback=None,
) -> PipelineResult:
    """Inpaint ``image`` [B, 3, H, W] in [0, 1] where ``mask`` ([B|1, 1, H, W], 1 = repaint) is set.

    ``result.images`` is the composited output (exact outside the mask when ``composite``);
    ``result.extras["raw"]`` the decoded model output before compositing.
    """
    V.check_choice("inpainting method", method, INPAINT_METHODS)
    V.check_choice("blend", blend, BLEND_METHODS)
    image = V.check_image_tensor(image)
    mask = check_mask(V.check_mask_tensor(mask, image), image)
    feather = V.check_radius("feather", feather)
    crop_padding = V.check_int("crop_padding", crop_padding, 0, 4096)
    jump_length = V.check_int("jump_length", jump_length, 1, 1000)
    resamples = V.check_int("resamples", resamples, 1, 100)
    batch = image.shape[0]
    check_request(prompt=prompt, negative=negative, guidance=guidance, steps=steps, sampler=sampler,
                  schedule=schedule, seed=seed, batch=batch, eta=eta)
    prompts = as_prompt_list(prompt, batch)
    guidance = model.info.get("default_guidance", 5.0) if guidance is None else float(guidance)
    noise = noise_for(seed, batch)
    kw = dict(method=method, negative=negative, guidance=guidance, steps=steps, sampler=sampler, schedule=schedule,
              noise=noise, show_progress=show_progress, jump_length=jump_length, resamples=resamples, eta=eta,
              callback=callback)
    size = model.image_size
    if crop_to_mask:
        if batch != 1:
            raise ValueError("crop_to_mask works on one image at a time")
        box = mask_box(mask, padding=crop_padding, multiple=model.downscale, aspect=1.0)
        img_c = F.interpolate(crop_box(image, box), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        msk_c = resize_mask(crop_box(mask, box), (size, size))
        raw_c, n_steps = _run(model, img_c.clamp(0, 1), msk_c, prompts, **kw)
        raw = paste_box(image.clone(), raw_c, box)
    else:
        h, w = image.shape[-2:]
        work = image if (h, w) == (size, size) else F.interpolate(image, size=(size, size), mode="bilinear",
                                                                  antialias=True, align_corners=False).clamp(0, 1)
        wmask = mask if (h, w) == (size, size) else resize_mask(mask, (size, size))
        raw, n_steps = _run(model, work, wmask, prompts, **kw)
        if (h, w) != (size, size):
            raw = F.interpolate(raw, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
    out = blend_back(image.float().cpu(), raw, mask.cpu(), method=blend, color_match=color_match, feather=feather) \
        if composite else raw
    out = out.clamp(0, 1)  # Poisson blending and colour matching can overshoot; images are in [0, 1]
    params = base_params(
        model, pipeline="inpaint", method=method, prompt=prompt_param(prompts),
        negative=negative, guidance=guidance, steps=n_steps, sampler=sampler, schedule=schedule or "default",
        eta=eta, seeds=list(noise.seeds), blend=blend,
        color_match=color_match, feather=feather, composite=composite, crop_to_mask=crop_to_mask,
        **({"jump_length": jump_length, "resamples": resamples} if method == "repaint" else {}),
    )
    return PipelineResult(out, params, extras={"raw": raw})
