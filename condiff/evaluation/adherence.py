"""Prompt adherence of a text-to-image model, measured with the built-in evaluation encoder (condiff-evalenc).

For held-out captions of a built world (:mod:`condiff.evaluation.world`), condiff-evalenc ranks all
concept prompts for each generated picture (:func:`concept_ranks`); the share of pictures whose
requested concept is in the top 5 is the adherence figure of the built-in models' cards. The same rank
on the real held-out picture the caption describes is the yardstick's own ceiling;
:func:`adherence_by_training_count` splits both by how many training pictures the concept has, and
:func:`paired_adherence` compares two runs over the same prompts (paired bootstrap interval,
:func:`condiff.metrics.bootstrap.paired_bootstrap_ci`). Every mean comes with a bootstrap 95 % interval.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from ..metrics.bootstrap import bootstrap_ci, paired_bootstrap_ci
from ..models.ldm import LatentDiffusion
from ..models.weights import load_state, read_config
from ..nn.image_encoder import ImageEncoder, ImageEncoderConfig
from ..pipelines.text2img import generate

__all__ = ["ci_dict", "load_evalenc", "concept_ranks", "TRAIN_COUNT_BUCKETS", "adherence_by_training_count",
           "features", "generate_many", "eval_order", "adherence_report", "paired_adherence"]


def ci_dict(values: Tensor) -> dict:
    """Mean and bootstrap 95 % interval (seed 0) of ``values``, rounded to 4 places."""
    ci = bootstrap_ci(values.float().cpu(), seed=0)
    return {"mean": round(float(ci.mean), 4), "ci95": [round(float(ci.lo), 4), round(float(ci.hi), 4)]}


def load_evalenc(folder, device) -> ImageEncoder:
    """The evaluation encoder of a component folder (e.g. ``condiff/weights/evalenc``), frozen, in eval mode."""
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
                entry[key] = ci_dict(hit[sel].float())
            elif entry["prompts"] == 1:  # one prompt: a rate, but no interval
                entry[key] = {"mean": float(hit[sel].float()), "ci95": None}
        out[f"{name} training pictures"] = entry
    out["misses"] = {"generated": int((~g_hit).sum()), "real": int((~r_hit).sum()),
                     "both": int((~g_hit & ~r_hit).sum())}
    return out


@torch.no_grad()
def features(enc: ImageEncoder, images: Tensor, batch: int = 500) -> Tensor:
    """evalenc embeddings [N, D] (CPU) of ``images`` [N, 3, H, W] in [0, 1], in batches of ``batch``."""
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


def eval_order(ev) -> list[int]:
    """The evaluate stage's seeded (seed 0) permutation of the held-out records; its first n are "n pictures"."""
    return torch.randperm(len(ev), generator=torch.Generator().manual_seed(0)).tolist()


def adherence_report(model: LatentDiffusion, enc: ImageEncoder, world, *, n: int = 200, offset: int = 0,
                     sampler: str = "dpmpp_2m", steps: int = 20, guidance: float | None = None, batch: int = 25,
                     listing: bool = False) -> dict:
    """Top-5 adherence of ``model`` on ``n`` held-out prompts of ``world`` (after ``offset`` of :func:`eval_order`).

    Prompt ``j`` of the run gets the seed 10 000 + j (:func:`generate_many`), so with ``offset`` the seeds are
    not those a run from the start gives the same prompts. Reported: the overall top-5 rates of the generated
    and the real held-out pictures (equal to the model card's figure for the same ``n``), the rates per
    training-count bucket (:func:`adherence_by_training_count`) with the miss overlap, and with ``listing``
    every prompt's ranks and the generated picture's three best concepts (what :func:`paired_adherence` reads).
    """
    ev = world.eval
    if n < 1 or batch < 1 or steps < 1 or offset < 0:
        raise InputError(f"n, batch and steps must be positive and offset not negative, got {n}, {batch}, {steps}, "
                         f"{offset}")
    if offset + n > len(ev):
        raise InputError(f"offset {offset} + n {n} exceeds the {len(ev)} held-out pictures of the world; lower them")
    gamma = float(model.info.get("default_guidance", 5.0) if guidance is None else guidance)
    with torch.no_grad():
        concept_text = model.text_encoder.pooled([world.concept_prompt(c) for c in world.concepts]).float()
    idx = eval_order(ev)[offset:offset + n]
    truth = ev.concept_id[idx]
    prompts = [ev.captions[i][0] for i in idx]
    real = concept_ranks(enc, ev.images[idx].float() / 255, truth, concept_text)
    images = generate_many(model, prompts, guidance=gamma, sampler=sampler, steps=steps, batch=batch)
    gen = concept_ranks(enc, images, truth, concept_text)
    counts = torch.bincount(world.train.concept_id, minlength=len(world.concepts))[truth]
    rep: dict = {"prompts": n, "offset": offset, "sampler": sampler, "steps": steps, "guidance": gamma,
                 "concepts": len(world.concepts),
                 "adherence top5, generated": round(float((gen < 5).float().mean()), 4),
                 "adherence top5, real held-out pictures": round(float((real < 5).float().mean()), 4),
                 "by training pictures of the concept": adherence_by_training_count(gen, real, counts)}
    if listing:
        device = next(enc.parameters()).device
        with torch.no_grad():
            top = (enc(images.to(device)).float() @ concept_text.to(device).t()).topk(3, dim=1).indices.cpu()
        rep["prompts listed"] = [
            {"prompt": prompts[i], "concept": world.concepts[int(truth[i])], "training pictures": int(counts[i]),
             "rank generated": int(gen[i]), "rank real": int(real[i]),
             "generated top 3": [world.concepts[int(j)] for j in top[i]]} for i in range(n)]
    return rep


def _listed_hits(report: dict, name: str) -> tuple[np.ndarray, list[str]]:
    if "prompts listed" not in report:
        raise InputError(f"{name} has no per-prompt list; measure it with `condiff eval adherence --list`")
    listed = report["prompts listed"]
    return np.array([p["rank generated"] < 5 for p in listed], float), [p["prompt"] for p in listed]


def paired_adherence(a: dict, b: dict, names: tuple[str, str] = ("a", "b")) -> dict:
    """Paired comparison of two :func:`adherence_report` listings over the same prompts: per prompt, whether the
    requested concept is in the top 5 for A and for B; the mean difference with a paired bootstrap 95 %
    interval (10 000 resamples, seed 0), and how many prompts only A and only B get."""
    (x, px), (y, py) = _listed_hits(a, names[0]), _listed_hits(b, names[1])
    if px != py:
        raise InputError(f"{names[0]} and {names[1]} list different prompts; compare runs with the same offset and n")
    ci = paired_bootstrap_ci(x, y, n_resamples=10_000, seed=0)
    return {"a": names[0], "b": names[1], "prompts": len(x), "a top5": round(float(x.mean()), 4),
            "b top5": round(float(y.mean()), 4), "a minus b": round(ci.mean, 4),
            "ci95": [round(ci.lo, 4), round(ci.hi, 4)],
            "prompts only a gets": int(((x == 1) & (y == 0)).sum()),
            "prompts only b gets": int(((x == 0) & (y == 1)).sum())}
