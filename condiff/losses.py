"""Training objectives of diffusion models, all written in the σ-space of the denoiser contract.

Every loss here is a small callable ``loss(denoiser, x0, cond, noise) -> Tensor[B]`` (one value per
sample, so the caller can weight or mask samples). It draws a noise level σ and noise ε, builds the
noisy input x = x0 + σ·ε, calls the denoiser ``D(x, σ, cond)`` (:mod:`condiff.denoisers`) and returns

    λ(σ) · mean_dims ‖D(x, σ) − x0‖².                                                    (*)

Why one form covers the thesis's objectives: a network wrapped by a
:class:`~condiff.denoisers.NetworkDenoiser` gives D = c_skip·x + c_out·F, so D − x0 = c_out·(F − F*)
with F* = ``NetworkDenoiser.predict_from_x0`` — the network's own regression target. Hence

* DDPM L_simple (thesis eq. 2.13), ‖ε − ε̂‖²: D − x0 = −σ(ε̂ − ε), so λ(σ) = 1/σ²;
* NCSN denoising score matching with σ² weighting (eq. 2.6), σ²‖s_θ − ∇ log p_σ(x̃|x)‖² with
  ∇ log p_σ(x̃|x) = −(x̃ − x)/σ² and s_θ = (D − x̃)/σ²: again λ(σ) = 1/σ²;
* the continuous weighted score loss (eq. 2.20), λ_s(σ)‖s_θ − ∇ log p‖² = λ_s(σ)/σ⁴·‖D − x0‖²
  (in its trainable denoising form, which differs from eq. 2.20 by a θ-independent constant);
* v-prediction (Salimans & Ho 2022), ‖v̂ − v‖² with v = √ᾱ ε − √(1−ᾱ) x0: λ(σ) = (σ² + σ_d²)/(σ σ_d)²;
* EDM (Karras et al. 2022, eq. 8): λ(σ) = (σ² + σ_d²)/(σ σ_d)², i.e. ‖F − F*‖² for the EDM network.

So training goes through exactly the preconditioning that sampling uses, and any denoiser works —
a bare NetworkDenoiser, or a wrapper such as a ControlNet- or LoRA-augmented one. With a
NetworkDenoiser of the matching parameterisation, (*) *is* the native loss (tests check this against
``predict_from_x0``). Values are means over data dimensions (Song & Ermon use ½·sum: a constant factor).

Randomness: ``noise`` is a ``torch.Generator`` (a batch draws σ for all samples, then ε) or a
:class:`~condiff.noise.NoiseSource` (sample i draws its σ, then its ε, from its own seed, so a
sample's loss does not depend on the batch it is in).
"""

from __future__ import annotations

import math
from typing import Callable, Protocol, Union

import torch
from torch import Tensor

from .denoisers import Cond, Denoiser, append_dims
from .noise import NoiseSource
from .schedules import DiscreteSchedule, q_sample, ve_sigmas

__all__ = [
    "RandomSource",
    "DiffusionLoss",
    "SigmaSampler",
    "TableSigmas",
    "LogNormalSigmas",
    "LogUniformSigmas",
    "WEIGHTINGS",
    "weighting",
    "WeightedDenoisingLoss",
    "DDPMEpsLoss",
    "NCSNScoreLoss",
    "ContinuousScoreLoss",
    "VPredictionLoss",
    "denoising_error",
]

RandomSource = Union[NoiseSource, torch.Generator]


class DiffusionLoss(Protocol):
    """``loss(denoiser, x0, cond, noise) -> Tensor[B]`` (per-sample loss, float32 or float64)."""

    def __call__(self, denoiser: Denoiser, x0: Tensor, cond: Cond | None, noise: RandomSource) -> Tensor: ...


# --------------------------------------------------------------------------------------------
# random draws through an injected source


def _check_source(noise: RandomSource, batch: int) -> None:
    if isinstance(noise, NoiseSource):
        if len(noise) != batch:
            raise ValueError(f"the NoiseSource has {len(noise)} seeds but the batch has {batch} samples")
    elif not isinstance(noise, torch.Generator):
        raise ValueError(
            f"noise must be a torch.Generator or a condiff.noise.NoiseSource, got {type(noise).__name__}; "
            "every random draw goes through a seeded generator"
        )


def _uniform(noise: RandomSource, batch: int, device) -> Tensor:
    """[B] uniform draws in [0, 1)."""
    if isinstance(noise, NoiseSource):
        return noise.rand((), device=device)
    return torch.rand(batch, generator=noise, device=noise.device).to(device)


def _normal(noise: RandomSource, shape: tuple[int, ...], device) -> Tensor:
    """Standard-normal draws of ``shape`` (shape[0] is the batch), float32."""
    if isinstance(noise, NoiseSource):
        return noise.randn(shape[1:], device=device)
    return torch.randn(shape, generator=noise, device=noise.device).to(device)


# --------------------------------------------------------------------------------------------
# σ distributions


class SigmaSampler(Protocol):
    def __call__(self, batch: int, noise: RandomSource, device) -> Tensor: ...


class TableSigmas:
    """σ drawn uniformly from a finite table (NCSN noise levels, a DDPM schedule's σ_t)."""

    def __init__(self, sigmas: Tensor):
        sigmas = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
        if len(sigmas) == 0 or not torch.isfinite(sigmas).all() or (sigmas <= 0).any():
            raise ValueError("the σ table must be a non-empty set of finite positive values")
        self.sigmas = sigmas

    def indices(self, batch: int, noise: RandomSource, device) -> Tensor:
        u = _uniform(noise, batch, device)
        return (u.double() * len(self.sigmas)).long().clamp(max=len(self.sigmas) - 1)

    def __call__(self, batch: int, noise: RandomSource, device) -> Tensor:
        return self.sigmas.to(device)[self.indices(batch, noise, device)].float()


class LogNormalSigmas:
    """ln σ ~ N(P_mean, P_std²) (Karras et al. 2022 use P_mean = −1.2, P_std = 1.2)."""

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2):
        if not p_std > 0:
            raise ValueError(f"p_std must be positive, got {p_std}")
        self.p_mean, self.p_std = float(p_mean), float(p_std)

    def __call__(self, batch: int, noise: RandomSource, device) -> Tensor:
        return (self.p_mean + self.p_std * _normal(noise, (batch,), device)).exp()


class LogUniformSigmas:
    """ln σ ~ U(ln σ_min, ln σ_max) (the VE SDE with t ~ U(0, 1), Song et al. 2021)."""

    def __init__(self, sigma_min: float, sigma_max: float):
        if not 0 < sigma_min < sigma_max < math.inf:
            raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")
        self.log_min, self.log_max = math.log(sigma_min), math.log(sigma_max)

    def __call__(self, batch: int, noise: RandomSource, device) -> Tensor:
        u = _uniform(noise, batch, device)
        return (self.log_min + u * (self.log_max - self.log_min)).exp()


# --------------------------------------------------------------------------------------------
# weightings λ(σ) of ‖D − x0‖²


def _weight_sigma2(sigma: Tensor, sigma_data: float) -> Tensor:
    return sigma.pow(-2)


def _weight_edm(sigma: Tensor, sigma_data: float) -> Tensor:
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def _weight_unit(sigma: Tensor, sigma_data: float) -> Tensor:
    return torch.ones_like(sigma)


WEIGHTINGS: dict[str, Callable[[Tensor, float], Tensor]] = {
    # ε-loss / σ²-weighted score matching (eq. 2.6, 2.13; λ_s(σ) = σ² in eq. 2.20)
    "sigma2": _weight_sigma2,
    # EDM loss weighting; with σ_d = 1 this is also the v-prediction loss
    "edm": _weight_edm,
    "v": _weight_edm,
    # plain x0 regression
    "unit": _weight_unit,
}


def weighting(name: str) -> Callable[[Tensor, float], Tensor]:
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {name!r}; choose one of {sorted(WEIGHTINGS)}")
    return WEIGHTINGS[name]


# --------------------------------------------------------------------------------------------
# the losses


def denoising_error(denoiser: Denoiser, x: Tensor, sigma: Tensor, x0: Tensor, cond: Cond | None) -> Tensor:
    """mean_dims ‖D(x, σ, cond) − x0‖² per sample, in at least float32.

    The difference is taken before any cast: at small σ, D and x0 agree to many digits."""
    diff = denoiser(x, sigma, cond) - x0
    if diff.dtype in (torch.float16, torch.bfloat16):
        diff = diff.float()
    return diff.pow(2).reshape(x0.shape[0], -1).mean(dim=1)


class WeightedDenoisingLoss:
    """λ(σ)·‖D(x0 + σε, σ) − x0‖² with σ from ``sigmas`` — the common core of every loss here (*)."""

    def __init__(self, sigmas: SigmaSampler, weight: str = "sigma2", sigma_data: float = 1.0):
        self.sigmas = sigmas
        self.weight_name = weight
        self.weight = weighting(weight)
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.sigma_data = float(sigma_data)

    def draw(self, x0: Tensor, noise: RandomSource) -> tuple[Tensor, Tensor, Tensor]:
        """(σ [B], ε like x0, noisy x = x0 + σε in the VE view)."""
        sigma = self.sigmas(x0.shape[0], noise, x0.device)
        eps = _normal(noise, tuple(x0.shape), x0.device).to(x0.dtype)
        return sigma, eps, x0 + append_dims(sigma, x0.ndim).to(x0.dtype) * eps

    def __call__(self, denoiser: Denoiser, x0: Tensor, cond: Cond | None, noise: RandomSource) -> Tensor:
        if not isinstance(x0, Tensor) or x0.ndim < 2 or not x0.is_floating_point():
            raise ValueError("x0 must be a floating-point tensor [B, ...] with a batch dimension")
        _check_source(noise, x0.shape[0])
        sigma, _, x = self.draw(x0, noise)
        err = denoising_error(denoiser, x, sigma, x0, cond)
        return self.weight(sigma.to(err.dtype), self.sigma_data) * err


class DDPMEpsLoss(WeightedDenoisingLoss):
    """DDPM L_simple (Ho et al. 2020; thesis eq. 2.13): E_{t,x0,ε} ‖ε − ε_θ(√ᾱ_t x0 + √(1−ᾱ_t) ε, t)‖².

    t is uniform over the schedule's 0..T−1; x_t comes from ``q_sample`` (eq. 2.10) and enters the
    denoiser in the VE view x = x_t/√ᾱ_t with σ_t = √((1−ᾱ_t)/ᾱ_t) — an ε-network wrapped by
    :func:`~condiff.denoisers.eps_denoiser` sees exactly x_t and t again.
    """

    def __init__(self, schedule: DiscreteSchedule):
        self.schedule = schedule
        self.table = TableSigmas(schedule.sigmas)
        super().__init__(self.table, "sigma2")

    def draw(self, x0: Tensor, noise: RandomSource) -> tuple[Tensor, Tensor, Tensor]:
        t = self.table.indices(x0.shape[0], noise, x0.device)
        eps = _normal(noise, tuple(x0.shape), x0.device).to(x0.dtype)
        abar = self.schedule.alphas_cumprod.to(x0.device)
        x_t = q_sample(x0, t, abar, eps)
        sigma = self.schedule.sigmas.to(x0.device)[t]
        x = x_t / append_dims(abar[t].sqrt(), x0.ndim).to(x0.dtype)
        return sigma.float(), eps, x


class NCSNScoreLoss(WeightedDenoisingLoss):
    """NCSN denoising score matching (Song & Ermon 2019; thesis eq. 2.6).

    Σ_i σ_i² E ‖s_θ(x̃, σ_i) − ∇_x̃ log p_σi(x̃|x)‖² with σ_i uniform over a geometric table of
    ``levels`` noise levels from σ_max down to σ_min (the NCSN choice).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 10.0, levels: int = 10):
        self.levels = ve_sigmas(levels, sigma_min, sigma_max)[:-1]
        super().__init__(TableSigmas(self.levels), "sigma2")


class ContinuousScoreLoss(WeightedDenoisingLoss):
    """Continuous-time weighted score matching (Song et al. 2021; thesis eq. 2.20).

    E_σ λ(σ) ‖s_θ(x, σ) − ∇ log p_σ(x|x0)‖² with σ from a continuous distribution: ``"lognormal"``
    (P_mean, P_std; EDM) or ``"loguniform"`` (σ_min, σ_max; VE SDE with t ~ U(0, 1)). ``weight``:
    ``"sigma2"`` (λ_s = σ², the likelihood-free default of Song et al.) or ``"edm"``
    (λ_D = (σ² + σ_d²)/(σ σ_d)², Karras et al. 2022).
    """

    def __init__(
        self,
        distribution: str = "lognormal",
        weight: str = "edm",
        *,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
    ):
        if distribution == "lognormal":
            sampler: SigmaSampler = LogNormalSigmas(p_mean, p_std)
        elif distribution == "loguniform":
            sampler = LogUniformSigmas(sigma_min, sigma_max)
        else:
            raise ValueError(f"unknown σ distribution {distribution!r}; use 'lognormal' or 'loguniform'")
        self.distribution = distribution
        super().__init__(sampler, weight, sigma_data)


class VPredictionLoss(WeightedDenoisingLoss):
    """v-prediction loss (Salimans & Ho 2022): ‖v̂ − v‖², v = √ᾱ ε − √(1−ᾱ) x0 (SD 2.x "v" models).

    On a :class:`DiscreteSchedule` t is uniform over 0..T−1 as in the ε-loss; in σ-space the loss is
    (σ² + σ_d²)/(σ σ_d)²·‖D − x0‖² with σ_d = 1 (the data scale the VP v-parameterisation assumes).
    """

    def __init__(self, schedule: DiscreteSchedule, sigma_data: float = 1.0):
        self.schedule = schedule
        super().__init__(TableSigmas(schedule.sigmas), "v", sigma_data)
