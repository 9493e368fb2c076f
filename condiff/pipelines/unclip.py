"""Pipelines of unCLIP (thesis 3.2.1, Fig. 3.5; experiment 2 §4.3.2): prior + decoder (+ SR upsampler).

* :func:`generate`: prompt → MiniLM tokens + pooled embedding → the **prior** samples an
  image embedding (of unCLIP's image tower, ``unclip-embedder``; see :mod:`condiff.models.unclip`) (CFG on the text, eq. 3.9) → normalised → the **decoder** samples 64×64 pixels
  from it (CFG on the embedding) → the cascade's SR stage upsamples to 128×128.
* :func:`variations`: "An input image is encoded using CLIP and used as decoder input. This creates
  a new image that preserves the semantic information while varying the non-essential details"
  (thesis 3.2.1): the image's embedding by that tower, n fresh noise seeds, the decoder.
* :func:`inpaint`: zero-shot inpainting with the decoder: the embedding comes from the prompt
  through the prior (or from the image itself, ``embedding="image"``); the decoder blends the known
  64×64 pixels (:class:`~condiff.editing.BlendInpaint`); the SR stage blends the known 128×128
  pixels; then the thesis's composite. Without an SR stage the decoder output is bicubically
  upsampled before blending (recorded in the parameters).

The decoder's CFG "∅" branch is the null (zero) embedding with the empty prompt, the two things
dropped during its training.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..compositing import check_mask, composite, resize_mask
from ..denoisers import Cond, Denoiser
from ..editing import BlendInpaint
from ..guidance import ClassifierFreeGuidance
from ..models.cascade import downsample, upsample_low_res
from ..models.unclip import EMBED_DIM, UnCLIPModel
from ..noise import NoiseSource
from .cascade import super_resolve
from .. import validate as V
from ..samplers.registry import sampler_info
from .common import (
    PipelineResult, as_prompt_list, check_request, noise_for, prompt_param, run_sampler, schedule_for,
)

__all__ = ["sample_embeddings", "decode", "generate", "variations", "inpaint"]


def _unit(x: Tensor) -> Tensor:
    return ((x.float().cpu() + 1) / 2).clamp(0, 1)


def _sample(den: Denoiser, shape: tuple[int, ...], cond: Cond, noise: NoiseSource, steps, sampler: str, schedule,
            show_progress: bool, device, mask: Tensor | None = None, known: Tensor | None = None,
            callback=None) -> Tensor:
    blend = BlendInpaint(den, mask, known) if mask is not None else None
    den = blend if blend is not None else den
    sigmas = schedule_for(den, sampler, steps, schedule)
    x = noise.randn(shape, device=device) * float(sigmas[0])
    out = run_sampler(den, x, sigmas, sampler, cond=cond, noise=noise, show_progress=show_progress, callback=callback)
    return blend.finalize(out) if blend is not None else out


@torch.no_grad()
def sample_embeddings(model: UnCLIPModel, prompts: list[str], *, negative: str = "", guidance: float | None = None,
                      steps: int | None = None, sampler: str = "dpmpp_2m", schedule: str | None = None,
                      noise: NoiseSource, show_progress: bool = True) -> Tensor:
    """The prior: normalised image embeddings [B, 384] for the prompts (CFG on the text)."""
    guidance = float(model.info.get("prior_guidance", 2.0) if guidance is None else guidance)
    den = model.prior_denoiser()
    cond = model.text_cond(prompts)
    if guidance != 1.0:
        den = ClassifierFreeGuidance(den, guidance, model.text_cond([negative] * len(prompts)))
    emb = _sample(den, (EMBED_DIM,), cond, noise, steps or model.info.get("prior_steps"), sampler, schedule,
                  show_progress, model.device)
    return F.normalize(emb.float(), dim=-1)


def _decode_low(model: UnCLIPModel, embeddings: Tensor, prompts: list[str], guidance: float, steps, sampler: str,
                schedule, noise: NoiseSource, show_progress: bool, mask=None, known=None, callback=None) -> Tensor:
    cond = model.decoder_cond(embeddings, prompts)
    den: Denoiser = model.decoder_denoiser()
    if guidance != 1.0:
        null = model.decoder_cond(torch.zeros(1, EMBED_DIM), [""])
        null = null.replace(class_labels=torch.zeros_like(null.class_labels))  # the null embedding
        den = ClassifierFreeGuidance(den, guidance, null)
    size = model.decoder_size
    return _sample(den, (3, size, size), cond, noise, steps, sampler, schedule, show_progress, model.device,
                   mask, known, callback)


@torch.no_grad()
def decode(model: UnCLIPModel, embeddings: Tensor, prompts: Sequence[str] | None = None, *,
           guidance: float | None = None, steps: int | None = None, sampler: str = "dpmpp_2m",
           schedule: str | None = None, noise: NoiseSource, noise_level: float | None = None,
           sr_steps: int | None = None, show_progress: bool = True, callback=None) -> tuple[Tensor, Tensor]:
    """Embeddings [B, 384] -> (final images, 64×64 decoder images), both in [−1, 1].

    The final images are the SR stage's upsampling when the model has one, else the decoder's.
    """
    batch = embeddings.shape[0]
    prompts = as_prompt_list("" if prompts is None else prompts, batch)
    guidance = float(model.info.get("default_guidance", 3.0) if guidance is None else guidance)
    steps = steps or model.info.get("default_steps")
    low = _decode_low(model, embeddings, prompts, guidance, steps, sampler, schedule, noise, show_progress,
                      callback=callback)
    if model.upsampler is None:
        return low, low
    level = model.upsampler.info.get("default_noise_level", 0.1) if noise_level is None else noise_level
    high = super_resolve(model.upsampler, low, prompts, noise_level=level, steps=sr_steps or steps, sampler=sampler,
                         schedule=schedule, noise=noise, show_progress=show_progress, callback=callback)
    return high, low


def _params(model: UnCLIPModel, pipeline: str, **kw) -> dict:
    p = {"model": model.name, "pipeline": pipeline, "upsampler": "cascade-sr" if model.upsampler else "none"}
    p.update({k: v for k, v in kw.items() if v is not None})
    return p


@torch.no_grad()
def generate(model: UnCLIPModel, prompt: str | Sequence[str], *, negative: str = "", prior_guidance: float | None = None,
             guidance: float | None = None, steps: int | None = None, prior_steps: int | None = None,
             sampler: str = "dpmpp_2m", schedule: str | None = None, noise_level: float | None = None,
             sr_steps: int | None = None, seed: int | Sequence[int] = 0, batch_size: int = 1,
             show_progress: bool = True) -> PipelineResult:
    """Text-to-image: prior → decoder → SR. ``extras``: "embeddings" [B, 384], "decoder" (64² images)."""
    prompts = as_prompt_list(prompt, batch_size if isinstance(prompt, str) else len(prompt))
    noise = noise_for(seed, len(prompts))
    emb = sample_embeddings(model, prompts, negative=negative, guidance=prior_guidance, steps=prior_steps,
                            sampler=sampler, schedule=schedule, noise=noise, show_progress=show_progress)
    high, low = decode(model, emb, prompts, guidance=guidance, steps=steps, sampler=sampler, schedule=schedule,
                       noise=noise, noise_level=noise_level, sr_steps=sr_steps, show_progress=show_progress)
    params = _params(model, "unclip-text2img", prompt=prompt_param(prompts),
                     negative=negative, prior_guidance=prior_guidance, guidance=guidance, sampler=sampler,
                     steps=steps, seeds=list(noise.seeds))
    return PipelineResult(_unit(high), params, extras={"embeddings": emb.cpu(), "decoder": _unit(low)})


@torch.no_grad()
def variations(model: UnCLIPModel, image: Tensor, n: int = 4, seed: int = 0, *, prompt: str = "",
               guidance: float | None = None, steps: int | None = None, sampler: str = "dpmpp_2m",
               schedule: str | None = None, noise_level: float | None = None, sr_steps: int | None = None,
               show_progress: bool = True, callback=None) -> PipelineResult:
    """``n`` variations of one image [1, 3, H, W] in [0, 1]: same image embedding, seeds seed..seed+n−1.

    ``extras["embedding"]`` holds the source embedding [1, 384].
    """
    image = V.check_image_tensor(image)
    if image.shape[0] != 1:
        raise V.InputError("variations takes one image [1, 3, H, W] in [0, 1] (load it with condiff.images.load_image)")
    n = V.check_count(n, "n", limit="n")
    check_request(prompt=prompt, guidance=guidance, steps=steps, sampler=sampler, schedule=schedule, seed=seed)
    V.check_steps(sr_steps, "sr_steps")
    if noise_level is not None:
        V.check_fraction("noise_level", noise_level)
    steps = steps or model.info.get("default_steps") or sampler_info(sampler).default_steps
    emb = model.encode_images(image)
    noise = noise_for(int(seed), n)
    high, low = decode(model, emb.expand(n, -1), [prompt] * n, guidance=guidance, steps=steps, sampler=sampler,
                       schedule=schedule, noise=noise, noise_level=noise_level, sr_steps=sr_steps,
                       show_progress=show_progress, callback=callback)
    params = _params(model, "unclip-variations", prompt=prompt or None, guidance=guidance, sampler=sampler,
                     schedule=schedule or "default", steps=steps, sr_steps=sr_steps or steps,
                     noise_level=noise_level, seeds=list(noise.seeds))
    return PipelineResult(_unit(high), params, extras={"embedding": emb.cpu(), "decoder": _unit(low)})


@torch.no_grad()
def inpaint(model: UnCLIPModel, image: Tensor, mask: Tensor, prompt: str | Sequence[str], *, embedding: str = "prompt",
            negative: str = "", prior_guidance: float | None = None, guidance: float | None = None,
            steps: int | None = None, prior_steps: int | None = None, sampler: str = "dpmpp_2m",
            schedule: str | None = None, noise_level: float | None = None, sr_steps: int | None = None,
            seed: int | Sequence[int] = 0, show_progress: bool = True) -> PipelineResult:
    """Zero-shot inpainting via the decoder with blending (mask 1 = repaint); see the module doc.

    ``embedding``: "prompt" (the prior's embedding of the prompt) or "image" (the model's image-tower
    embedding of the picture itself). ``image`` [B, 3, H, W] in [0, 1], H = W = a multiple of the decoder size.
    Returns the composite; ``extras = {"raw": before compositing, "decoder": 64² result}``.
    """
    if embedding not in ("prompt", "image"):
        raise ValueError(f"embedding must be 'prompt' or 'image', got {embedding!r}")
    if not isinstance(image, Tensor) or image.ndim != 4 or image.shape[1] != 3:
        raise ValueError("image must be a tensor [B, 3, H, W] in [0, 1]")
    mask = check_mask(mask, image).float()
    batch, (h, w) = image.shape[0], image.shape[-2:]
    size = model.decoder_size
    if h != w or h % size:
        raise ValueError(f"image must be square with a side that is a multiple of {size}, got {w}×{h}; resize it "
                         "(condiff.images.fit_pair)")
    prompts = as_prompt_list(prompt, batch)
    noise = noise_for(seed, batch)
    if embedding == "prompt":
        emb = sample_embeddings(model, prompts, negative=negative, guidance=prior_guidance, steps=prior_steps,
                                sampler=sampler, schedule=schedule, noise=noise, show_progress=show_progress)
    else:
        emb = model.encode_images(image.float())
    dev = model.device
    known_hi = (image.float() * 2 - 1).to(dev)
    mask_hi = mask.to(dev)
    factor = h // size
    guidance_v = float(model.info.get("default_guidance", 3.0) if guidance is None else guidance)
    steps = steps or model.info.get("default_steps")
    low = _decode_low(model, emb, prompts, guidance_v, steps, sampler, schedule, noise, show_progress,
                      mask=resize_mask(mask_hi, (size, size), mode="max"), known=downsample(known_hi, factor))
    if model.upsampler is not None and factor == model.upsampler.sr_factor:
        level = model.upsampler.info.get("default_noise_level", 0.1) if noise_level is None else noise_level
        raw = super_resolve(model.upsampler, low, prompts, noise_level=level, steps=sr_steps or steps, sampler=sampler,
                            schedule=schedule, noise=noise, show_progress=show_progress, mask=mask_hi, known=known_hi)
        upsampler = "cascade-sr"
    else:
        up = upsample_low_res(low, (h, w)) if factor > 1 else low
        raw = mask_hi * up + (1 - mask_hi) * known_hi
        upsampler = "bicubic" if factor > 1 else "none"
    raw01 = _unit(raw)
    params = _params(model, "unclip-inpaint", prompt=prompt_param(prompts),
                     embedding=embedding, guidance=guidance_v, prior_guidance=prior_guidance, sampler=sampler,
                     steps=steps, seeds=list(noise.seeds))
    params["upsampler"] = upsampler
    return PipelineResult(composite(image.float().cpu(), raw01, mask.cpu()), params,
                          extras={"raw": raw01, "decoder": _unit(low), "embeddings": emb.cpu()})
