"""Probability-flow ODE samplers: Euler, Heun and DPM-Solver++(2M) (thesis 2.5.3).

In the σ-space view x = x0 + σ·ε the probability-flow ODE of Song et al. (2021, eq. 13) for the
VE SDE becomes (Karras et al. 2022, eq. 3)

    dx/dσ = (x - D(x, σ)) / σ,

with D the denoiser. Because the ODE is deterministic, every method here can be run in either
direction: :func:`integrate_pf_ode` accepts any strictly monotone σ sequence, which is how
:func:`invert_ode` encodes data into its latent (DDIM inversion) and how the likelihood code
integrates up to σ_max.

* Euler: x_{i+1} = x_i + (σ_{i+1} - σ_i)·d_i, d_i = (x_i - D(x_i, σ_i))/σ_i. It is the same
  update as DDIM with η = 0 (thesis eq. 2.15 with σ_t = 0).
* Heun: Karras et al. (2022) Algorithm 1 (deterministic, no churn): a trapezoidal correction with
  a second evaluation at σ_{i+1}, skipped on the final step to σ = 0 where d is undefined.
* DPM-Solver++(2M): Lu et al. (2022, Algorithm 2) in the data-prediction form. With λ = -log σ
  and h = λ_{i+1} - λ_i, x_{i+1} = (σ_{i+1}/σ_i)·x_i - (e^{-h} - 1)·D̃, where D̃ = D_i on the
  first step and D̃ = (1 + 1/(2r))·D_i - 1/(2r)·D_{i-1}, r = h_{i-1}/h_i, afterwards. The step to
  σ = 0 is first order, which returns D exactly.
"""

from __future__ import annotations

import math

from torch import Tensor

from ..denoisers import Cond
from ..noise import NoiseSource
from ..schedules import check_sigmas
from .registry import register_sampler, report_step, sigma_vector, start

__all__ = ["ODE_METHODS", "integrate_pf_ode", "invert_ode", "sample_euler", "sample_heun", "sample_dpmpp_2m"]

ODE_METHODS = ("euler", "heun", "dpmpp_2m")


def _monotone_sigmas(sigmas: Tensor) -> list[float]:
    """σ's of a path in either direction: positive, strictly monotone; only a descending path may end in 0."""
    if not isinstance(sigmas, Tensor) or sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError("sigmas must be a 1-D tensor with at least 2 entries")
    s = [float(v) for v in sigmas.detach().cpu().double()]
    if not all(math.isfinite(v) for v in s):
        raise ValueError("sigmas contains NaN or inf")
    diffs = [b - a for a, b in zip(s, s[1:])]
    if not (all(d < 0 for d in diffs) or all(d > 0 for d in diffs)):
        raise ValueError("sigmas must be strictly monotone (descending to sample, ascending to invert)")
    positive = s[:-1] if diffs[0] < 0 else s
    if any(v <= 0 for v in positive) or s[-1] < 0:
        raise ValueError("sigmas must be positive (a descending path may end in 0)")
    return s


def integrate_pf_ode(
    denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    method: str = "heun",
    cond: Cond | None = None,
    callback=None,
) -> Tensor:
    """Integrate dx/dσ = (x - D(x, σ))/σ along ``sigmas`` (any strictly monotone path, see module doc)."""
    if method not in ODE_METHODS:
        raise ValueError(f"unknown ODE method {method!r}; choose one of {ODE_METHODS}")
    s = _monotone_sigmas(sigmas)
    old_denoised: Tensor | None = None
    h_last: float | None = None
    for i in range(len(s) - 1):
        sigma, sigma_next = s[i], s[i + 1]
        denoised = denoiser(x, sigma_vector(sigma, x), cond)
        if method == "dpmpp_2m":
            if sigma_next == 0:
                x = denoised
            else:
                h = math.log(sigma) - math.log(sigma_next)  # λ_{i+1} - λ_i with λ = -log σ
                if old_denoised is None:
                    d_tilde = denoised
                else:
                    r = h_last / h
                    d_tilde = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
                x = (sigma_next / sigma) * x - math.expm1(-h) * d_tilde
                h_last = h
            old_denoised = denoised
        else:
            d = (x - denoised) / sigma
            x_euler = x + (sigma_next - sigma) * d
            if method == "euler" or sigma_next == 0:
                x = x_euler
            else:
                d_next = (x_euler - denoiser(x_euler, sigma_vector(sigma_next, x), cond)) / sigma_next
                x = x + (sigma_next - sigma) * 0.5 * (d + d_next)
        report_step(callback, i, x, sigma, sigma_next, denoised)
    return x


def invert_ode(
    denoiser, x0: Tensor, sigmas: Tensor, *, method: str = "heun", cond: Cond | None = None
) -> Tensor:
    """Encode data into the latent at ``sigmas[0]`` by running the PF-ODE upwards (DDIM inversion).

    ``sigmas`` is a sampling schedule (descending, ending in 0). The data are taken to sit at the
    smallest positive level ``sigmas[-2]`` and integrated up through the same grid, so sampling
    the result with the same method and ``sigmas`` returns ``x0`` up to the discretisation error.
    """
    check_sigmas(sigmas)
    if len(sigmas) < 3:
        raise ValueError("inversion needs at least 2 positive noise levels in sigmas")
    up = sigmas[:-1].flip(0)
    return integrate_pf_ode(denoiser, x0, up, method=method, cond=cond)


def _sample_ode(method, denoiser, x, sigmas, cond, callback) -> Tensor:
    start(sigmas, x)
    return integrate_pf_ode(denoiser, x, sigmas, method=method, cond=cond, callback=callback)


# Each sampler spells out the contract signature of registry.py (callers read its knobs with
# inspect.signature), so the decorator and signature lines repeat across the sampler modules by design.
# euler, heun and dpmpp_2m differ only in the integrator they name: each keeps its own paper name,
# docstring and registry entry rather than being generated in a loop.
@register_sampler(
    "euler", stochastic=False, default_steps=50, default_schedule="karras",
    description="probability-flow ODE, Euler (first order; = DDIM with eta=0)",
)
def sample_euler(
    denoiser, x: Tensor, sigmas: Tensor, *, cond: Cond | None = None, noise: NoiseSource | None = None, callback=None
) -> Tensor:
    """Euler steps on the probability-flow ODE (deterministic; ``noise`` is ignored)."""
    return _sample_ode("euler", denoiser, x, sigmas, cond, callback)


@register_sampler(
    "heun", stochastic=False, default_steps=25, default_schedule="karras", nfe_per_step=2,
    description="probability-flow ODE, Heun 2nd order (Karras et al. 2022, Alg. 1)",
)
def sample_heun(
    denoiser, x: Tensor, sigmas: Tensor, *, cond: Cond | None = None, noise: NoiseSource | None = None, callback=None
) -> Tensor:
    """Heun's method on the probability-flow ODE (2 NFE per step except the last)."""
    return _sample_ode("heun", denoiser, x, sigmas, cond, callback)


@register_sampler(
    "dpmpp_2m", stochastic=False, default_steps=25, default_schedule="karras",
    description="DPM-Solver++(2M), multistep 2nd order (Lu et al. 2022)",
)
def sample_dpmpp_2m(
    denoiser, x: Tensor, sigmas: Tensor, *, cond: Cond | None = None, noise: NoiseSource | None = None, callback=None
) -> Tensor:
    """DPM-Solver++(2M): second order at one NFE per step."""
    return _sample_ode("dpmpp_2m", denoiser, x, sigmas, cond, callback)

