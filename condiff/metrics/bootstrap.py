"""Bootstrap confidence intervals for the mean of a per-sample statistic (Efron 1979; percentile
interval, Efron & Tibshirani 1993, ch. 13).

Every per-image metric in :mod:`condiff.metrics` (PSNR, SSIM, seam error, edge F1, depth error,
CLIP score, …) returns one value per sample; :func:`bootstrap_ci` turns those into
``mean [lo, hi]``. :func:`paired_bootstrap_ci` does the same for the per-sample difference of two
methods evaluated on the same inputs, which is the right interval for "A beats B".
Resampling uses ``numpy.random.default_rng(seed)``: the same seed gives the same interval.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

__all__ = ["BootstrapCI", "bootstrap_ci", "paired_bootstrap_ci"]


class BootstrapCI(NamedTuple):
    """Sample mean and the percentile confidence interval [lo, hi]."""

    mean: float
    lo: float
    hi: float

    def __str__(self) -> str:
        return f"{self.mean:.4g} [{self.lo:.4g}, {self.hi:.4g}]"


def _as_values(values, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per sample), got shape {arr.shape}")
    if arr.size < 2:
        raise ValueError(f"{name} needs at least 2 samples for a bootstrap, got {arr.size}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf (e.g. PSNR of identical images, or an "
                         "undefined keypoint score); filter those samples first")
    return arr


def bootstrap_ci(values, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0,
                 chunk: int = 256) -> BootstrapCI:
    """Percentile bootstrap CI for the mean of per-sample ``values`` ``[N]``.

    Draws ``n_resamples`` resamples of size N with replacement, takes each resample's mean, and
    returns the sample mean with the ``(1−confidence)/2`` and ``(1+confidence)/2`` quantiles of
    those means. Resamples are drawn ``chunk`` at a time to bound memory at ``chunk·N`` indices.
    """
    arr = _as_values(values, "values")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 10:
        raise ValueError(f"n_resamples must be ≥ 10 for a meaningful interval, got {n_resamples}")
    rng = np.random.default_rng(seed)
    n = arr.size
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        k = min(chunk, n_resamples - start)
        means[start:start + k] = arr[rng.integers(0, n, size=(k, n))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return BootstrapCI(float(arr.mean()), float(lo), float(hi))


def paired_bootstrap_ci(values_a, values_b, **kwargs) -> BootstrapCI:
    """Bootstrap CI of mean(a − b) over paired samples (same inputs, two methods).

    If the interval excludes 0, the difference is significant at the chosen confidence.
    """
    a, b = _as_values(values_a, "values_a"), _as_values(values_b, "values_b")
    if a.shape != b.shape:
        raise ValueError(f"paired values must have equal length, got {a.size} and {b.size}")
    return bootstrap_ci(a - b, **kwargs)
