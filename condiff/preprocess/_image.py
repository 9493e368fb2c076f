"""Input normalisation shared by the control-condition extractors: anything RGB-like → H×W×3 uint8."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["as_rgb", "gray_to_rgb", "foreground_mask"]


def as_rgb(image) -> np.ndarray:
    """Accept a PIL image or a numpy array (H×W, H×W×3 or H×W×4, uint8) and return H×W×3 uint8.

    RGBA is composited over white (the built-in world's background).
    """
    if hasattr(image, "convert") and hasattr(image, "mode"):  # PIL.Image without importing PIL
        if image.mode in ("RGBA", "LA", "P"):
            image = image.convert("RGBA")
        else:
            image = image.convert("RGB")
        image = np.asarray(image)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {arr.dtype}; convert with np.clip(x, 0, 255).astype(np.uint8)")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] < 8 or arr.shape[1] < 8:
        raise ValueError(f"expected an H×W×3 (or ×4) image at least 8×8, got shape {arr.shape}")
    if arr.shape[2] == 4:
        a = arr[..., 3:4].astype(np.uint32)
        arr = ((arr[..., :3].astype(np.uint32) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """H×W uint8 → H×W×3 uint8 (the channel is repeated)."""
    return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))


def foreground_mask(rgb: np.ndarray, threshold: int = 24) -> np.ndarray:
    """Everything but the background: the background is the set of pixels close (≤ ``threshold``)
    to the border's median colour *and* connected to the border, so enclosed background-coloured
    parts (a white face mask on a white page) count as foreground."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]], axis=0).astype(np.int16)
    bg = np.median(border, axis=0)
    like_bg = (np.abs(rgb.astype(np.int16) - bg[None, None, :]).max(axis=2) <= threshold).astype(np.uint8)
    n, lab = cv2.connectedComponents(np.pad(like_bg, 1, constant_values=1), connectivity=4)
    outside = lab[1:-1, 1:-1] == lab[0, 0]
    return ~outside
