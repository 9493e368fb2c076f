"""Seeded inpainting masks for training the inpainting models (thesis 3.2.3 / 4.3).

A mask is H×W uint8 in {0, 1}; 1 marks the pixels to regenerate. Kinds, drawn with the default
probabilities :data:`DEFAULT_MASK_PROBS` (LaMa/SD-inpainting style mixture):

* ``full``    — everything (25 %): the inpainting model also learns plain text-to-image;
* ``region``  — one visible vector layer group of the record, dilated (object parts: a face mask,
  glasses, a hat…), from the ``regions`` map of the record;
* ``object``  — the whole object (all layers), dilated;
* ``strokes`` — 1–4 thick random brush polylines;
* ``boxes``   — 1–3 random rectangles;
* ``large``   — many strokes and boxes until at least 40 % is covered.

Every draw uses the generator passed in (the loader seeds it per record and epoch).
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["MASK_KINDS", "DEFAULT_MASK_PROBS", "sample_inpaint_mask"]

MASK_KINDS = ("full", "region", "object", "strokes", "boxes", "large")
DEFAULT_MASK_PROBS = {"full": 0.25, "region": 0.2, "object": 0.1, "strokes": 0.2, "boxes": 0.1, "large": 0.15}


def _strokes(rng: np.random.Generator, m: np.ndarray, n: int, s: int) -> None:
    for _ in range(n):
        pts = [rng.uniform(0, s, 2)]
        for _ in range(int(rng.integers(2, 6))):
            ang = rng.uniform(0, 2 * np.pi)
            step = rng.uniform(0.1, 0.35) * s
            pts.append(np.clip(pts[-1] + step * np.array([np.cos(ang), np.sin(ang)]), 0, s - 1))
        width = int(rng.integers(max(2, s // 20), max(3, s // 6)))
        cv2.polylines(m, [np.round(np.array(pts)).astype(np.int32)], False, 1, thickness=width, lineType=cv2.LINE_8)


def _boxes(rng: np.random.Generator, m: np.ndarray, n: int, s: int, lo: float = 0.15, hi: float = 0.5) -> None:
    for _ in range(n):
        w, h = (rng.uniform(lo, hi, 2) * s).astype(int)
        x, y = int(rng.integers(0, s - w + 1)), int(rng.integers(0, s - h + 1))
        m[y:y + h, x:x + w] = 1


def _dilate(mask: np.ndarray, rng: np.random.Generator, s: int) -> np.ndarray:
    r = int(rng.integers(1, max(2, s // 24) + 1))
    return cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))


def sample_inpaint_mask(rng: np.random.Generator, size: int, regions: np.ndarray | None = None,
                        probs: dict[str, float] | None = None) -> tuple[np.ndarray, str]:
    """Draw one inpainting mask (H×W uint8 in {0,1}) and its kind; see the module docstring."""
    probs = dict(DEFAULT_MASK_PROBS if probs is None else probs)
    bad = [k for k in probs if k not in MASK_KINDS]
    if bad or any(v < 0 for v in probs.values()) or sum(probs.values()) <= 0:
        raise ValueError(f"mask probabilities must be non-negative weights over {MASK_KINDS}, got {probs}")
    kinds = list(probs)
    p = np.array([probs[k] for k in kinds], float)
    kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
    s = size
    m = np.zeros((s, s), np.uint8)
    if kind in ("region", "object") and regions is not None and regions.any():
        if kind == "object":
            return _dilate(regions > 0, rng, s), kind
        labels, counts = np.unique(regions[regions > 0], return_counts=True)
        ok = labels[counts >= 0.01 * s * s]
        if len(ok):
            k = ok[int(rng.integers(len(ok)))]
            return _dilate(regions == k, rng, s), kind
        kind = "strokes"
    elif kind in ("region", "object"):
        kind = "boxes"
    if kind == "full":
        m[:] = 1
    elif kind == "strokes":
        _strokes(rng, m, int(rng.integers(1, 5)), s)
    elif kind == "boxes":
        _boxes(rng, m, int(rng.integers(1, 4)), s)
    else:
        while m.mean() < 0.4:
            if rng.random() < 0.5:
                _strokes(rng, m, 1, s)
            else:
                _boxes(rng, m, 1, s, 0.3, 0.7)
    return m, kind
