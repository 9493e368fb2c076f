"""Masks and compositing for inpainting (thesis 4.3.4, Fig. 4.16): putting a generated region back.

Conventions: images are float tensors [B, C, H, W] (any value range: every operation here is
affine-equivariant); masks are float [B|1, 1, H, W] in [0, 1] with **1 = repaint** (white in a
mask file, see :mod:`condiff.images`). The *support* of a mask is where it is > 0 (what may
change); its *hard* version is mask ≥ 0.5 (what counts as inside for seams and bands).

What is here, one function each:

* :func:`check_mask`, :func:`resize_mask` (e.g. to latent resolution), :func:`gaussian_blur`,
  :func:`feather_mask` (Gaussian feathering, inward by default so the outside stays untouched);
* "inpaint only the masked area": :func:`mask_box` (bounding box + padding, grown to an aspect
  ratio and to multiples of 8), :func:`crop_box`, :func:`paste_box`;
* :func:`composite`: the thesis's composite: outside the mask support the original is returned
  **exactly** (bit for bit), inside it the generated image (alpha-blended on a soft mask);
* seam-aware alternatives to a plain alpha paste: :func:`laplacian_blend` (multi-band blending,
  Burt & Adelson 1983) and :func:`poisson_blend` (gradient-domain, Pérez et al. 2003), plus
  :func:`match_colors` (per-channel mean/std transfer measured in a band around the border);
* :func:`seam_error`: how visible the border is, and :func:`blend`, the one call that chains them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "check_mask",
    "hard_mask",
    "resize_mask",
    "gaussian_blur",
    "feather_mask",
    "border_bands",
    "Box",
    "mask_box",
    "crop_box",
    "paste_box",
    "composite",
    "match_colors",
    "laplacian_blend",
    "poisson_blend",
    "seam_error",
    "blend",
    "BLEND_METHODS",
]

BLEND_METHODS = ("alpha", "laplacian", "poisson")


# --------------------------------------------------------------------------- masks


def check_mask(mask: Tensor, image: Tensor | None = None, *, allow_empty: bool = False) -> Tensor:
    """Validate a mask: float [B|1, 1, H, W] in [0, 1], same H×W (and fitting batch) as ``image``."""
    if not isinstance(mask, Tensor):
        raise ValueError(f"mask must be a tensor [B, 1, H, W], got {type(mask).__name__}")
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must have shape [B, 1, H, W], got {tuple(mask.shape)}")
    if image is not None:
        if image.ndim != 4:
            raise ValueError(f"image must have shape [B, C, H, W], got {tuple(image.shape)}")
        if mask.shape[-2:] != image.shape[-2:]:
            raise ValueError(
                f"mask size {mask.shape[-1]}×{mask.shape[-2]} differs from image size "
                f"{image.shape[-1]}×{image.shape[-2]} (W×H); resize the mask to the image"
            )
        if mask.shape[0] not in (1, image.shape[0]):
            raise ValueError(f"mask batch {mask.shape[0]} does not fit image batch {image.shape[0]}")
    mask = mask.float() if not mask.is_floating_point() else mask
    if not torch.isfinite(mask).all() or float(mask.min()) < 0 or float(mask.max()) > 1:
        raise ValueError("mask values must lie in [0, 1] (1 = repaint, 0 = keep)")
    if not allow_empty and float(mask.max()) <= 0:
        raise ValueError("the mask is empty (all black): nothing to repaint; paint the region to change white")
    return mask


def hard_mask(mask: Tensor) -> Tensor:
    """The inside of a soft mask: mask ≥ 0.5, as float 0/1."""
    return (mask >= 0.5).to(mask.dtype)


def resize_mask(mask: Tensor, size: tuple[int, int], mode: str = "max") -> Tensor:
    """Resize a mask to ``size`` = (H, W), e.g. to the latent grid of a latent diffusion model.

    ``mode``: "max" (a cell is repainted if any of its pixels is: nothing masked is lost, the
    usual choice for latent blending), "area" (fraction of masked pixels: soft) or "nearest".
    """
    check_mask(mask, allow_empty=True)
    h, w = (int(v) for v in size)
    if h < 1 or w < 1:
        raise ValueError(f"target size must be positive, got {size}")
    if mode == "max":
        return F.adaptive_max_pool2d(mask, (h, w)) if (h <= mask.shape[-2] and w <= mask.shape[-1]) else (
            F.interpolate(mask, size=(h, w), mode="nearest")
        )
    if mode == "area":
        return F.interpolate(mask, size=(h, w), mode="area").clamp(0, 1)
    if mode == "nearest":
        return F.interpolate(mask, size=(h, w), mode="nearest")
    raise ValueError(f"unknown mask resize mode {mode!r}; use max, area or nearest")


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur with standard deviation ``sigma`` px (edge pixels replicated)."""
    if sigma < 0 or not math.isfinite(sigma):
        raise ValueError(f"blur sigma must be a finite number ≥ 0, got {sigma}")
    if sigma == 0:
        return x
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype).to(x.device)
    b, c, h, w = x.shape
    y = x.reshape(b * c, 1, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return y.reshape(b, c, h, w)


def feather_mask(mask: Tensor, radius: float, mode: str = "inward") -> Tensor:
    """Feather (soften) a mask by a Gaussian blur of standard deviation ``radius`` px.

    ``mode="inward"``: clamp(2·blur(m) − 1, 0, 1)·m: the ramp runs from 0 at the mask border to 1
    about 2·radius px inside, and the outside stays exactly 0, so a composite with it keeps every
    outside pixel. ``mode="center"``: the plain blur (A1111's "mask blur"): the ramp straddles the
    border and pixels just outside are blended too.
    """
    check_mask(mask, allow_empty=True)
    if radius == 0:
        return mask
    blurred = gaussian_blur(mask, radius)
    if mode == "center":
        return blurred.clamp(0, 1)
    if mode == "inward":
        return ((2 * blurred - 1).clamp(0, 1) * mask).clamp(0, 1)
    raise ValueError(f"unknown feather mode {mode!r}; use inward or center")


def _dilate(hard: Tensor, width: int) -> Tensor:
    return F.max_pool2d(hard, 2 * width + 1, stride=1, padding=width)


def border_bands(mask: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """(inner, outer): the pixels inside / outside the hard mask within ``width`` px of its border."""
    if width < 1:
        raise ValueError(f"band width must be ≥ 1 px, got {width}")
    hard = hard_mask(mask)
    outer = _dilate(hard, width) - hard
    inner = hard - (1 - _dilate(1 - hard, width))
    return inner, outer


# --------------------------------------------------------------------------- "only masked area"


@dataclass(frozen=True)
class Box:
    """A crop box in pixels: rows [top, bottom), columns [left, right)."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left


def _grow(lo: int, hi: int, want: int, limit: int) -> tuple[int, int]:
    """Grow [lo, hi) symmetrically to length ``want`` (≤ limit), shifted to stay inside [0, limit)."""
    want = min(want, limit)
    extra = want - (hi - lo)
    lo -= extra // 2
    hi += extra - extra // 2
    if lo < 0:
        hi, lo = hi - lo, 0
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    return max(lo, 0), hi


def mask_box(mask: Tensor, padding: int = 32, *, multiple: int = 8, aspect: float | None = None) -> Box:
    """The crop for "inpaint only the masked area": bounding box of the mask support (over the
    batch), padded by ``padding`` px of context, grown to ``aspect`` = width/height if given (the
    working resolution's), then to a multiple of ``multiple`` px per side where the image allows."""
    check_mask(mask)
    if padding < 0 or multiple < 1:
        raise ValueError("padding must be ≥ 0 and multiple ≥ 1")
    H, W = mask.shape[-2:]
    support = (mask > 0).any(0)[0]
    rows = torch.nonzero(support.any(1)).squeeze(1)
    cols = torch.nonzero(support.any(0)).squeeze(1)
    top, bottom = max(0, int(rows[0]) - padding), min(H, int(rows[-1]) + 1 + padding)
    left, right = max(0, int(cols[0]) - padding), min(W, int(cols[-1]) + 1 + padding)
    h, w = bottom - top, right - left
    if aspect is not None:
        if not aspect > 0:
            raise ValueError(f"aspect must be a positive width/height ratio, got {aspect}")
        hh = math.ceil(max(h, w / aspect) / multiple) * multiple
        ww = max(math.ceil(w / multiple) * multiple, round(hh * aspect / multiple) * multiple)
    else:
        hh, ww = math.ceil(h / multiple) * multiple, math.ceil(w / multiple) * multiple
    top, bottom = _grow(top, bottom, hh, H)
    left, right = _grow(left, right, ww, W)
    return Box(top, left, bottom, right)


def crop_box(x: Tensor, box: Box) -> Tensor:
    """x[..., top:bottom, left:right] (images or masks)."""
    if box.top < 0 or box.left < 0 or box.bottom > x.shape[-2] or box.right > x.shape[-1] or box.height < 1 or box.width < 1:
        raise ValueError(f"crop box {box} does not lie inside the {x.shape[-1]}×{x.shape[-2]} image")
    return x[..., box.top:box.bottom, box.left:box.right]


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=shrink)


def paste_box(base: Tensor, patch: Tensor, box: Box) -> Tensor:
    """A copy of ``base`` with ``patch`` (resized bicubically to the box if needed) written into ``box``.

    Follow with :func:`composite` against the original and the full-size mask so that only the
    masked pixels of the box change.
    """
    crop_box(base, box)
    if patch.ndim != 4 or patch.shape[:2] != base.shape[:2]:
        raise ValueError(f"patch {tuple(patch.shape)} must be [B, C, h, w] with the batch/channels of {tuple(base.shape)}")
    out = base.clone()
    out[..., box.top:box.bottom, box.left:box.right] = _resize(patch, (box.height, box.width)).to(base.dtype)
    return out


# --------------------------------------------------------------------------- compositing and blending


def composite(original: Tensor, generated: Tensor, mask: Tensor) -> Tensor:
    """m·generated + (1−m)·original, and **exactly** ``original`` wherever m = 0 (thesis Fig. 4.16)."""
    if original.shape != generated.shape:
        raise ValueError(f"original {tuple(original.shape)} and generated {tuple(generated.shape)} differ in shape")
    mask = check_mask(mask, original, allow_empty=True).to(original.dtype)
    mixed = mask * generated.to(original.dtype) + (1 - mask) * original
    return torch.where(mask > 0, mixed, original)


def match_colors(original: Tensor, generated: Tensor, mask: Tensor, band: int = 8, *, side: str = "outer") -> Tensor:
    """Per-sample, per-channel affine colour transfer of ``generated`` to match ``original`` near the mask.

    ``side="outer"``: the statistics are taken in the band just outside the mask in both images,
    i.e. what the generator changed where it should have changed nothing (colour drift of the
    sampler or the VAE); ``side="inner"``: generated inside-band vs original outside-band (for
    generators whose output outside the mask is meaningless). The map
    (g − μ_g)·σ_o/σ_g + μ_o (gain clamped to [1/3, 3]) is applied to the whole generated image.
    """
    check_mask(mask, original)
    inner, outer = border_bands(mask, band)
    outer = outer.expand(original.shape[0], -1, -1, -1)
    gen_band = {"outer": outer, "inner": inner.expand_as(outer)}.get(side)
    if gen_band is None:
        raise ValueError(f"unknown side {side!r}; use outer or inner")

    def stats(img: Tensor, band_mask: Tensor) -> tuple[Tensor, Tensor]:
        n = band_mask.sum((2, 3), keepdim=True).clamp(min=1)
        mean = (img * band_mask).sum((2, 3), keepdim=True) / n
        var = (((img - mean) ** 2) * band_mask).sum((2, 3), keepdim=True) / n
        return mean, var.sqrt()

    if float(outer.sum()) == 0 or float(gen_band.sum()) == 0:
        return generated  # the mask covers the whole image: there are no surroundings to match
    mu_o, sd_o = stats(original, outer)
    mu_g, sd_g = stats(generated, gen_band)
    gain = (sd_o / sd_g.clamp(min=1e-6)).clamp(1 / 3, 3)
    gain = torch.where(sd_g < 1e-6, torch.ones_like(gain), gain)
    return (generated - mu_g) * gain + mu_o


def _pyr_down(x: Tensor) -> Tensor:
    return gaussian_blur(x, 1.0)[..., ::2, ::2]


def _pyr_up(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def laplacian_blend(original: Tensor, generated: Tensor, mask: Tensor, levels: int | None = None) -> Tensor:
    """Multi-band blending (Burt & Adelson 1983), composited so the outside stays exact.

    Each Laplacian level of the two images is mixed with the Gaussian-pyramid level of the mask,
    shifted inwards (w_l = clamp(2·G_l(m) − 1, 0, 1)): at the border every band comes from the
    original, deeper inside from the generated image, and the transition widens with the level
    (about 2^l px at level l), so colour offsets fade in smoothly while detail stays sharp. Caveat:
    inside that band the original's content at the mask location shows through at low frequencies.
    ``levels`` defaults to ⌊log2(min(H, W))⌋ − 2 (at most 6).
    """
    mask = check_mask(mask, original).to(original.dtype)
    H, W = original.shape[-2:]
    if levels is None:
        levels = max(1, min(6, int(math.log2(max(2, min(H, W)))) - 2))
    if levels < 1:
        raise ValueError(f"levels must be ≥ 1, got {levels}")
    m = hard_mask(mask).expand(original.shape[0], -1, -1, -1)
    a, b = original, generated.to(original.dtype)
    out_levels, sizes = [], []
    for _ in range(levels):
        if min(a.shape[-2:]) < 2:
            break
        a_dn, b_dn, m_dn = _pyr_down(a), _pyr_down(b), _pyr_down(m)
        size = tuple(a.shape[-2:])
        la, lb = a - _pyr_up(a_dn, size), b - _pyr_up(b_dn, size)
        w = (2 * gaussian_blur(m, 1.0) - 1).clamp(0, 1)
        out_levels.append(w * lb + (1 - w) * la)
        sizes.append(size)
        a, b, m = a_dn, b_dn, m_dn
    w = (2 * gaussian_blur(m, 1.0) - 1).clamp(0, 1)
    out = w * b + (1 - w) * a
    for lap, size in zip(reversed(out_levels), reversed(sizes)):
        out = lap + _pyr_up(out, size)
    return composite(original, out, mask)


def _poisson_one(orig: np.ndarray, gen: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Solve the discrete Poisson equation of Pérez et al. (2003) for one image [C, H, W].

    Unknown f on Ω = ``region`` with guidance field v_pq = g_p − g_q and Dirichlet data f* = orig
    on ∂Ω; writing f = g + h, h solves |N_p| h_p − Σ_{q∈N_p∩Ω} h_q = Σ_{q∈N_p∖Ω} (f*_q − g_q)
    (N_p: in-image 4-neighbours, so Neumann at the image edge).
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    C, H, W = orig.shape
    idx = -np.ones((H, W), dtype=np.int64)
    ys, xs = np.nonzero(region)
    n = len(ys)
    idx[ys, xs] = np.arange(n)
    diag = np.zeros(n)
    rows, cols = [], []
    rhs = np.zeros((n, C))
    diff = orig - gen  # f* − g
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        qy, qx = ys + dy, xs + dx
        inside = (qy >= 0) & (qy < H) & (qx >= 0) & (qx < W)
        diag += inside
        p = np.nonzero(inside)[0]
        qi = idx[qy[p], qx[p]]
        in_region = qi >= 0
        rows.append(p[in_region])
        cols.append(qi[in_region])
        b = p[~in_region]
        rhs[b] += diff[:, qy[b], qx[b]].T
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    A = sp.csc_matrix(
        (np.concatenate([diag, -np.ones(len(rows))]), (np.concatenate([np.arange(n), rows]), np.concatenate([np.arange(n), cols]))),
        shape=(n, n),
    )
    h = splu(A).solve(rhs)
    out = gen.copy()
    out[:, ys, xs] += h.T
    return out


def poisson_blend(original: Tensor, generated: Tensor, mask: Tensor) -> Tensor:
    """Gradient-domain ("seamless") blending (Pérez et al. 2003), composited so the outside stays exact.

    Inside the mask support the result keeps the *gradients* of the generated image and meets
    the original exactly on the border, so a colour offset or a slow shading mismatch between
    the two is spread smoothly over the region instead of showing as a seam; no content of the
    original inside the mask is used. Solved with a sparse LU factorisation per image (float64).
    """
    mask = check_mask(mask, original)
    support = (mask > 0).expand(original.shape[0], -1, -1, -1)
    out = generated.to(original.dtype).clone()
    for i in range(original.shape[0]):
        region = support[i, 0].cpu().numpy()
        if region.all():
            continue  # no border to meet: keep the generated image
        o = original[i].detach().double().cpu().numpy()
        g = generated[i].detach().double().cpu().numpy()
        out[i] = torch.from_numpy(_poisson_one(o, g, region)).to(out.dtype)
    return composite(original, out, mask)


def seam_error(img: Tensor, mask: Tensor) -> float:
    """Mean absolute intensity jump across the mask border.

    Over every pair of 4-neighbouring pixels (p, q) with p inside the hard mask (m ≥ 0.5) and q
    outside, the mean over pairs and channels of |img_p − img_q|, in the image's own units. A
    perfectly continuous fill scores what the image's own gradients score there; a colour offset
    δ between the two sides adds about |δ|.
    """
    mask = check_mask(mask, img)
    hard = hard_mask(mask).expand(img.shape[0], -1, -1, -1) > 0
    total, count = img.new_zeros((), dtype=torch.float64), 0
    for dim in (2, 3):
        n = img.shape[dim]
        a, b = img.narrow(dim, 0, n - 1), img.narrow(dim, 1, n - 1)
        ha, hb = hard.narrow(dim, 0, n - 1), hard.narrow(dim, 1, n - 1)
        cross = (ha != hb).expand_as(a)
        total = total + ((a - b).abs() * cross).double().sum()
        count += int(cross.sum())
    if count == 0:
        raise ValueError("the mask has no border inside the image (it is empty or covers everything)")
    return float(total / count)


def blend(
    original: Tensor,
    generated: Tensor,
    mask: Tensor,
    *,
    method: str = "alpha",
    color_match: bool = False,
    feather: float = 0.0,
    band: int = 8,
) -> Tensor:
    """Put a generated image back into the original: optional colour matching, then ``method``
    ("alpha": plain composite with the optionally inward-feathered mask; "laplacian"; "poisson").
    Pixels outside the mask support are always the original's, exactly."""
    if method not in BLEND_METHODS:
        raise ValueError(f"unknown blend method {method!r}; choose one of {', '.join(BLEND_METHODS)}")
    mask = check_mask(mask, original)
    if color_match:
        generated = match_colors(original, generated, mask, band)
    if method == "laplacian":
        return laplacian_blend(original, generated, mask)
    if method == "poisson":
        return poisson_blend(original, generated, mask)
    return composite(original, generated, feather_mask(mask, feather) if feather > 0 else mask)
