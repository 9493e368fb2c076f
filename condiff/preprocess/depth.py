"""Depth condition: the 2.5-D *inflation* construction (not a monocular depth network).

The thesis (4.2.4) estimates depth with the "Intel/dpt-large" network; no such weights ship
offline. The built-in world instead builds a height field from flat layered art:

    H(p) = Σ_k 1[p ∈ M_k] · ( β + sqrt( d_k(p) · (2 R_k − d_k(p)) ) ),     d_k ≤ R_k          (inflation)

where ``M_k`` are the layer masks in drawing order, ``d_k`` the Euclidean distance of ``p`` to the
outside of ``M_k``, ``R_k = min(max d_k, R_cap)`` and β a constant layer thickness. Each layer is a
pillow with a circular cross-section stacked on the layers drawn before it: the profile is *exact*
for discs and constant-width strokes (a cylinder/sphere of radius R_k, e.g. the limbs and heads of
the procedural figures) and a smooth estimate elsewhere. Depth images follow the ControlNet/MiDaS
convention: bright = near, 0 = background, normalised per image to 0…255.

* :func:`inflate_layers` — the construction for known layer masks (exact vector layers at build time);
* :func:`estimate_depth` — the inference-time preprocessor for any picture: layers are *estimated*
  as the foreground (pixels unlike the border colour) followed by flat-colour regions, larger first.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
from scipy.ndimage import distance_transform_edt

from ._image import as_rgb, foreground_mask, gray_to_rgb

__all__ = ["inflate_layers", "height_to_depth8", "estimate_layers", "estimate_depth"]


def inflate_layers(masks: Sequence[np.ndarray], thickness: float = 1.5, r_cap: float | None = None) -> np.ndarray:
    """Height field (float32, pixels) of stacked inflated layers; see the module docstring."""
    if len(masks) == 0:
        raise ValueError("inflate_layers needs at least one layer mask")
    shape = masks[0].shape
    if r_cap is None:
        r_cap = 0.3 * max(shape)
    height = np.zeros(shape, np.float64)
    for m in masks:
        if m.shape != shape:
            raise ValueError(f"all layer masks must share one shape, got {m.shape} and {shape}")
        inside = np.asarray(m, bool)
        if not inside.any():
            continue
        # exact Euclidean distance (float64 sqrt of integer squares): bit-reproducible on any
        # machine, unlike SIMD float32 transforms whose last bit depends on memory alignment
        d = distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1]
        r = min(float(d.max()), r_cap)
        d = np.minimum(d, r)
        bulge = np.sqrt(np.maximum(d * (2 * r - d), 0.0))
        height += np.where(inside, thickness + bulge, 0.0)
    return height.astype(np.float32)


def height_to_depth8(height: np.ndarray) -> np.ndarray:
    """Normalise a height field to uint8 depth (bright = near, max → 255, background 0)."""
    h = np.asarray(height, np.float64)
    top = float(h.max())
    if top <= 0:
        return np.zeros(h.shape, np.uint8)
    return np.round(np.clip(h / top, 0, 1) * 255).astype(np.uint8)


def estimate_layers(image, levels: int = 5, min_area: float = 0.002) -> list[np.ndarray]:
    """Estimated layers of a picture: the foreground, then flat-colour regions (largest first).

    Colours are quantised to ``levels`` steps per channel after a light blur; connected regions
    smaller than ``min_area`` of the image are ignored.
    """
    rgb = as_rgb(image)
    fg = foreground_mask(rgb)
    fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    blur = cv2.GaussianBlur(rgb, (0, 0), 0.8)
    q = (blur.astype(np.int32) * levels) // 256
    code = (q[..., 0] * levels + q[..., 1]) * levels + q[..., 2]
    code = np.where(fg, code, -1)
    layers: list[np.ndarray] = [fg] if fg.any() else []
    regions = []
    min_px = max(4, int(min_area * rgb.shape[0] * rgb.shape[1]))
    for value in np.unique(code):
        if value < 0:
            continue
        n, lab, stats, _ = cv2.connectedComponentsWithStats((code == value).astype(np.uint8), connectivity=4)
        for i in range(1, n):
            area = int(stats[i, cv2.CC_STAT_AREA])
            if area >= min_px:
                regions.append((-area, int(value), i, lab == i))
    regions.sort(key=lambda r: (r[0], r[1], r[2]))
    layers.extend(r[3] for r in regions)
    return layers


def estimate_depth(image) -> np.ndarray:
    """Depth estimate (H×W×3 uint8, bright = near) by inflating :func:`estimate_layers` — a 2.5-D
    inflation estimate, not a monocular depth network."""
    layers = estimate_layers(image)
    rgb = as_rgb(image)
    if not layers:
        return np.zeros(rgb.shape, np.uint8)
    return gray_to_rgb(height_to_depth8(inflate_layers(layers)))
