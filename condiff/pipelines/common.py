"""Shared pieces of the image pipelines: guided denoisers, sampling with progress, results.

Pipelines are compositions of the core pieces and hold no new maths:
``sampler(ClassifierFreeGuidance(model.denoiser(), γ, uncond), x, sigmas, cond=…, noise=…)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..denoisers import Cond, Denoiser
from ..guidance import ClassifierFreeGuidance
from ..noise import NoiseSource
from ..samplers.registry import get_sampler, make_sigmas, sampler_info
from ..models.ldm import LatentDiffusion

__all__ = ["PipelineResult", "guided_denoiser", "run_sampler", "as_prompt_list", "prompt_param", "noise_for",
           "progress", "chain_callbacks", "check_request", "sampler_knobs", "prepare"]


@dataclass
class PipelineResult:
    """Images in [0, 1] ([B, 3, H, W], float32 on CPU) and the parameters that made them."""

    images: Tensor
    params: dict[str, Any]
    latents: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def params_for(self, i: int) -> dict[str, Any]:
        """The parameters of image ``i`` (its own seed)."""
        p = dict(self.params)
        seeds = p.pop("seeds", None)
        if seeds is not None:
            p["seed"] = seeds[i]
        if isinstance(p.get("prompt"), list):
            p["prompt"] = p["prompt"][i]
        return p


def as_prompt_list(prompt: str | Sequence[str], batch: int) -> list[str]:
    if isinstance(prompt, str):
        return [prompt] * batch
    prompts = list(prompt)
    if len(prompts) == 1:
        return prompts * batch
    if len(prompts) != batch:
        from ..errors import InputError

        raise InputError(f"got {len(prompts)} prompts for a batch of {batch}; give one prompt or one per image")
    return prompts


def prompt_param(prompts: list[str]) -> str | list[str]:
    """The prompt as a result's params record it: the one prompt when all are equal, else the list."""
    return prompts[0] if len(set(prompts)) == 1 else prompts


def noise_for(seed: int | Sequence[int], batch: int) -> NoiseSource:
    """Per-sample seeds: an int seed gives seed, seed+1, … (same image whatever the batch size).

    Seeds are checked by :func:`check_request` (integers ≥ 0; an integral float such as 5.0 counts as 5).
    """
    if not isinstance(seed, (list, tuple)):
        return NoiseSource(int(seed), batch)
    seeds = [int(s) for s in seed]
    if len(seeds) != batch:
        from ..errors import InputError

        raise InputError(f"got {len(seeds)} seeds for a batch of {batch}; give one seed or one per image")
    return NoiseSource(seeds)


def check_request(*, prompt=None, negative="", guidance=None, steps=None, sampler: str = "dpmpp_2m",
                  schedule: str | None = None, seed=0, batch: int | None = None, eta: float | None = None,
                  limit: str = "batch") -> None:
    """The shared input checks of every pipeline (condiff.validate), run before anything is allocated."""
    from .. import validate as V

    if prompt is not None:
        V.check_prompts(prompt)
    if not isinstance(negative, str) or negative:
        V.check_prompts(negative, "negative prompt")
    if guidance is not None:
        V.check_float("guidance", guidance)
    V.check_steps(steps)
    V.check_sampler(sampler)
    V.check_schedule(schedule)
    if batch is not None:
        V.check_count(batch, "batch" if limit == "batch" else "n", limit=limit)
    seeds = [seed] if not isinstance(seed, (list, tuple)) else list(seed)
    for s in seeds:
        V.check_int("seed", s, 0, 2**63 - 1)
    sampler_knobs(sampler, eta)


def sampler_knobs(sampler: str, eta: float | None) -> dict[str, Any]:
    """Extra keyword arguments for the sampler: ``eta`` where the sampler takes it (DDIM, ancestral)."""
    if eta is None:
        return {}
    import inspect

    from .. import validate as V

    eta = V.check_float("eta", eta, 0.0, 1.0)
    if "eta" not in inspect.signature(get_sampler(sampler)).parameters:
        from ..errors import InputError

        raise InputError(f"--eta applies to samplers with an η (ddim, euler_ancestral), not {sampler!r}")
    return {"eta": eta}


def prepare(model: LatentDiffusion, prompts: list[str], negative, guidance: float | None, steps: int | None,
            sampler: str, schedule: str | None, *, base: Denoiser | None = None,
            extra_cond: dict[str, Any] | None = None) -> tuple[float, Denoiser, Cond, Tensor]:
    """(γ, guided denoiser, Cond, σ schedule): the set-up every latent pipeline shares."""
    guidance = model.info.get("default_guidance", 5.0) if guidance is None else float(guidance)
    denoiser, cond = guided_denoiser(model, prompts, negative, guidance, base=base, extra_cond=extra_cond)
    sigmas = schedule_for(denoiser, sampler, steps, schedule, model.info.get("default_steps"))
    return guidance, denoiser, cond, sigmas


def guided_denoiser(
    model: LatentDiffusion,
    prompts: list[str],
    negative: str | Sequence[str],
    guidance: float,
    *,
    base: Denoiser | None = None,
    sigma_interval: tuple[float, float] | None = None,
    extra_cond: dict[str, Any] | None = None,
) -> tuple[Denoiser, Cond]:
    """CFG (thesis eq. 3.9) around ``base`` (default: the model's U-Net denoiser) + the positive Cond."""
    base = base if base is not None else model.denoiser()
    cond = model.encode_prompts(prompts)
    if extra_cond:
        cond = cond.replace(**extra_cond)
    if guidance == 1.0:
        return base, cond
    neg = as_prompt_list(negative, len(prompts)) if not isinstance(negative, str) else [negative]
    uncond = model.encode_prompts(neg)
    return ClassifierFreeGuidance(base, guidance, uncond, sigma_interval=sigma_interval), cond


def progress(total: int, desc: str, enabled: bool = True) -> tuple[Callable[[dict], None] | None, Callable[[], None]]:
    """A sampler callback driving a tqdm bar, and a function that closes it."""
    if not enabled:
        return None, lambda: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", leave=False)

    def cb(info: dict) -> None:
        bar.update(1)

    return cb, bar.close


def chain_callbacks(*callbacks: Callable[[dict], None] | None) -> Callable[[dict], None]:
    """One sampler callback that calls each of ``callbacks`` in order (None entries skipped)."""
    active = [fn for fn in callbacks if fn is not None]

    def cb(info: dict) -> None:
        for fn in active:
            fn(info)

    return cb


def run_sampler(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    sampler: str,
    *,
    cond: Cond | None,
    noise: NoiseSource,
    show_progress: bool = True,
    callback: Callable[[dict], None] | None = None,
    **knobs,
) -> Tensor:
    fn = get_sampler(sampler)
    bar_cb, close = progress(len(sigmas) - 1, sampler, show_progress)
    try:
        return fn(denoiser, x, sigmas.to(x.device), cond=cond, noise=noise, callback=chain_callbacks(bar_cb, callback),
                  **knobs)
    finally:
        close()


def schedule_for(denoiser: Denoiser, sampler: str, steps: int | None, schedule: str | None,
                 model_default: int | None = None) -> Tensor:
    """σ schedule: ``steps`` or the model's default step count or the sampler's."""
    info = sampler_info(sampler)
    if steps is None:
        steps = model_default if model_default is not None and not info.stochastic else info.default_steps
    return make_sigmas(denoiser, steps, schedule or info.default_schedule)


def base_params(model: LatentDiffusion, **kw) -> dict[str, Any]:
    p = {"model": model.name, "prediction": model.prediction, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    p.update({k: v for k, v in kw.items() if v is not None})
    return p


def to_unit(images: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1] float32 on CPU."""
    return ((images.float().cpu() + 1) / 2).clamp(0, 1)


def from_unit(images: Tensor, device=None) -> Tensor:
    """[0, 1] -> [-1, 1]."""
    return (images.float() * 2 - 1).to(device)
