"""Measure the built-in latent diffusion models for their model cards (issue bars of the built-in LDM).

* **Prompt adherence**: for ``n_prompts`` held-out captions, the evaluation encoder
  (condiff-evalenc) ranks all concept prompts for each generated image; the share of images whose
  requested concept is in the top 5, over a guidance sweep (:data:`ADHERENCE_GUIDANCE`, γ = 0 and the
  default 5 included), against the same figure on the real held-out pictures.
* **Where adherence fails**: the same top-5 figure split by how many training pictures the requested
  concept has (:func:`adherence_by_training_count`), for generated and real pictures, and how many of
  the generated misses the encoder also makes on the real picture.
* **FID-style distance**: Fréchet distance between condiff-evalenc features of ``n_fid`` generated
  and ``n_fid`` real held-out images, for DDIM, Heun and DPM-Solver++(2M) at 10, 20 and 50 steps.
* **Inpainting**: on held-out pictures, evalenc similarity of the composite to the caption (inside
  the mask the only thing that differs) for the inpainting U-Net vs. the zero-shot latent-blend
  baseline (and their paired difference on the same pictures, prompts and seeds), and the pixel error
  outside the mask after compositing (must be 0). Also measured on the masked region alone (its
  bounding box, grown to the picture's aspect, cut out and resized to the encoder's input,
  :func:`masked_region_crops`), where the unchanged context no longer dilutes the difference. Two masks
  (:func:`inpaint_eval_masks`): the centre box, which mostly leaves the subject in the context, and the
  picture's own subject (dilated), where the inside has to carry the prompt.

Every mean comes with a bootstrap 95 % interval.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from ...compositing import crop_box, mask_box
from ...metrics.bootstrap import bootstrap_ci
from ...metrics.distribution import frechet_distance
from ...models.ldm import LatentDiffusion
from ...models.weights import load_state, read_config
from ...nn.image_encoder import ImageEncoder, ImageEncoderConfig
from ...nn.text_encoder import MiniLMTextEncoder
from ...nn.unet import UNet, UNetConfig
from ...pipelines.inpaint import inpaint
from ...pipelines.text2img import generate
from ...schedules import DiscreteSchedule
from .latent import subject_masks

__all__ = ["stage_evaluate", "concept_ranks", "load_evalenc", "ADHERENCE_GUIDANCE", "evaluate_inpainting",
           "inpaint_eval_masks", "inpaint_eval_records", "eval_order", "subject_records", "INPAINT_MASKS",
           "generate_many", "adherence_by_training_count", "TRAIN_COUNT_BUCKETS", "masked_region_crops"]

#: guidance scales of the adherence sweep (0 = unconditional; the default is 5; 1, 2.5, 5, 10, 20, 40 is the
#: thesis's Fig. 4.3 sweep)
ADHERENCE_GUIDANCE = (0.0, 1.0, 2.5, 5.0, 7.5, 10.0, 15.0, 20.0, 40.0)


def _ci(values: Tensor) -> dict:
    ci = bootstrap_ci(values.float().cpu(), seed=0)
    return {"mean": round(float(ci.mean), 4), "ci95": [round(float(ci.lo), 4), round(float(ci.hi), 4)]}


def load_evalenc(folder, device) -> ImageEncoder:
    conf = read_config(folder)
    enc = ImageEncoder(ImageEncoderConfig.from_dict(conf["network"]))
    enc.load_state_dict(load_state(folder))
    return enc.to(device).eval().requires_grad_(False)


@torch.no_grad()
def concept_ranks(enc: ImageEncoder, images: Tensor, concept_ids: Tensor, concept_text: Tensor, batch: int = 500) -> Tensor:
    """Rank (0 = best) of the true concept among all concept prompts, per image ([0, 1] images)."""
    device = next(enc.parameters()).device
    ranks = []
    ct = concept_text.to(device).float()
    for i in range(0, len(images), batch):
        emb = enc(images[i:i + batch].to(device).float()).float()
        sims = emb @ ct.t()
        truth = concept_ids[i:i + batch].to(device)
        own = sims.gather(1, truth[:, None])
        ranks.append((sims > own).sum(1).cpu())
    return torch.cat(ranks)


#: buckets of :func:`adherence_by_training_count`: (least, most) training pictures of the concept; None = no limit
TRAIN_COUNT_BUCKETS = ((0, 0), (1, 2), (3, 5), (6, 10), (11, None))


def adherence_by_training_count(generated_ranks: Tensor, real_ranks: Tensor, train_counts: Tensor,
                                buckets=TRAIN_COUNT_BUCKETS, top: int = 5) -> dict:
    """Top-``top`` adherence of generated and real pictures per bucket of the concept's training-picture count.

    ``generated_ranks``/``real_ranks`` [N]: rank of the requested concept (0 = best, :func:`concept_ranks`)
    for the generated picture of each prompt and for the real held-out picture the prompt describes;
    ``train_counts`` [N]: how many training pictures that concept has. Each bucket reports its prompt
    count and both hit rates with bootstrap 95 % intervals (one prompt: no interval; none: the count alone).
    ``"misses"`` counts generated misses, real misses and both: a generated miss that the encoder
    also makes on the real picture is the yardstick's limit rather than the generator's.
    """
    g, r, c = (torch.as_tensor(t) for t in (generated_ranks, real_ranks, train_counts))
    if not g.shape == r.shape == c.shape or g.ndim != 1:
        raise ValueError(f"ranks and counts must be equal-length 1-D tensors, got {tuple(g.shape)}, "
                         f"{tuple(r.shape)}, {tuple(c.shape)}")
    g_hit, r_hit = g < top, r < top
    out: dict = {}
    for lo, hi in buckets:
        sel = (c >= lo) if hi is None else (c >= lo) & (c <= hi)
        name = f"{lo}" if hi == lo else f"{lo}+" if hi is None else f"{lo}-{hi}"
        entry: dict = {"prompts": int(sel.sum())}
        for key, hit in (("generated", g_hit), ("real", r_hit)):
            if entry["prompts"] >= 2:
                entry[key] = _ci(hit[sel].float())
            elif entry["prompts"] == 1:  # one prompt: a rate, but no interval
                entry[key] = {"mean": float(hit[sel].float()), "ci95": None}
        out[f"{name} training pictures"] = entry
    out["misses"] = {"generated": int((~g_hit).sum()), "real": int((~r_hit).sum()),
                     "both": int((~g_hit & ~r_hit).sum())}
    return out


@torch.no_grad()
def _features(enc: ImageEncoder, images: Tensor, batch: int = 500) -> Tensor:
    device = next(enc.parameters()).device
    return torch.cat([enc(images[i:i + batch].to(device).float()).float().cpu() for i in range(0, len(images), batch)])


def generate_many(model: LatentDiffusion, prompts: list[str], *, guidance: float, sampler: str, steps: int,
                  batch: int) -> Tensor:
    """Text-to-image for many prompts in batches of ``batch``; prompt ``j`` gets the seed ``10_000 + j``, so the
    pictures do not depend on ``batch``. Returns [N, 3, H, W] in [0, 1]."""
    out = []
    for i in range(0, len(prompts), batch):
        res = generate(model, prompts[i:i + batch], guidance=guidance, sampler=sampler, steps=steps, seed=10_000 + i,
                       show_progress=False)
        out.append(res.images)
    return torch.cat(out)


def stage_evaluate(ctx, n_prompts: int | None = None, n_fid: int = 2000, batch: int = 500) -> None:
    """``n_prompts`` held-out captions (default ``ctx.eval_prompts``, 200) for adherence and inpainting."""
    from .job import SCHEDULE, _load_vae, text_banks

    n_prompts = n_prompts or ctx.eval_prompts
    small = ctx.small
    if small:
        n_prompts, n_fid, batch = 4, 8, 4
    dev = ctx.device
    t0 = time.time()
    enc = load_evalenc(ctx.component("evalenc"), dev)
    text = text_banks(ctx)
    vae, scale = _load_vae(ctx)
    schedule = DiscreteSchedule.named(SCHEDULE["name"], SCHEDULE["steps"])

    def unet_of(name: str) -> UNet:
        folder = ctx.component(name)
        u = UNet(UNetConfig.from_dict(read_config(folder)["network"]))
        u.load_state_dict(load_state(folder))
        return u.to(dev).eval().requires_grad_(False)

    inp = unet_of("ldm-inpaint") if ctx.has("ldm-inpaint") else None
    default_gamma = float(read_config(ctx.component("ldm")).get("default_guidance", 5.0))
    model = LatentDiffusion("builtin", unet_of("ldm"), vae, MiniLMTextEncoder(max_length=24).to(dev), schedule,
                            scaling_factor=scale, image_size=128, inpaint_unet=inp,
                            info={"default_guidance": default_gamma})
    ev = ctx.world.eval
    order = eval_order(ev)
    p_idx = order[:n_prompts]
    prompts = [ev.captions[i][0] for i in p_idx]
    truth = ev.concept_id[p_idx]
    ct = text["concept_text"]
    report: dict = {"evaluation_encoder": "condiff-evalenc (LiT vs. MiniLM)", "n_prompts": len(prompts),
                    "concepts": len(ctx.world.concepts)}
    real_ranks = concept_ranks(enc, ev.images[p_idx].float() / 255, truth, ct)
    report["adherence top5, real held-out images"] = _ci((real_ranks < 5).float())
    for gamma in ADHERENCE_GUIDANCE:
        imgs = generate_many(model, prompts, guidance=gamma, sampler="dpmpp_2m", steps=20, batch=batch)
        r = concept_ranks(enc, imgs, truth, ct)
        report[f"adherence top5, generated γ={gamma:g}"] = _ci((r < 5).float())
        if gamma == default_gamma:
            counts = torch.bincount(ctx.world.train.concept_id, minlength=len(ctx.world.concepts))[truth]
            report[f"adherence top5 by training pictures of the concept, γ={gamma:g}"] = adherence_by_training_count(
                r, real_ranks, counts)
    # FID-style distances
    f_idx = order[:n_fid]
    real_feats = _features(enc, ev.images[f_idx].float() / 255)
    fid_prompts = [ev.captions[i][0] for i in f_idx]
    fid = {}
    for sampler in ("ddim", "heun", "dpmpp_2m"):
        for steps in (10, 20, 50):
            ts = time.time()
            imgs = generate_many(model, fid_prompts, guidance=default_gamma, sampler=sampler, steps=steps, batch=batch)
            fid[f"{sampler}@{steps}"] = {"fd": round(frechet_distance(_features(enc, imgs).double(), real_feats.double()), 5),
                                         "seconds": round(time.time() - ts, 1)}
    half = len(real_feats) // 2
    fid["real-vs-real (two halves)"] = {"fd": round(frechet_distance(real_feats[:half].double(), real_feats[half:].double()), 5)}
    report["fid_style"] = fid
    if inp is not None:
        for key, mask in (("inpainting", "box"), ("inpainting, subject mask", "subject")):
            report[key] = evaluate_inpainting(model, enc, ev, inpaint_eval_records(ev, n_prompts, mask, order), batch,
                                              mask)
    report["seconds"] = round(time.time() - t0, 1)
    ctx.log["evaluate"] = report
    print("[evaluate]", report, flush=True)


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


def eval_order(ev) -> list[int]:
    """The evaluate stage's seeded (seed 0) permutation of the held-out records; its first n are "n pictures"."""
    return torch.randperm(len(ev), generator=torch.Generator().manual_seed(0)).tolist()


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
        emb = _features(enc, comp)
        sims[method] = sim = (emb * txt.cpu()).sum(1)
        region[method] = reg = (_features(enc, masked_region_crops(comp, masks)) * txt.cpu()).sum(1)
        out[method] = {"evalenc similarity to the prompt": _ci(sim),
                       "evalenc similarity to the prompt, masked region": _ci(reg),
                       "max abs error outside the mask": float(torch.cat(outside).max())}
    # same pictures, prompts and seeds for both methods: the paired difference is the sharper test
    out["model − blend (paired, per picture)"] = _ci(sims["model"] - sims["blend"])
    out["model − blend, masked region (paired, per picture)"] = _ci(region["model"] - region["blend"])
    return out
