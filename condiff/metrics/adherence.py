"""Condition adherence: how well a generated image follows its ControlNet condition (thesis §4.2.4).

The condition is re-extracted from the generated image with the same preprocessor
(:mod:`condiff.preprocess`) and compared with the input condition:

- edges (canny / lineart / softedge after thresholding): :func:`edge_f1`, precision/recall/F1
  with a tolerance radius;
- depth: :func:`depth_errors`, scale-and-shift-invariant AbsRel and RMSE;
- surface normals: :func:`normal_angular_error`, angle in degrees;
- pose: :func:`keypoint_scores`, PCK and mean normalised distance with missing keypoints.

Every function returns per-image values (``[B]`` tensors) for bootstrapping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "EdgeScores",
    "edge_f1",
    "DepthErrors",
    "align_depth",
    "depth_errors",
    "NormalErrors",
    "normal_angular_error",
    "KeypointScores",
    "keypoint_scores",
]


def _as_bhw(x: Tensor, name: str) -> Tensor:
    """``[H, W]``, ``[B, H, W]`` or ``[B, 1, H, W]`` → ``[B, H, W]``."""
    t = torch.as_tensor(x)
    if t.ndim == 2:
        t = t[None]
    elif t.ndim == 4 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 3:
        raise ValueError(f"{name} must be [H, W], [B, H, W] or [B, 1, H, W], got {tuple(t.shape)}")
    return t


# --------------------------------------------------------------------------- edges


@dataclass(frozen=True)
class EdgeScores:
    """Per-image precision, recall and F1 of predicted edge pixels, each ``[B]``."""

    precision: Tensor
    recall: Tensor
    f1: Tensor


def _dilate(edges: Tensor, radius: float) -> Tensor:
    """Binary dilation by a Euclidean disk of ``radius`` pixels: pixels within ``radius`` of an edge."""
    r = int(math.floor(radius))
    if r == 0:
        return edges
    c = torch.arange(-r, r + 1, dtype=torch.float32)
    disk = ((c[:, None] ** 2 + c[None, :] ** 2) <= radius ** 2 + 1e-9).to(torch.float32)
    hit = F.conv2d(edges[:, None].to(torch.float32), disk[None, None], padding=r)
    return hit[:, 0] > 0.5


def edge_f1(pred: Tensor, target: Tensor, *, tolerance: float = 1.5, threshold: float = 0.5) -> EdgeScores:
    """Edge precision/recall/F1 with a tolerance radius (in the spirit of the BSDS benchmark,
    Martin et al. 2004, without its one-to-one pixel matching).

    Edge maps are binarised at ``threshold``. A predicted edge pixel is correct if a target edge
    pixel lies within Euclidean distance ``tolerance`` (precision); a target edge pixel is found if
    a predicted one lies within ``tolerance`` (recall). F1 = 2PR/(P+R). Conventions for empty
    maps: both empty → P = R = F1 = 1 (perfect agreement); only one empty → F1 = 0.
    ``tolerance=0`` demands exact pixel overlap; the default 1.5 accepts 1-px shifts, diagonals too.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be ≥ 0 pixels, got {tolerance}")
    p, t = _as_bhw(pred, "pred") > threshold, _as_bhw(target, "target") > threshold
    if p.shape != t.shape:
        raise ValueError(f"edge maps differ in shape: pred {tuple(p.shape)} vs target {tuple(t.shape)}")
    n_p, n_t = p.flatten(1).sum(1).double(), t.flatten(1).sum(1).double()
    tp_p = (p & _dilate(t, tolerance)).flatten(1).sum(1).double()
    tp_r = (t & _dilate(p, tolerance)).flatten(1).sum(1).double()
    both_empty = (n_p == 0) & (n_t == 0)
    precision = torch.where(n_p > 0, tp_p / n_p.clamp_min(1), both_empty.double())
    recall = torch.where(n_t > 0, tp_r / n_t.clamp_min(1), both_empty.double())
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-300), torch.zeros_like(denom))
    return EdgeScores(precision.float(), recall.float(), f1.float())


# --------------------------------------------------------------------------- depth


@dataclass(frozen=True)
class DepthErrors:
    """Per-image AbsRel = mean |d̂ − d| / d and RMSE = sqrt(mean (d̂ − d)²) after alignment, ``[B]``."""

    abs_rel: Tensor
    rmse: Tensor


def _valid_depth_mask(target: Tensor, mask: Tensor | None) -> Tensor:
    valid = torch.isfinite(target) & (target > 0)
    if mask is not None:
        m = _as_bhw(mask, "mask")
        if m.shape[-2:] != target.shape[-2:] or m.shape[0] not in (1, target.shape[0]):
            raise ValueError(f"mask {tuple(m.shape)} does not fit depth maps {tuple(target.shape)}")
        valid = valid & (m > 0.5)
    return valid


def align_depth(pred: Tensor, target: Tensor, valid: Tensor, mode: str = "scale_shift") -> Tensor:
    """Least-squares alignment of ``pred`` to ``target`` over ``valid`` pixels, per image.

    ``scale_shift``: minimise Σ (s·d̂ + t − d)² (Ranftl et al. 2020, MiDaS, eq. 4, in depth space);
    ``scale``: minimise Σ (s·d̂ − d)²; ``none``: no alignment. Returns the aligned prediction.
    """
    if mode not in ("scale_shift", "scale", "none"):
        raise ValueError(f"alignment must be 'scale_shift', 'scale' or 'none', got {mode!r}")
    if mode == "none":
        return pred
    w = valid.to(pred.dtype)
    n = w.flatten(1).sum(1)
    if (n < 2).any():
        raise ValueError("each image needs at least 2 valid depth pixels (target > 0 inside the mask)")
    x, y = (pred * w).flatten(1), (target * w).flatten(1)
    sx, sy = x.sum(1), y.sum(1)
    sxx, sxy = (x * x).sum(1), (x * y).sum(1)
    if mode == "scale":
        s = sxy / sxx.clamp_min(1e-300)
        t = torch.zeros_like(s)
    else:
        det = n * sxx - sx * sx
        flat = det.abs() <= 1e-12 * (n * sxx).clamp_min(1e-300)  # constant prediction: scale undefined
        s = torch.where(flat, torch.zeros_like(det), (n * sxy - sx * sy) / torch.where(flat, torch.ones_like(det), det))
        t = (sy - s * sx) / n
    return s[:, None, None] * pred + t[:, None, None]


def depth_errors(pred: Tensor, target: Tensor, *, mask: Tensor | None = None,
                 alignment: str = "scale_shift") -> DepthErrors:
    """Scale/shift-invariant depth error between a predicted and a reference depth map, per image.

    Depth maps are ``[B, H, W]`` (or ``[H, W]``, ``[B, 1, H, W]``). Valid pixels: target finite and
    > 0, and inside ``mask`` if given. The prediction is first aligned by :func:`align_depth`
    (default: least-squares scale and shift, as monocular depth is only known up to those), then
    AbsRel and RMSE are taken over valid pixels. Any affine rescaling of the prediction with a
    positive scale leaves both errors unchanged.
    """
    p, t = _as_bhw(pred, "pred").double(), _as_bhw(target, "target").double()
    if p.shape != t.shape:
        raise ValueError(f"depth maps differ in shape: pred {tuple(p.shape)} vs target {tuple(t.shape)}")
    valid = _valid_depth_mask(t, mask).expand_as(t)
    t_safe = torch.where(valid, t, torch.ones_like(t))
    aligned = align_depth(torch.where(valid, p, torch.zeros_like(p)), t_safe, valid, alignment)
    w = valid.double()
    n = w.flatten(1).sum(1)
    abs_rel = ((aligned - t_safe).abs() / t_safe * w).flatten(1).sum(1) / n
    rmse = torch.sqrt((((aligned - t_safe) ** 2) * w).flatten(1).sum(1) / n)
    return DepthErrors(abs_rel.float(), rmse.float())


# --------------------------------------------------------------------------- surface normals


@dataclass(frozen=True)
class NormalErrors:
    """Per-image angular error statistics in degrees and the fractions below 11.25°/22.5°/30°
    (the thresholds of Fouhey et al. 2013 / Eigen & Fergus 2015), each ``[B]``."""

    mean_deg: Tensor
    median_deg: Tensor
    within_11_25: Tensor
    within_22_5: Tensor
    within_30: Tensor


def normal_angular_error(pred: Tensor, target: Tensor, *, mask: Tensor | None = None,
                         min_norm: float = 1e-6) -> NormalErrors:
    """Angle between predicted and reference surface normals ``[B, 3, H, W]``, per image.

    Both fields are normalised per pixel; pixels where either vector is shorter than ``min_norm``
    (e.g. background encoded as 0) or outside ``mask`` are ignored. The angle is computed as
    ``atan2(|a × b|, a · b)``, accurate also near 0° and 180° where ``acos`` loses precision.
    Normal maps stored as RGB in [0, 1] must first be decoded with ``n = 2·rgb − 1``.
    """
    a, b = torch.as_tensor(pred).double(), torch.as_tensor(target).double()
    if a.ndim == 3:
        a, b = a[None], b[None]
    if a.ndim != 4 or a.shape[1] != 3 or a.shape != b.shape:
        raise ValueError(f"normal maps must both be [B, 3, H, W]; got {tuple(a.shape)} and {tuple(b.shape)}")
    na, nb = a.norm(dim=1), b.norm(dim=1)
    valid = (na > min_norm) & (nb > min_norm)
    if mask is not None:
        valid = valid & (_as_bhw(mask, "mask") > 0.5)
    a, b = a / na.clamp_min(min_norm)[:, None], b / nb.clamp_min(min_norm)[:, None]
    angle = torch.rad2deg(torch.atan2(torch.linalg.cross(a, b, dim=1).norm(dim=1), (a * b).sum(1)))
    rows = []
    for i in range(a.shape[0]):
        v = angle[i][valid[i]]
        if v.numel() == 0:
            raise ValueError(f"image {i} has no valid normal pixels (all zero-length or masked out)")
        rows.append(torch.stack([v.mean(), v.median(), (v < 11.25).double().mean(),
                                 (v < 22.5).double().mean(), (v < 30.0).double().mean()]))
    s = torch.stack(rows).float()
    return NormalErrors(s[:, 0], s[:, 1], s[:, 2], s[:, 3], s[:, 4])


# --------------------------------------------------------------------------- keypoints


@dataclass(frozen=True)
class KeypointScores:
    """Per-image pose agreement, each ``[B]``.

    ``pck``: fraction of reference keypoints found within ``alpha·scale`` (missing predictions
    count as misses); ``mean_distance``: mean distance / scale over keypoints present in both;
    ``missing_rate``: fraction of reference keypoints the prediction lacks. NaN where undefined
    (no reference keypoint, or none predicted for ``mean_distance``).
    """

    pck: Tensor
    mean_distance: Tensor
    missing_rate: Tensor


def keypoint_scores(pred: Tensor, target: Tensor, *, pred_visible: Tensor | None = None,
                    target_visible: Tensor | None = None, scale: Tensor | float | None = None,
                    alpha: float = 0.1) -> KeypointScores:
    """PCK@α and mean normalised keypoint distance (PCK: Yang & Ramanan 2013), per image.

    ``pred``/``target`` are ``[B, K, 2]`` pixel coordinates (``[K, 2]`` for one image). A keypoint is
    missing where its visibility flag is False or its coordinates are NaN. The normalising
    ``scale`` is per image: given (scalar or ``[B]``), or by default the longer side of the
    bounding box of the visible reference keypoints (PCK@bbox).
    """
    p, t = torch.as_tensor(pred).double(), torch.as_tensor(target).double()
    if p.ndim == 2:
        p, t = p[None], t[None]
    if p.ndim != 3 or p.shape[-1] != 2 or p.shape != t.shape:
        raise ValueError(f"keypoints must both be [B, K, 2]; got {tuple(p.shape)} and {tuple(t.shape)}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    vp = torch.isfinite(p).all(-1)
    vt = torch.isfinite(t).all(-1)
    if pred_visible is not None:
        vp = vp & torch.as_tensor(pred_visible, dtype=torch.bool).reshape(vp.shape)
    if target_visible is not None:
        vt = vt & torch.as_tensor(target_visible, dtype=torch.bool).reshape(vt.shape)
    if scale is None:
        big, small = torch.full_like(t, math.inf), torch.full_like(t, -math.inf)
        lo = torch.where(vt[..., None], t, big).amin(1)
        hi = torch.where(vt[..., None], t, small).amax(1)
        sc = (hi - lo).amax(-1)
        sc = torch.where(vt.any(1), sc, torch.full_like(sc, math.nan))
    else:
        sc = torch.as_tensor(scale, dtype=torch.float64).expand(p.shape[0]).clone()
        if (sc <= 0).any():
            raise ValueError("scale must be > 0 for every image")
    if ((sc <= 0) & vt.any(1)).any():
        raise ValueError("reference keypoints of some image span a zero-size box; pass scale=...")
    dist = torch.linalg.norm(torch.nan_to_num(p - t), dim=-1) / sc[:, None]
    both = vp & vt
    n_t = vt.double().sum(1)
    hits = ((dist <= alpha) & both).double().sum(1)
    nan = torch.full_like(n_t, math.nan)
    pck = torch.where(n_t > 0, hits / n_t.clamp_min(1), nan)
    n_both = both.double().sum(1)
    mean_d = torch.where(n_both > 0, (dist * both).sum(1) / n_both.clamp_min(1), nan)
    missing = torch.where(n_t > 0, (vt & ~vp).double().sum(1) / n_t.clamp_min(1), nan)
    return KeypointScores(pck.float(), mean_d.float(), missing.float())
