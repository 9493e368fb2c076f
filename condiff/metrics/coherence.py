"""Inpainting coherence: does the filled region fit the picture it was cut from? (thesis 3.2.3, 4.3)

The dedicated inpainting U-Net exists to fill a hole *coherently with its surroundings*; a prompt
score cannot see that. With a ground truth (a real picture with a region removed, the true caption
as the prompt), coherence is measurable:

* **fill distance**: the LPIPS-like filter-bank distance (:mod:`condiff.metrics.perceptual`) between
  the masked region of the result and of the ground truth — both cut to the mask's bounding box,
  grown to a square of at least ``min_box`` pixels inside the picture and resized to ``size``² — and
  PSNR / SSIM inside the mask (:mod:`condiff.metrics.image`); 0 / ∞ / 1 for a perfect fill;
* **seam added**: ``seam_error(result) − seam_error(ground truth)`` along the mask border
  (:func:`condiff.metrics.image.seam_error`): 0 when the border is as smooth as in the real picture;
* **composite distance**: Fréchet distance and KID (:mod:`condiff.metrics.distribution`) between
  evaluation-encoder features of the whole composites and of real held-out pictures.

Every per-picture score is returned as a ``[B]`` tensor so that methods can be compared *paired*,
picture by picture (:func:`condiff.metrics.bootstrap.paired_bootstrap_ci`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .distribution import frechet_distance, kernel_inception_distance
from .image import psnr, seam_error, ssim
from .perceptual import filter_bank_distance

__all__ = ["region_crops", "fill_distance", "coherence_scores", "composite_distance"]


def _box(mask: Tensor, min_box: int) -> tuple[int, int, int, int]:
    """(top, left, side, side): the mask's bounding box grown to a square of side ≥ ``min_box`` inside the image."""
    h, w = mask.shape[-2:]
    ys, xs = torch.nonzero(mask.reshape(h, w) > 0.5, as_tuple=True)
    if ys.numel() == 0:
        raise ValueError("the mask is empty: there is no filled region to measure; give a mask with 1 = repaint")
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    side = min(max(y1 - y0, x1 - x0, min_box), h, w)
    top = min(max((y0 + y1 - side) // 2, 0), h - side)
    left = min(max((x0 + x1 - side) // 2, 0), w - side)
    return top, left, side, side


def region_crops(images: Tensor, masks: Tensor, *, size: int = 64, min_box: int = 32) -> Tensor:
    """Each image's masked region (see :func:`_box`), resized to ``size``² ([B, 3, size, size])."""
    out = []
    for img, m in zip(images, masks.expand(images.shape[0], -1, -1, -1)):
        t, l, hh, ww = _box(m, min_box)
        crop = img[None, :, t:t + hh, l:l + ww].float()
        out.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                                 antialias=hh > size).clamp(0, 1))
    return torch.cat(out)


def fill_distance(pred: Tensor, target: Tensor, mask: Tensor, *, size: int = 64, min_box: int = 32) -> Tensor:
    """LPIPS-like distance of the filled region to the ground truth's, per image [B] (0 = the same pixels)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    return filter_bank_distance(region_crops(pred, mask, size=size, min_box=min_box),
                                region_crops(target, mask, size=size, min_box=min_box))


def coherence_scores(result: Tensor, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Per image [B]: ``lpips_like_fill`` ↓, ``psnr_fill`` ↑ (dB), ``ssim_fill`` ↑ inside the mask, and
    ``seam_added`` ↓ (result's seam error minus the ground truth's). Images in [0, 1], mask 1 = filled."""
    m = mask.float().expand(result.shape[0], -1, -1, -1)
    return {"lpips_like_fill": fill_distance(result, target, m),
            "psnr_fill": psnr(result, target, mask=m, region="inside"),
            "ssim_fill": ssim(result, target, mask=m, region="inside"),
            "seam_added": seam_error(result, m) - seam_error(target, m)}


def composite_distance(features: Tensor | np.ndarray, real_features: Tensor | np.ndarray, *,
                       subset_size: int | None = None, seed: int = 0) -> dict[str, float]:
    """Fréchet distance and KID (mean ± std over subsets) between composite and real-picture features [N, D].

    The Fréchet distance fits a D-dimensional Gaussian to each set, so it is biased upwards for N not
    much larger than D; KID is unbiased at any N and is the one to compare across methods.
    """
    fx = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    rx = torch.as_tensor(np.asarray(real_features), dtype=torch.float64)
    n = min(len(fx), len(rx))
    kid = kernel_inception_distance(fx, rx, subset_size=subset_size or min(n, 100), seed=seed)
    return {"fd": float(frechet_distance(fx, rx)), "kid": float(kid.mean), "kid_std": float(kid.std), "n": int(len(fx)),
            "n_real": int(len(rx))}
