"""Langevin dynamics: annealed Langevin sampling (NCSN) and the Langevin corrector of PC samplers.

Langevin dynamics (thesis eq. 2.7) draws from p by iterating x ← x + (ε/2)·∇log p(x) + √ε·z.
Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1; thesis eq. 2.8) runs it at a descending
sequence of noise levels σ_1 > … > σ_L with the score model s_θ(x, σ_i) and step size

    α_i = ε·σ_i² / σ_L²,

so the step is the same fraction ε/σ_L² of the noise variance at every level. Here the score is
the denoiser's, s(x, σ) = (D(x, σ) - x)/σ² (Tweedie). The knob ``step_scale`` is that fraction
(α_i = step_scale·σ_i², i.e. ε = step_scale·σ_L²); ``epsilon`` sets ε directly instead.
With ``denoise_last`` (default) the final transition σ_L → 0 returns x̂0 = D(x, σ_L), the
"denoising jump" of Jolicoeur-Martineau et al. (2021) that removes the leftover σ_L noise.

*Default step size.* Along a data direction of variance c the chain must track the target
variance v = c + σ² while σ falls; each step relaxes the excess by α/v = step_scale·σ²/v. With S
Langevin steps per unit of ln σ, the chain lags by a relative variance excess ≈ 2/(S·step_scale),
which freezes once σ² ≪ c. Stability only needs α < 4v (step_scale < 4), and the stationary
discretisation bias α/(4v) matters only where σ² ≳ c, before the lag is set. Hence the default
step_scale = 1 (ε = σ_L²), 5 steps per level on 100 geometric levels (S ≈ 47 over 80 → 0.002):
≈ 4% excess variance, the price annealed Langevin pays compared with the reverse-SDE samplers.

The **corrector** of predictor-corrector sampling (Song et al. 2021b, Alg. 4) is a Langevin step
whose size is set from a target signal-to-noise ratio r:

    ε = 2·(r·‖z‖/‖s(x)‖)²,   x ← x + ε·s(x) + √(2ε)·z.

Song et al. take the norms as batch means; here they are per sample so the result does not
depend on the batch (DESIGN.md §3). In low dimension ‖s‖ can come arbitrarily close to 0, so ε
is capped at ``max_step·σ²`` (default 1·σ², far above the typical 2r²σ² of high-dimensional data).
"""

from __future__ import annotations

import math

from torch import Tensor

from ..denoisers import Cond, append_dims
from ..noise import NoiseSource
from .registry import check_knob, register_sampler, report_step, sigma_vector, start

__all__ = ["STEP_RULES", "langevin_corrector", "sample_langevin"]

STEP_RULES = ("sigma", "norm")


def _score(denoiser, x: Tensor, sigma: float, cond: Cond | None) -> tuple[Tensor, Tensor]:
    denoised = denoiser(x, sigma_vector(sigma, x), cond)
    return (denoised - x) / sigma**2, denoised


# Each sampler spells out the contract signature of registry.py (callers read its knobs with
# inspect.signature), so the decorator and signature lines repeat across the sampler modules by design.
@register_sampler(
    "langevin", stochastic=True, default_steps=100, default_schedule="exponential", nfe_per_step=5,
    description="annealed Langevin dynamics (NCSN, Song & Ermon 2019; thesis eq. 2.8)",
)
def sample_langevin(
    denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Cond | None = None,
    noise: NoiseSource | None = None,
    callback=None,
    n_steps: int = 5,
    step_scale: float | None = None,
    epsilon: float | None = None,
    denoise_last: bool = True,
) -> Tensor:
    """Annealed Langevin dynamics: ``n_steps`` Langevin updates at each positive σ of ``sigmas``.

    ``step_scale`` (default 1.0) or ``epsilon`` (thesis ε) sets α_i; pass at most one.
    One callback per level; the step into σ = 0 ends with x̂0 when ``denoise_last``.
    """
    s, noise = start(sigmas, x, noise, "langevin")
    check_knob("n_steps", n_steps, 1)
    if step_scale is not None and epsilon is not None:
        raise ValueError("pass either step_scale or epsilon, not both")
    sigma_last = s[-2]
    if epsilon is not None:
        step_scale = epsilon / sigma_last**2
    elif step_scale is None:
        step_scale = 1.0
    if not step_scale > 0:
        raise ValueError(f"the Langevin step size must be positive, got step_scale={step_scale}")
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        alpha = step_scale * sigma**2  # α_i = ε σ_i² / σ_L²
        for _ in range(n_steps):
            score, denoised = _score(denoiser, x, sigma, cond)
            x = x + 0.5 * alpha * score + math.sqrt(alpha) * noise.randn_like(x)
        if sigma_next == 0 and denoise_last:
            denoised = denoiser(x, sigma_vector(sigma, x), cond)
            x = denoised
        report_step(callback, i, x, sigma, sigma_next, denoised)
    return x


def langevin_corrector(
    denoiser,
    x: Tensor,
    sigma: float,
    *,
    noise: NoiseSource,
    cond: Cond | None = None,
    snr: float = 0.16,
    n_steps: int = 1,
    step_rule: str = "sigma",
) -> tuple[Tensor, Tensor | None]:
    """``n_steps`` Langevin corrector updates at level σ with the signal-to-noise step rule.

    ``step_rule``: "sigma" (ε = 2(snr·σ)², the default) or "norm" (Song et al.'s
    ε = 2(snr·‖z‖/‖s‖)² per sample). Returns the new state and the last x̂0 (None when n_steps = 0).
    """
    if snr <= 0:
        raise ValueError(f"snr must be positive, got {snr}")
    if n_steps < 0:
        raise ValueError(f"n_steps must be ≥ 0, got {n_steps}")
    if step_rule not in STEP_RULES:
        raise ValueError(f"unknown step_rule {step_rule!r}; choose one of {STEP_RULES}")
    denoised = None
    for _ in range(n_steps):
        score, denoised = _score(denoiser, x, sigma, cond)
        z = noise.randn_like(x)
        if step_rule == "sigma":
            step = 2 * (snr * sigma) ** 2
        else:
            z_norm = z.reshape(x.shape[0], -1).norm(dim=1)
            s_norm = score.reshape(x.shape[0], -1).norm(dim=1).clamp(min=1e-30)
            step = append_dims(2 * (snr * z_norm / s_norm) ** 2, x.ndim)
        x = x + step * score + (2 * step) ** 0.5 * z
    return x, denoised
