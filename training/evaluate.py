"""Measure the built-in latent diffusion models for their model cards.

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

The measurements themselves are :mod:`condiff.evaluation` (the same ones ``condiff eval`` runs); every
mean comes with a bootstrap 95 % interval.
"""

from __future__ import annotations

import time

import torch

from condiff.evaluation.adherence import (adherence_by_training_count, ci_dict, concept_ranks, eval_order, features,
                                          generate_many, load_evalenc)
from condiff.evaluation.inpainting import evaluate_inpainting, inpaint_eval_records
from condiff.metrics.distribution import frechet_distance
from condiff.models.ldm import LatentDiffusion
from condiff.models.weights import load_state, read_config
from condiff.nn.text_encoder import MiniLMTextEncoder
from condiff.nn.unet import UNet, UNetConfig
from condiff.schedules import DiscreteSchedule

from .context import SCHEDULE, JobContext, load_vae, text_banks

__all__ = ["stage_evaluate", "ADHERENCE_GUIDANCE"]

#: guidance scales of the adherence sweep (0 = unconditional; the default is 5; 1, 2.5, 5, 10, 20, 40 is the
#: thesis's Fig. 4.3 sweep)
ADHERENCE_GUIDANCE = (0.0, 1.0, 2.5, 5.0, 7.5, 10.0, 15.0, 20.0, 40.0)


def stage_evaluate(ctx: JobContext, n_prompts: int | None = None, n_fid: int = 2000, batch: int = 500) -> None:
    """``n_prompts`` held-out captions (default ``ctx.eval_prompts``, 200) for adherence and inpainting."""
    n_prompts = n_prompts or ctx.eval_prompts
    small = ctx.small
    if small:
        n_prompts, n_fid, batch = 4, 8, 4
    dev = ctx.device
    t0 = time.time()
    enc = load_evalenc(ctx.component("evalenc"), dev)
    text = text_banks(ctx)
    vae, scale = load_vae(ctx)
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
    report["adherence top5, real held-out images"] = ci_dict((real_ranks < 5).float())
    for gamma in ADHERENCE_GUIDANCE:
        imgs = generate_many(model, prompts, guidance=gamma, sampler="dpmpp_2m", steps=20, batch=batch)
        r = concept_ranks(enc, imgs, truth, ct)
        report[f"adherence top5, generated γ={gamma:g}"] = ci_dict((r < 5).float())
        if gamma == default_gamma:
            counts = torch.bincount(ctx.world.train.concept_id, minlength=len(ctx.world.concepts))[truth]
            report[f"adherence top5 by training pictures of the concept, γ={gamma:g}"] = adherence_by_training_count(
                r, real_ranks, counts)
    # FID-style distances
    f_idx = order[:n_fid]
    real_feats = features(enc, ev.images[f_idx].float() / 255)
    fid_prompts = [ev.captions[i][0] for i in f_idx]
    fid = {}
    for sampler in ("ddim", "heun", "dpmpp_2m"):
        for steps in (10, 20, 50):
            ts = time.time()
            imgs = generate_many(model, fid_prompts, guidance=default_gamma, sampler=sampler, steps=steps, batch=batch)
            fid[f"{sampler}@{steps}"] = {"fd": round(frechet_distance(features(enc, imgs).double(), real_feats.double()), 5),
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
