"""Recipes: the cascade's 64×64 base and its SR3 64→128 stage (thesis 3.2.2, eq. 3.10), plus the
stage helpers the unCLIP recipes share.

Stage functions take the job's :class:`~training.context.JobContext` and are time-boxed
and step-capped like the job's own stages (``ctx.minutes[stage]`` overrides :data:`STAGE_DEFAULTS`;
``ctx.small`` runs 3 steps on batches of 4 for a CPU smoke test):

* ``cascade-base`` → component ``cascade-base``: v-loss (eq. 3.10 in v form, see
  :mod:`condiff.models.cascade`) on the world's pictures area-downsampled to 64×64, with caption
  dropout 0.1 for CFG and horizontal flips where the picture allows them.
* ``cascade-sr`` → component ``cascade-sr``: the SR3 pair (area-downsample to 64, bicubic back up to
  128) with **noise-conditioning augmentation**: the upsampled conditioning is noised to a level
  s ~ U(0, 1) per sample and s is given to the network as its class label (Ho et al. 2021). The
  stage trains a **residual** model: the v-loss is on r = k·(hi − u), u the clean bicubic upsample,
  k = :data:`SR_RESIDUAL_SCALE` (see :class:`~condiff.models.cascade.ResidualDenoiser`); the config
  records ``"residual": true, "residual_scale": k``. Warm starting from a full-image (non-residual)
  component of the same architecture is allowed: only the target changes.

Model-card metrics (held-out records): for the base, the evalenc similarity of samples to their
captions next to that of the real pictures; for SR, PSNR of the 128² output against the original
(bicubic as the baseline) and the **consistency error** PSNR(↓SR(x), x) — how closely the SR
output downsamples back to its own input.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from condiff.denoisers import Cond
from condiff.losses import VPredictionLoss
from condiff.models.cascade import (AUG_LABEL_SCALE, CascadeModel, cascade_base_config, cascade_sr_config, downsample,
                               noise_augment, pixel_denoiser, residual_settings, upsample_low_res)
from condiff.models.weights import load_state, read_config
from condiff.nn.unet import UNet, count_parameters
from condiff.schedules import DiscreteSchedule
from condiff.train.loop import TrainConfig, Trainer
from .context import model_card as job_card, text_banks
from .export import export_component
from .latent import pick_context

__all__ = ["StageDefaults", "STAGE_DEFAULTS", "SCHEDULE", "fit_stage", "warm_start", "text_encoder", "load_evalenc",
           "evalenc_embeddings", "BaseObjective", "SRObjective", "SR_RESIDUAL_SCALE", "stage_cascade_base",
           "stage_cascade_sr"]

SCHEDULE = {"name": "cosine", "steps": 1000}

#: k of the residual SR target r = k·(hi − bicubic(area-down(hi))). Measured in the model range
#: [−1, 1] at 128² with factor 2: the residual's pooled std is 0.090 on 6 000 records of the world
#: pack (`condiff data build --from-pack build/world-pack-v1.json.xz --limit 6000`; per-picture
#: median 0.080, 10–90 % 0.051–0.121) and 0.081 on the `--small` world (85 records). k = 8 gives
#: std(r) ≈ 0.65–0.72: unit-ish, as the v-parameterisation's σ_data = 1 assumes, and close to the
#: 0.61 std of the full pictures the non-residual stage was trained on under the same
#: preconditioning (k = 10 would give 0.81–0.90; the residual is heavy-tailed, |r| reaches ≈ 13 on
#: edges at k = 8, so we stay below 1 rather than above).
SR_RESIDUAL_SCALE = 8.0


@dataclass(frozen=True)
class StageDefaults:
    minutes: float
    steps: int
    batch: int
    lr: float


STAGE_DEFAULTS = {
    "cascade-base": StageDefaults(4.0, 40000, 256, 3e-4),
    "cascade-sr": StageDefaults(3.0, 30000, 128, 3e-4),
    "unclip-prior": StageDefaults(1.5, 30000, 1024, 3e-4),
    "unclip-decoder": StageDefaults(3.0, 30000, 256, 2e-4),
}


# ----------------------------------------------------------------------------- shared helpers


def fit_stage(ctx, stage: str, model: nn.Module, objective, data) -> dict[str, Any]:
    """Train ``model`` time-boxed (``ctx.minutes[stage]`` or the default) with EMA; copy the EMA in."""
    d = STAGE_DEFAULTS[stage]
    steps = 3 if ctx.small else d.steps
    cfg = TrainConfig(steps=steps, batch_size=4 if ctx.small else d.batch, lr=d.lr, lr_schedule="cosine",
                      warmup_steps=min(200, steps // 10), min_lr_ratio=0.1, ema_decay=0.9 if ctx.small else 0.999,
                      grad_clip=1.0, seed=0, log_every=1 if ctx.small else 50, checkpoint_minutes=3.0, progress=False)
    trainer = Trainer(model, objective, data, cfg, out_dir=ctx.out / "runs" / stage, device=ctx.device, overwrite=True)
    t0 = time.time()
    result = trainer.fit(time_limit_s=None if ctx.small else 60.0 * ctx.minutes.get(stage, d.minutes))
    if trainer.ema is not None:
        trainer.ema.copy_to(model)
    model.eval()
    info = result.summary(cfg, time.time() - t0)
    print(f"[{stage}] {info['steps']} steps in {info['wall_s']} s, loss {info['final_loss']}", flush=True)
    return info


def warm_start(ctx, component: str, net: nn.Module, *, strict: bool = True) -> list[str]:
    """Load a previously exported component into ``net`` (no-op when absent); returns the missing keys."""
    if not ctx.has(component):
        return []
    state = load_state(ctx.component(component))
    result = net.load_state_dict(state, strict=strict)
    print(f"warm start {type(net).__name__} from {ctx.component(component)}", flush=True)
    return list(result.missing_keys) if not strict else []


def text_encoder(ctx):
    """The frozen MiniLM on the job's device (built once per job)."""
    if "minilm" not in ctx.cache:
        from condiff.nn.text_encoder import MiniLMTextEncoder

        ctx.cache["minilm"] = MiniLMTextEncoder(max_length=24).to(ctx.device)
    return ctx.cache["minilm"]


def load_evalenc(ctx, required: bool = False) -> nn.Module | None:
    """The evaluation encoder trained by the job's ``evalenc`` stage (None when absent, unless required)."""
    if not ctx.has("evalenc"):
        if required:
            raise FileNotFoundError("this stage needs the evaluation encoder (component 'evalenc'); run the job's "
                                    "evalenc stage first or pass --init with it")
        return None
    from condiff.nn.image_encoder import ImageEncoder, ImageEncoderConfig

    folder = ctx.component("evalenc")
    enc = ImageEncoder(ImageEncoderConfig.from_dict(read_config(folder)["network"]))
    enc.load_state_dict(load_state(folder))
    return enc.to(ctx.device).eval().requires_grad_(False)


@torch.no_grad()
def evalenc_embeddings(encoder: nn.Module, images_u8: Tensor, batch: int = 512) -> Tensor:
    """Normalised evalenc embeddings [N, 384] (float32, on the encoder's device) of uint8 pictures."""
    dev = next(encoder.parameters()).device
    out = [encoder(images_u8[i:i + batch].to(dev).float() / 255).float() for i in range(0, len(images_u8), batch)]
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def _to_model_range(images_u8: Tensor, flippable: Tensor | None, g: torch.Generator) -> Tensor:
    x = images_u8.float() / 127.5 - 1
    if flippable is not None:
        flip = (torch.rand(x.shape[0], generator=g, device=g.device).to(x.device) < 0.5) & flippable.to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def _pick_context(ctx_bank: Tensor, empty: Tensor, p_uncond: float, g: torch.Generator) -> Tensor:
    return pick_context(ctx_bank, empty, p_uncond, g)


def _card(ctx, stage: str, info: dict, params: int, metrics: dict, title: str, summary: str) -> dict:

    card = job_card(ctx, stage, info, params, metrics, title, summary)
    card["recipe"] = (f"training.{'cascade' if stage.startswith('cascade') else 'unclip'} stage "
                      f"`{stage}` (batch {info['batch_size']}, AdamW lr {info['lr']}, cosine, EMA 0.999, bf16)")
    return card


# ----------------------------------------------------------------------------- objectives


class BaseObjective:
    """v-loss on 64×64 pictures; batch dict: images uint8 [B, 3, 128, 128], ctx [B, K, L, D], flippable [B]."""

    def __init__(self, denoiser, schedule: DiscreteSchedule, empty_context: Tensor, factor: int = 2,
                 p_uncond: float = 0.1):
        self.loss, self.denoiser, self.empty = VPredictionLoss(schedule), denoiser, empty_context
        self.factor, self.p_uncond = factor, p_uncond

    def __call__(self, model: nn.Module, batch: dict, g: torch.Generator) -> Tensor:
        x0 = downsample(_to_model_range(batch["images"], batch["flippable"], g), self.factor)
        ctx = _pick_context(batch["ctx"], self.empty, self.p_uncond, g)
        return self.loss(self.denoiser, x0, Cond(context=ctx), g)


class SRObjective:
    """SR3 v-loss with noise-conditioning augmentation (eq. 3.10 + Ho et al. 2021); same batch dict.

    Per sample: hi = picture, lo = area-downsample(hi), y = bicubic-upsample(lo), s ~ U(0, 1),
    ỹ = √γ(s) y + √(1−γ(s)) ε′ as ``cond.concat`` and s·1000 as ``cond.class_labels``. The clean
    target is hi, or with ``residual_scale`` k the residual r = k·(hi − y) (the network is then the
    inner denoiser of :class:`~condiff.models.cascade.ResidualDenoiser`).
    """

    def __init__(self, denoiser, schedule: DiscreteSchedule, empty_context: Tensor, factor: int = 2,
                 p_uncond: float = 0.1, residual_scale: float | None = None):
        self.loss, self.denoiser, self.empty = VPredictionLoss(schedule), denoiser, empty_context
        self.factor, self.p_uncond = factor, p_uncond
        if residual_scale is not None:
            residual_settings({"residual": True, "residual_scale": residual_scale})  # validates k
        self.residual_scale = residual_scale

    def __call__(self, model: nn.Module, batch: dict, g: torch.Generator) -> Tensor:
        hi = _to_model_range(batch["images"], batch["flippable"], g)
        up = upsample_low_res(downsample(hi, self.factor), tuple(hi.shape[-2:]))
        level = torch.rand(hi.shape[0], generator=g, device=g.device).to(hi.device)
        eps = torch.randn(up.shape, generator=g, device=g.device).to(hi.device)
        aug = noise_augment(up, level, eps)
        ctx = _pick_context(batch["ctx"], self.empty, self.p_uncond, g)
        cond = Cond(context=ctx, concat=aug, class_labels=level * AUG_LABEL_SCALE)
        target = hi if self.residual_scale is None else self.residual_scale * (hi - up)
        return self.loss(self.denoiser, target, cond, g)


# ----------------------------------------------------------------------------- stages


def _data(ctx, text: dict) -> dict:
    tr = ~ctx.world.is_eval
    return {"images": ctx.world.images[tr].to(ctx.device), "ctx": text["ctx"][tr.to(text["ctx"].device)],
            "flippable": ctx.world.flippable[tr].to(ctx.device)}


def _extra(**kw) -> dict:
    return {"schedule": SCHEDULE, "prediction": "v", "text_encoder": "all-MiniLM-L6-v2", "text_max_length": 24, **kw}


def _eval_prompts(ctx, n: int) -> tuple[list[str], Tensor]:
    ev = ctx.world.eval
    n = min(n, len(ev))
    return [c[0] for c in ev.captions[:n]], ev.images[:n]


@torch.no_grad()
def _base_metrics(ctx, unet: UNet, schedule: DiscreteSchedule) -> dict:
    enc = load_evalenc(ctx)
    if enc is None:
        return {"note": "no evalenc component: sample quality not measured"}
    from condiff.pipelines.cascade import sample_base
    from condiff.pipelines.common import noise_for

    model = CascadeModel(unet, None, text_encoder(ctx), base_schedule=schedule)
    prompts, real = _eval_prompts(ctx, 4 if ctx.small else 64)
    low = sample_base(model, prompts, "", 4.0, 2 if ctx.small else 25, "dpmpp_2m", None, noise_for(0, len(prompts)),
                       False, (64, 64))
    text = text_encoder(ctx).pooled(prompts).float()
    fake = evalenc_embeddings(enc, (upsample_low_res(low, 128).add(1).mul(127.5)).round().clamp(0, 255).to(torch.uint8))
    true = evalenc_embeddings(enc, real)
    return {"evalenc score of samples (100·cos, 25 steps, CFG 4)": round(100 * float((fake * text).sum(1).mean()), 2),
            "evalenc score of the real held-out pictures": round(100 * float((true * text).sum(1).mean()), 2),
            "held-out prompts": len(prompts)}


def _train_cascade_stage(ctx, name: str, cfg, objective_cls, metrics_fn, extra: dict, title: str,
                         summary: str) -> None:
    """Shared body of the two cascade stages: warm start, fit, measure, export."""

    unet = UNet(cfg)
    warm_start(ctx, name, unet)
    schedule = DiscreteSchedule.named(SCHEDULE["name"], SCHEDULE["steps"])
    den = pixel_denoiser(unet, schedule, "v")
    text = text_banks(ctx)
    info = fit_stage(ctx, name, den, objective_cls(den, schedule, text["empty"]), _data(ctx, text))
    metrics = metrics_fn(ctx, unet, schedule)
    ctx.log[name] = {**info, **metrics}
    export_component(unet, ctx.weights / name, kind="unet", network_config=cfg.to_dict(), extra=extra,
                     card=_card(ctx, name, info, count_parameters(unet), metrics, title, summary))


def stage_cascade_base(ctx) -> None:
    _train_cascade_stage(ctx, "cascade-base", cascade_base_config(), BaseObjective, _base_metrics,
                         _extra(image_size=64, default_guidance=4.0, default_steps=25),
                         "Built-in cascade, stage 1: 64×64 pixel text-to-image U-Net",
                         "v-prediction, cosine schedule, MiniLM cross-attention, 10 % caption dropout, EMA "
                         "(thesis 3.2.2; the DeepFloyd IF stage-1 stand-in).")


@torch.no_grad()
def _sr_metrics(ctx, unet: UNet, schedule: DiscreteSchedule, residual_scale: float | None = None) -> dict:
    from condiff.metrics.image import psnr
    from condiff.pipelines.cascade import super_resolve
    from condiff.pipelines.common import noise_for

    model = CascadeModel(None, unet, text_encoder(ctx), sr_schedule=schedule, sr_residual=residual_scale is not None,
                         sr_residual_scale=residual_scale or 1.0)
    prompts, real = _eval_prompts(ctx, 4 if ctx.small else 64)
    hi = real.to(ctx.device).float() / 127.5 - 1
    lo = downsample(hi, 2)
    u = lambda x: (x.float().cpu() + 1) / 2  # noqa: E731
    out = {}
    for level in (0.0, 0.1):
        sr = super_resolve(model, lo, prompts, noise_level=level, steps=2 if ctx.small else 20,
                           noise=noise_for(0, len(prompts)), show_progress=False).clamp(-1, 1)
        out[f"PSNR vs original @ level {level} (dB)"] = round(float(psnr(u(sr), u(hi)).mean()), 2)
        out[f"consistency PSNR(↓SR(x), x) @ level {level} (dB)"] = round(float(psnr(u(downsample(sr, 2)), u(lo)).mean()), 2)
    bicubic = upsample_low_res(lo, 128)
    out["bicubic baseline PSNR vs original (dB)"] = round(float(psnr(u(bicubic), u(hi)).mean()), 2)
    out["bicubic baseline consistency PSNR(↓bicubic(x), x) (dB)"] = round(
        float(psnr(u(downsample(bicubic, 2)), u(lo)).mean()), 2)
    out["held-out pictures"] = len(prompts)
    return out


def stage_cascade_sr(ctx) -> None:
    k = SR_RESIDUAL_SCALE
    _train_cascade_stage(ctx, "cascade-sr", cascade_sr_config(), partial(SRObjective, residual_scale=k),
                         partial(_sr_metrics, residual_scale=k),
                         _extra(image_size=128, low_res_size=64, sr_factor=2, default_noise_level=0.1,
                                augmentation="gamma(s)=cos^2(pi s/2), label s*1000, s~U(0,1) in training",
                                residual=True, residual_scale=k),
                         "Built-in cascade, stage 2: residual SR3 64→128 super-resolution U-Net",
                         f"Diffuses the residual r = {k:g}·(x − bicubic(low-res)) of the 128² image; input: "
                         "noisy r ⊕ noise-augmented bicubic-upsampled 64² image (6 channels), augmentation "
                         "level as a float class label, MiniLM cross-attention at 16² (thesis eq. 3.10, "
                         "Ho et al. 2021; residual SR).")
