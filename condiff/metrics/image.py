"""Pixel-level image quality: PSNR and SSIM on the whole image or inside/outside a mask, and the
seam error of an inpainting composite.

Conventions: images are float tensors ``[B, C, H, W]`` (a single ``[C, H, W]`` image is accepted)
with values in ``[0, data_range]``. A mask is ``[B, 1, H, W]``, ``[B, H, W]`` or ``[H, W]``; a pixel
is *inside* the mask (the inpainted region, thesis §4.3) where mask > 0.5 and *outside* elsewhere.
All scores are returned per image (``[B]`` tensors) so that they can be bootstrapped
(:mod:`condiff.metrics.bootstrap`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["psnr", "ssim", "region_scores", "seam_error", "Region"]

Region = Literal["whole", "inside", "outside"]
_REGIONS = ("whole", "inside", "outside")


def _as_batch(img: Tensor, name: str) -> Tensor:
    if not isinstance(img, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor [B, C, H, W], got {type(img).__name__}")
    if img.ndim == 3:
        img = img[None]
    if img.ndim != 4:
        raise ValueError(f"{name} must be [B, C, H, W] or [C, H, W], got shape {tuple(img.shape)}")
    return img.to(torch.float64)


def _pair(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    p, t = _as_batch(pred, "pred"), _as_batch(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred {tuple(p.shape)} and target {tuple(t.shape)} must have the same shape")
    return p, t


def _as_mask(mask: Tensor, like: Tensor) -> Tensor:
    """Binary mask ``[B, 1, H, W]`` (bool) broadcast to the batch of ``like``."""
    m = torch.as_tensor(mask)
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m[:, None]
    if m.ndim != 4 or m.shape[1] != 1 or m.shape[-2:] != like.shape[-2:]:
        raise ValueError(f"mask must be [H, W], [B, H, W] or [B, 1, H, W] with H, W = "
                         f"{tuple(like.shape[-2:])}; got shape {tuple(torch.as_tensor(mask).shape)}")
    if m.shape[0] not in (1, like.shape[0]):
        raise ValueError(f"mask batch {m.shape[0]} does not match image batch {like.shape[0]}")
    m = m.to(like.device) > 0.5 if m.dtype != torch.bool else m.to(like.device)
    return m.expand(like.shape[0], 1, *like.shape[-2:])


def _region_weights(region: str, mask: Tensor | None, like: Tensor) -> Tensor:
    """0/1 weights ``[B, C, H, W]`` selecting the region; error if it is empty for some image."""
    if region not in _REGIONS:
        raise ValueError(f"region must be one of {_REGIONS}, got {region!r}")
    if region == "whole":
        return torch.ones_like(like)
    if mask is None:
        raise ValueError(f"region={region!r} needs a mask; pass mask=... or use region='whole'")
    m = _as_mask(mask, like)
    sel = m if region == "inside" else ~m
    counts = sel.flatten(1).sum(1)
    if (counts == 0).any():
        bad = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"the {region!r} region of the mask is empty for image(s) {bad}; "
                         "the score is undefined there")
    return sel.to(like.dtype).expand_as(like)


def _masked_mean(values: Tensor, weights: Tensor) -> Tensor:
    return (values * weights).flatten(1).sum(1) / weights.flatten(1).sum(1)


def psnr(pred: Tensor, target: Tensor, *, mask: Tensor | None = None, region: Region = "whole",
         data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio per image, ``10·log10(R² / MSE)`` in dB, MSE over the region.

    ``region='inside'``/``'outside'`` averages the squared error only over pixels inside/outside
    ``mask`` (all channels), so errors in the other region do not count. Identical images give +inf.
    """
    p, t = _pair(pred, target)
    w = _region_weights(region, mask, p)
    mse = _masked_mean((p - t) ** 2, w)
    return (10.0 * torch.log10(data_range ** 2 / mse)).to(torch.float32)


def ssim(pred: Tensor, target: Tensor, *, mask: Tensor | None = None, region: Region = "whole",
         data_range: float = 1.0, sigma: float = 1.5) -> Tensor:
    """Structural similarity (Wang et al. 2004, "Image Quality Assessment: From Error Visibility to
    Structural Similarity") per image, averaged over the region.

    The SSIM map comes from torchmetrics (Gaussian window σ = 1.5, K1 = 0.01, K2 = 0.03,
    reflect-padded so that the map has one value per pixel); ``region`` selects which map values
    are averaged. Each map value uses an ~11×11 window, so values near the mask border also see
    the other region: that is inherent to SSIM.
    """
    p, t = _pair(pred, target)
    pad = int(3.5 * sigma + 0.5)
    if min(p.shape[-2:]) <= pad:
        raise ValueError(f"images of size {tuple(p.shape[-2:])} are too small for an SSIM window "
                         f"of σ={sigma}; need H, W > {pad}")
    w = _region_weights(region, mask, p)
    # imported here: torchmetrics' image package takes seconds to import
    from torchmetrics.functional.image.ssim import structural_similarity_index_measure

    _, ssim_map = structural_similarity_index_measure(
        p, t, data_range=data_range, sigma=sigma, reduction="none", return_full_image=True)
    return _masked_mean(ssim_map, w).to(torch.float32)


def region_scores(pred: Tensor, target: Tensor, mask: Tensor, *, data_range: float = 1.0) -> dict[str, Tensor]:
    """PSNR and SSIM on the whole image, inside and outside the mask: keys ``psnr_whole``, … ."""
    out: dict[str, Tensor] = {}
    for region in _REGIONS:
        out[f"psnr_{region}"] = psnr(pred, target, mask=mask, region=region, data_range=data_range)
        out[f"ssim_{region}"] = ssim(pred, target, mask=mask, region=region, data_range=data_range)
    return out


def _axis_jumps(img: Tensor, m: Tensor, band: int, dim: int) -> tuple[Tensor, Tensor]:
    """Jumps at every mask crossing along ``dim`` (−1: horizontal, −2: vertical).

    For neighbours a = j, b = j+1 whose mask labels differ, with one-sided slopes over ``band``
    pixels, ``s_a = (c[j] − c[j−band]) / band`` and ``s_b = (c[j+1+band] − c[j+1]) / band``, the
    jump is ``|(c[j+1] − c[j]) − (s_a + s_b)/2|``. A pair counts only if the mask is constant on
    j−band..j and on j+1..j+1+band (both inside the image). Returns (sum of jumps, count) per image.
    """
    n = img.shape[dim]
    length = n - 1 - 2 * band  # number of positions j = band .. n-2-band
    if length <= 0:
        zero = img.new_zeros(img.shape[0])
        return zero, zero

    def take(x: Tensor, start: int) -> Tensor:
        return x.narrow(dim, start, length)

    j = band
    c_a, c_a0 = take(img, j), take(img, j - band)
    c_b, c_b1 = take(img, j + 1), take(img, j + 1 + band)
    crossing = c_b - c_a
    smooth = ((c_a - c_a0) + (c_b1 - c_b)) / (2.0 * band)
    jump = (crossing - smooth).abs()

    mf = m.to(torch.int8)
    valid = take(mf, j) != take(mf, j + 1)
    for k in range(1, band + 1):
        valid &= take(mf, j - k) == take(mf, j)
        valid &= take(mf, j + 1 + k) == take(mf, j + 1)
    v = valid.to(img.dtype).expand_as(jump)
    return (jump * v).flatten(1).sum(1), v.flatten(1).sum(1)


def seam_error(image: Tensor, mask: Tensor, *, band: int = 2) -> Tensor:
    """Mean absolute gradient jump across the mask border, per image (reference-free).

    Definition (condiff's; document any change here). Let c be the image and M the binarised mask.
    For every pair of 4-neighbours (a, b) with M(a) ≠ M(b), taken along rows and columns, compare
    the finite difference *across* the border, ``c(b) − c(a)``, with the average slope just beside
    it on each side, measured over ``band`` pixels:
    ``s_a = (c(a) − c(a − band·d)) / band``, ``s_b = (c(b + band·d) − c(b)) / band`` (d = unit step
    from a to b). The jump is ``|c(b) − c(a) − (s_a + s_b)/2|``, a second difference: it is zero
    where the image continues linearly through the border and equals h for a step of height h
    placed exactly on the border — the visible seam of a bad composite. Pairs whose ``band``-pixel
    run on either side leaves the image or crosses the mask again are skipped. The score is the
    mean jump over all counted pairs and channels (image units; 0 when no pair counts).

    A pixel-perfect composite has the same seam error as the original image with the same mask,
    so ``seam_error(composite, m) − seam_error(original, m)`` is the seam the compositing added.
    """
    img = _as_batch(image, "image")
    if int(band) < 1:
        raise ValueError(f"band must be ≥ 1 pixel, got {band}")
    m = _as_mask(mask, img)
    total = img.new_zeros(img.shape[0])
    count = img.new_zeros(img.shape[0])
    for dim in (-1, -2):
        s, c = _axis_jumps(img, m, int(band), dim)
        total, count = total + s, count + c
    return (total / count.clamp_min(1.0)).to(torch.float32)
