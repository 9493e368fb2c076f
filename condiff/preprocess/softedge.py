"""Soft-edge condition: multi-scale difference of Gaussians (an HED *substitute*, not the HED network).

HED (Xie & Tu 2015) predicts soft edge probabilities from several scales of a CNN. No HED weights
ship offline, so this extractor sums, per colour channel, the magnitude of band-pass responses
``|G_σ * I − G_{1.6σ} * I|`` (a DoG, the classic approximation of the Laplacian of Gaussian) at
σ ∈ {0.8, 1.6, 3.2} px (× image size / 128), takes the maximum over channels and maps it through
``1 − exp(−k·r)`` to a soft [0, 1] edge strength: thick, blurry, multi-scale edges like HED's.
"""

from __future__ import annotations

import cv2
import numpy as np

from ._image import as_rgb, gray_to_rgb

__all__ = ["softedge", "softedge_strength"]

_SCALES = ((0.8, 1.0), (1.6, 0.7), (3.2, 0.5))


def softedge_strength(image, gain: float = 10.0) -> np.ndarray:
    """Soft edge strength in [0, 1] (H×W float32) from the multi-scale DoG described above."""
    rgb = as_rgb(image).astype(np.float32) / 255.0
    s = rgb.shape[0] / 128.0
    resp = np.zeros(rgb.shape, np.float32)
    for sigma, weight in _SCALES:
        a = cv2.GaussianBlur(rgb, (0, 0), sigma * s, borderType=cv2.BORDER_REPLICATE)
        b = cv2.GaussianBlur(rgb, (0, 0), 1.6 * sigma * s, borderType=cv2.BORDER_REPLICATE)
        resp += weight * np.abs(a - b)
    r = resp.max(axis=2)
    return (1.0 - np.exp(-gain * r)).astype(np.float32)


def softedge(image, gain: float = 10.0) -> np.ndarray:
    """White soft edges on black, H×W×3 uint8 (see the module docstring)."""
    if gain <= 0:
        raise ValueError(f"gain must be positive, got {gain}")
    return gray_to_rgb(np.round(softedge_strength(image, gain) * 255).astype(np.uint8))
