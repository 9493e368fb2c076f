"""Surface-normal condition derived from a depth map (thesis 4.2.4: "Normal Map").

The height of a pixel is ``h = depth8 / 255 · Z`` pixels with ``Z = 0.25 · image size`` (the fixed
convention of the built-in world, so normals from stored 8-bit depth are reproducible). After a
σ = 1 px Gaussian (removes the 8-bit terraces) the Sobel gradient gives

    n = normalise(−∂h/∂x, +∂h/∂y_down, 1)        (x right, y up, z toward the viewer)

encoded as RGB = (n + 1) / 2 · 255, so a flat background is (128, 128, 255). For any picture,
:func:`estimate_normal` applies this to :func:`condiff.preprocess.depth.estimate_depth` — an
estimate from the inflation construction, not a normal-prediction network.
"""

from __future__ import annotations

import cv2
import numpy as np

from .depth import estimate_depth

__all__ = ["normals_from_depth", "estimate_normal"]


def normals_from_depth(depth8: np.ndarray, relief: float = 0.25) -> np.ndarray:
    """H×W uint8 depth (bright = near) → H×W×3 uint8 normal map (see the module docstring)."""
    d = np.asarray(depth8)
    if d.ndim == 3:
        d = d[..., 0]
    if d.ndim != 2:
        raise ValueError(f"depth must be H×W or H×W×3, got shape {np.asarray(depth8).shape}")
    h = d.astype(np.float32) / 255.0 * (relief * d.shape[0])
    h = cv2.GaussianBlur(h, (0, 0), 1.0, borderType=cv2.BORDER_REPLICATE)
    gx = cv2.Sobel(h, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE) / 8.0
    gy = cv2.Sobel(h, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE) / 8.0
    n = np.stack([-gx, gy, np.ones_like(h)], axis=-1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    return np.round((n + 1.0) * 0.5 * 255).clip(0, 255).astype(np.uint8)


def estimate_normal(image) -> np.ndarray:
    """Normal-map estimate (H×W×3 uint8) of any picture via the inflation depth estimate."""
    return normals_from_depth(estimate_depth(image)[..., 0])
