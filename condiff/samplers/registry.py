"""The sampler contract, the registry of samplers and the one-call :func:`sample` entry point.

Contract (DESIGN.md §3). Every sampler is a pure function ::

    sample_xxx(denoiser, x, sigmas, *, cond=None, noise=None, callback=None, **knobs) -> Tensor

* ``denoiser(x, sigma, cond) -> x̂0`` works in the variance-exploding view x = x0 + σ·ε;
* ``x`` is the start state, already at noise level ``sigmas[0]`` (σ_0·z for a fresh sample,
  x0 + σ_k·ε for SDEdit); any shape [B, ...] works (points [B, d] or images [B, C, H, W]);
* ``sigmas`` is strictly descending and ends in 0 (checked with
  :func:`condiff.schedules.check_sigmas`); step i goes from ``sigmas[i]`` to ``sigmas[i+1]``;
* ``noise`` is a :class:`condiff.noise.NoiseSource` with one seed per sample. **Every stochastic
  sampler requires it and raises a ValueError when it is missing**: a hidden default seed would
  silently correlate runs that the caller believes independent. Deterministic samplers ignore it.
  Because each sample draws from its own generator, sample i of a batch equals the same seed
  sampled alone (batch-size invariance);
* ``callback`` (optional) is called once per step with
  ``dict(i=step, x=state after the step, sigma=σ_i, sigma_next=σ_{i+1}, denoised=x̂0 of that step)``,
  so the ``x`` of the last call is the returned sample.

Samplers register themselves with :func:`register_sampler` when their module is imported;
importing :mod:`condiff.samplers` imports them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..denoisers import Cond
from ..noise import NoiseSource
from ..schedules import DiscreteSchedule, check_sigmas, karras_sigmas, ve_sigmas, vp_sigmas

__all__ = [
    "SamplerInfo",
    "register_sampler",
    "get_sampler",
    "list_samplers",
    "sampler_info",
    "make_sigmas",
    "model_schedule",
    "sample",
    "SCHEDULES",
    "prepare_sigmas",
    "start",
    "check_knob",
    "require_noise",
    "sigma_vector",
    "report_step",
]

SCHEDULES = ("karras", "exponential", "vp", "model", "auto")
"""Names understood by :func:`make_sigmas`:

* ``karras``: ρ-spacing of Karras et al. (2022, eq. 5) over the denoiser's [σ_min, σ_max];
* ``exponential``: geometric spacing (NCSN / VE SDE, Song & Ermon 2019);
* ``vp``: uniform times of the VP SDE (Song et al. 2021), β_min = 0.1, β_max = 20;
* ``model``: the denoiser's own discrete DDPM table (``denoiser.time.schedule``), trailing spacing;
* ``auto``: ``model`` when the denoiser has a discrete table, ``karras`` otherwise.
"""


@dataclass(frozen=True)
class SamplerInfo:
    """A registered sampler.

    ``nfe_per_step`` is the nominal number of denoiser evaluations per step (Heun: 2; PC: 1 +
    corrector steps; Langevin: steps per level), used for NFE-matched comparisons.
    """

    name: str
    fn: Callable[..., Tensor]
    stochastic: bool
    default_steps: int
    default_schedule: str
    description: str
    nfe_per_step: int


_REGISTRY: dict[str, SamplerInfo] = {}


def register_sampler(
    name: str, *, stochastic: bool, default_steps: int, default_schedule: str, description: str, nfe_per_step: int = 1
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator: add a sampler function to the registry under ``name``."""
    if default_schedule not in SCHEDULES:
        raise ValueError(f"default_schedule {default_schedule!r} is not one of {SCHEDULES}")

    def deco(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"sampler name {name!r} is registered twice")
        _REGISTRY[name] = SamplerInfo(name, fn, stochastic, default_steps, default_schedule, description, nfe_per_step)
        return fn

    return deco


def list_samplers() -> list[str]:
    """Names of all registered samplers, sorted."""
    return sorted(_REGISTRY)


def sampler_info(name: str) -> SamplerInfo:
    """The :class:`SamplerInfo` of ``name`` (ValueError listing the choices when unknown)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown sampler {name!r}; available samplers: {', '.join(list_samplers())}")
    return _REGISTRY[name]


def get_sampler(name: str) -> Callable[..., Tensor]:
    """The sampler function registered as ``name``."""
    return sampler_info(name).fn


# --------------------------------------------------------------------------- schedules


def model_schedule(denoiser) -> DiscreteSchedule | None:
    """The discrete DDPM table a denoiser exposes via ``denoiser.time.schedule``, if any.

    Wrappers (guidance, editing) are looked through via their ``inner`` attribute.
    """
    seen = 0
    while denoiser is not None and seen < 64:
        sched = getattr(getattr(denoiser, "time", None), "schedule", None)
        if isinstance(sched, DiscreteSchedule):
            return sched
        denoiser = getattr(denoiser, "inner", None)
        seen += 1
    return None


def make_sigmas(
    denoiser, steps: int, schedule: str = "karras", *, rho: float = 7.0, spacing: str = "trailing"
) -> Tensor:
    """A descending float64 σ schedule of ``steps`` noise levels followed by 0 (see :data:`SCHEDULES`).

    ``rho`` shapes the Karras schedule; ``spacing`` ("trailing", "leading", "linspace") picks the
    timesteps of the ``model`` schedule (:meth:`DiscreteSchedule.timestep_sigmas`).
    """
    check_knob("steps", steps, 1)
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    table = model_schedule(denoiser)
    if schedule == "auto":
        schedule = "model" if table is not None else "karras"
    if schedule == "model":
        if table is None:
            raise ValueError(
                "schedule='model' needs a denoiser with a discrete DDPM table (denoiser.time.schedule); "
                "use schedule='karras' or 'auto' for this denoiser"
            )
        return table.timestep_sigmas(steps, spacing)
    if schedule == "vp":
        return vp_sigmas(steps)
    smin, smax = float(denoiser.sigma_min), float(denoiser.sigma_max)
    if schedule == "karras":
        return karras_sigmas(steps, smin, smax, rho)
    return ve_sigmas(steps, smin, smax)


# --------------------------------------------------------------------------- helpers for samplers


def prepare_sigmas(sigmas: Tensor, x: Tensor) -> list[float]:
    """Validate the schedule (descending, ending in 0) and the state; return σ's as Python floats."""
    check_sigmas(sigmas)
    if not isinstance(x, Tensor) or x.ndim < 1 or x.shape[0] < 1:
        raise ValueError("x must be a tensor of shape [B, ...] with B ≥ 1")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    return [float(s) for s in sigmas.detach().cpu().double()]


def start(sigmas: Tensor, x: Tensor, noise: NoiseSource | None = None, stochastic: str | None = None
          ) -> tuple[list[float], NoiseSource | None]:
    """The opening checks every sampler shares: the schedule and state (:func:`prepare_sigmas`)
    and, for a ``stochastic`` sampler (its name), a matching NoiseSource (:func:`require_noise`)."""
    s = prepare_sigmas(sigmas, x)
    if stochastic is not None:
        noise = require_noise(noise, x, stochastic)
    return s, noise


def check_knob(name: str, value, minimum: int) -> int:
    """A count knob (steps, Langevin steps, corrector steps): an ``int`` ≥ ``minimum``, not a bool."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return value


def require_noise(noise: NoiseSource | None, x: Tensor, sampler: str) -> NoiseSource:
    """Check that a stochastic sampler got a NoiseSource that matches the batch."""
    if noise is None:
        raise ValueError(
            f"sampler {sampler!r} is stochastic and needs noise=NoiseSource(seed, batch_size) "
            "(one seed per sample, so results do not depend on the batch)"
        )
    if not isinstance(noise, NoiseSource):
        raise ValueError(f"noise must be a condiff.noise.NoiseSource, got {type(noise).__name__}")
    if len(noise) != x.shape[0]:
        raise ValueError(f"noise source has {len(noise)} seeds but the batch has {x.shape[0]} samples")
    return noise


def sigma_vector(sigma: float, x: Tensor) -> Tensor:
    """σ as a [B] tensor in x's dtype and device (what a denoiser receives)."""
    return torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)


def report_step(callback, i: int, x: Tensor, sigma: float, sigma_next: float, denoised: Tensor) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})


# --------------------------------------------------------------------------- one-call sampling


def sample(
    denoiser,
    shape: Sequence[int],
    *,
    sampler: str = "dpmpp_2m",
    steps: int | None = None,
    schedule: str | None = None,
    sigmas: Tensor | None = None,
    seed: int | Sequence[int] = 0,
    noise: NoiseSource | None = None,
    cond: Cond | None = None,
    callback=None,
    x_start: Tensor | None = None,
    device=None,
    dtype: torch.dtype = torch.float32,
    **knobs,
) -> Tensor:
    """Draw ``shape[0]`` samples with a registered sampler.

    ``sigmas`` overrides ``steps``/``schedule``; otherwise ``make_sigmas(denoiser, steps, schedule)``
    with the sampler's defaults. Noise comes from ``noise`` or from ``NoiseSource(seed, B)`` (sample
    i uses seed + i); the initial state is ``sigmas[0]·z`` with z the first draw of that source,
    unless ``x_start`` (a state already at noise level ``sigmas[0]``, e.g. x0 + σ_k·ε for SDEdit)
    is given. Extra keyword ``knobs`` go to the sampler (e.g. ``eta=0.5`` for DDIM).
    """
    info = sampler_info(sampler)
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1 or any(s < 1 for s in shape):
        raise ValueError(f"shape must be [B, ...] with positive sizes, got {shape}")
    if sigmas is None:
        steps = info.default_steps if steps is None else steps
        sigmas = make_sigmas(denoiser, steps, info.default_schedule if schedule is None else schedule)
    elif steps is not None or schedule is not None:
        raise ValueError("pass either sigmas or steps/schedule, not both")
    check_sigmas(sigmas)
    if noise is None:
        noise = NoiseSource(seed, shape[0]) if isinstance(seed, int) else NoiseSource(list(seed), shape[0])
    elif len(noise) != shape[0]:
        raise ValueError(f"noise source has {len(noise)} seeds but shape asks for {shape[0]} samples")
    if x_start is None:
        x = noise.randn(shape[1:], device=device, dtype=dtype) * float(sigmas[0])
    else:
        if tuple(x_start.shape) != shape:
            raise ValueError(f"x_start has shape {tuple(x_start.shape)}, expected {shape}")
        x = x_start
    return info.fn(denoiser, x, sigmas, cond=cond, noise=noise, callback=callback, **knobs)
