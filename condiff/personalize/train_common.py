"""What DreamBooth, LoRA and textual-inversion training share (thesis §3.3, experiment 3 / §4.4).

* :class:`ImageSet` — the handful (3–5) of subject images, square-cropped and resized to the
  model's resolution, with seeded augmentation (horizontal flip, optional random crop).
* :func:`run_training` — a small seeded loop: AdamW (or bitsandbytes' 8-bit AdamW), constant or
  cosine LR, gradient clipping, bf16 autocast on CUDA, a tqdm progress bar, and checkpoint/resume
  through one atomically written file read back with ``torch.load(weights_only=True)``. Every
  random draw of step k comes from a generator seeded by (seed, k), and the global RNG state is
  checkpointed, so a resumed run continues exactly like an uninterrupted one.
* The thesis's settings (§4.4.2–4.4.4, the diffusers example scripts it ran): 400 steps, batch 1,
  DreamBooth lr 5e-6, LoRA lr 1e-4 with a cosine schedule, textual inversion lr 5e-4.
* Diffusion helpers: the model's training loss (ε- or v-objective on its discrete schedule,
  :mod:`condiff.losses`), prompt conditioning *with* gradients (for text-side training) and VAE
  latents of the images.

The generic :class:`condiff.train.loop.Trainer` trains one module with one AdamW; personalization
needs a few things it does not have (8-bit Adam, a per-step hook that restores frozen embedding
rows, several components in one run), so this loop is kept small and separate.
"""

from __future__ import annotations

import inspect
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..denoisers import Cond
from ..errors import InputError, NonFiniteError
from ..io import atomic_path
from ..train.schedule import LRSchedule

__all__ = [
    "DEFAULT_STEPS",
    "DEFAULT_BATCH_SIZE",
    "DREAMBOOTH_LR",
    "LORA_LR",
    "TEXTUAL_INVERSION_LR",
    "IMAGE_SUFFIXES",
    "list_images",
    "load_image",
    "ImageSet",
    "LoopConfig",
    "TrainSettings",
    "LoopResult",
    "step_generator",
    "make_optimizer",
    "run_training",
    "diffusion_loss",
    "prompt_cond",
    "encode_latents",
    "FlipLatents",
    "training_device",
]

DEFAULT_STEPS = 400
DEFAULT_BATCH_SIZE = 1
DREAMBOOTH_LR = 5e-6
LORA_LR = 1e-4
TEXTUAL_INVERSION_LR = 5e-4
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_CKPT_FORMAT = 1


# ------------------------------------------------------------------------------------ images
def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files of ``folder`` (sorted by name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"image folder {folder} does not exist (or is not a folder); give --images a folder of pictures")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise InputError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def load_image(path: str | os.PathLike, size: int) -> Tensor:
    """[3, size, size] in [-1, 1]: transparent pixels on white, centre square crop, bicubic resize.

    A file that is not a complete, decodable picture (truncated, another format, too large) is an
    :class:`~condiff.errors.InputError` naming it.
    """
    from ..images import load_image as load_checked
    from ..images import to_pil
    from PIL import Image

    try:
        im = to_pil(load_checked(path))  # limits, float/16-bit modes, alpha on white
    except InputError as err:
        raise InputError(f"{err}; remove or replace it in the images folder") from None
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    im = im.resize((size, size), Image.Resampling.BICUBIC)
    x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).reshape(size, size, 3)
    return x.permute(2, 0, 1).float() / 127.5 - 1


class ImageSet:
    """The subject images as one tensor [N, 3, S, S] plus seeded augmentation."""

    def __init__(self, images: Tensor, paths: Sequence[Path] = (), *, flip: bool = True, crop_min: float = 1.0):
        if images.ndim != 4 or images.shape[1] != 3 or len(images) == 0:
            raise ValueError(f"images must be a non-empty [N, 3, H, W] tensor, got {tuple(images.shape)}")
        if not 0 < crop_min <= 1:
            raise ValueError(f"crop_min must lie in (0, 1], got {crop_min}")
        self.images = images.float()
        self.paths = list(paths)
        self.flip = flip
        self.crop_min = crop_min

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, size: int, **kwargs) -> "ImageSet":
        paths = list_images(folder)
        return cls(torch.stack([load_image(p, size) for p in paths]), paths, **kwargs)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def augment(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Random horizontal flip (p = ½) and random square crop of side ≥ crop_min, resized back."""
        out = []
        s = x.shape[-1]
        for img in x:
            if self.flip and torch.rand((), generator=generator) < 0.5:
                img = img.flip(-1)
            if self.crop_min < 1:
                frac = self.crop_min + (1 - self.crop_min) * float(torch.rand((), generator=generator))
                c = max(1, int(round(frac * s)))
                top = int(torch.randint(0, s - c + 1, (), generator=generator))
                left = int(torch.randint(0, s - c + 1, (), generator=generator))
                img = img[:, top:top + c, left:left + c]
                img = F.interpolate(img[None], size=(s, s), mode="bicubic", align_corners=False)[0].clamp(-1, 1)
            out.append(img)
        return torch.stack(out)

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(indices [b], augmented images [b, 3, S, S]) drawn with ``generator``."""
        idx = torch.randint(0, len(self), (batch_size,), generator=generator)
        return idx, self.augment(self.images[idx], generator)


# ------------------------------------------------------------------------------------ diffusion
def diffusion_loss(model: Any):
    """The model's own training objective on its discrete schedule (ε: eq. 2.13 / 3.18; v)."""
    from ..losses import DDPMEpsLoss, VPredictionLoss

    if model.prediction == "eps":
        return DDPMEpsLoss(model.schedule)
    if model.prediction == "v":
        return VPredictionLoss(model.schedule)
    raise ValueError(f"personalization supports eps- and v-prediction models, not {model.prediction!r}")


def prompt_cond(model: Any, prompts: Sequence[str], *, grad: bool = False) -> Cond:
    """Cross-attention conditioning of ``prompts``.

    ``grad=True`` (textual inversion, text-encoder LoRA or fine-tuning) keeps the graph into the
    text encoder. An inference-only encoder whose ``encode_ids`` is decorated with
    ``torch.no_grad`` (Stable Diffusion's) is then called through the undecorated function; an
    encoder that still returns no gradient is a ValueError rather than a silently untrained run.
    """
    te = model.text_encoder
    with torch.set_grad_enabled(grad):
        encode = getattr(type(te), "encode_ids", None)
        if grad and encode is not None and inspect.unwrap(encode) is not encode and hasattr(te, "tokenize"):
            ids, mask = te.tokenize(list(prompts))
            encode = inspect.unwrap(encode)
            takes_mask = len(inspect.signature(encode).parameters) >= 3
            ctx = encode(te, ids, mask) if takes_mask else encode(te, ids)
        else:
            ctx, mask = te(list(prompts))
    if grad and not ctx.requires_grad:
        raise ValueError(f"the text encoder {type(te).__name__} returns no gradients (or nothing in it is "
                         "trainable); textual inversion and text-side training need a differentiable encoder")
    return Cond(
        context=ctx.to(model.device, model.dtype),
        context_mask=mask.to(model.device) if getattr(model, "use_context_mask", False) else None,
    )


@torch.no_grad()
def encode_latents(model: Any, images: Tensor, batch_size: int = 4) -> Tensor:
    """Scaled VAE latents (posterior means) of images in [-1, 1]."""
    return torch.cat([model.encode(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


class FlipLatents:
    """The subject's latents and, when the set flips, those of its mirrored pictures, encoded once.

    :meth:`sample` draws a seeded batch of picture indices and a horizontal flip per picture
    (p = ½, only when ``images.flip``), in this order from ``g``.
    """

    def __init__(self, model: Any, images: "ImageSet"):
        self.latents = encode_latents(model, images.images)
        self.flipped = encode_latents(model, images.images.flip(-1)) if images.flip else self.latents
        self.flip = images.flip

    def sample(self, batch: int, g: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor]:
        """(indices [batch], latents [batch, C, h, w] on ``device``)."""
        idx = torch.randint(0, len(self.latents), (batch,), generator=g)
        flip = torch.rand(batch, generator=g) < 0.5 if self.flip else torch.zeros(batch, dtype=torch.bool)
        z0 = torch.where(flip.to(self.latents.device)[:, None, None, None], self.flipped[idx], self.latents[idx])
        return idx, z0.to(device)


def training_device(model: Any) -> torch.device:
    return next(model.unet.parameters()).device


# ------------------------------------------------------------------------------------ the loop
@dataclass
class LoopConfig:
    """Optimisation settings of a personalization run (defaults: the thesis's LoRA run)."""

    steps: int = DEFAULT_STEPS
    lr: float = LORA_LR
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0
    grad_clip: float | None = 1.0
    weight_decay: float = 1e-2
    adam_betas: tuple[float, float] = (0.9, 0.999)
    optimizer: str = "adamw"  # or "adamw8bit" (bitsandbytes, when importable)
    mixed_precision: str = "auto"  # "auto": bf16 autocast on CUDA; "bf16"; "fp32"
    checkpoint_every: int = 100
    progress: bool = True
    desc: str = "personalize"

    def validate(self) -> "LoopConfig":
        if not isinstance(self.steps, int) or self.steps < 1:
            raise InputError(f"steps must be an integer ≥ 1 (0 steps would save an untrained result), got {self.steps!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.batch_size < 1 or self.warmup_steps < 0 or self.checkpoint_every < 0:
            raise ValueError("batch_size must be ≥ 1, warmup_steps and checkpoint_every ≥ 0")
        if self.optimizer not in ("adamw", "adamw8bit"):
            raise ValueError(f"optimizer must be 'adamw' or 'adamw8bit', got {self.optimizer!r}")
        if self.mixed_precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"mixed_precision must be auto, bf16 or fp32, got {self.mixed_precision!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError("grad_clip must be positive or None")
        return self


@dataclass
class TrainSettings:
    """The loop settings every personalization method's config carries (each method sets its own ``lr`` and
    ``lr_schedule`` defaults); ``loop_overrides`` reach :class:`LoopConfig` unchanged."""

    steps: int = DEFAULT_STEPS
    lr: float = LORA_LR
    lr_schedule: str = "cosine"
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0
    checkpoint_every: int = 100
    progress: bool = True
    loop_overrides: dict[str, Any] = field(default_factory=dict)

    def loop_config(self, desc: str, **method: Any) -> LoopConfig:
        """The validated :class:`LoopConfig` of these settings, the method's own ``method`` ones and the overrides."""
        return LoopConfig(steps=self.steps, lr=self.lr, lr_schedule=self.lr_schedule, batch_size=self.batch_size,
                          seed=self.seed, checkpoint_every=self.checkpoint_every, progress=self.progress, desc=desc,
                          **method, **self.loop_overrides).validate()


@dataclass
class LoopResult:
    steps: int
    history: list[dict] = field(default_factory=list)
    elapsed_s: float = 0.0
    peak_memory_bytes: int | None = None
    optimizer: str = "AdamW"
    resumed_from: int | None = None


def step_generator(seed: int, step: int, stream: int = 0, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator of training step ``step`` (independent streams by ``stream``)."""
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + int(step) * 7_919 + int(stream) * 104_729) % (2**63 - 1))
    return g


def make_optimizer(params: Sequence[nn.Parameter], config: LoopConfig) -> tuple[torch.optim.Optimizer, str]:
    """AdamW, or bitsandbytes' AdamW8bit when asked and importable (with a warning otherwise)."""
    if config.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb  # optional

            opt = bnb.optim.AdamW8bit(params, lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay)
            return opt, "AdamW8bit (bitsandbytes)"
        except ImportError:
            import warnings

            warnings.warn("8-bit Adam needs bitsandbytes, which is not installed; using torch AdamW", stacklevel=2)
            name = "AdamW (bitsandbytes missing)"
    else:
        name = "AdamW"
    return torch.optim.AdamW(params, lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay), name


def _save_checkpoint(path: Path, step: int, trainable: Mapping[str, nn.Parameter], optimizer, history, config,
                     extra: dict) -> None:
    state = {
        "format": _CKPT_FORMAT,
        "step": int(step),
        "params": {k: p.detach().cpu().clone() for k, p in trainable.items()},
        "optimizer": optimizer.state_dict(),
        "history": history,
        "rng": torch.get_rng_state(),
        "cuda_rng": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "extra": extra,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, trainable: Mapping[str, nn.Parameter], optimizer, config: LoopConfig) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != _CKPT_FORMAT:
        raise ValueError(f"{path} is not a condiff personalization checkpoint (format {state.get('format')!r})")
    for key in ("seed", "batch_size", "steps"):
        if state["config"][key] != getattr(config, key):
            raise ValueError(f"{path} was written with {key}={state['config'][key]}, this run has "
                             f"{key}={getattr(config, key)}; resume with the same value or start afresh")
    names = set(state["params"])
    if names != set(trainable):
        raise ValueError(f"{path} holds parameters {sorted(names - set(trainable))[:5]} / lacks "
                         f"{sorted(set(trainable) - names)[:5]}: it belongs to another run")
    with torch.no_grad():
        for k, p in trainable.items():
            p.copy_(state["params"][k].to(p))
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"] and torch.cuda.is_available() and len(state["cuda_rng"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state


StepLoss = Callable[[int, torch.Generator], "Tensor | tuple[Tensor, dict[str, float]]"]


def run_training(
    trainable: Mapping[str, nn.Parameter],
    step_loss: StepLoss,
    config: LoopConfig,
    *,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    after_step: Callable[[int], None] | None = None,
    device: torch.device | str = "cpu",
    extra_state: Callable[[], dict] | None = None,
) -> LoopResult:
    """Optimise ``trainable`` for ``config.steps`` steps of ``step_loss(step, generator)``.

    ``step_loss`` returns the scalar loss (or (loss, parts) to log); ``after_step(step)`` runs after
    each optimizer step (e.g. to restore frozen rows). ``checkpoint``: a file written every
    ``checkpoint_every`` steps and at the end; with ``resume`` an existing one is continued.
    """
    config.validate()
    params = list(trainable.values())
    if not params:
        raise ValueError("nothing to train: no trainable parameters were given")
    bad = [k for k, p in trainable.items() if p.dtype in (torch.float16, torch.bfloat16)]
    if bad:
        raise ValueError(f"trainable parameters {bad[:3]} are half precision; load the model in float32 for "
                         "training (bf16 autocast is applied on CUDA)")
    for p in params:
        p.requires_grad_(True)
    device = torch.device(device)
    optimizer, opt_name = make_optimizer(params, config)
    schedule = LRSchedule(config.lr_schedule, config.warmup_steps, config.steps)
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    history: list[dict] = []
    start = 0
    resumed_from = None
    if resume and ckpt_path is not None and ckpt_path.exists():
        state = _load_checkpoint(ckpt_path, trainable, optimizer, config)
        start = resumed_from = int(state["step"])
        history = list(state["history"])
    else:
        torch.manual_seed(config.seed)
    autocast = device.type == "cuda" and config.mixed_precision in ("auto", "bf16")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bar = tqdm(total=config.steps, initial=start, disable=not config.progress, desc=config.desc)
    t0 = time.perf_counter()
    elapsed0 = history[-1]["time"] if history else 0.0
    for step in range(start, config.steps):
        lr = config.lr * schedule(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = step_loss(step, step_generator(config.seed, step))
        loss, parts = out if isinstance(out, tuple) else (out, {})
        if not torch.isfinite(loss):
            raise NonFiniteError(f"non-finite loss at step {step}; lower the learning rate")
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip if config.grad_clip else math.inf)
        optimizer.step()
        if after_step is not None:
            after_step(step)
        record = {"step": step + 1, "loss": float(loss.detach()), "lr": lr, "grad_norm": float(grad_norm),
                  "time": round(elapsed0 + time.perf_counter() - t0, 4), **{k: float(v) for k, v in parts.items()}}
        history.append(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4g}", refresh=False)
        done = step + 1
        if ckpt_path is not None and (done == config.steps or (config.checkpoint_every and done % config.checkpoint_every == 0)):
            _save_checkpoint(ckpt_path, done, trainable, optimizer, history, config,
                             extra_state() if extra_state else {})
    bar.close()
    for p in params:
        p.requires_grad_(False)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    elapsed = history[-1]["time"] if history else 0.0
    return LoopResult(config.steps, history, elapsed, peak, opt_name, resumed_from)
