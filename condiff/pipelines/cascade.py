"""Pipelines of the cascaded pixel model (thesis 3.2.2, experiment 2 §4.3.3): text → 64² → 128².

* :func:`generate`: the base stage samples 64×64 pixels with classifier-free guidance (eq. 3.9),
  then :func:`super_resolve` upsamples them with the SR3 stage (eq. 3.10), whose low-resolution
  conditioning is noise-augmented to ``noise_level`` (Ho et al. 2021; :mod:`condiff.models.cascade`).
  A residual SR stage samples the residual around the clean bicubic upsample through
  :class:`~condiff.models.cascade.ResidualDenoiser`; the samplers do not know the difference.
* :func:`upscale`: the SR stage alone on any image (``condiff upscale``); the U-Net is
  convolutional, so an h×w input gives 2h×2w (h, w multiples of 4).
* :func:`inpaint`: zero-shot inpainting through the whole cascade, as the thesis ran DeepFloyd IF:
  stage 1 inpaints the 64×64 downsample (:class:`~condiff.editing.BlendInpaint` or
  :func:`~condiff.editing.repaint_sample`); stage 2 is conditioned on that result *and* keeps the
  known 128×128 pixels by blending; finally the thesis's composite (Fig. 4.13) pastes the original
  back outside the mask. ``extras`` holds the stage-1 image and the raw stage-2 image.

Noise: one :class:`~condiff.noise.NoiseSource` per call (sample i uses seed + i) feeds both stages
in order, so a sample does not depend on the batch it shares.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..compositing import check_mask, composite, resize_mask
from ..denoisers import Cond, Denoiser
from ..editing import BlendInpaint, repaint_sample
from ..guidance import ClassifierFreeGuidance
from ..models.cascade import CascadeModel, augmentation_label, downsample
from ..noise import NoiseSource
from .. import validate as V
from ..samplers.registry import sampler_info
from .common import (
    PipelineResult, as_prompt_list, check_request, noise_for, prompt_param, run_sampler, schedule_for,
)

__all__ = ["generate", "upscale", "sample_base", "super_resolve", "inpaint", "INPAINT_METHODS"]

INPAINT_METHODS = ("blend", "repaint")


def _check_images(image: Tensor, what: str = "image") -> Tensor:
    return V.check_image_tensor(image, what)


def _guided(denoiser: Denoiser, model: CascadeModel, cond: Cond, negative: str | Sequence[str], guidance: float,
            batch: int) -> Denoiser:
    """CFG (thesis eq. 3.9) with the negative/empty prompt; class labels (aug level) are shared."""
    if guidance == 1.0:
        return denoiser
    neg = [negative] * batch if isinstance(negative, str) else as_prompt_list(list(negative), batch)
    uncond = model.encode_prompts(neg).replace(class_labels=cond.class_labels)
    return ClassifierFreeGuidance(denoiser, guidance, uncond)


def sample_base(model: CascadeModel, prompts: list[str], negative, guidance: float, steps, sampler: str,
                 schedule, noise: NoiseSource, show_progress: bool, size: tuple[int, int],
                 mask: Tensor | None = None, known: Tensor | None = None, method: str = "blend",
                 repaint: dict | None = None) -> Tensor:
    """Stage 1 in [−1, 1]: text-to-image, or inpainting of ``known`` where ``mask`` = 1."""
    cond = model.encode_prompts(prompts)
    den = _guided(model.base_denoiser(), model, cond, negative, guidance, len(prompts))
    sigmas = schedule_for(den, sampler, steps, schedule)
    x = noise.randn((3, *size), device=model.device) * float(sigmas[0])
    if mask is None:
        return run_sampler(den, x, sigmas, sampler, cond=cond, noise=noise, show_progress=show_progress)
    if method == "repaint":
        return repaint_sample(den, x, sigmas.to(x.device), cond=cond, noise=noise, mask=mask, known=known,
                              **(repaint or {}))
    blend = BlendInpaint(den, mask, known)
    out = run_sampler(blend, x, sigmas, sampler, cond=cond, noise=noise, show_progress=show_progress)
    return blend.finalize(out)


def super_resolve(model: CascadeModel, low_res: Tensor, prompts: list[str], *, noise_level: float,
                  guidance: float = 1.0, negative: str | Sequence[str] = "", steps: int | None = None,
                  sampler: str = "dpmpp_2m", schedule: str | None = None, noise: NoiseSource,
                  show_progress: bool = True, mask: Tensor | None = None, known: Tensor | None = None,
                  callback=None) -> Tensor:
    """The SR stage on low-resolution images in [−1, 1] -> high resolution in [−1, 1].

    The first draw of ``noise`` augments the upsampled conditioning to ``noise_level`` (eq. aug),
    the rest drive the sampler. With ``mask``/``known`` (high resolution, [−1, 1]) the known
    pixels are kept by blending (:class:`BlendInpaint`). A residual stage is anchored at the
    *clean* upsample u; only its concat input is noise-augmented.
    """
    low_res = low_res.to(model.device, torch.float32)
    batch = low_res.shape[0]
    hi = model.sr_size_for(low_res)
    eps_aug = noise.randn((3, *hi), device=model.device)
    up, concat, labels = model.sr_condition(low_res, noise_level, eps_aug)
    cond = model.encode_prompts(prompts).replace(concat=concat, class_labels=labels)
    den = _guided(model.sr_denoiser(upsampled=up), model, cond, negative, guidance, batch)
    blend = None
    if mask is not None:
        den = blend = BlendInpaint(den, mask, known)
    sigmas = schedule_for(den, sampler, steps, schedule)
    x = noise.randn((3, *hi), device=model.device) * float(sigmas[0])
    out = run_sampler(den, x, sigmas, sampler, cond=cond, noise=noise, show_progress=show_progress, callback=callback)
    return blend.finalize(out) if blend is not None else out


def _level(model: CascadeModel, noise_level: float | None) -> float:
    level = model.info.get("default_noise_level", 0.1) if noise_level is None else float(noise_level)
    augmentation_label(level)  # validates the range with a clear message
    return level


def _unit(x: Tensor) -> Tensor:
    return ((x.float().cpu() + 1) / 2).clamp(0, 1)


@torch.no_grad()
def generate(model: CascadeModel, prompt: str | Sequence[str], *, negative: str | Sequence[str] = "",
             guidance: float | None = None, steps: int | None = None, sr_steps: int | None = None,
             sampler: str = "dpmpp_2m", schedule: str | None = None, noise_level: float | None = None,
             sr_guidance: float = 1.0, seed: int | Sequence[int] = 0, batch_size: int = 1,
             show_progress: bool = True) -> PipelineResult:
    """Text-to-image through both stages; ``extras["stage1"]`` holds the 64×64 images in [0, 1]."""
    prompts = as_prompt_list(prompt, batch_size if isinstance(prompt, str) else len(prompt))
    guidance = float(model.info.get("default_guidance", 4.0) if guidance is None else guidance)
    steps = steps or model.info.get("default_steps")
    level = _level(model, noise_level)
    noise = noise_for(seed, len(prompts))
    size = (model.base_size, model.base_size)
    low = sample_base(model, prompts, negative, guidance, steps, sampler, schedule, noise, show_progress, size)
    high = super_resolve(model, low, prompts, noise_level=level, guidance=sr_guidance, steps=sr_steps or steps,
                         sampler=sampler, schedule=schedule, noise=noise, show_progress=show_progress)
    params = {"model": model.name, "pipeline": "cascade-text2img", "prompt": prompt_param(prompts),
              "negative": negative, "guidance": guidance, "sr_guidance": sr_guidance, "noise_level": level,
              "sampler": sampler, "steps": steps, "sr_steps": sr_steps or steps, "seeds": list(noise.seeds)}
    return PipelineResult(_unit(high), params, extras={"stage1": _unit(low)})


@torch.no_grad()
def upscale(model: CascadeModel, image: Tensor, prompt: str | Sequence[str] | None = None, *,
            noise_level: float | None = None, guidance: float = 1.0, steps: int | None = None,
            sampler: str = "dpmpp_2m", schedule: str | None = None, seed: int | Sequence[int] = 0,
            show_progress: bool = True, callback=None) -> PipelineResult:
    """Super-resolve images in [0, 1] ([B, 3, h, w], h and w multiples of 4) by the SR factor.

    ``prompt`` None uses the empty prompt (the SR stage was trained with caption dropout);
    ``noise_level`` s ∈ [0, 1]: 0 trusts the input exactly, larger values let the model invent
    more detail (default: the model card's, 0.1).
    """
    image = _check_images(image)
    check_request(prompt=prompt, guidance=guidance, steps=steps, sampler=sampler, schedule=schedule, seed=seed,
                  batch=image.shape[0])
    if noise_level is not None:
        V.check_fraction("noise_level", noise_level)
    steps = steps or model.info.get("default_steps") or sampler_info(sampler).default_steps
    h, w = image.shape[-2:]
    if h % 4 or w % 4:
        raise ValueError(f"image size {w}×{h} must be a multiple of 4 on each side; crop or resize it "
                         "(condiff.images.fit_image(..., multiple=4))")
    prompts = as_prompt_list("" if prompt is None else prompt, image.shape[0])
    level = _level(model, noise_level)
    noise = noise_for(seed, image.shape[0])
    high = super_resolve(model, image * 2 - 1, prompts, noise_level=level, guidance=guidance,
                         steps=steps, sampler=sampler, schedule=schedule, noise=noise, show_progress=show_progress,
                         callback=callback)
    params = {"model": model.name, "pipeline": "cascade-upscale", "prompt": prompt, "noise_level": level,
              "guidance": guidance, "sampler": sampler, "schedule": schedule or "default", "steps": steps,
              "seeds": list(noise.seeds),
              "input_size": [int(w), int(h)], "output_size": [int(high.shape[-1]), int(high.shape[-2])]}
    return PipelineResult(_unit(high), params)


@torch.no_grad()
def inpaint(model: CascadeModel, image: Tensor, mask: Tensor, prompt: str | Sequence[str], *,
            method: str = "blend", negative: str | Sequence[str] = "", guidance: float | None = None,
            steps: int | None = None, sr_steps: int | None = None, sampler: str = "dpmpp_2m",
            schedule: str | None = None, noise_level: float | None = None, sr_guidance: float = 1.0,
            seed: int | Sequence[int] = 0, jump_length: int = 5, resamples: int = 4,
            show_progress: bool = True) -> PipelineResult:
    """Zero-shot inpainting through the cascade (see the module doc); mask 1 = repaint.

    ``image`` [B, 3, H, W] in [0, 1] with H, W multiples of 8·SR factor (128×128 for the built-in
    model); ``method``: "blend" (known region replaced at every step) or "repaint" (RePaint
    resampling at stage 1, ``jump_length``/``resamples``). Returns the composite in ``images`` and
    ``extras = {"raw": stage-2 output before compositing, "stage1": 64² result}``, all in [0, 1].
    """
    if method not in INPAINT_METHODS:
        raise ValueError(f"unknown inpainting method {method!r}; choose one of {INPAINT_METHODS}")
    image = _check_images(image)
    mask = check_mask(mask, image).float()
    f = model.sr_factor
    h, w = image.shape[-2:]
    if h % (8 * f) or w % (8 * f):
        raise ValueError(f"image size {w}×{h} must be a multiple of {8 * f} for this cascade; resize it "
                         f"(condiff.images.fit_pair(..., size=({model.sr_size}, {model.sr_size})))")
    batch = image.shape[0]
    prompts = as_prompt_list(prompt, batch)
    guidance = float(model.info.get("default_guidance", 4.0) if guidance is None else guidance)
    steps = steps or model.info.get("default_steps")
    level = _level(model, noise_level)
    noise = noise_for(seed, batch)
    dev = model.device
    known_hi = (image * 2 - 1).to(dev)
    known_lo = downsample(known_hi, f)
    mask_hi = mask.to(dev)
    mask_lo = resize_mask(mask_hi, (h // f, w // f), mode="max")
    low = sample_base(model, prompts, negative, guidance, steps, sampler, schedule, noise, show_progress,
                       (h // f, w // f), mask=mask_lo, known=known_lo, method=method,
                       repaint={"jump_length": jump_length, "resamples": resamples})
    raw = super_resolve(model, low, prompts, noise_level=level, guidance=sr_guidance, steps=sr_steps or steps,
                        sampler=sampler, schedule=schedule, noise=noise, show_progress=show_progress,
                        mask=mask_hi, known=known_hi)
    raw01 = _unit(raw)
    params = {"model": model.name, "pipeline": f"cascade-inpaint-{method}", "prompt": prompt_param(prompts),
              "negative": negative, "guidance": guidance, "sr_guidance": sr_guidance, "noise_level": level,
              "sampler": sampler, "steps": steps, "sr_steps": sr_steps or steps, "seeds": list(noise.seeds)}
    if method == "repaint":
        params.update(jump_length=jump_length, resamples=resamples)
    return PipelineResult(composite(image.cpu(), raw01, mask.cpu()), params,
                          extras={"raw": raw01, "stage1": _unit(low)})
