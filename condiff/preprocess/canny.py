"""Canny edge condition (thesis 4.2.4: "Canny Edge Detection", OpenCV ``Canny`` with two thresholds)."""

from __future__ import annotations

import cv2
import numpy as np

from ._image import as_rgb, gray_to_rgb

__all__ = ["canny"]


def canny(image, low: int = 100, high: int = 200) -> np.ndarray:
    """White Canny edges on black, H×W×3 uint8 — the same operator the thesis uses (OpenCV Canny).

    ``low``/``high`` are the hysteresis thresholds on the gradient magnitude of the grey image.
    """
    if not 0 <= low <= high:
        raise ValueError(f"Canny thresholds must satisfy 0 <= low <= high, got low={low}, high={high}")
    gray = cv2.cvtColor(as_rgb(image), cv2.COLOR_RGB2GRAY)
    return gray_to_rgb(cv2.Canny(gray, low, high))
