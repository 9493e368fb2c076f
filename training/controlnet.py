"""Recipe: the six built-in ControlNets (thesis §3.1.3, Fig. 3.3; experiment 1, §4.2.4).

Training (Zhang et al. 2023, §3.2–3.3):

* the base latent U-Net ``ldm`` is **locked** (frozen, never in the optimiser); the ControlNet is
  a trainable copy of its encoder and middle block whose outputs enter the locked decoder through
  zero-initialised 1×1 convolutions (:meth:`condiff.nn.controlnet.ControlNet.from_unet`), so step 0
  equals the base model;
* the objective is the ε-loss L_simple (thesis eq. 2.13, :class:`condiff.losses.DDPMEpsLoss`)
  through a :class:`~condiff.denoisers.NetworkDenoiser` built on the
  :class:`~condiff.nn.controlnet.ControlledUNet` — the same denoiser the pipeline samples with;
* **50 % caption dropout**: the ControlNet paper replaces half of the prompts by the empty string
  so the network must read the condition image itself ("prompt dropping"); the text-to-image
  U-Net used 10 %. Both branches of classifier-free guidance then see the control;
* the condition of each record is made from the world's arrays exactly as the preprocessor makes
  it at inference (:func:`condiff.data.conditions.condition_maps`: Canny and soft edges from the
  picture, normals from the stored depth, line art and depth stored, pose rendered OpenPose-style
  from the exact keypoints). The pose ControlNet trains on the procedural-figure records only
  (the others carry no body pose).

Evaluation (:func:`condiff.evaluation.control.evaluate_adherence`): generate from held-out conditions with and without the
ControlNet (same prompts and seeds), run each output back through the *same preprocessor*, and
compare with the condition — edge F1 for canny/lineart/softedge, scale-and-shift-invariant AbsRel
for depth, mean angular error for normals, PCK@0.1 and keypoint distance for pose. The
unconditioned model is the baseline; the held-out pictures themselves, run through the
preprocessor, give the reachable ceiling ("reference").

Shipping: the weights are exported int8 with per-output-channel scales
(:func:`condiff.models.weights.quantize_int8`, ≈ 5.2 MB for the 5.1 M-parameter ControlNet of
the built-in U-Net, whose contracting path it copies; a deeper decoder does not change it), and the
card's metrics are measured with those shipped weights.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor, nn

from condiff.data.conditions import CONDITIONS, check_condition_names
from condiff.denoisers import Cond, DiscreteTime, NetworkDenoiser
from condiff.losses import DDPMEpsLoss
from condiff.models.ldm import LatentDiffusion
from condiff.nn.controlnet import ControlledUNet, ControlNet
from condiff.nn.unet import UNet, UNetConfig, count_parameters
from condiff.models.weights import dequantize_int8, quantize_int8, save_weights
from condiff.evaluation.control import PRIMARY, condition_bank, evaluate_adherence, records_for
from condiff.pipelines.control import controlnet_component
from condiff.schedules import DiscreteSchedule
from condiff.train.loop import TrainConfig, Trainer
from .context import SCHEDULE, JobContext, latent_bank, model_card, text_banks
from .latent import pick_context, sample_latents


__all__ = ["P_UNCOND", "embedding_channels", "controlnet_for", "ControlNetObjective", "stage_controlnet",
           "stage_functions"]

P_UNCOND = 0.5  # ControlNet paper: 50 % of the prompts replaced by "" during training
DEFAULT_MINUTES = 3.0
DEFAULT_STEPS = 20000
BATCH = 128
LR = 1e-4
EVAL_RECORDS = 64
MAX_TRAIN_RECORDS = 8000


# ============================================================================ model and data


def embedding_channels(downsampling: int) -> tuple[int, ...]:
    """Condition-encoder widths for a condition image ``downsampling``× the latent size:
    16, 32, 64, … with one stride-2 step per factor 2 ((16, 32, 64) for the built-in f=4 model)."""
    if downsampling < 1 or downsampling & (downsampling - 1):
        raise ValueError(f"the condition image must be a power-of-two multiple of the latent size, got ×{downsampling}")
    return tuple(16 * 2**i for i in range(int(math.log2(downsampling)) + 1))


def controlnet_for(unet: UNet, downsampling: int, conditioning_channels: int = 3) -> ControlNet:
    """A fresh ControlNet for ``unet`` (exact encoder copy, zero convolutions; Zhang et al. 2023)."""
    return ControlNet.from_unet(unet, conditioning_channels=conditioning_channels,
                                conditioning_embedding_out_channels=embedding_channels(downsampling))


class ControlNetObjective:
    """ε-loss through the ControlledUNet denoiser; only the ControlNet (the trained module) learns.

    Batch dict: ``mean``, ``std`` (latent posterior), ``ctx`` (caption contexts [B, K, L, D]),
    ``cond`` (uint8 condition images [B, 3, H, W]).
    """

    def __init__(self, unet: nn.Module, schedule: DiscreteSchedule, empty_context: Tensor, scaling_factor: float,
                 p_uncond: float = P_UNCOND, prediction: str = "eps"):
        if any(p.requires_grad for p in unet.parameters()):
            raise ValueError("the base U-Net must be locked: call unet.requires_grad_(False) before training a ControlNet")
        self.unet = unet
        self.schedule = schedule
        self.time = DiscreteTime(schedule)
        self.prediction = prediction
        self.loss = DDPMEpsLoss(schedule)
        self.empty = empty_context
        self.scale = scaling_factor
        self.p_uncond = p_uncond

    def denoiser(self, controlnet: ControlNet, image: Tensor) -> NetworkDenoiser:
        s = self.schedule
        return NetworkDenoiser(ControlledUNet(self.unet, [(controlnet, image, 1.0)]), self.prediction, self.time,
                               sigma_min=s.sigma_min, sigma_max=s.sigma_max)

    def __call__(self, model: ControlNet, batch: dict, g: torch.Generator) -> Tensor:
        z = sample_latents(batch["mean"], batch["std"], self.scale, g)
        ctx = pick_context(batch["ctx"], self.empty, self.p_uncond, g)
        image = batch["cond"].to(z.device).float() / 255
        return self.loss(self.denoiser(model, image), z, Cond(context=ctx), g)


# ============================================================================ adherence

def _load_base_unet(ctx: JobContext) -> tuple[UNet, dict]:
    from condiff.models.weights import load_state, read_config

    folder = ctx.component("ldm")
    conf = read_config(folder)
    unet = UNet(UNetConfig.from_dict(conf["network"]))
    unet.load_state_dict(load_state(folder))
    return unet.to(ctx.device).eval().requires_grad_(False), conf


def _export(ctx: JobContext, net: ControlNet, kind: str, info: dict, metrics: dict, base_conf: dict) -> dict:
    from .export import write_model_card

    name = controlnet_component(kind)
    config = {
        "kind": "controlnet", "network": net.controlnet_config.to_dict(), "condition": kind, "base": "ldm",
        "preprocessor": f"condiff.preprocess.{kind}", "caption_dropout": P_UNCOND,
        "weights": "int8, one scale per output channel (condiff.models.weights.quantize_int8)",
        "schedule": base_conf.get("schedule"), "prediction": base_conf.get("prediction", "eps"),
    }
    files = save_weights(quantize_int8(net.state_dict()), ctx.weights / name, config, dtype=None)
    card = model_card(ctx, name, info, count_parameters(net), metrics, f"Built-in {kind} ControlNet",
                 f"Trainable encoder copy of the locked `ldm` U-Net with zero convolutions (thesis §3.1.3), "
                 f"condition: {kind} ({PRIMARY[kind][0]} is its adherence metric). ε-loss, "
                 f"{int(P_UNCOND * 100)} % caption dropout (ControlNet paper). Shipped int8 with per-channel scales.")
    card["data"] = f"{card['data']}; {info['train_records']} of them used for {kind}" + (" (figures)" if kind == "pose" else "")
    card["recipe"] = (f"training.controlnet.stage_controlnet (batch {info['batch_size']}, AdamW lr "
                      f"{info['lr']}, cosine, EMA, bf16 on CUDA; base U-Net locked)")
    write_model_card(ctx.weights / name, "controlnet", config, files, card)
    return files


@torch.no_grad()
def _int8_error(obj: ControlNetObjective, net: ControlNet, shipped: ControlNet, batch: dict, device) -> float:
    """Relative L2 difference of the ε-predictions of the fp32 and the int8-shipped ControlNet."""
    g = torch.Generator(device=device).manual_seed(3)
    z = sample_latents(batch["mean"], batch["std"], obj.scale, g)
    sigma = obj.schedule.sigmas.to(device)[torch.randint(0, obj.schedule.num_steps, (z.shape[0],), generator=g,
                                                         device=device)].float()
    x = z + sigma.view(-1, 1, 1, 1) * torch.randn(z.shape, generator=g, device=device)
    cond = Cond(context=batch["ctx"][:, 0].float())
    image = batch["cond"].float() / 255
    a, b = obj.denoiser(net, image)(x, sigma, cond), obj.denoiser(shipped, image)(x, sigma, cond)
    return float((a - b).norm() / (a - x).norm().clamp_min(1e-12))


def stage_controlnet(ctx: JobContext, kind: str) -> None:
    """Train, evaluate and export ``controlnet-<kind>`` on the built-in world (time-boxed by
    ``ctx.minutes["controlnet-<kind>"]`` or ``ctx.minutes["controlnet"]``, default 3 min)."""
    from condiff.nn.text_encoder import MiniLMTextEncoder

    (kind,) = check_condition_names([kind])
    name = controlnet_component(kind)
    unet, base_conf = _load_base_unet(ctx)
    sched_conf = base_conf.get("schedule", SCHEDULE)
    schedule = DiscreteSchedule.named(sched_conf["name"], int(sched_conf["steps"]))
    lat, text = latent_bank(ctx), text_banks(ctx)
    world = ctx.world
    down = world.images.shape[-1] // lat["mean"].shape[-1]
    net = controlnet_for(unet, down)
    if ctx.has(name):
        from condiff.pipelines.control import load_controlnet_folder

        net.load_state_dict(load_controlnet_folder(ctx.component(name))[0].state_dict())
        print(f"warm start {name} from {ctx.component(name)}", flush=True)
    train = records_for(world, kind, "train")
    if len(train) > MAX_TRAIN_RECORDS:  # a seeded subset keeps the condition maps cheap to compute
        g = torch.Generator().manual_seed(5)
        train = train[torch.randperm(len(train), generator=g)[:MAX_TRAIN_RECORDS]].sort().values
    if len(train) == 0:
        raise ValueError(f"the world has no training records for the {kind!r} ControlNet"
                         + (" (no figure records with keypoints)" if kind == "pose" else ""))
    t0 = time.time()
    cond = condition_bank(world, kind, train).to(ctx.device)
    dev_idx = train.to(ctx.device)
    data = {"mean": lat["mean"][dev_idx], "std": lat["std"][dev_idx], "ctx": text["ctx"][train.to(text["ctx"].device)],
            "cond": cond}
    obj = ControlNetObjective(unet, schedule, text["empty"], lat["scale"], prediction=base_conf.get("prediction", "eps"))
    steps = 10 if ctx.small else DEFAULT_STEPS
    batch = min(8 if ctx.small else BATCH, len(train))
    cfg = TrainConfig(steps=steps, batch_size=batch, lr=LR, lr_schedule="cosine", warmup_steps=min(200, steps // 10),
                      min_lr_ratio=0.1, ema_decay=0.9 if ctx.small else 0.999, grad_clip=1.0, seed=0,
                      log_every=5 if ctx.small else 50, checkpoint_minutes=3.0, progress=False)
    cfg = ctx.with_overrides(name, cfg)
    trainer = Trainer(net, obj, data, cfg, out_dir=ctx.out / "runs" / name, device=ctx.device, overwrite=True)
    minutes = ctx.minutes.get(name, ctx.minutes.get("controlnet", DEFAULT_MINUTES))
    result = trainer.fit(time_limit_s=None if ctx.small else 60.0 * minutes)
    if trainer.ema is not None:
        trainer.ema.copy_to(net)
    net.eval()
    info = {**result.summary(cfg, time.time() - t0), "train_records": len(train)}
    print(f"[{name}] {info['steps']} steps in {info['wall_s']} s, loss {info['final_loss']}", flush=True)

    # what ships: int8 weights; measure with exactly those
    shipped = controlnet_for(unet, down)
    shipped.load_state_dict(dequantize_int8(quantize_int8(net.state_dict())))
    shipped = shipped.to(ctx.device).eval().requires_grad_(False)
    probe = {k: v[:16] for k, v in data.items()}
    metrics: dict = {"int8 vs fp32 ε relative error": round(_int8_error(obj, net, shipped, probe, ctx.device), 5)}
    held = records_for(world, kind, "eval")[: 4 if ctx.small else EVAL_RECORDS]
    if len(held):
        text_enc = MiniLMTextEncoder(max_length=int(base_conf.get("text_max_length", 24))).to(ctx.device)
        model = LatentDiffusion("builtin", unet, lat["vae"], text_enc, schedule, base_conf.get("prediction", "eps"),
                                lat["scale"], image_size=world.images.shape[-1],
                                info={"default_guidance": float(base_conf.get("default_guidance", 5.0))})
        report = evaluate_adherence(
            model, shipped, kind, condition_bank(world, kind, held), [world.captions[i][0] for i in held.tolist()],
            keypoints=world.keypoints[held], masks=world.depth[held] > 0, references=world.images[held],
            steps=4 if ctx.small else 20, batch_size=16 if ctx.small else 32,
        )
        metrics.update(report.summary())
        metrics["beats the unconditioned model"] = report.improved()
    else:
        metrics["held-out conditions"] = 0
    ctx.log[name] = {**info, **metrics}
    _export(ctx, net, kind, info, metrics, base_conf)


def stage_functions() -> dict:
    """``{"controlnet-<kind>": stage}`` for the job's stage table, one per condition type."""
    return {controlnet_component(k): (lambda ctx, k=k: stage_controlnet(ctx, k)) for k in CONDITIONS}
