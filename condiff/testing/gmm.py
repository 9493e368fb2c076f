"""Gaussian mixtures with their exact σ-space denoiser (DESIGN.md §3, "testing without a network").

For data x0 ~ Σ_k w_k N(μ_k, Σ_k), the noisy marginal at level σ is
p_σ(x) = Σ_k w_k N(x; μ_k, Σ_k + σ²I), and the optimal denoiser (posterior mean, Tweedie) is

    D(x, σ) = E[x0 | x] = Σ_k r_k(x, σ) (μ_k + Σ_k (Σ_k + σ²I)^{-1} (x - μ_k)),

with responsibilities r_k ∝ w_k N(x; μ_k, Σ_k + σ²I). Any sampler that integrates the reverse
SDE / probability-flow ODE with this denoiser must reproduce the mixture, which is what the
sampler tests check. Conditioning on the component label y gives the exact conditional denoiser
and the exact noisy classifier log p_σ(y | x) for guidance tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..denoisers import Cond, sigma_batch

__all__ = ["GaussianMixture", "GMMDenoiser", "sliced_wasserstein", "two_moons_mixture"]


@dataclass
class GaussianMixture:
    """A mixture of full-covariance Gaussians in R^d (float64)."""

    weights: Tensor  # [K]
    means: Tensor  # [K, d]
    covs: Tensor  # [K, d, d]

    def __post_init__(self):
        self.weights = torch.as_tensor(self.weights, dtype=torch.float64)
        self.weights = self.weights / self.weights.sum()
        self.means = torch.as_tensor(self.means, dtype=torch.float64)
        self.covs = torch.as_tensor(self.covs, dtype=torch.float64)
        K, d = self.means.shape
        if self.weights.shape != (K,) or self.covs.shape != (K, d, d):
            raise ValueError("weights [K], means [K, d] and covs [K, d, d] must agree")

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None, labels: Tensor | None = None) -> Tensor:
        """n draws; with ``labels`` given, draw sample i from component labels[i]."""
        if labels is None:
            labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        chol = torch.linalg.cholesky(self.covs)
        return self.means[labels] + torch.einsum("nij,nj->ni", chol[labels], z)

    def sample_with_labels(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        return self.sample(n, generator, labels), labels

    def component_log_probs(self, x: Tensor, sigma: Tensor) -> Tensor:
        """log w_k + log N(x; μ_k, Σ_k + σ²I), shape [B, K]; sigma is [B]."""
        x = x.double()
        eye = torch.eye(self.dim, dtype=torch.float64, device=x.device)
        cov = self.covs[None] + (sigma.double() ** 2)[:, None, None, None] * eye  # [B, K, d, d]
        diff = x[:, None, :] - self.means[None]  # [B, K, d]
        chol = torch.linalg.cholesky(cov)
        sol = torch.cholesky_solve(diff[..., None], chol)[..., 0]
        maha = (diff * sol).sum(-1)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        return self.weights.log()[None] - 0.5 * (maha + logdet + self.dim * math.log(2 * math.pi))

    def log_prob(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """log p_σ(x) of the noised mixture, shape [B]."""
        sigma = sigma_batch(torch.as_tensor(sigma, dtype=torch.float64), x.double())
        return torch.logsumexp(self.component_log_probs(x, sigma), dim=-1)

    def classifier_log_probs(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Exact noisy classifier log p_σ(y = k | x), shape [B, K] (thesis eq. 3.4's p(y|x))."""
        lp = self.component_log_probs(x, sigma)
        return lp - torch.logsumexp(lp, dim=-1, keepdim=True)

    def posterior_mean(self, x: Tensor, sigma: Tensor, labels: Tensor | None = None) -> Tensor:
        """E[x0 | x_σ] (or E[x0 | x_σ, y] with labels), float64 [B, d]."""
        x = x.double()
        eye = torch.eye(self.dim, dtype=torch.float64, device=x.device)
        s2 = (sigma.double() ** 2)[:, None, None, None]
        cov = self.covs[None] + s2 * eye
        diff = x[:, None, :] - self.means[None]
        sol = torch.linalg.solve(cov, diff[..., None])[..., 0]  # (Σ+σ²I)^{-1}(x-μ)
        comp_means = self.means[None] + torch.einsum("kij,bkj->bki", self.covs, sol)
        if labels is None:
            resp = torch.softmax(self.component_log_probs(x, sigma), dim=-1)
        else:
            resp = torch.nn.functional.one_hot(labels.long(), len(self.weights)).double()
        return (resp[..., None] * comp_means).sum(1)

    def mean(self) -> Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self) -> Tensor:
        m = self.mean()
        second = (self.weights[:, None, None] * (self.covs + self.means[:, :, None] * self.means[:, None, :])).sum(0)
        return second - m[:, None] * m[None, :]


class GMMDenoiser(torch.nn.Module):
    """The exact denoiser of a :class:`GaussianMixture`.

    ``cond.class_labels`` (if given) selects the conditional denoiser E[x0 | x, y]. A label of -1
    means "unconditional" for that row, so one batch can mix both (as CFG does).
    """

    def __init__(self, mixture: GaussianMixture, sigma_min: float = 0.002, sigma_max: float = 80.0):
        super().__init__()
        self.mixture = mixture
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.calls = 0

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Cond | None = None) -> Tensor:
        self.calls += 1
        sigma = sigma_batch(sigma, x)
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.mixture.dim:
            raise ValueError(f"input has {flat.shape[1]} features, mixture has {self.mixture.dim}")
        labels = None if cond is None else cond.class_labels
        out = self.mixture.posterior_mean(flat, sigma)
        if labels is not None:
            labels = labels.to(x.device)
            has = labels >= 0
            if has.any():
                out[has] = self.mixture.posterior_mean(flat[has], sigma[has], labels[has])
        return out.to(x.dtype).reshape(x.shape)


def sliced_wasserstein(a: Tensor, b: Tensor, n_projections: int = 256, seed: int = 0) -> float:
    """Sliced 1-Wasserstein distance between two equal-size point clouds [N, d]."""
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"need two [N, d] clouds of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], n_projections, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa = torch.sort(a.double() @ dirs, dim=0).values
    pb = torch.sort(b.double() @ dirs, dim=0).values
    return float((pa - pb).abs().mean())


def two_moons_mixture() -> GaussianMixture:
    """The standard 2-D test mixture of condiff: 3 anisotropic components of unequal weight."""
    means = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.5, -2.5]])
    covs = torch.stack([
        torch.tensor([[0.30, 0.10], [0.10, 0.15]]),
        torch.tensor([[0.10, -0.05], [-0.05, 0.40]]),
        torch.tensor([[0.20, 0.00], [0.00, 0.05]]),
    ])
    return GaussianMixture(torch.tensor([0.5, 0.3, 0.2]), means, covs)
