"""Distances between two sets of feature vectors: Fréchet distance, KID and CMMD.

All three work on arbitrary feature arrays ``[N, D]`` (numpy or torch); which network made the
features (Inception for FID/KID, CLIP for CMMD, or condiff's own encoder) is the caller's choice,
see :mod:`condiff.metrics.features`. Computation is in float64.

- **Fréchet distance** (FID when the features are Inception pool3 activations; Heusel et al. 2017,
  "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium"): the
  2-Wasserstein distance between Gaussians fitted to the two sets,
  ``||μ1 − μ2||² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2})``.
- **KID** (Bińkowski et al. 2018, "Demystifying MMD GANs"): unbiased MMD² with the cubic
  polynomial kernel ``k(x, y) = (x·y / D + 1)³``, averaged over random subsets.
- **CMMD** (Jayasumana et al. 2024, "Rethinking FID: Towards a Better Evaluation Metric for
  Image Generation"): MMD² with the Gaussian RBF kernel ``k(x, y) = exp(−||x − y||² / (2σ²))``,
  σ = 10, scaled by 1000, on (L2-normalised) CLIP ViT-L/14 image embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "FeatureStatistics",
    "feature_statistics",
    "gaussian_frechet_distance",
    "frechet_distance",
    "mmd2_unbiased",
    "polynomial_kernel",
    "rbf_kernel",
    "KIDResult",
    "kernel_inception_distance",
    "cmmd",
    "CMMD_SIGMA",
    "CMMD_SCALE",
]

CMMD_SIGMA = 10.0  # RBF bandwidth of the CMMD paper
CMMD_SCALE = 1000.0  # the paper reports MMD² × 1000

Kernel = Callable[[Tensor, Tensor], Tensor]


def _as_features(x, name: str) -> Tensor:
    """Features as a float64 CPU tensor ``[N, D]``; a clear error for anything else."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x.detach())
    t = t.to(device="cpu", dtype=torch.float64)
    if t.ndim != 2:
        raise ValueError(f"{name} must be a [N, D] feature array, got shape {tuple(t.shape)}; "
                         "flatten per-sample features to one row each")
    if t.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples, got {t.shape[0]}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf; check the feature extractor's input range")
    return t


def _check_same_dim(a: Tensor, b: Tensor) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets have different dimensions ({a.shape[1]} vs {b.shape[1]}); "
                         "both sets must come from the same feature extractor")


# --------------------------------------------------------------------------- Fréchet distance


@dataclass(frozen=True)
class FeatureStatistics:
    """Mean ``[D]`` and covariance ``[D, D]`` of a feature set (float64): what FID compares.

    Cache these for a reference set (e.g. with ``np.savez``) instead of its features.
    """

    mean: np.ndarray
    cov: np.ndarray
    count: int


def feature_statistics(features) -> FeatureStatistics:
    """Sample mean and unbiased (N−1) covariance of ``features [N, D]``."""
    f = _as_features(features, "features")
    mu = f.mean(0)
    centred = f - mu
    cov = centred.T @ centred / (f.shape[0] - 1)
    return FeatureStatistics(mu.numpy(), cov.numpy(), int(f.shape[0]))


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def gaussian_frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Fréchet (2-Wasserstein²) distance between N(μ1, Σ1) and N(μ2, Σ2) (Heusel et al. 2017).

    ``d² = ||μ1 − μ2||² + Tr(Σ1) + Tr(Σ2) − 2 Tr((Σ1 Σ2)^{1/2})``. The trace of the matrix
    square root is computed as ``Σ sqrt(λ_i)`` of the symmetric PSD matrix
    ``Σ1^{1/2} Σ2 Σ1^{1/2}``, which has the same eigenvalues as ``Σ1 Σ2``; this avoids the complex
    round-off that a general ``sqrtm(Σ1 Σ2)`` produces for near-singular covariances.
    """
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    cov1, cov2 = np.asarray(cov1, dtype=np.float64), np.asarray(cov2, dtype=np.float64)
    d = mu1.shape[-1] if mu1.ndim else 0
    if mu1.shape != (d,) or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(f"expected means [D] and covariances [D, D] of one D; got {mu1.shape}, "
                         f"{cov1.shape}, {mu2.shape}, {cov2.shape}")
    s1 = _sqrt_psd(cov1)
    inner = s1 @ cov2 @ s1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt)
    return max(value, 0.0)  # round-off can leave −1e-12 for identical inputs


def frechet_distance(features1, features2) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N, D]`` and ``[M, D]``.

    This is FID (Heusel et al. 2017) when the features are the 2048-d pool3 activations of the
    TF-ported Inception v3 (``get_feature_extractor("inception-fid", weights_path=...)``). FID is
    biased upward for small N; compare numbers only at equal sample counts.
    """
    a, b = _as_features(features1, "features1"), _as_features(features2, "features2")
    _check_same_dim(a, b)
    s1, s2 = feature_statistics(a), feature_statistics(b)
    return gaussian_frechet_distance(s1.mean, s1.cov, s2.mean, s2.cov)


# --------------------------------------------------------------------------- kernel MMD


def polynomial_kernel(degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> Kernel:
    """``k(x, y) = (γ x·y + c)^degree`` with γ = 1/D by default (KID's kernel, Bińkowski 2018)."""

    def k(x: Tensor, y: Tensor) -> Tensor:
        g = 1.0 / x.shape[1] if gamma is None else gamma
        return (g * (x @ y.T) + coef0) ** degree

    return k


def rbf_kernel(sigma: float) -> Kernel:
    """Gaussian RBF ``k(x, y) = exp(−||x − y||² / (2σ²))`` (CMMD's kernel with σ = 10)."""
    if sigma <= 0:
        raise ValueError(f"RBF bandwidth sigma must be > 0, got {sigma}")
    gamma = 1.0 / (2.0 * sigma * sigma)

    def k(x: Tensor, y: Tensor) -> Tensor:
        sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
        return torch.exp(-gamma * sq.clamp_min(0.0))

    return k


def _kernel_sum(kernel: Kernel, x: Tensor, y: Tensor, block: int, same: bool) -> float:
    """Σ_ij k(x_i, y_j) computed in row blocks (memory O(block·M)); ``same`` drops the diagonal."""
    total = 0.0
    for start in range(0, x.shape[0], block):
        kb = kernel(x[start:start + block], y)
        total += float(kb.sum())
        if same:
            rows = torch.arange(kb.shape[0])
            total -= float(kb[rows, rows + start].sum())
    return total


def mmd2_unbiased(x, y, kernel: Kernel, *, block: int = 4096) -> float:
    """Unbiased estimate of MMD² (Gretton et al. 2012, eq. 3) between samples ``x [N, D]``, ``y [M, D]``.

    ``MMD²_u = 1/(N(N−1)) Σ_{i≠j} k(x_i, x_j) + 1/(M(M−1)) Σ_{i≠j} k(y_i, y_j)
    − 2/(NM) Σ_{i,j} k(x_i, y_j)``. It is zero in expectation for equal distributions and may
    be slightly negative on a finite sample.
    """
    a, b = _as_features(x, "x"), _as_features(y, "y")
    _check_same_dim(a, b)
    n, m = a.shape[0], b.shape[0]
    kxx = _kernel_sum(kernel, a, a, block, same=True) / (n * (n - 1))
    kyy = _kernel_sum(kernel, b, b, block, same=True) / (m * (m - 1))
    kxy = _kernel_sum(kernel, a, b, block, same=False) / (n * m)
    return kxx + kyy - 2.0 * kxy


@dataclass(frozen=True)
class KIDResult:
    """KID mean and standard deviation over the random subsets."""

    mean: float
    std: float


def kernel_inception_distance(features1, features2, *, subset_size: int | None = None,
                              n_subsets: int = 100, degree: int = 3, gamma: float | None = None,
                              coef0: float = 1.0, seed: int = 0) -> KIDResult:
    """Kernel Inception Distance (Bińkowski et al. 2018): unbiased polynomial-kernel MMD².

    As in the paper and its reference code, ``n_subsets`` subsets of ``subset_size`` samples are
    drawn without replacement from each set (default size min(N, M, 1000)), MMD²_u is computed
    on each, and the mean and standard deviation over subsets are returned. Subsets are drawn
    with a ``numpy.random.Generator`` seeded by ``seed``.
    """
    a, b = _as_features(features1, "features1"), _as_features(features2, "features2")
    _check_same_dim(a, b)
    n_max = min(a.shape[0], b.shape[0])
    size = min(n_max, 1000) if subset_size is None else int(subset_size)
    if not 2 <= size <= n_max:
        raise ValueError(f"subset_size must be in [2, {n_max}] (the smaller set size), got {size}; "
                         "lower subset_size or pass more samples")
    if n_subsets < 1:
        raise ValueError(f"n_subsets must be ≥ 1, got {n_subsets}")
    kernel = polynomial_kernel(degree, gamma, coef0)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_subsets):
        ia = torch.from_numpy(rng.choice(a.shape[0], size, replace=False))
        ib = torch.from_numpy(rng.choice(b.shape[0], size, replace=False))
        values.append(mmd2_unbiased(a[ia], b[ib], kernel))
    arr = np.asarray(values)
    return KIDResult(float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0)


def cmmd(features1, features2, *, sigma: float = CMMD_SIGMA, scale: float = CMMD_SCALE,
         unbiased: bool = True) -> float:
    """CMMD (Jayasumana et al. 2024): ``scale · MMD²`` with an RBF kernel of bandwidth ``sigma``.

    Defaults follow the paper: σ = 10, ×1000, features = L2-normalised CLIP ViT-L/14 image
    embeddings (``get_feature_extractor("clip-vit-l14", model_dir=...)`` normalises them). The
    paper specifies the unbiased estimator (:func:`mmd2_unbiased`), used here by default; the
    authors' released code averages the full kernel matrices including their diagonals (the
    biased V-statistic), available with ``unbiased=False`` for comparison with their numbers.
    """
    kernel = rbf_kernel(sigma)
    if unbiased:
        return scale * mmd2_unbiased(features1, features2, kernel)
    a, b = _as_features(features1, "features1"), _as_features(features2, "features2")
    _check_same_dim(a, b)
    n, m = a.shape[0], b.shape[0]
    kxx = _kernel_sum(kernel, a, a, 4096, same=False) / (n * n)
    kyy = _kernel_sum(kernel, b, b, 4096, same=False) / (m * m)
    kxy = _kernel_sum(kernel, a, b, 4096, same=False) / (n * m)
    return scale * (kxx + kyy - 2.0 * kxy)
