"""Inpainting on held-out pictures of a built world: the evaluation masks, the records they apply to, and the
paired comparison of the inpainting U-Net with the zero-shot latent blend (:func:`evaluate_inpainting`).

Two masks (:func:`inpaint_eval_masks`): the centre box, which mostly leaves the subject in the context,
and the picture's own subject (dilated), where the inside has to carry the prompt. The similarity is
also measured on the masked region alone (its bounding box, grown to the picture's aspect, cut out and
resized to the encoder's input, :func:`masked_region_crops`), where the unchanged context no longer
dilutes the difference. :func:`seam_report` scores the seams the compositing blends add.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..compositing import BLEND_METHODS, blend, crop_box, mask_box, seam_error
from ..metrics.bootstrap import bootstrap_ci
from ..models.ldm import LatentDiffusion
from ..nn.image_encoder import ImageEncoder
from ..pipelines.inpaint import inpaint
from .adherence import ci_dict, eval_order, features

__all__ = ["INPAINT_MASKS", "SUBJECT_AREA", "subject_masks", "inpaint_eval_masks", "inpaint_eval_records",
           "subject_records", "masked_region_crops", "evaluate_inpainting", "seam_report"]


#: inpainting masks of the evaluation: the fixed centre box, and the picture's own subject
INPAINT_MASKS = ("box", "subject")
#: a subject mask is used only where it covers this share of the picture (after dilation)
SUBJECT_AREA = (0.05, 0.7)


def inpaint_eval_masks(ev, idx: list[int], kind: str, dilate: int = 5) -> Tensor:
    """Evaluation masks [n, 1, H, W] (1 = repaint) for the held-out records ``idx``.

    ``"box"``: the centre quarter of the picture (h/4…3h/4 × w/4…3w/4), whatever it holds.
    ``"subject"``: every non-background layer of the record (the world's ``regions`` map), dilated by
    ``dilate`` pixels so the silhouette does not leak through — the object-replacement task, where the
    inside, not the context, has to carry the prompt.
    """
    n = len(idx)
    h, w = ev.images.shape[-2:]
    if kind == "box":
        mask = torch.zeros(n, 1, h, w)
        mask[..., h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1
        return mask
    if kind == "subject":
        return subject_masks(ev.regions[idx], dilate)
    raise ValueError(f"unknown inpainting mask {kind!r}; choose from {INPAINT_MASKS}")


def subject_masks(regions: Tensor, radius: int) -> Tensor:
    """Masks [B, 1, H, W] in {0, 1} of every non-background layer of ``regions`` [B, H, W] (the world's layer
    map, 0 = background), dilated by ``radius`` pixels (a square window)."""
    fg = (regions > 0).float()[:, None]
    return F.max_pool2d(fg, 2 * radius + 1, stride=1, padding=radius)



def inpaint_eval_records(ev, n: int, mask: str, order: list[int] | None = None) -> list[int]:
    """The ``n`` held-out records the inpainting evaluation uses with ``mask``: the first ``n`` of
    :func:`eval_order` for the box, the first ``n`` with a usable subject (:func:`subject_records`) otherwise."""
    order = eval_order(ev) if order is None else order
    return order[:n] if mask == "box" else subject_records(ev, order, n)


def subject_records(ev, order: list[int], n: int) -> list[int]:
    """The first ``n`` records of ``order`` whose subject mask covers :data:`SUBJECT_AREA` of the picture."""
    keep = []
    for i in order:
        area = float(inpaint_eval_masks(ev, [i], "subject").mean())
        if SUBJECT_AREA[0] <= area <= SUBJECT_AREA[1]:
            keep.append(i)
            if len(keep) == n:
                break
    return keep


def masked_region_crops(images: Tensor, masks: Tensor) -> Tensor:
    """Each picture's masked region: the bounding box of its mask, grown to the picture's aspect ratio inside
    the picture, cut out and resized (bilinear, antialiased) to the picture's size, [B, 3, H, W]."""
    h, w = images.shape[-2:]
    crops = []
    for img, m in zip(images, masks):
        box = mask_box(m[None], padding=0, multiple=1, aspect=w / h)
        crops.append(torch.nn.functional.interpolate(crop_box(img[None], box), size=(h, w), mode="bilinear",
                                                     antialias=True, align_corners=False))
    return torch.cat(crops).clamp(0, 1)


def evaluate_inpainting(model: LatentDiffusion, enc: ImageEncoder, ev, idx: list[int], batch: int,
                        mask: str = "box", guidance: float | None = None) -> dict:
    """Inpainting U-Net vs. zero-shot latent blend on held-out pictures ``idx`` with the caption as prompt:
    evalenc similarity of the composite to the prompt (outside the mask both equal the input, so the
    difference is the inside), the paired per-picture difference, and the pixel error outside the mask.
    The same similarity on the masked region alone (:func:`masked_region_crops`). Both methods sample at
    ``guidance`` (None: the model's default)."""
    images = ev.images[idx].float() / 255
    n = len(idx)
    masks = inpaint_eval_masks(ev, idx, mask)
    prompts = [ev.captions[i][0] for i in idx]
    txt = model.text_encoder.pooled(prompts).float()
    out: dict = {"mask": mask, "pictures": n, "masked share": round(float(masks.mean()), 4),
                 "guidance": float(model.info.get("default_guidance", 5.0) if guidance is None else guidance)}
    sims, region = {}, {}
    for method in ("model", "blend"):
        comps, outside = [], []
        for i in range(0, n, batch):
            m = masks[i:i + batch]
            res = inpaint(model, images[i:i + batch], m, prompts[i:i + batch], method=method,
                          guidance=guidance, steps=20, seed=20_000 + i, show_progress=False)
            comps.append(res.images)
            outside.append(((res.images - images[i:i + batch]).abs() * (1 - m)).flatten(1).amax(1))
        comp = torch.cat(comps)
        emb = features(enc, comp)
        sims[method] = sim = (emb * txt.cpu()).sum(1)
        region[method] = reg = (features(enc, masked_region_crops(comp, masks)) * txt.cpu()).sum(1)
        out[method] = {"evalenc similarity to the prompt": ci_dict(sim),
                       "evalenc similarity to the prompt, masked region": ci_dict(reg),
                       "max abs error outside the mask": float(torch.cat(outside).max())}
    # same pictures, prompts and seeds for both methods: the paired difference is the sharper test
    out["model − blend (paired, per picture)"] = ci_dict(sims["model"] - sims["blend"])
    out["model − blend, masked region (paired, per picture)"] = ci_dict(region["model"] - region["blend"])
    return out


def seam_report(model: LatentDiffusion, ev, n: int = 48, mask: str = "subject", batch: int = 16) -> dict:
    """Seam error of inpainting composites with every blend :func:`condiff.compositing.blend` offers.

    For the first ``n`` held-out pictures of ``mask`` (:func:`inpaint_eval_records`) the model inpaints once
    per method (``model`` and ``blend``, caption as prompt, 20 DPM++ steps, default guidance, seed 20 000 + i);
    the raw decoded output is put back into the original with plain alpha paste, Laplacian pyramid and
    Poisson blending, each with and without colour matching, and scored by
    :func:`condiff.compositing.seam_error`: the seam the composite *adds*, seam(composite) − seam(original)
    (0 = the border is as smooth as in the untouched picture), bootstrap 95 % CI, and the largest pixel
    change outside the mask (0 = exact).
    """
    idx = inpaint_eval_records(ev, n, mask)
    images = ev.images[idx].float() / 255
    masks = inpaint_eval_masks(ev, idx, mask)
    prompts = [ev.captions[i][0] for i in idx]

    def seams(pictures: Tensor) -> Tensor:
        return torch.tensor([seam_error(pictures[i:i + 1], masks[i:i + 1]) for i in range(len(idx))])

    base = seams(images)
    report: dict = {"mask": mask, "pictures": len(idx), "seam of the original pictures": round(float(base.mean()), 4)}
    for method in ("model", "blend"):
        raw = torch.cat([inpaint(model, images[i:i + batch], masks[i:i + batch], prompts[i:i + batch], method=method,
                                 steps=20, seed=20_000 + i, show_progress=False).extras["raw"].float().cpu()
                         for i in range(0, len(idx), batch)])
        rows = {}
        for how in BLEND_METHODS:
            for colour in (False, True):
                out = blend(images, raw, masks, method=how, color_match=colour)
                ci = bootstrap_ci(seams(out) - base, seed=0)
                rows[how + (" + colour match" if colour else "")] = {
                    "seam added": f"{ci.mean:.4f} [{ci.lo:.4f}, {ci.hi:.4f}]",
                    "max change outside the mask": float(((out - images).abs() * (masks == 0)).amax())}
        report[method] = rows
    return report
