"""Line-art condition from any picture: region outlines + dark strokes (a *substitute* for the
learned ControlNet line-art annotator, whose weights do not ship offline).

Training pairs of the built-in world use the exact vector line art (``condiff.data.svg_doc.lineart_svg``:
fills white, outlines black). On an arbitrary picture this extractor approximates it with

* outlines of flat colour regions: Canny with low thresholds on each RGB channel (OR-ed), which
  marks the boundary between two differently coloured fills with a one-pixel line;
* dark strokes (ink lines of a sketch): ``max(0, G_σ * g − g)``, the amount a pixel is darker than
  its neighbourhood, σ = 1.5 px × size / 128.

Output: white lines on black, H×W×3 uint8 (ControlNet 1.1 line-art convention).
"""

from __future__ import annotations

import cv2
import numpy as np

from ._image import as_rgb, gray_to_rgb

__all__ = ["lineart"]


def lineart(image, low: int = 40, high: int = 90, ink_gain: float = 5.0) -> np.ndarray:
    """White line art on black (H×W×3 uint8) from region outlines and dark strokes."""
    rgb = as_rgb(image)
    edges = np.zeros(rgb.shape[:2], np.uint8)
    for c in range(3):
        edges = np.maximum(edges, cv2.Canny(np.ascontiguousarray(rgb[..., c]), low, high))
    edges = cv2.GaussianBlur(edges.astype(np.float32) / 255.0, (0, 0), 0.5)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    s = rgb.shape[0] / 128.0
    ink = np.clip(cv2.GaussianBlur(gray, (0, 0), 1.5 * s, borderType=cv2.BORDER_REPLICATE) - gray, 0, 1) * ink_gain
    line = np.clip(np.maximum(edges * 1.6, ink), 0.0, 1.0)
    return gray_to_rgb(np.round(line * 255).astype(np.uint8))
