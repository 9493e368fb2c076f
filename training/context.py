"""What every stage of the training job shares: the job's context (world, output folder, device, options),
its defaults, the fit-and-log helper, the model-card skeleton, and the cached text and latent banks.

The stage modules (:mod:`.job`, :mod:`.evaluate`, :mod:`.controlnet`, :mod:`.cascade`, :mod:`.unclip`)
import this module; it imports none of them, so the job's modules form no import cycle.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from condiff.evaluation.world import WorldTensors
from condiff.models.weights import load_state, read_config
from condiff.nn.autoencoder import AutoencoderConfig, AutoencoderKL
from condiff.nn.unet import UNetConfig
from condiff.train.distributed import DistContext
from condiff.train.loop import TrainConfig, Trainer

from .latent import encode_posteriors

__all__ = ["JobContext", "SCHEDULE", "STAGES", "fit", "model_card", "text_banks", "load_vae", "latent_bank"]

SCHEDULE = {"name": "scaled_linear", "steps": 1000}
STAGES = ("vae", "evalenc", "ldm", "classifier", "inpaint")
DEFAULT_MINUTES = {"vae": 2.0, "evalenc": 1.0, "ldm": 4.0, "classifier": 0.7, "inpaint": 2.0}
DEFAULT_STEPS = {"vae": 6000, "evalenc": 4000, "ldm": 40000, "classifier": 4000, "inpaint": 20000}
BATCH = {"vae": 64, "evalenc": 512, "ldm": 256, "classifier": 256, "inpaint": 256}
LR = {"vae": 4e-4, "evalenc": 1e-3, "ldm": 4e-4, "classifier": 4e-4, "inpaint": 2e-4}
#: the shipped evalenc's stage widths (``--evalenc-channels``)
EVALENC_CHANNELS = (48, 96, 192, 384)
#: transformer blocks per decoder spatial transformer of the ldm / inpainting U-Nets (``--ldm-decoder-depth``)
LDM_DECODER_DEPTH = 3
#: stages whose component ships int8 with per-channel scales by default (``--int8``)
INT8_STAGES = ("ldm",)


@dataclass
class JobContext:
    world: WorldTensors
    out: Path
    device: torch.device
    small: bool = False
    init: Path | None = None
    minutes: dict[str, float] = field(default_factory=dict)
    log: dict = field(default_factory=dict)
    gpu_name: str = "cpu"
    cache: dict = field(default_factory=dict)
    ship: Path | None = None
    #: per-stage TrainConfig overrides from the command line, e.g. {"ldm": {"steps": 5000, "lr": 3e-4}}
    overrides: dict = field(default_factory=dict)
    #: held-out caption prompts of the evaluate stage (the model cards quote 200 and 1000)
    eval_prompts: int = 200
    #: widths of the evalenc image tower's four stages
    evalenc_channels: tuple[int, ...] = EVALENC_CHANNELS
    #: this process's place in a torchrun job (one process by default)
    dist: DistContext = field(default_factory=DistContext)
    #: decoder transformer depth of the ldm and inpainting U-Nets (None: the warm start's, else
    #: LDM_DECODER_DEPTH; a shallower warm start is grown)
    ldm_decoder_depth: int | None = None
    #: per-stage family-balance exponent α of the sampling weights (:mod:`.balance`; 0 = uniform)
    balance: dict = field(default_factory=dict)
    #: stages whose component ships as int8 with per-channel scales (instead of fp16)
    int8: frozenset = frozenset(INT8_STAGES)
    #: per-stage dropout probability of the U-Net's residual and transformer blocks while training (``--dropout``)
    dropout: dict = field(default_factory=dict)

    def decoder_depth(self, component: str) -> int:
        """``ldm_decoder_depth`` if given, else that of ``component`` where there is one, else the default."""
        if self.ldm_decoder_depth is not None:
            return self.ldm_decoder_depth
        if self.has(component):
            cfg = UNetConfig.from_dict(read_config(self.component(component))["network"])
            return max(max(cfg.up_transformer_depths(b)) for b in range(cfg.num_levels))
        return LDM_DECODER_DEPTH

    def export_dtype(self, stage: str) -> torch.dtype:
        return torch.int8 if stage in self.int8 else torch.float16

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that exports, evaluates and writes logs."""
        return self.dist.is_main

    @property
    def weights(self) -> Path:
        return self.out / "weights"

    def component(self, name: str) -> Path:
        """Where a component is: this job's output, else the warm-start folder."""
        mine = self.weights / name
        if (mine / "config.json").exists():
            return mine
        if self.init is not None and (self.init / name / "config.json").exists():
            return self.init / name
        raise FileNotFoundError(f"component {name!r} is neither trained in this job nor present in --init")

    def has(self, name: str) -> bool:
        try:
            self.component(name)
            return True
        except FileNotFoundError:
            return False

    def train_config(self, stage: str, **over) -> TrainConfig:
        steps = 3 if self.small else DEFAULT_STEPS[stage]
        batch = 4 if self.small else BATCH[stage]
        kw = dict(steps=steps, batch_size=batch, lr=LR[stage], lr_schedule="cosine", warmup_steps=min(200, steps // 10),
                  min_lr_ratio=0.1, ema_decay=0.999 if not self.small else 0.9, grad_clip=1.0, seed=0,
                  log_every=50 if not self.small else 1, checkpoint_minutes=3.0, progress=False)
        kw.update(over)
        return self.with_overrides(stage, TrainConfig(**kw))

    def with_overrides(self, stage: str, cfg: TrainConfig) -> TrainConfig:
        """``cfg`` with the command line's overrides for ``stage``; a new step count rescales the warm-up."""
        over = dict(self.overrides.get(stage, {}))
        if "steps" in over:
            over.setdefault("warmup_steps", min(200, over["steps"] // 10))
        return replace(cfg, **over)


def fit(ctx: JobContext, stage: str, model, objective, data, **over):
    cfg = ctx.train_config(stage, **over)
    trainer = Trainer(model, objective, data, cfg, out_dir=ctx.out / "runs" / stage,
                      dist=ctx.dist if ctx.dist.is_distributed else None, device=ctx.device, overwrite=True)
    limit = 60.0 * ctx.minutes.get(stage, DEFAULT_MINUTES[stage])
    t0 = time.time()
    result = trainer.fit(time_limit_s=None if ctx.small else limit)
    if trainer.ema is not None:
        trainer.ema.copy_to(model)
    info = {**result.summary(cfg, time.time() - t0, processes=ctx.dist.world_size), "seed": cfg.seed}
    if ctx.is_main:
        print(f"[{stage}] {info['steps']} steps in {info['wall_s']} s, loss {info['final_loss']}", flush=True)
    return info


def model_card(ctx: JobContext, stage: str, info: dict, params: int, metrics: dict, title: str, summary: str) -> dict:
    return {
        "title": title, "summary": summary, "parameters": params,
        "recipe": f"training.job stage `{stage}` (batch {info['batch_size']}"
              + (f" over {info['processes']} processes" if info["processes"] > 1 else "")
              + f", AdamW lr {info['lr']}, cosine, EMA 0.999, bf16)",
        "command": "condiff train job --world WORLD --out OUT --stages " + stage,
        "data": f"built-in world v{ctx.world.manifest.get('version')} ({len(ctx.world.train)} training records)",
        "steps": info["steps"], "wall_time": f"{info['wall_s']} s", "device": ctx.gpu_name,
        "trained": time.strftime("%Y-%m-%d", time.gmtime()), "metrics": metrics,
    }


# ----------------------------------------------------------------------------- text banks
def text_banks(ctx: JobContext) -> dict:
    """Caption contexts [N, K, L, 384] (fp16), pooled caption embeddings [N, K, 384], empty prompt, concept prompts."""
    if "text" in ctx.cache:
        return ctx.cache["text"]
    from condiff.nn.text_encoder import MiniLMTextEncoder  # loads the MiniLM weights: only when used

    enc = MiniLMTextEncoder(max_length=24).to(ctx.device)
    caps = ctx.world.captions
    k = min(len(c) for c in caps)
    flat = [c[i] for c in caps for i in range(k)]
    ctxs, pooled = [], []
    with torch.no_grad():
        for i in range(0, len(flat), 1024):
            c, m = enc(flat[i:i + 1024])
            ctxs.append(c.half())
            mm = m.unsqueeze(-1).float()
            pooled.append(torch.nn.functional.normalize((c * mm).sum(1) / mm.sum(1), dim=-1).half())
        empty, _ = enc([""])
        concept_text = enc.pooled([ctx.world.concept_prompt(c) for c in ctx.world.concepts]).half()
    n = len(caps)
    bank = {
        "ctx": torch.cat(ctxs).view(n, k, *ctxs[0].shape[1:]),
        "pooled": torch.cat(pooled).view(n, k, -1),
        "empty": empty.float(),
        "concept_text": concept_text,
    }
    ctx.cache["text"] = bank
    return bank


def load_vae(ctx: JobContext) -> tuple[AutoencoderKL, float]:
    folder = ctx.component("vae")
    conf = read_config(folder)
    vae = AutoencoderKL(AutoencoderConfig.from_dict(conf["network"]))
    vae.load_state_dict(load_state(folder))
    return vae.to(ctx.device).eval().requires_grad_(False), float(conf["scaling_factor"])


def latent_bank(ctx: JobContext) -> dict:
    if "latents" in ctx.cache:
        return ctx.cache["latents"]
    vae, scale = load_vae(ctx)
    mean, std = encode_posteriors(vae, ctx.world.images, ctx.device)
    bank = {"mean": mean, "std": std, "scale": scale, "vae": vae}
    ctx.cache["latents"] = bank
    return bank
