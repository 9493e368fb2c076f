"""Recipes: the unCLIP prior and decoder (thesis 3.2.1; Ramesh et al. 2022) over a frozen image tower's embeddings.

Both stages need unCLIP's image tower: component ``unclip-embedder`` when the job has it (trained
here or in ``--init``), else the evaluation encoder ``evalenc`` (the job's ``evalenc`` stage). Every
picture of the world is embedded once (normalised 384-d, cached for the job), and the component's
name is written into both exported configs (``image_encoder_component``), so the shipped unCLIP
always loads the tower it was trained on, whatever later happens to ``evalenc`` (which is
retrained to improve the metrics). ``unclip-embedder`` itself is a frozen snapshot of an
``evalenc``, made once by :func:`freeze_unclip_embedder`::

    python -m training.unclip freeze-embedder --weights condiff/weights

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
embedding (same tower) of the decoded picture and the embedding it was conditioned on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor, nn

from condiff.denoisers import Cond
from condiff.losses import TableSigmas, VPredictionLoss, WeightedDenoisingLoss
from condiff.models.cascade import downsample, pixel_denoiser
from condiff.models.unclip import (EMBED_SCALE, EVALENC, IMAGE_ENCODER_KEY, UNCLIP_COMPONENTS, UNCLIP_EMBEDDER,
                              DecoderConfig, PriorConfig, UnCLIPDecoder, UnCLIPModel, UnCLIPPrior)
from condiff.models.weights import load_state, read_config
from condiff.nn.unet import count_parameters
from condiff.schedules import DiscreteSchedule
from .cascade import (SCHEDULE, _card, _pick_context, _to_model_range, evalenc_embeddings, fit_stage, text_encoder,
                      warm_start)
from .context import text_banks
from .export import export_component, snapshot_component, update_component_config

__all__ = ["PriorObjective", "DecoderObjective", "unclip_encoder_component", "load_unclip_encoder", "world_embeddings",
           "stage_unclip_prior", "stage_unclip_decoder", "freeze_unclip_embedder", "main"]


def unclip_encoder_component(ctx) -> str:
    """The image tower unCLIP trains on: ``unclip-embedder`` when the job has it, else ``evalenc``."""
    return UNCLIP_EMBEDDER if ctx.has(UNCLIP_EMBEDDER) else EVALENC


def load_unclip_encoder(ctx) -> nn.Module:
    """unCLIP's image tower (:func:`unclip_encoder_component`) on the job's device, loaded once per job."""
    name = unclip_encoder_component(ctx)
    if ("unclip_encoder", name) not in ctx.cache:
        if not ctx.has(name):
            raise FileNotFoundError(f"the unCLIP stages need an image encoder: component {UNCLIP_EMBEDDER!r} or "
                                    f"{EVALENC!r}; run the job's evalenc stage first or pass --init with one of them")
        from condiff.nn.image_encoder import ImageEncoder, ImageEncoderConfig

        folder = ctx.component(name)
        enc = ImageEncoder(ImageEncoderConfig.from_dict(read_config(folder)["network"]))
        enc.load_state_dict(load_state(folder))
        print(f"unCLIP image encoder: {name} ({folder})", flush=True)
        ctx.cache[("unclip_encoder", name)] = enc.to(ctx.device).eval().requires_grad_(False)
    return ctx.cache[("unclip_encoder", name)]


def world_embeddings(ctx) -> Tensor:
    """unCLIP-tower embeddings [N, 384] of every world picture (computed once per job)."""
    key = ("unclip_emb", unclip_encoder_component(ctx))
    if key not in ctx.cache:
        ctx.cache[key] = evalenc_embeddings(load_unclip_encoder(ctx), ctx.world.images)
    return ctx.cache[key]


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


def _extra(ctx, prediction: str, **kw) -> dict:
    encoder = unclip_encoder_component(ctx)
    return {"schedule": SCHEDULE, "prediction": prediction, "embedding": f"{encoder} (normalised, ×√384 inside)",
            IMAGE_ENCODER_KEY: encoder, "text_encoder": "all-MiniLM-L6-v2", "text_max_length": 24, **kw}


@torch.no_grad()
def _prior_metrics(ctx, prior: UnCLIPPrior, schedule: DiscreteSchedule, emb: Tensor) -> dict:
    from condiff.pipelines.common import noise_for
    from condiff.pipelines.unclip import sample_embeddings

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
                     extra=_extra(ctx, "x0", default_guidance=2.0, default_steps=25),
                     card=_card(ctx, "unclip-prior", info, count_parameters(prior), metrics,
                                f"Built-in unCLIP prior: caption → {unclip_encoder_component(ctx)} image embedding",
                                "Transformer over [caption tokens, pooled caption, timestep, noisy embedding]; "
                                "x0-prediction, MSE, 10 % text dropout (DALL-E 2's diffusion prior)."))


@torch.no_grad()
def _decoder_metrics(ctx, decoder: UnCLIPDecoder, schedule: DiscreteSchedule, emb: Tensor) -> dict:
    from condiff.pipelines.common import noise_for
    from condiff.pipelines.unclip import decode

    enc, name = load_unclip_encoder(ctx), unclip_encoder_component(ctx)
    ev = ctx.world.is_eval.nonzero().squeeze(1)[: 4 if ctx.small else 64]
    model = UnCLIPModel(None, decoder, text_encoder(ctx), image_encoder=enc, decoder_schedule=schedule)
    cond = emb[ev.to(emb.device)].to(ctx.device)
    _, low = decode(model, cond, [""] * len(ev), guidance=3.0, steps=2 if ctx.small else 25,
                    noise=noise_for(0, len(ev)), show_progress=False)
    got = model.encode_images(((low.clamp(-1, 1) + 1) / 2).float())
    return {f"cos({name}(decoded), conditioning embedding) (CFG 3, no caption)": round(float((got * cond).sum(1).mean()), 4),
            "baseline cos(another picture's embedding, conditioning)": round(float((cond.roll(1, 0) * cond).sum(1).mean()), 4),
            "held-out embeddings": len(ev)}


def stage_unclip_decoder(ctx) -> None:

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
                     extra=_extra(ctx, "v", image_size=64, default_guidance=3.0, default_steps=25),
                     card=_card(ctx, "unclip-decoder", info, count_parameters(decoder), metrics,
                                f"Built-in unCLIP decoder: {unclip_encoder_component(ctx)} embedding → 64×64 picture",
                                "Pixel U-Net; embedding added to the timestep embedding and as 4 extra "
                                "cross-attention tokens; 10 % null embedding, 50 % empty caption; upsampled to "
                                "128² by the cascade's SR stage (DALL-E 2's decoder + upsampler)."))


# ----------------------------------------------------------------------------- unCLIP's own image tower


def freeze_unclip_embedder(weights: str | Path, source: str = EVALENC, *, point_unclip: bool = True) -> Path:
    """Snapshot ``weights/<source>`` (byte-identical shards + config.json) as ``weights/unclip-embedder``
    with its own model card, and name it in the unCLIP configs found there (``image_encoder_component``).

    Only valid while ``source`` is the tower those unCLIP components were trained on: run it before
    retraining ``evalenc``, never after.
    """
    import json

    weights = Path(weights)
    src, dst = weights / source, weights / UNCLIP_EMBEDDER
    src_card = json.loads((src / "card.json").read_text())["card"]
    files = read_config(src)["files"]
    trained = src_card.get("trained", "unknown date")
    digests = ", ".join(f"`{name}` sha256 `{digest}`" for name, digest in files.items())
    users = [c for c in UNCLIP_COMPONENTS.values() if (weights / c / "config.json").exists()]
    card = {
        **{k: v for k, v in src_card.items() if k not in ("title", "summary")},
        "title": f"unclip-embedder: unCLIP's image tower (frozen condiff-evalenc of {trained})",
        "summary": (f"The image tower that unCLIP's prior and decoder (components `unclip-prior`, `unclip-decoder`) "
                    f"were trained on: a frozen snapshot of condiff-evalenc (component `{source}`) of {trained}, "
                    f"byte-identical to it ({digests}). unCLIP loads the image encoder its configs name "
                    f"(`{IMAGE_ENCODER_KEY}`), so retraining `evalenc`, the evaluation encoder behind every "
                    "built-in metric, does not move unCLIP's embedding space. Do not retrain this component in "
                    "place: a new tower needs a new unCLIP prior and decoder trained on it. The fields and "
                    f"metrics below are those of the `{source}` training run that produced these weights."),
    }
    snapshot_component(src, dst, card)
    if point_unclip:
        for name in users:
            update_component_config(
                weights / name, {IMAGE_ENCODER_KEY: UNCLIP_EMBEDDER,
                                 "embedding": f"{UNCLIP_EMBEDDER} (normalised, ×√384 inside)"},
                note=f"Image tower: component `{UNCLIP_EMBEDDER}` (config key `{IMAGE_ENCODER_KEY}`), the frozen "
                     f"condiff-evalenc of {trained} this model was trained on.")
    print(f"{src} -> {dst}" + (f"; {', '.join(users)} now name it" if point_unclip and users else ""))
    return dst


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="unCLIP maintenance (the stages run through training.job).")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("freeze-embedder", help=freeze_unclip_embedder.__doc__.split("\n")[0])
    f.add_argument("--weights", required=True, help="A weights folder (e.g. condiff/weights).")
    f.add_argument("--source", default=EVALENC, help="The component to snapshot (default: evalenc).")
    f.add_argument("--no-point-unclip", action="store_true", help="Leave the unCLIP configs unchanged.")
    a = p.parse_args(argv)
    freeze_unclip_embedder(a.weights, a.source, point_unclip=not a.no_point_unclip)


if __name__ == "__main__":
    main()
