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

Evaluation (:func:`evaluate_adherence`): generate from held-out conditions with and without the
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ...data.conditions import CONDITIONS, check_condition_names, condition_maps
from ...denoisers import Cond, DiscreteTime, NetworkDenoiser
from ...losses import DDPMEpsLoss
from ...metrics.adherence import depth_errors, edge_f1, keypoint_scores, normal_angular_error
from ...models.ldm import LatentDiffusion
from ...nn.controlnet import ControlledUNet, ControlNet
from ...nn.unet import UNet, UNetConfig, count_parameters
from ...models.weights import dequantize_int8, quantize_int8, save_weights
from ...pipelines.control import control, controlnet_component
from ...pipelines.text2img import generate
from ...preprocess import get_preprocessor
from ...preprocess.pose import estimate_keypoints
from ...schedules import DiscreteSchedule
from ..loop import TrainConfig, Trainer
from .latent import sample_latents, pick_context

if TYPE_CHECKING:  # job.py imports this module to register the stage
    from .job import JobContext

__all__ = [
    "P_UNCOND", "embedding_channels", "controlnet_for", "condition_bank", "ControlNetObjective",
    "records_for", "PRIMARY", "AdherenceReport", "score_adherence", "evaluate_adherence", "stage_controlnet",
    "stage_functions",
]

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


def _record(world, i: int) -> dict:
    return {"image": world.images[i].permute(1, 2, 0).numpy(), "lineart": world.lineart[i].numpy(),
            "depth": world.depth[i].numpy(), "keypoints": world.keypoints[i].numpy(),
            "has_pose": bool(world.has_pose[i])}


def condition_bank(world, kind: str, index: Tensor | Sequence[int], workers: int = 8) -> Tensor:
    """Condition maps of the records ``index`` as uint8 [n, 3, H, W] (CPU), computed from the world's
    arrays by :func:`condiff.data.conditions.condition_maps` (OpenCV releases the GIL: threads)."""
    (kind,) = check_condition_names([kind])
    idx = [int(i) for i in (index.tolist() if isinstance(index, Tensor) else index)]
    if not idx:
        raise ValueError(f"no records to make {kind!r} conditions for")

    def one(i: int) -> np.ndarray:
        return condition_maps(_record(world, i), [kind])[kind]

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        maps = list(pool.map(one, idx))
    return torch.from_numpy(np.stack(maps)).permute(0, 3, 1, 2).contiguous()


def records_for(world, kind: str, split: str) -> Tensor:
    """Indices of the ``split`` ("train"/"eval") records a ``kind`` ControlNet uses (pose: figures only)."""
    keep = world.is_eval.clone() if split == "eval" else ~world.is_eval
    if kind == "pose":
        keep &= world.has_pose
    return keep.nonzero().squeeze(1)


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

#: kind -> (primary metric, whether higher is better)
PRIMARY = {
    "canny": ("edge F1", True), "lineart": ("edge F1", True), "softedge": ("edge F1", True),
    "depth": ("depth AbsRel", False), "normal": ("normal mean angle (deg)", False), "pose": ("pose PCK@0.1", True),
}


@dataclass
class AdherenceReport:
    """Per-image scores of the ControlNet outputs, the unconditioned baseline and the reference
    (the held-out pictures themselves through the preprocessor), per metric."""

    kind: str
    n: int
    scores: dict[str, dict[str, Tensor]] = field(default_factory=dict)  # metric -> source -> [n]

    @property
    def primary(self) -> str:
        return PRIMARY[self.kind][0]

    @property
    def higher_is_better(self) -> bool:
        return PRIMARY[self.kind][1]

    def mean(self, metric: str, source: str) -> float:
        v = self.scores[metric][source].double()
        v = v[~torch.isnan(v)]
        return float(v.mean()) if len(v) else math.nan

    def summary(self) -> dict[str, float]:
        """Flat dict for a model card: ``"<metric> (<source>)": mean``."""
        out: dict[str, float] = {"held-out conditions": self.n}
        for metric, by_source in self.scores.items():
            for source in by_source:
                out[f"{metric} ({source})"] = round(self.mean(metric, source), 4)
        mean, lo, hi = self.paired_difference()
        out[f"{self.primary}: controlnet − baseline (paired, 95 % CI)"] = f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}]"
        return out

    def paired_difference(self, metric: str | None = None) -> tuple[float, float, float]:
        """ControlNet − baseline on the same conditions, prompts and seeds: (mean, 95 % CI low, high),
        bootstrapped over the conditions where both are defined."""
        from ...metrics.bootstrap import paired_bootstrap_ci

        by_source = self.scores[metric or self.primary]
        a, b = by_source["controlnet"].double(), by_source["baseline"].double()
        both = ~(torch.isnan(a) | torch.isnan(b))
        if not both.any():
            return (math.nan, math.nan, math.nan)
        ci = paired_bootstrap_ci(a[both], b[both], seed=0)
        return (float(ci.mean), float(ci.lo), float(ci.hi))

    def improved(self) -> bool:
        """Whether the ControlNet beats the unconditioned baseline on the primary metric."""
        c, b = self.mean(self.primary, "controlnet"), self.mean(self.primary, "baseline")
        return c > b if self.higher_is_better else c < b


def _u8(images: Tensor) -> list[np.ndarray]:
    x = images.detach().float().cpu().clamp(0, 1)
    return [a for a in (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()]


def score_adherence(kind: str, outputs: Tensor, conditions: Tensor, *, keypoints: Tensor | None = None,
                    masks: Tensor | None = None) -> dict[str, Tensor]:
    """Per-image agreement of ``outputs`` [N, 3, H, W] (in [0, 1]) with ``conditions`` (same layout)
    after running the outputs through the ``kind`` preprocessor; see :data:`PRIMARY`.

    ``keypoints`` [N, 18, 3] (x, y, visible) are the pose targets (required for pose); ``masks``
    [N, H, W] restrict depth/normal errors (e.g. the foreground). Undefined values are NaN.
    """
    (kind,) = check_condition_names([kind])
    if outputs.shape != conditions.shape or outputs.ndim != 4:
        raise ValueError(f"outputs {tuple(outputs.shape)} and conditions {tuple(conditions.shape)} must both be [N, 3, H, W]")
    n = outputs.shape[0]
    conditions = conditions.detach().float().cpu()
    if kind == "pose":
        if keypoints is None:
            raise ValueError("pose adherence needs the target keypoints [N, 18, 3]")
        pred = torch.full((n, 18, 3), math.nan)
        for i, img in enumerate(_u8(outputs)):
            kp = estimate_keypoints(img)
            if kp is not None:
                pred[i] = torch.from_numpy(kp)
        target = torch.as_tensor(keypoints, dtype=torch.float32)
        vis = pred[..., 2] > 0
        s = keypoint_scores(pred[..., :2], target[..., :2], pred_visible=vis, target_visible=target[..., 2] > 0)
        return {"pose PCK@0.1": s.pck, "keypoint distance": s.mean_distance, "pose found": vis.any(1).float()}
    fn = get_preprocessor(kind)
    ext = torch.stack([torch.from_numpy(np.asarray(fn(a), np.uint8)).permute(2, 0, 1) for a in _u8(outputs)]).float() / 255
    if kind in ("canny", "lineart", "softedge"):
        return {"edge F1": edge_f1(ext[:, 0], conditions[:, 0]).f1}
    m = None if masks is None else torch.as_tensor(masks).bool()
    rows = []
    for i in range(n):
        mi = None if m is None else m[i]
        try:
            if kind == "depth":
                rows.append(float(depth_errors(ext[i, 0], conditions[i, 0], mask=mi).abs_rel[0]))
            else:
                rows.append(float(normal_angular_error(ext[i:i + 1] * 2 - 1, conditions[i:i + 1] * 2 - 1,
                                                       mask=None if mi is None else mi[None]).mean_deg[0]))
        except ValueError:  # no valid pixel in this condition (e.g. an empty depth map)
            rows.append(math.nan)
    return {PRIMARY[kind][0]: torch.tensor(rows)}


@torch.no_grad()
def evaluate_adherence(
    model: LatentDiffusion,
    controlnet: ControlNet,
    kind: str,
    conditions: Tensor,
    prompts: Sequence[str],
    *,
    keypoints: Tensor | None = None,
    masks: Tensor | None = None,
    references: Tensor | None = None,
    scale: float = 1.0,
    steps: int = 20,
    guidance: float | None = None,
    sampler: str = "dpmpp_2m",
    seed: int = 0,
    batch_size: int = 16,
) -> AdherenceReport:
    """Generate from held-out ``conditions`` ([N, 3, H, W], uint8 or [0, 1]) with and without the
    ControlNet (same prompts, image i with seed ``seed + i``) and score both (:func:`score_adherence`).

    ``references`` ([N, 3, H, W] pictures the conditions were made from) add the ceiling: the same
    preprocessor on the true pictures.
    """
    conditions = conditions.float() / 255 if conditions.dtype == torch.uint8 else conditions.float()
    n = conditions.shape[0]
    if len(prompts) != n or n == 0:
        raise ValueError(f"need one prompt per condition: {len(prompts)} prompts for {n} conditions")
    with_cn, without = [], []
    common = dict(steps=steps, guidance=guidance, sampler=sampler, show_progress=False)
    for i in range(0, n, batch_size):
        p = list(prompts[i:i + batch_size])
        seeds = list(range(seed + i, seed + i + len(p)))
        with_cn.append(control(model, conditions[i:i + batch_size], p, kinds=[kind], scales=scale, preprocess=False,
                               controlnets={kind: controlnet}, seed=seeds, **common).images)
        without.append(generate(model, p, seed=seeds, batch_size=len(p), **common).images)
    kw = dict(keypoints=keypoints, masks=masks)
    report = AdherenceReport(kind, n)
    sources = {"controlnet": torch.cat(with_cn), "baseline": torch.cat(without)}
    if references is not None:
        sources["reference"] = references.float() / 255 if references.dtype == torch.uint8 else references.float()
    for source, images in sources.items():
        for metric, values in score_adherence(kind, images, conditions, **kw).items():
            report.scores.setdefault(metric, {})[source] = values
    return report


# ============================================================================ the job stage


def _load_base_unet(ctx: "JobContext") -> tuple[UNet, dict]:
    from ...models.weights import load_state, read_config

    folder = ctx.component("ldm")
    conf = read_config(folder)
    unet = UNet(UNetConfig.from_dict(conf["network"]))
    unet.load_state_dict(load_state(folder))
    return unet.to(ctx.device).eval().requires_grad_(False), conf


def _export(ctx: "JobContext", net: ControlNet, kind: str, info: dict, metrics: dict, base_conf: dict) -> dict:
    from .export import write_model_card
    from .job import model_card

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
    card["recipe"] = (f"condiff.train.recipes.controlnet.stage_controlnet (batch {info['batch_size']}, AdamW lr "
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


def stage_controlnet(ctx: "JobContext", kind: str) -> None:
    """Train, evaluate and export ``controlnet-<kind>`` on the built-in world (time-boxed by
    ``ctx.minutes["controlnet-<kind>"]`` or ``ctx.minutes["controlnet"]``, default 3 min)."""
    from ...nn.text_encoder import MiniLMTextEncoder
    from .job import SCHEDULE, latent_bank, text_banks

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
        from ...pipelines.control import load_controlnet_folder

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
