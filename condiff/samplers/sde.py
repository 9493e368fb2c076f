"""Reverse-SDE samplers: Euler–Maruyama and predictor–corrector (Song et al. 2021; thesis eq. 2.19).

**VE SDE in σ-space (``sde=None``, the default).** With the clock τ = σ², the VE SDE is plain
Brownian motion dx = dw_τ, whose reversal (eq. 2.19 with f = 0, g = 1) is
dx = -∇log p_τ(x)·dτ + dw̄_τ. Its Euler–Maruyama step from σ_i to σ_{i+1} is

    x_{i+1} = x_i + (σ_i² - σ_{i+1}²)·s(x_i, σ_i) + √(σ_i² - σ_{i+1}²)·z,   s = (D - x)/σ²,

the "reverse diffusion" predictor of Song et al. (2021b, eq. 47) for NCSN.

**Any :class:`condiff.sde.SDE` (``sde=VPSDE()`` …).** Each positive σ_i maps to t_i = t(σ_i),
the state to y = s(t)·x, and the step is the textbook EM step of eq. 2.19 in t:
y ← y - [f(y, t_i) - g(t_i)²·∇log p_t(y)]·Δt + g(t_i)·√Δt·z with Δt = t_i - t_{i+1}; the score
comes from the denoiser through :meth:`condiff.sde.SDE.score_from_denoiser`.

In both cases the final step into σ = 0 returns the noise-free mean, which is x̂0 = D(x, σ_last)
(Song et al.'s "denoise at the last step"); drawing noise there would leave σ_last of noise.

**Predictor–corrector** (Song et al. 2021b, Alg. 2-4): at each level first ``n_corrector``
Langevin corrector steps (:func:`condiff.samplers.langevin.langevin_corrector`, snr rule), then one
predictor step (above) to the next level. NFE per step = 1 + n_corrector. The corrector runs on
the σ-space state; the snr rule is invariant to the scaling y = s(t)·x, so this equals running it
on the SDE state.
"""

from __future__ import annotations

import math

from torch import Tensor

from ..denoisers import Cond
from ..noise import NoiseSource
from ..sde import SDE
from .langevin import langevin_corrector
from .registry import check_knob, register_sampler, report_step, sigma_vector, start

__all__ = ["reverse_sde_step", "sample_euler_maruyama", "sample_pc"]


def reverse_sde_step(
    denoiser,
    x: Tensor,
    sigma: float,
    sigma_next: float,
    *,
    noise: NoiseSource,
    cond: Cond | None = None,
    sde: SDE | None = None,
) -> tuple[Tensor, Tensor]:
    """One Euler–Maruyama step of the reverse SDE from σ to σ_next (σ-space in and out).

    Returns (x_next, x̂0 at σ).
    """
    denoised = denoiser(x, sigma_vector(sigma, x), cond)
    if sigma_next == 0:
        return denoised, denoised
    if sde is None:
        gap = sigma**2 - sigma_next**2
        score = (denoised - x) / sigma**2
        return x + gap * score + math.sqrt(gap) * noise.randn_like(x), denoised
    t, t_next = (float(v) for v in sde.sigma_to_t([sigma, sigma_next]))
    dt = t - t_next
    s_t, s_next = float(sde.mean_coef(t)), float(sde.mean_coef(t_next))
    y = s_t * x
    score_y = (denoised - x) / sigma**2 / s_t
    g = float(sde.diffusion(t))
    y = y - sde.reverse_drift(y, t, score_y) * dt + g * math.sqrt(dt) * noise.randn_like(x)
    return y / s_next, denoised


def _check_sde(sde) -> None:
    if sde is not None and not isinstance(sde, SDE):
        raise ValueError(f"sde must be None (VE in σ-space) or a condiff.sde.SDE, got {type(sde).__name__}")


# Each sampler spells out the contract signature of registry.py (callers read its knobs with
# inspect.signature), so the decorator and signature lines repeat across the sampler modules by design.
@register_sampler(
    "euler_maruyama", stochastic=True, default_steps=200, default_schedule="karras",
    description="reverse-SDE Euler–Maruyama (thesis eq. 2.19); VE in σ-space or any condiff.sde.SDE",
)
def sample_euler_maruyama(
    denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Cond | None = None,
    noise: NoiseSource | None = None,
    callback=None,
    sde: SDE | None = None,
) -> Tensor:
    """Euler–Maruyama on the reverse SDE (VE in σ-space by default, or the given ``sde``)."""
    s, noise = start(sigmas, x, noise, "euler_maruyama")
    _check_sde(sde)
    for i in range(len(s) - 1):
        x, denoised = reverse_sde_step(denoiser, x, s[i], s[i + 1], noise=noise, cond=cond, sde=sde)
        report_step(callback, i, x, s[i], s[i + 1], denoised)
    return x


@register_sampler(
    "pc", stochastic=True, default_steps=100, default_schedule="karras", nfe_per_step=2,
    description="predictor–corrector: reverse-SDE predictor + Langevin corrector (Song et al. 2021, Alg. 2)",
)
def sample_pc(
    denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Cond | None = None,
    noise: NoiseSource | None = None,
    callback=None,
    snr: float = 0.16,
    n_corrector: int = 1,
    sde: SDE | None = None,
) -> Tensor:
    """Predictor–corrector sampling: corrector at σ_i (snr rule), then an EM predictor step."""
    s, noise = start(sigmas, x, noise, "pc")
    _check_sde(sde)
    check_knob("n_corrector", n_corrector, 0)
    for i in range(len(s) - 1):
        x, _ = langevin_corrector(denoiser, x, s[i], noise=noise, cond=cond, snr=snr, n_steps=n_corrector)
        x, denoised = reverse_sde_step(denoiser, x, s[i], s[i + 1], noise=noise, cond=cond, sde=sde)
        report_step(callback, i, x, s[i], s[i + 1], denoised)
    return x
