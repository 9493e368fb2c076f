"""Noise schedules and the forward process (thesis 2.4.1, eq. 2.9-2.11).

Two views of the same thing live here:

* the **discrete DDPM view**: a table of betas β_t (linear, Ho et al. 2020; cosine, Nichol &
  Dhariwal 2021), α_t = 1 - β_t and ᾱ_t = ∏ α_s (eq. 2.11), and the forward marginal
  q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I) (eq. 2.10), sampled with the reparametrisation trick;
* the **σ view** used by every sampler in condiff (DESIGN.md §3): x = x_0 + σ ε. A VP state x_t
  maps to it by x = x_t / √ᾱ_t with σ_t = √((1 - ᾱ_t) / ᾱ_t).

Sampling schedules are descending σ tensors that end in 0 (Karras ρ-spacing, geometric VE,
VP-SDE times, or a subset of a discrete model's own σ table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "linear_betas",
    "cosine_betas",
    "scaled_linear_betas",
    "alphas_cumprod_from_betas",
    "DiscreteSchedule",
    "q_sample",
    "karras_sigmas",
    "ve_sigmas",
    "vp_sigmas",
    "append_zero",
    "check_sigmas",
]


def linear_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Linear β schedule of Ho et al. (2020) (thesis Fig. 2.2)."""
    _check_steps(num_steps)
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)


def scaled_linear_betas(
    num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Tensor:
    """Latent-diffusion schedule: linear in √β (Rombach et al. 2022; used by Stable Diffusion)."""
    _check_steps(num_steps)
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2


def cosine_betas(num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Cosine schedule of Nichol & Dhariwal (2021): ᾱ(t) = cos²(((t/T + s)/(1 + s))·π/2)."""
    _check_steps(num_steps)
    t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    betas = 1 - abar[1:] / abar[:-1]
    return betas.clamp(max=max_beta)


def alphas_cumprod_from_betas(betas: Tensor) -> Tensor:
    """ᾱ_t = ∏_{s≤t} (1 - β_s) (thesis eq. 2.11)."""
    if betas.ndim != 1 or len(betas) == 0:
        raise ValueError("betas must be a non-empty 1-D tensor")
    if (betas <= 0).any() or (betas >= 1).any():
        raise ValueError("every beta must lie in (0, 1)")
    return torch.cumprod(1 - betas.double(), dim=0)


@dataclass(frozen=True)
class DiscreteSchedule:
    """A discrete-time DDPM schedule with its σ table.

    ``sigmas[t] = √((1 - ᾱ_t)/ᾱ_t)`` for t = 0..T-1 (ascending). Fractional timesteps are
    defined by linear interpolation of log σ, so ``t_to_sigma`` and ``sigma_to_t`` are inverse
    bijections on [σ_0, σ_{T-1}].
    """

    alphas_cumprod: Tensor  # float64, shape [T]

    @classmethod
    def from_betas(cls, betas: Tensor) -> "DiscreteSchedule":
        return cls(alphas_cumprod_from_betas(betas))

    @classmethod
    def named(cls, name: str, num_steps: int = 1000) -> "DiscreteSchedule":
        makers = {"linear": linear_betas, "cosine": cosine_betas, "scaled_linear": scaled_linear_betas}
        if name not in makers:
            raise ValueError(f"unknown beta schedule {name!r}; choose one of {sorted(makers)}")
        return cls.from_betas(makers[name](num_steps))

    @property
    def num_steps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def betas(self) -> Tensor:
        abar = self.alphas_cumprod
        prev = torch.cat([abar.new_ones(1), abar[:-1]])
        return 1 - abar / prev

    @property
    def sigmas(self) -> Tensor:
        abar = self.alphas_cumprod
        return ((1 - abar) / abar).sqrt()

    @property
    def sigma_min(self) -> float:
        return self._range()[0]

    @property
    def sigma_max(self) -> float:
        return self._range()[1]

    def _range(self) -> tuple[float, float]:
        cache = self.__dict__.setdefault("_log_sigma_cache", {})
        if "range" not in cache:
            sig = self.sigmas
            cache["range"] = (float(sig[0]), float(sig[-1]))
        return cache["range"]

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """σ at (possibly fractional) timestep t ∈ [0, T-1], log-linear interpolation."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if (t < 0).any() or (t > self.num_steps - 1).any():
            raise ValueError(f"timesteps must lie in [0, {self.num_steps - 1}]")
        log_sigmas = self.sigmas.log().to(t.device)
        lo = t.floor().long().clamp(max=self.num_steps - 2)
        w = t - lo
        return ((1 - w) * log_sigmas[lo] + w * log_sigmas[lo + 1]).exp()

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Inverse of :meth:`t_to_sigma` (clamped to the table's range), computed on σ's device.

        The lookup is a device-side ``searchsorted`` plus a log-linear interpolation, so it needs
        no copy to the host (no synchronisation inside a sampler loop on an accelerator). The
        negativity check runs only for host tensors; on a device σ is clamped to [σ_min, σ_max].
        Float64 where the device has it (MPS: float32).
        """
        sigma = torch.as_tensor(sigma)
        work = torch.float32 if sigma.device.type == "mps" else torch.float64
        sigma = sigma.to(work)
        if sigma.device.type == "cpu" and bool((sigma < 0).any()):
            raise ValueError("sigma must be non-negative")
        log_sigmas = self._log_sigmas(sigma.device, work)
        log_s = sigma.clamp(min=self.sigma_min, max=self.sigma_max).log()
        hi = torch.searchsorted(log_sigmas, log_s.reshape(-1).contiguous()).clamp(1, self.num_steps - 1)
        hi = hi.reshape(log_s.shape)
        lo = hi - 1
        w = (log_s - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])
        return lo.to(work) + w.clamp(0, 1)

    def _log_sigmas(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """log σ table on ``device`` in ``dtype``, cached per (device, dtype)."""
        cache = self.__dict__.setdefault("_log_sigma_cache", {})
        key = (str(device), dtype)
        if key not in cache:
            cache[key] = self.sigmas.log().to(device=device, dtype=dtype)
        return cache[key]

    def timestep_sigmas(self, steps: int, spacing: str = "trailing") -> Tensor:
        """``steps`` σ values taken from the model's own table, descending, followed by 0.

        ``spacing``: "trailing" (always includes t = T-1, as DDIM/diffusers do), "leading" or
        "linspace". These are the steps of DDPM (eq. 2.14) and DDIM (eq. 2.15) sampling.
        """
        _check_steps(steps)
        T = self.num_steps
        if steps > T:
            raise ValueError(f"steps={steps} exceeds the {T} timesteps of this schedule")
        if spacing == "trailing":
            ts = torch.round(T - torch.arange(steps, dtype=torch.float64) * (T / steps)) - 1
        elif spacing == "leading":
            ts = (torch.arange(0, steps, dtype=torch.float64) * (T // steps)).flip(0)
        elif spacing == "linspace":
            ts = torch.linspace(T - 1, 0, steps, dtype=torch.float64).round()
        else:
            raise ValueError(f"unknown spacing {spacing!r}; use trailing, leading or linspace")
        return append_zero(self.sigmas[ts.long()])


def q_sample(x0: Tensor, t: Tensor, alphas_cumprod: Tensor, noise: Tensor) -> Tensor:
    """Draw x_t ~ q(x_t | x_0) = N(√ᾱ_t x_0, (1-ᾱ_t) I) with the reparametrisation trick (eq. 2.10)."""
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
    abar = alphas_cumprod.to(x0.device)[t.long()].to(x0.dtype)
    abar = abar.reshape(-1, *([1] * (x0.ndim - 1)))
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """σ_i = (σ_max^{1/ρ} + i/(n-1)·(σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ, then 0 (Karras et al. 2022, eq. 5)."""
    _check_steps(steps)
    _check_range(sigma_min, sigma_max)
    if steps == 1:
        return append_zero(torch.tensor([sigma_max], dtype=torch.float64))
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((hi + ramp * (lo - hi)) ** rho)


def ve_sigmas(steps: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Geometric σ sequence of NCSN / the VE SDE: σ_i = σ_max (σ_min/σ_max)^{i/(n-1)}, then 0."""
    _check_steps(steps)
    _check_range(sigma_min, sigma_max)
    if steps == 1:
        return append_zero(torch.tensor([sigma_max], dtype=torch.float64))
    return append_zero(torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), steps, dtype=torch.float64)))


def vp_sigmas(steps: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3) -> Tensor:
    """σ at uniform times of the VP SDE (Song et al. 2021): σ(t) = √(exp(½β_d t² + β_min t) - 1), then 0."""
    _check_steps(steps)
    t = torch.linspace(1, eps_s, steps, dtype=torch.float64)
    return append_zero(torch.sqrt(torch.exp(0.5 * beta_d * t**2 + beta_min * t) - 1))


def append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def check_sigmas(sigmas: Tensor) -> Tensor:
    """Validate a sampling schedule: 1-D, finite, non-negative, strictly descending, ending in 0."""
    if not isinstance(sigmas, Tensor) or sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError("sigmas must be a 1-D tensor with at least 2 entries (steps ≥ 1, ending in 0)")
    if not torch.isfinite(sigmas).all():
        raise ValueError("sigmas contains NaN or inf")
    if (sigmas < 0).any():
        raise ValueError("sigmas must be non-negative")
    if float(sigmas[-1]) != 0.0:
        raise ValueError("sigmas must end in 0 (use append_zero)")
    if not (sigmas[1:] < sigmas[:-1]).all():
        raise ValueError("sigmas must be strictly descending")
    return sigmas


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"number of steps must be an integer ≥ 1, got {steps!r}")


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not (0 < sigma_min < sigma_max) or not math.isfinite(sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")
