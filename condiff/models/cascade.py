"""A cascaded pixel diffusion model (thesis 3.2.2): a 64×64 text-to-image base + an SR3 64→128 stage.

Structure (Ho et al. 2021 "Cascaded Diffusion Models"; Saharia et al. 2021 "SR3"; Imagen):

* **base**: a pixel-space U-Net on 64×64 RGB in [−1, 1], text-conditioned by cross-attention on
  the frozen MiniLM token embeddings (the built-in world's T5 stand-in), trained with 10 % caption
  dropout so classifier-free guidance (thesis eq. 3.9) works;
* **super-resolution**: a U-Net on 128×128 whose input is the noisy high-resolution image
  concatenated channel-wise with the *upsampled* low-resolution image (thesis eq. 3.10, where
  f_θ(x, ỹ, γ) sees the low-resolution x by concatenation), also text-conditioned (Imagen's SR
  stages are), trained on (bicubic-upsampled area-downsample, original) pairs of the world.

**Noise-conditioning augmentation** (Ho et al. 2021 §4.2; the reason a cascade works at all): at
training time the upsampled low-resolution conditioning y is itself corrupted to a random level
s ∈ [0, 1] and the network is *told* s,

    ỹ = √γ(s)·y + √(1 − γ(s))·ε′,    γ(s) = cos²(π s / 2),                          (aug)

the same form as the forward process inside eq. 3.10, with its own level s. γ(0) = 1 (clean) and
γ(1) = 0 (pure noise). The level reaches the U-Net as a float "timestep" class label
s·:data:`AUG_LABEL_SCALE` (``class_embed_type="timestep"``: sinusoidal embedding + MLP added to the
time embedding). At sampling time the pipeline picks s: small s trusts the low-resolution input,
large s lets the SR stage re-imagine detail (and hides artefacts of the base stage).

Both stages are v-prediction networks (Salimans & Ho 2022) on the cosine schedule (Nichol &
Dhariwal 2021): v-prediction stays well-conditioned at the cosine schedule's terminal σ ≈ 2·10⁴,
where an ε-network's x̂0 = x − σ·ε̂ would amplify any error by σ. The v-loss is eq. 3.10 (p = 2)
reweighted by 1/ᾱ_t (see :mod:`condiff.losses`).

**Residual SR** (config keys ``"residual": true, "residual_scale": k`` of the SR component): the
SR network diffuses the scaled residual r = k·(x − u) around the clean bicubic upsample u of its
low-resolution input instead of the image x itself; :class:`ResidualDenoiser` turns it back into
an x-space denoiser, so samplers and guidance are unchanged. A zero residual is exactly bicubic,
so the output stays consistent with its input by construction. Components without the keys are
full-image (non-residual) models, as the first shipped ``cascade-sr`` is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..denoisers import Cond, Denoiser, DenoiserWrapper, DiscreteTime, NetworkDenoiser, sigma_batch
from ..editing import _fit_batch
from ..nn.unet import UNet, UNetConfig, component_parameter_counts
from ..samplers.registry import model_schedule
from ..schedules import DiscreteSchedule
from .weights import WeightsError, load_frozen, read_config

__all__ = [
    "AUG_LABEL_SCALE",
    "CASCADE_COMPONENTS",
    "CascadeModel",
    "ResidualDenoiser",
    "cascade_base_config",
    "cascade_sr_config",
    "augmentation_gamma",
    "augmentation_label",
    "noise_augment",
    "upsample_low_res",
    "downsample",
    "load_cascade",
    "load_unet_component",
    "residual_settings",
    "pixel_denoiser",
]

#: s ∈ [0, 1] enters the SR U-Net as the "timestep" class label s·AUG_LABEL_SCALE.
AUG_LABEL_SCALE = 1000.0
#: Built-in component folders (under condiff/weights/): the base and the SR stage.
CASCADE_COMPONENTS = {"base": "cascade-base", "sr": "cascade-sr"}
DEFAULT_SCHEDULE = {"name": "cosine", "steps": 1000}


def cascade_base_config(**over: Any) -> UNetConfig:
    """The built-in 64×64 base: 8.2 M parameters, cross-attention at 16² and 8²."""
    cfg = dict(
        in_channels=3, out_channels=3, sample_size=64, block_out_channels=(64, 96, 128, 128),
        attention_levels=(False, False, True, True), layers_per_block=1, num_attention_heads=(1, 1, 2, 2),
        cross_attention_dim=384, use_linear_projection=True,
    )
    cfg.update(over)
    return UNetConfig(**cfg)


def cascade_sr_config(**over: Any) -> UNetConfig:
    """The built-in SR stage: 6 input channels (noisy 128² image + upsampled 64² image), 3.1 M
    parameters, cross-attention only at 16² (and the middle block), aug level as a float class label."""
    cfg = dict(
        in_channels=6, out_channels=3, sample_size=128, block_out_channels=(32, 64, 64, 96),
        attention_levels=(False, False, False, True), layers_per_block=1, num_attention_heads=(1, 1, 1, 2),
        cross_attention_dim=384, use_linear_projection=True, class_embed_type="timestep",
    )
    cfg.update(over)
    return UNetConfig(**cfg)


# --------------------------------------------------------------------------- noise augmentation


def _check_level(level: float | Tensor) -> Tensor:
    level = torch.as_tensor(level, dtype=torch.float32)
    if not torch.isfinite(level).all() or (level < 0).any() or (level > 1).any():
        raise ValueError(
            f"noise-augmentation level must lie in [0, 1] (0 = trust the low-resolution image, 1 = ignore it), got {level.tolist()}"
        )
    return level


def augmentation_gamma(level: float | Tensor) -> Tensor:
    """γ(s) = cos²(π s / 2): the signal fraction kept by noise augmentation at level s (eq. aug)."""
    level = _check_level(level)
    return torch.cos(level * (math.pi / 2)).pow(2)


def augmentation_label(level: float | Tensor, batch: int | None = None) -> Tensor:
    """The SR network's class label for level s: s·AUG_LABEL_SCALE as a float [B] tensor."""
    level = _check_level(level).reshape(-1)
    if batch is not None:
        if level.numel() == 1:
            level = level.expand(batch)
        elif level.numel() != batch:
            raise ValueError(f"got {level.numel()} noise-augmentation levels for a batch of {batch}")
    return level * AUG_LABEL_SCALE


def noise_augment(y: Tensor, level: float | Tensor, eps: Tensor) -> Tensor:
    """ỹ = √γ(s)·y + √(1 − γ(s))·ε′ (eq. aug; the forward process of eq. 3.10 at level s).

    ``level``: a scalar or one level per sample [B]; ``eps``: standard-normal noise shaped like y
    (drawn by the caller from a seeded source). Level 0 returns y exactly.
    """
    if eps.shape != y.shape:
        raise ValueError(f"augmentation noise {tuple(eps.shape)} must match the conditioning {tuple(y.shape)}")
    gamma = augmentation_gamma(level).to(y.device, y.dtype).reshape(-1)
    if gamma.numel() == 1:
        gamma = gamma.reshape(())
    elif gamma.numel() == y.shape[0]:
        gamma = gamma.view(-1, *([1] * (y.ndim - 1)))
    else:
        raise ValueError(f"got {gamma.numel()} noise-augmentation levels for a batch of {y.shape[0]}")
    return gamma.sqrt() * y + (1 - gamma).clamp(min=0).sqrt() * eps


def upsample_low_res(x: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Bicubic upsampling of the low-resolution image to the SR stage's size (SR3), clamped to [−1, 1]."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"low-resolution images must be [B, 3, h, w] in [-1, 1], got {tuple(x.shape)}")
    size = (size, size) if isinstance(size, int) else tuple(size)
    return F.interpolate(x.float(), size=size, mode="bicubic", align_corners=False).clamp(-1, 1).to(x.dtype)


def downsample(x: Tensor, factor: int) -> Tensor:
    """Area (box-filter) downsampling by an integer factor: how the SR training pairs are made."""
    if factor < 1 or x.shape[-1] % factor or x.shape[-2] % factor:
        raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by the factor {factor}")
    return F.avg_pool2d(x, factor) if factor > 1 else x


def pixel_denoiser(net: nn.Module, schedule: DiscreteSchedule, prediction: str) -> NetworkDenoiser:
    """A discrete-time pixel network as a σ-space denoiser (DESIGN.md §3)."""
    return NetworkDenoiser(net, prediction, DiscreteTime(schedule), sigma_min=schedule.sigma_min,
                           sigma_max=schedule.sigma_max)


class ResidualDenoiser(DenoiserWrapper):
    """An x-space denoiser from a denoiser of the scaled residual r = k·(x − u) (residual SR).

    SR3 (Saharia et al. 2021; thesis eq. 3.10) trains a conditional denoiser f_θ(x, ỹ, γ) of the
    high-resolution image itself. Residual SR diffusion (e.g. SRDiff, Li et al. 2022; ResShift,
    Yue et al. 2023, builds the shift into its forward process instead) lets the network model
    only what the upsampled low-resolution image u lacks. Here the network sees r = k·(x − u),
    where u is the clean bicubic upsample and k = ``scale`` brings r to roughly unit variance (the
    data scale the v-parameterisation assumes). Because x ↦ k·(x − u) is affine and invertible,
    the noisy state x = x0 + σε maps to r = r0 + (kσ)·ε with r0 = k·(x0 − u), and conditioning on x
    is conditioning on r, so E[x0 | x] = u + E[r0 | r]/k, i.e.

        D_x(x; σ, c) = u + D_r(k·(x − u); k·σ, c) / k.                                  (res)

    The σ range is the inner one divided by k; a discrete DDPM table of the inner denoiser is
    exposed scaled the same way (``time.schedule``), so schedule="model" steps land exactly on the
    network's own timesteps. ``base`` (u) is [B|1, C, H, W] and is tiled to a multiple batch (the
    stacked branches of classifier-free guidance), as :class:`~condiff.editing.BlendInpaint` does.
    """

    def __init__(self, inner: Denoiser, base: Tensor, scale: float):
        super().__init__(inner)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"residual_scale k must be a positive finite number, got {scale!r}")
        if not isinstance(base, Tensor) or base.ndim < 2:
            raise ValueError("base must be the upsampled low-resolution image u as a tensor [B, C, H, W]")
        self.scale = float(scale)
        self.register_buffer("base", base, persistent=False)
        table = model_schedule(inner)  # seen from x-space: σ' = σ/k, ᾱ' = 1/(1 + σ'²)
        scaled = None if table is None else DiscreteSchedule(1 / (1 + (table.sigmas / self.scale) ** 2))
        self.time = None if scaled is None else DiscreteTime(scaled)

    @property
    def sigma_min(self) -> float:
        return self.inner.sigma_min / self.scale

    @property
    def sigma_max(self) -> float:
        return self.inner.sigma_max / self.scale

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Cond | None = None) -> Tensor:
        sigma = sigma_batch(sigma, x)
        u = _fit_batch(self.base, x.shape[0], "the upsampled low-resolution image").to(x.device, x.dtype)
        if u.shape[1:] != x.shape[1:]:
            raise ValueError(f"the upsampled low-resolution image {tuple(u.shape)} does not fit the state "
                             f"{tuple(x.shape)}")
        k = self.scale
        return u + self.inner(k * (x - u), k * sigma, cond) / k


# --------------------------------------------------------------------------- the model


TextEncoder = Callable[[Sequence[str]], tuple[Tensor, Tensor]]


@dataclass
class CascadeModel:
    """Base (64²) + SR (→128²) pixel diffusion with a shared frozen text encoder.

    Either stage may be ``None`` (e.g. only the SR weights are installed, for ``condiff upscale``);
    using a missing stage raises a ValueError that says which component is missing.
    ``text_encoder(prompts) -> (context [B, L, D], mask [B, L])``. ``sr_residual``: the SR network
    denoises the residual k·(x − u) with k = ``sr_residual_scale`` (:class:`ResidualDenoiser`).
    """

    base_unet: nn.Module | None
    sr_unet: nn.Module | None
    text_encoder: TextEncoder
    base_schedule: DiscreteSchedule = field(default_factory=lambda: DiscreteSchedule.named("cosine"))
    sr_schedule: DiscreteSchedule = field(default_factory=lambda: DiscreteSchedule.named("cosine"))
    base_prediction: str = "v"
    sr_prediction: str = "v"
    base_size: int = 64
    sr_factor: int = 2
    sr_residual: bool = False
    sr_residual_scale: float = 1.0
    name: str = "builtin-cascade"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.sr_residual, self.sr_residual_scale = residual_settings(
            {"residual": self.sr_residual, "residual_scale": self.sr_residual_scale})

    @property
    def sr_size(self) -> int:
        return self.base_size * self.sr_factor

    @property
    def device(self) -> torch.device:
        net = self.base_unet if self.base_unet is not None else self.sr_unet
        p = next(net.parameters(), None) if net is not None else None
        return p.device if p is not None else torch.device("cpu")

    def to(self, device=None, dtype=None) -> "CascadeModel":
        for m in (self.base_unet, self.sr_unet):
            if m is not None:
                m.to(device=device, dtype=dtype)
        if hasattr(self.text_encoder, "to"):
            self.text_encoder.to(device=device)
        return self

    def require(self, *stages: str) -> None:
        """Raise a ValueError naming the component of the first missing stage ("base", "sr")."""
        for stage in stages:
            self._need(stage)

    def _need(self, stage: str) -> nn.Module:
        net = self.base_unet if stage == "base" else self.sr_unet
        if net is None:
            raise ValueError(
                f"this cascade has no {stage} stage: its weights (component {CASCADE_COMPONENTS[stage]!r}) are not "
                "installed; train them with the cascade recipe (training.cascade; condiff train job)"
            )
        return net

    def base_denoiser(self) -> NetworkDenoiser:
        return pixel_denoiser(self._need("base"), self.base_schedule, self.base_prediction)

    def sr_denoiser(self, upsampled: Tensor | None = None) -> Denoiser:
        """The SR stage as a denoiser of the high-resolution image x (concat/labels come in the Cond).

        A residual stage needs ``upsampled``, the clean bicubic upsample u of the low-resolution
        input (the first item of :meth:`sr_condition`), around which it denoises k·(x − u).
        """
        den = pixel_denoiser(self._need("sr"), self.sr_schedule, self.sr_prediction)
        if not self.sr_residual:
            return den
        if upsampled is None:
            raise ValueError("this SR stage is residual: pass upsampled=u, the clean bicubic upsample of the "
                             "low-resolution input (CascadeModel.sr_condition returns it)")
        return ResidualDenoiser(den, upsampled, self.sr_residual_scale)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Cond:
        """Cross-attention context of the prompts (padding positions included, as the U-Nets were trained)."""
        ctx, _ = self.text_encoder(list(prompts))
        return Cond(context=ctx.to(self.device, torch.float32))

    def sr_condition(self, low_res: Tensor, level: float, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(clean upsample u, concat channels ỹ, class labels) of the SR stage for images in [−1, 1].

        The images are bicubic-upsampled to the SR size (u) and noise-augmented to ``level`` with
        ``eps`` (noise of the *upsampled* shape, from the caller's seeded source) for the concat input.
        """
        up = upsample_low_res(low_res.to(self.device, torch.float32), self.sr_size_for(low_res))
        aug = noise_augment(up, level, eps.to(up.device, up.dtype))
        return up, aug, augmentation_label(level, up.shape[0]).to(up.device)

    def sr_size_for(self, low_res: Tensor) -> tuple[int, int]:
        """Output size of the SR stage for an input of any size (the U-Net is convolutional)."""
        h, w = low_res.shape[-2:]
        return h * self.sr_factor, w * self.sr_factor

    def parameter_counts(self) -> dict[str, int]:
        return component_parameter_counts({"base U-Net": self.base_unet, "SR U-Net": self.sr_unet,
                                           "text encoder": self.text_encoder})


# --------------------------------------------------------------------------- loading


def load_unet_component(folder: str | Path, device="cpu", dtype=torch.float32) -> tuple[UNet, dict]:
    """A U-Net component folder (config.json + checksummed safetensors) -> (network, config)."""
    config = read_config(folder)
    return load_frozen(UNet(UNetConfig.from_dict(config["network"])), folder, device=device, dtype=dtype,
                       what="U-Net"), config


def residual_settings(config: dict) -> tuple[bool, float]:
    """(residual, residual_scale) of an SR component's config; without the keys: (False, 1.0).

    A residual config must carry its scale k: the network's outputs mean nothing without it.
    """
    residual = config.get("residual", False)
    if not isinstance(residual, bool):
        raise WeightsError(f"SR config key 'residual' must be true or false, got {residual!r}")
    if residual and "residual_scale" not in config:
        raise WeightsError("SR config says residual: true but has no 'residual_scale' (the k of r = k·(x − u))")
    scale = config.get("residual_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise WeightsError(f"SR config key 'residual_scale' must be a positive number, got {scale!r}")
    return residual, float(scale)


def _schedule(config: dict) -> DiscreteSchedule:
    s = config.get("schedule", DEFAULT_SCHEDULE)
    return DiscreteSchedule.named(s["name"], int(s["steps"]))


def load_cascade(weights_dir: str | Path | None = None, *, device="cpu", dtype=torch.float32,
                 text_encoder: TextEncoder | None = None, stages: Sequence[str] = ("base", "sr")) -> CascadeModel:
    """The built-in cascade from ``weights_dir`` (default: condiff's weights folder).

    Loads whichever of the requested ``stages`` ("base" -> ``cascade-base``, "sr" -> ``cascade-sr``)
    is present; raises a ValueError when none is.
    """
    from .registry import WEIGHTS_DIR

    unknown = set(stages) - set(CASCADE_COMPONENTS)
    if unknown:
        raise ValueError(f"unknown cascade stage(s) {sorted(unknown)}; choose from {list(CASCADE_COMPONENTS)}")
    root = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    found = {stage: root / CASCADE_COMPONENTS[stage] for stage in stages
             if (root / CASCADE_COMPONENTS[stage] / "config.json").exists()}
    if not found:
        raise ValueError(
            f"no cascade weights in {root} (need {' and/or '.join(CASCADE_COMPONENTS.values())}); "
            "train them with the cascade stage of `condiff train job`"
        )
    nets, configs = {}, {}
    for stage, folder in found.items():
        nets[stage], configs[stage] = load_unet_component(folder, device, dtype)
    first = configs.get("base") or configs["sr"]
    if text_encoder is None:
        from .registry import builtin_text_encoder as _text_encoder

        text_encoder = _text_encoder(int(first.get("text_max_length", 24)))
    base_cfg, sr_cfg = configs.get("base", {}), configs.get("sr", {})
    residual, residual_scale = residual_settings(sr_cfg)
    return CascadeModel(
        base_unet=nets.get("base"), sr_unet=nets.get("sr"), text_encoder=text_encoder,
        base_schedule=_schedule(base_cfg), sr_schedule=_schedule(sr_cfg),
        base_prediction=base_cfg.get("prediction", "v"), sr_prediction=sr_cfg.get("prediction", "v"),
        base_size=int(base_cfg.get("image_size", sr_cfg.get("low_res_size", 64))),
        sr_factor=int(sr_cfg.get("sr_factor", 2)), sr_residual=residual, sr_residual_scale=residual_scale,
        info={"default_guidance": float(base_cfg.get("default_guidance", 4.0)),
              "default_steps": int(base_cfg.get("default_steps", 25)),
              "default_noise_level": float(sr_cfg.get("default_noise_level", 0.1)),
              "components": {k: str(v) for k, v in found.items()}},
    )
