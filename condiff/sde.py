"""Diffusion SDEs: VE, VP and sub-VP (Song et al. 2021; thesis 2.5, eq. 2.18-2.21).

A forward SDE dx = f(x, t)·dt + g(t)·dw (eq. 2.18) on t ∈ [0, T] has, for the three linear SDEs
here, Gaussian marginals given the data,

    x(t) | x0 ~ N(s(t)·x0, std(t)²·I),

with ``mean_coef`` s(t) and ``marginal_std`` std(t). Its time reversal (Anderson 1982; eq. 2.19)

    dx = [f(x, t) - g(t)²·∇log p_t(x)]·dt + g(t)·dw̄

and probability-flow ODE dx/dt = f(x, t) - ½·g(t)²·∇log p_t(x) share the marginals p_t.

**Mapping to the σ-space denoiser (DESIGN.md §3).** Dividing by s(t) turns x(t) into
x(t)/s(t) = x0 + σ(t)·ε with σ(t) = std(t)/s(t): every one of these SDEs *is* the VE view
x = x0 + σ·ε with a time change t ↔ σ and a state scaling by s(t). So

* a state y of the SDE at time t is the σ-space state x = y/s(t) at level σ(t);
* scores relate by ∇_y log p_t(y) = ∇_x log p_σ(x) / s(t), and the σ-space score is
  (D(x, σ) - x)/σ² (Tweedie), see :meth:`SDE.score_from_denoiser`;
* conversely a continuous-time score network s_θ(y, t) (or noise network ε_θ = -std·s_θ) of the
  SDE is the denoiser D(x, σ) = x + σ²·s(t)·s_θ(s(t)·x, t) at t = t(σ): :class:`SDEScoreDenoiser`.

Per SDE (β(t) = β_min + t(β_max - β_min), B(t) = ∫_0^t β):

* VE  (NCSN, eq. 2.21 left): σ(t) = σ_min·(σ_max/σ_min)^t, f = 0, g = σ(t)·√(2 ln(σ_max/σ_min)),
  s = 1, std = σ(t). As in Song et al., x(0) already carries σ_min noise (p_0 = data ⊛ N(0, σ_min²)).
* VP  (DDPM, eq. 2.21 right): f = -½β(t)x, g = √β(t), s = e^{-B/2}, std = √(1 - e^{-B}),
  σ(t) = √(e^{B(t)} - 1) (the same as :func:`condiff.schedules.vp_sigmas`).
* sub-VP: f = -½β(t)x, g = √(β(t)(1 - e^{-2B(t)})), s = e^{-B/2}, std = 1 - e^{-B},
  σ(t) = (1 - e^{-B})/e^{-B/2}.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from .denoisers import Cond, append_dims, sigma_batch
from .noise import NoiseSource

__all__ = ["SDE", "VESDE", "VPSDE", "SubVPSDE", "SDEScoreDenoiser"]


def _t(t, like: Tensor | None = None) -> Tensor:
    """t as a float64 tensor (on ``like``'s device when given)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return t.to(like.device) if like is not None else t


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    """A scalar or [B] coefficient broadcast against x [B, ...], in x's dtype."""
    v = v.to(device=x.device, dtype=x.dtype)
    return v if v.ndim == 0 else append_dims(v, x.ndim)


class SDE(ABC):
    """A linear diffusion SDE on t ∈ [t_eps, T] (see module docstring for the formulas)."""

    T: float = 1.0

    def __init__(self, t_eps: float):
        if not 0 <= t_eps < self.T:
            raise ValueError(f"t_eps must lie in [0, {self.T}), got {t_eps}")
        self.t_eps = float(t_eps)

    # ---- coefficients (t: float or tensor; returned as float64 tensors)
    @abstractmethod
    def mean_coef(self, t) -> Tensor:
        """s(t) of x(t) | x0 ~ N(s(t)·x0, std(t)²)."""

    @abstractmethod
    def marginal_std(self, t) -> Tensor:
        """std(t) of x(t) | x0."""

    @abstractmethod
    def diffusion(self, t) -> Tensor:
        """g(t)."""

    @abstractmethod
    def drift_coef(self, t) -> Tensor:
        """a(t) of the linear drift f(x, t) = a(t)·x."""

    @abstractmethod
    def sigma_to_t(self, sigma) -> Tensor:
        """Inverse of :meth:`sigma` (σ > 0)."""

    @abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the prior N(0, std²·I) at t = T."""

    # ---- derived quantities
    def drift(self, x: Tensor, t) -> Tensor:
        """f(x, t) (eq. 2.18)."""
        return _bcast(self.drift_coef(_t(t, x)), x) * x

    def sigma(self, t) -> Tensor:
        """The σ-space noise level σ(t) = std(t)/s(t)."""
        return self.marginal_std(t) / self.mean_coef(t)

    @property
    def sigma_min(self) -> float:
        return float(self.sigma(self.t_eps)) if self.t_eps > 0 else 0.0

    @property
    def sigma_max(self) -> float:
        return float(self.sigma(self.T))

    def marginal(self, x0: Tensor, t) -> tuple[Tensor, Tensor]:
        """(mean, std) of x(t) | x0; std broadcast to x0's shape."""
        t = _t(t, x0)
        return _bcast(self.mean_coef(t), x0) * x0, _bcast(self.marginal_std(t), x0).expand_as(x0)

    def marginal_sample(self, x0: Tensor, t, noise: NoiseSource) -> Tensor:
        """x(t) = s(t)·x0 + std(t)·z (the reparametrisation trick, cf. eq. 2.10)."""
        mean, std = self.marginal(x0, t)
        return mean + std * noise.randn_like(x0)

    def prior_sample(self, shape, noise: NoiseSource, device=None, dtype=torch.float32) -> Tensor:
        """x(T) ~ N(0, prior_std²·I), one row per seed of ``noise``; ``shape`` excludes the batch."""
        return noise.randn(shape, device=device, dtype=dtype) * self.prior_std()

    def prior_log_prob(self, z: Tensor) -> Tensor:
        """log N(z; 0, prior_std²·I) per sample, shape [B]."""
        sd = self.prior_std()
        flat = z.reshape(z.shape[0], -1).double()
        d = flat.shape[1]
        return -0.5 * (flat**2).sum(1) / sd**2 - d * math.log(sd) - 0.5 * d * math.log(2 * math.pi)

    def reverse_drift(self, x: Tensor, t, score: Tensor, probability_flow: bool = False) -> Tensor:
        """f - g²·score (reverse SDE, eq. 2.19) or f - ½g²·score (probability-flow ODE)."""
        g2 = _bcast(self.diffusion(_t(t, x)) ** 2, x)
        return self.drift(x, t) - (0.5 if probability_flow else 1.0) * g2 * score

    def ode_drift(self, x: Tensor, t, score: Tensor) -> Tensor:
        """dx/dt of the probability-flow ODE."""
        return self.reverse_drift(x, t, score, probability_flow=True)

    def to_sigma_space(self, y: Tensor, t) -> tuple[Tensor, Tensor]:
        """(x, σ): the σ-space state y/s(t) and level σ(t) of an SDE state y at time t."""
        t = _t(t, y)
        return y / _bcast(self.mean_coef(t), y), self.sigma(t)

    def from_sigma_space(self, x: Tensor, sigma) -> tuple[Tensor, Tensor]:
        """(y, t): the SDE state s(t)·x and time t of a σ-space state x at level σ."""
        t = self.sigma_to_t(torch.as_tensor(sigma, dtype=torch.float64, device=x.device))
        return _bcast(self.mean_coef(t), x) * x, t

    def score_from_denoiser(self, denoiser, y: Tensor, t, cond: Cond | None = None) -> Tensor:
        """∇_y log p_t(y) = [(D(x, σ) - x)/σ²]/s(t) with x = y/s(t), σ = σ(t)."""
        x, sigma = self.to_sigma_space(y, t)
        sig = sigma_batch(sigma.to(x.dtype), x)
        denoised = denoiser(x, sig, cond)
        return (denoised - x) / append_dims(sig, x.ndim) ** 2 / _bcast(self.mean_coef(_t(t, y)), y)


class VESDE(SDE):
    """Variance-exploding SDE (NCSN): dx = √(d[σ²(t)]/dt)·dw (thesis eq. 2.21, left)."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        super().__init__(t_eps=0.0)
        self.s_min, self.s_max = float(sigma_min), float(sigma_max)
        self._log_ratio = math.log(self.s_max / self.s_min)

    @property
    def sigma_min(self) -> float:
        return self.s_min

    def mean_coef(self, t) -> Tensor:
        return torch.ones_like(_t(t))

    def marginal_std(self, t) -> Tensor:
        return self.s_min * torch.exp(_t(t) * self._log_ratio)

    def diffusion(self, t) -> Tensor:
        return self.marginal_std(t) * math.sqrt(2 * self._log_ratio)

    def drift_coef(self, t) -> Tensor:
        return torch.zeros_like(_t(t))

    def sigma_to_t(self, sigma) -> Tensor:
        sigma = _positive(sigma)
        return torch.log(sigma / self.s_min) / self._log_ratio

    def prior_std(self) -> float:
        return self.s_max


class _BetaLinear(SDE):
    """Shared β(t) = β_min + t(β_max - β_min) of the VP and sub-VP SDEs."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_eps: float = 1e-3):
        if not 0 < beta_min < beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        super().__init__(t_eps)
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def beta(self, t) -> Tensor:
        return self.beta_min + _t(t) * (self.beta_max - self.beta_min)

    def integral_beta(self, t) -> Tensor:
        """B(t) = ∫_0^t β(s) ds."""
        t = _t(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def _t_from_integral(self, b: Tensor) -> Tensor:
        """Solve B(t) = b for t ≥ 0 (positive root of the quadratic)."""
        d = self.beta_max - self.beta_min
        return 2 * b / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * d * b))

    def mean_coef(self, t) -> Tensor:
        return torch.exp(-0.5 * self.integral_beta(t))

    def drift_coef(self, t) -> Tensor:
        return -0.5 * self.beta(t)

    def prior_std(self) -> float:
        return 1.0


class VPSDE(_BetaLinear):
    """Variance-preserving SDE (continuous DDPM): dx = -½β(t)x·dt + √β(t)·dw (eq. 2.21, right)."""

    def marginal_std(self, t) -> Tensor:
        return torch.sqrt(-torch.expm1(-self.integral_beta(t)))

    def diffusion(self, t) -> Tensor:
        return torch.sqrt(self.beta(t))

    def sigma_to_t(self, sigma) -> Tensor:
        return self._t_from_integral(torch.log1p(_positive(sigma) ** 2))


class SubVPSDE(_BetaLinear):
    """Sub-VP SDE (Song et al. 2021, eq. 29): variance bounded by the VP one at every t."""

    def marginal_std(self, t) -> Tensor:
        return -torch.expm1(-self.integral_beta(t))

    def diffusion(self, t) -> Tensor:
        return torch.sqrt(self.beta(t) * -torch.expm1(-2 * self.integral_beta(t)))

    def sigma_to_t(self, sigma) -> Tensor:
        sigma = _positive(sigma)
        s = (torch.sqrt(sigma**2 + 4) - sigma) / 2  # root of s² + σ s - 1 = 0
        return self._t_from_integral(-2 * torch.log(s))


def _positive(sigma) -> Tensor:
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    if (sigma <= 0).any() or not torch.isfinite(sigma).all():
        raise ValueError("sigma must be positive and finite to map to an SDE time")
    return sigma


class SDEScoreDenoiser(nn.Module):
    """A continuous-time score (or noise) model of an SDE, seen as a σ-space :class:`Denoiser`.

    ``model(y, t, cond)`` returns ∇_y log p_t(y) (``prediction="score"``) or the noise ε with
    y = s(t)·x0 + std(t)·ε (``prediction="eps"``, score = -ε/std). Then
    D(x, σ) = x + σ²·s(t)·score(s(t)·x, t) with t = sde.sigma_to_t(σ).
    """

    def __init__(self, model, sde: SDE, prediction: str = "score"):
        super().__init__()
        if prediction not in ("score", "eps"):
            raise ValueError(f"prediction must be 'score' or 'eps', got {prediction!r}")
        self.model = model
        self.sde = sde
        self.prediction = prediction
        self.sigma_min = max(sde.sigma_min, 1e-5)
        self.sigma_max = sde.sigma_max

    def forward(self, x: Tensor, sigma, cond: Cond | None = None) -> Tensor:
        sigma = sigma_batch(sigma, x)
        t = self.sde.sigma_to_t(sigma.double())
        s = _bcast(self.sde.mean_coef(t), x)
        out = self.model(s * x, t.to(x.dtype), cond)
        if self.prediction == "eps":
            out = -out / _bcast(self.sde.marginal_std(t), x)
        return x + append_dims(sigma, x.ndim) ** 2 * s * out
