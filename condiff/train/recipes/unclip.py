"""Recipes: the unCLIP prior and decoder (thesis 3.2.1; Ramesh et al. 2022) over condiff-evalenc embeddings.

Both stages need the evaluation encoder (component ``evalenc``, the job's ``evalenc`` stage): every
picture of the world is embedded once (normalised 384-d, cached for the job).

* ``unclip-prior`` → component ``unclip-prior``: x0-prediction with a plain MSE (DALL-E 2's prior
  loss, λ(σ) = 1 in :class:`~condiff.losses.WeightedDenoisingLoss`) of the embedding scaled by √384,
  given one caption variant's tokens and pooled embedding; both replaced by the empty prompt's
  with probability 0.1 (CFG on the text).
* ``unclip-decoder`` → component ``unclip-decoder``: v-loss on the 64×64 picture given its
  embedding (→ null embedding with probability 0.1) and a caption's tokens (→ empty prompt with
  probability 0.5, so variations work from the embedding alone). Warm-started from the
  ``cascade-base`` U-Net when that exists (same architecture; the new embedding projection starts
  at zero, so training starts from a working text-to-image model).

Model-card metrics on held-out records: for the prior, the cosine between the sampled embedding
and the picture's true embedding, next to two baselines (the caption's own MiniLM embedding used
as the image embedding, and another picture's embedding); for the decoder, the cosine between the
evalenc embedding of the decoded picture and the embedding it was conditioned on.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...denoisers import Cond
from ...losses import TableSigmas, VPredictionLoss, WeightedDenoisingLoss
from ...models.cascade import downsample, pixel_denoiser
from ...models.unclip import EMBED_SCALE, DecoderConfig, PriorConfig, UnCLIPDecoder, UnCLIPModel, UnCLIPPrior
from ...nn.unet import count_parameters
from ...schedules import DiscreteSchedule
from .cascade import (SCHEDULE, _card, _pick_context, _to_model_range, evalenc_embeddings, fit_stage, load_evalenc,
                      text_encoder, warm_start)
from .export import export_component

__all__ = ["PriorObjective", "DecoderObjective", "world_embeddings", "stage_unclip_prior", "stage_unclip_decoder"]


def world_embeddings(ctx) -> Tensor:
    """evalenc embeddings [N, 384] of every world picture (computed once per job)."""
    if "evalenc_emb" not in ctx.cache:
        ctx.cache["evalenc_emb"] = evalenc_embeddings(load_evalenc(ctx, required=True), ctx.world.images)
    return ctx.cache["evalenc_emb"]


class PriorObjective:
    """Batch dict: emb [B, 384] (normalised), ctx [B, K, L, D] caption tokens, pooled [B, K, D]."""

    def __init__(self, denoiser, schedule: DiscreteSchedule, empty_context: Tensor, empty_pooled: Tensor,
                 p_uncond: float = 0.1):
        self.loss = WeightedDenoisingLoss(TableSigmas(schedule.sigmas), "unit")
        self.denoiser, self.p_uncond = denoiser, p_uncond
        self.empty, self.empty_pooled = empty_context, empty_pooled

    def __call__(self, model: nn.Module, batch: dict, g: torch.Generator) -> Tensor:
        b, k = batch["ctx"].shape[:2]
        dev = batch["emb"].device
        variant = torch.randint(0, k, (b,), generator=g, device=g.device).to(dev)
        rows = torch.arange(b, device=dev)
        ctx, pooled = batch["ctx"][rows, variant].float(), batch["pooled"][rows, variant].float()
        drop = (torch.rand(b, generator=g, device=g.device) < self.p_uncond).to(dev)
        ctx = torch.where(drop[:, None, None], self.empty.to(ctx).expand_as(ctx), ctx)
        pooled = torch.where(drop[:, None], self.empty_pooled.to(pooled).expand_as(pooled), pooled)
        return self.loss(self.denoiser, batch["emb"].float() * EMBED_SCALE, Cond(context=ctx, class_labels=pooled), g)


class DecoderObjective:
    """Batch dict: images uint8 [B, 3, 128, 128], emb [B, 384], ctx [B, K, L, D]; v-loss at 64×64."""

    def __init__(self, denoiser, schedule: DiscreteSchedule, empty_context: Tensor, *, factor: int = 2,
                 p_drop_embedding: float = 0.1, p_drop_text: float = 0.5):
        self.loss, self.denoiser, self.empty = VPredictionLoss(schedule), denoiser, empty_context
        self.factor, self.p_emb, self.p_text = factor, p_drop_embedding, p_drop_text

    def __call__(self, model: nn.Module, batch: dict, g: torch.Generator) -> Tensor:
        x0 = downsample(_to_model_range(batch["images"], None, g), self.factor)
        emb = batch["emb"].float() * EMBED_SCALE
        keep = (torch.rand(emb.shape[0], generator=g, device=g.device) >= self.p_emb).to(emb.device)
        emb = emb * keep[:, None].to(emb.dtype)  # dropped -> the null (zero) embedding
        ctx = _pick_context(batch["ctx"], self.empty, self.p_text, g)
        return self.loss(self.denoiser, x0, Cond(context=ctx, class_labels=emb), g)


def _split(ctx, text: dict) -> tuple[Tensor, Tensor]:
    tr = ~ctx.world.is_eval
    return tr, tr.to(text["ctx"].device)


def _extra(prediction: str, **kw) -> dict:
    return {"schedule": SCHEDULE, "prediction": prediction, "embedding": "condiff-evalenc (normalised, ×√384 inside)",
            "text_encoder": "all-MiniLM-L6-v2", "text_max_length": 24, **kw}


@torch.no_grad()
def _prior_metrics(ctx, prior: UnCLIPPrior, schedule: DiscreteSchedule, emb: Tensor) -> dict:
    from ...pipelines.common import noise_for
    from ...pipelines.unclip import sample_embeddings

    ev = ctx.world.is_eval.nonzero().squeeze(1)[: 4 if ctx.small else 128]
    prompts = [ctx.world.captions[i][0] for i in ev.tolist()]
    model = UnCLIPModel(prior, None, text_encoder(ctx), prior_schedule=schedule)
    sampled = sample_embeddings(model, prompts, guidance=2.0, steps=2 if ctx.small else 25,
                                noise=noise_for(0, len(prompts)), show_progress=False)
    true = emb[ev.to(emb.device)].to(sampled.device)
    text = text_encoder(ctx).pooled(prompts).float().to(true.device)
    other = true.roll(1, 0)
    return {"cos(prior sample, true image embedding)": round(float((sampled * true).sum(1).mean()), 4),
            "baseline cos(caption embedding, true image embedding)": round(float((text * true).sum(1).mean()), 4),
            "baseline cos(another picture's embedding, true)": round(float((other * true).sum(1).mean()), 4),
            "held-out captions": len(prompts)}


def stage_unclip_prior(ctx) -> None:
    from .job import text_banks

    emb = world_embeddings(ctx)
    text = text_banks(ctx)
    empty_pooled = text_encoder(ctx).pooled([""]).float()
    cfg = PriorConfig()
    prior = UnCLIPPrior(cfg)
    warm_start(ctx, "unclip-prior", prior)
    schedule = DiscreteSchedule.named(SCHEDULE["name"], SCHEDULE["steps"])
    den = pixel_denoiser(prior, schedule, "x0")
    tr, trt = _split(ctx, text)
    data = {"emb": emb[tr.to(emb.device)], "ctx": text["ctx"][trt], "pooled": text["pooled"][trt]}
    info = fit_stage(ctx, "unclip-prior", den, PriorObjective(den, schedule, text["empty"], empty_pooled), data)
    metrics = _prior_metrics(ctx, prior, schedule, emb)
    ctx.log["unclip-prior"] = {**info, **metrics}
    export_component(prior, ctx.weights / "unclip-prior", kind="unclip-prior", network_config=cfg.to_dict(),
                     extra=_extra("x0", default_guidance=2.0, default_steps=25),
                     card=_card(ctx, "unclip-prior", info, count_parameters(prior), metrics,
                                "Built-in unCLIP prior: caption → condiff-evalenc image embedding",
                                "Transformer over [caption tokens, pooled caption, timestep, noisy embedding]; "
                                "x0-prediction, MSE, 10 % text dropout (DALL-E 2's diffusion prior)."))


@torch.no_grad()
def _decoder_metrics(ctx, decoder: UnCLIPDecoder, schedule: DiscreteSchedule, emb: Tensor) -> dict:
    from ...pipelines.common import noise_for
    from ...pipelines.unclip import decode

    enc = load_evalenc(ctx, required=True)
    ev = ctx.world.is_eval.nonzero().squeeze(1)[: 4 if ctx.small else 64]
    model = UnCLIPModel(None, decoder, text_encoder(ctx), image_encoder=enc, decoder_schedule=schedule)
    cond = emb[ev.to(emb.device)].to(ctx.device)
    _, low = decode(model, cond, [""] * len(ev), guidance=3.0, steps=2 if ctx.small else 25,
                    noise=noise_for(0, len(ev)), show_progress=False)
    got = model.encode_images(((low.clamp(-1, 1) + 1) / 2).float())
    return {"cos(evalenc(decoded), conditioning embedding) (CFG 3, no caption)": round(float((got * cond).sum(1).mean()), 4),
            "baseline cos(another picture's embedding, conditioning)": round(float((cond.roll(1, 0) * cond).sum(1).mean()), 4),
            "held-out embeddings": len(ev)}


def stage_unclip_decoder(ctx) -> None:
    from .job import text_banks

    emb = world_embeddings(ctx)
    text = text_banks(ctx)
    cfg = DecoderConfig()
    decoder = UnCLIPDecoder(cfg)
    if ctx.has("unclip-decoder"):
        warm_start(ctx, "unclip-decoder", decoder)
    elif ctx.has("cascade-base"):
        missing = warm_start(ctx, "cascade-base", decoder.unet, strict=False)
        if any(not k.startswith("class_embedding.") for k in missing):
            raise ValueError(f"cascade-base does not fit the decoder U-Net (missing {missing[:5]})")
        nn.init.zeros_(decoder.unet.class_embedding.linear_2.weight)
        nn.init.zeros_(decoder.unet.class_embedding.linear_2.bias)
    schedule = DiscreteSchedule.named(SCHEDULE["name"], SCHEDULE["steps"])
    den = pixel_denoiser(decoder, schedule, "v")
    tr, trt = _split(ctx, text)
    data = {"images": ctx.world.images[tr].to(ctx.device), "emb": emb[tr.to(emb.device)], "ctx": text["ctx"][trt]}
    info = fit_stage(ctx, "unclip-decoder", den, DecoderObjective(den, schedule, text["empty"]), data)
    metrics = _decoder_metrics(ctx, decoder, schedule, emb)
    ctx.log["unclip-decoder"] = {**info, **metrics}
    export_component(decoder, ctx.weights / "unclip-decoder", kind="unclip-decoder", network_config=cfg.to_dict(),
                     extra=_extra("v", image_size=64, default_guidance=3.0, default_steps=25),
                     card=_card(ctx, "unclip-decoder", info, count_parameters(decoder), metrics,
                                "Built-in unCLIP decoder: condiff-evalenc embedding → 64×64 picture",
                                "Pixel U-Net; embedding added to the timestep embedding and as 4 extra "
                                "cross-attention tokens; 10 % null embedding, 50 % empty caption; upsampled to "
                                "128² by the cascade's SR stage (DALL-E 2's decoder + upsampler)."))
