"""Ancestral samplers: DDPM (thesis eq. 2.14) and DDIM with η (thesis eq. 2.15), in σ-space.

**Why the σ-space forms are exact.** A VP state x_t = √ᾱ_t·x0 + √(1-ᾱ_t)·ε is the σ-space state
x = x0 + σ_t·ε scaled by √ᾱ_t, with ᾱ_t = 1/(1+σ_t²). Between two levels σ_s < σ_t the VP
transition x_t = √(ᾱ_t/ᾱ_s)·x_s + √(1-ᾱ_t/ᾱ_s)·n becomes x_t = x_s + √(σ_t² - σ_s²)·n in
σ-space (since 1/ᾱ = 1 + σ²). Hence the DDPM posterior q(x_s | x_t, x0) is, in σ-space,

    mean = x0 + (σ_s²/σ_t²)·(x_t - x0),      variance = σ_s²·(σ_t² - σ_s²)/σ_t²,

and eq. 2.14 (with σ_t² = β̃_t, Ho et al. 2020 eq. 7, and x0 replaced by the model's x̂0) is
exactly this step with x̂0 = D(x_t, σ_t), scaled by √ᾱ_s. ``variance="beta"`` uses Ho et al.'s
other choice σ_t² = β_t, which in σ-space is (1+σ_s²)(σ_t²-σ_s²)/(1+σ_t²) (VP models only;
the last step is noise-free).

DDIM (Song et al. 2021a, eq. 12 = thesis eq. 2.15) with
σ_η² = η²·(1-ᾱ_s)/(1-ᾱ_t)·(1-ᾱ_t/ᾱ_s) becomes, divided by √ᾱ_s,

    x_s = x̂0 + σ_down·ε̂ + σ_up·z,   ε̂ = (x_t - x̂0)/σ_t,
    σ_up = η·σ_s·√((σ_t² - σ_s²)/σ_t²),   σ_down = √(σ_s² - σ_up²).

η = 0 is the Euler step of the probability-flow ODE; η = 1 gives σ_up² = the DDPM posterior
variance and σ_down/σ_t = σ_s²/σ_t², i.e. exactly the DDPM step above (same noise, same result).
"Euler ancestral" (k-diffusion's name) is the same update written as x + d·(σ_down - σ_t) + σ_up·z.
"""

from __future__ import annotations

import math

from torch import Tensor

from ..denoisers import Cond
from ..noise import NoiseSource
from .registry import register_sampler, report_step, require_noise, sigma_vector, start

__all__ = ["ancestral_step_sizes", "sample_ddpm", "sample_ddim", "sample_euler_ancestral"]

DDPM_VARIANCES = ("posterior", "beta")


def ancestral_step_sizes(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(σ_down, σ_up) of a DDIM/ancestral step from σ to σ_next (see module docstring).

    η > 1 is allowed (more noise than DDPM); σ_up is then capped at σ_next.
    """
    if eta < 0:
        raise ValueError(f"eta must be ≥ 0, got {eta}")
    if sigma_next == 0:
        return 0.0, 0.0
    up = min(sigma_next, eta * sigma_next * math.sqrt((sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(max(sigma_next**2 - up**2, 0.0)), up


def _ancestral_loop(denoiser, x: Tensor, s: list, cond, noise, callback, sizes) -> Tensor:
    """Shared step loop of DDPM/DDIM: x ← x̂0 + c·(x - x̂0) + std·z, with (c, std) = sizes(σ, σ_next).

    Noise is drawn only where std > 0.
    """
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = denoiser(x, sigma_vector(sigma, x), cond)
        ratio, std = sizes(sigma, sigma_next)
        x = denoised + ratio * (x - denoised)
        if std > 0:
            x = x + std * noise.randn_like(x)
        report_step(callback, i, x, sigma, sigma_next, denoised)
    return x


# Each sampler spells out the contract signature of registry.py (callers read its knobs with
# inspect.signature), so the decorator and signature lines repeat across the sampler modules by design.
@register_sampler(
    "ddpm", stochastic=True, default_steps=100, default_schedule="auto",
    description="DDPM ancestral sampling (Ho et al. 2020, thesis eq. 2.14), posterior step in σ-space",
)
def sample_ddpm(
    denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Cond | None = None,
    noise: NoiseSource | None = None,
    callback=None,
    variance: str = "posterior",
) -> Tensor:
    """Ancestral sampling with the DDPM posterior q(x_s | x_t, x̂0) between consecutive σ's.

    ``variance``: "posterior" (σ_t² = β̃_t, the default) or "beta" (σ_t² = β_t, VP models).
    On a VP model's consecutive discrete timesteps this is eq. 2.14 step for step.
    """
    s, noise = start(sigmas, x, noise, "ddpm")
    if variance not in DDPM_VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {DDPM_VARIANCES}")

    def sizes(sigma: float, sigma_next: float) -> tuple[float, float]:
        if sigma_next == 0:
            return sigma_next**2 / sigma**2, 0.0
        gap = sigma**2 - sigma_next**2
        if variance == "posterior":
            var = sigma_next**2 * gap / sigma**2
        else:
            var = (1 + sigma_next**2) * gap / (1 + sigma**2)
        return sigma_next**2 / sigma**2, math.sqrt(var)

    return _ancestral_loop(denoiser, x, s, cond, noise, callback, sizes)


@register_sampler(
    "ddim", stochastic=False, default_steps=50, default_schedule="auto",
    description="DDIM (Song et al. 2021, thesis eq. 2.15); eta=0 deterministic, eta=1 equals DDPM",
)
def sample_ddim(
    denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Cond | None = None,
    noise: NoiseSource | None = None,
    callback=None,
    eta: float = 0.0,
) -> Tensor:
    """DDIM with stochasticity η (deterministic for η = 0, where ``noise`` may be None)."""
    if eta < 0:
        raise ValueError(f"eta must be ≥ 0, got {eta}")
    s, noise = start(sigmas, x, noise, f"ddim(eta={eta})" if eta > 0 else None)

    def sizes(sigma: float, sigma_next: float) -> tuple[float, float]:
        down, up = ancestral_step_sizes(sigma, sigma_next, eta)
        return down / sigma, up

    return _ancestral_loop(denoiser, x, s, cond, noise, callback, sizes)


@register_sampler(
    "euler_ancestral", stochastic=True, default_steps=50, default_schedule="karras",
    description="Euler ancestral (k-diffusion name; = DDIM eta=1 on a Karras schedule)",
)
def sample_euler_ancestral(
    denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Cond | None = None,
    noise: NoiseSource | None = None,
    callback=None,
    eta: float = 1.0,
) -> Tensor:
    """Euler ancestral sampling; identical maths to :func:`sample_ddim` with η = 1 by default."""
    if eta > 0:
        require_noise(noise, x, "euler_ancestral")
    return sample_ddim(denoiser, x, sigmas, cond=cond, noise=noise, callback=callback, eta=eta)
