"""ControlNet (Zhang et al. 2023; thesis §3.1.3, Figure 3.3).

The diffusion U-Net is locked; a trainable copy of its contracting path and middle block
(:class:`condiff.nn.unet.UNetEncoder`) receives the noisy input plus an embedded condition image c
(edges, depth, pose …). Each of its skip features and its middle output passes through a
zero-initialised 1×1 convolution ("zero convolution") and is added to the locked U-Net's skip
connections / middle output. At initialisation every residual is exactly zero, so the combined
model equals the locked one and training starts from it unharmed.

State-dict keys equal those of diffusers' ``ControlNetModel`` (``controlnet_cond_embedding.conv_in``,
``controlnet_cond_embedding.blocks.N``, ``controlnet_down_blocks.N``, ``controlnet_mid_block``,
plus the copied ``conv_in``, ``time_embedding``, ``down_blocks``, ``mid_block``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..denoisers import Cond
from .config_dict import check_config_keys
from .unet import UNET_PRESETS, UNet, UNetConfig, UNetEncoder

__all__ = ["ControlNetConfig", "ConditioningEmbedding", "ControlNet", "ControlledUNet", "sum_controls"]

CHANNEL_ORDERS = ("rgb", "bgr")


@dataclass
class ControlNetConfig:
    """A ControlNet: the locked U-Net's config (its encoder is copied) plus the condition embedding.

    ``conditioning_embedding_out_channels`` sets the condition-image encoder: each step after the
    first halves the resolution, so the condition image is 2^(len−1) times the U-Net input size
    (8 for Stable Diffusion latents, (16, 32, 96, 256)).
    """

    unet: UNetConfig = field(default_factory=UNetConfig)
    conditioning_channels: int = 3
    conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256)
    conditioning_channel_order: str = "rgb"
    global_pool_conditions: bool = False

    def __post_init__(self):
        if isinstance(self.unet, dict):
            self.unet = UNetConfig.from_dict(self.unet)
        self.conditioning_embedding_out_channels = tuple(self.conditioning_embedding_out_channels)
        if not self.conditioning_embedding_out_channels or self.conditioning_channels < 1:
            raise ValueError("conditioning_embedding_out_channels must be non-empty and conditioning_channels >= 1")
        if self.conditioning_channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"conditioning_channel_order must be one of {CHANNEL_ORDERS}")

    @property
    def condition_downsampling(self) -> int:
        return 2 ** (len(self.conditioning_embedding_out_channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "unet": self.unet.to_dict(), "conditioning_channels": self.conditioning_channels,
            "conditioning_embedding_out_channels": list(self.conditioning_embedding_out_channels),
            "conditioning_channel_order": self.conditioning_channel_order,
            "global_pool_conditions": self.global_pool_conditions,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ControlNetConfig":
        check_config_keys(cls, d)
        return cls(**{**d, "unet": UNetConfig.from_dict(d["unet"]) if "unet" in d else UNetConfig()})

    @classmethod
    def for_unet(cls, unet_preset: str, **kwargs) -> "ControlNetConfig":
        """ControlNet for a named U-Net preset; built-in latent models (f=4) get a 3-step embedding."""
        if unet_preset not in UNET_PRESETS:
            raise ValueError(f"unknown U-Net preset {unet_preset!r}; choose one of {sorted(UNET_PRESETS)}")
        if unet_preset.startswith("builtin-ldm"):
            kwargs.setdefault("conditioning_embedding_out_channels", (16, 32, 64))
        elif unet_preset.startswith("builtin"):
            kwargs.setdefault("conditioning_embedding_out_channels", (16,))
        return cls(unet=UNetConfig.preset(unet_preset), **kwargs)

    @classmethod
    def from_diffusers_config(cls, d: dict[str, Any]) -> "ControlNetConfig":
        """Build from a diffusers ``ControlNetModel`` ``config.json`` dict."""
        return cls(
            unet=UNetConfig.from_diffusers_config({k: v for k, v in d.items() if k != "up_block_types"}),
            conditioning_channels=d.get("conditioning_channels", 3),
            conditioning_embedding_out_channels=d.get("conditioning_embedding_out_channels", (16, 32, 96, 256)),
            conditioning_channel_order=d.get("controlnet_conditioning_channel_order", "rgb"),
            global_pool_conditions=d.get("global_pool_conditions", False),
        )

    def to_diffusers_config(self) -> dict[str, Any]:
        d = self.unet.to_diffusers_config()
        for k in ("sample_size", "out_channels", "up_block_types", "dropout", "time_embedding_dim",
                  "class_embeddings_concat", "reverse_transformer_layers_per_block"):
            d.pop(k)
        d.update(
            conditioning_channels=self.conditioning_channels,
            conditioning_embedding_out_channels=tuple(self.conditioning_embedding_out_channels),
            controlnet_conditioning_channel_order=self.conditioning_channel_order,
            global_pool_conditions=self.global_pool_conditions,
        )
        return d


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ConditioningEmbedding(nn.Module):
    """Small conv encoder of the condition image (SiLU between convs; stride-2 every second conv).

    Its last convolution is zero-initialised, so a fresh ControlNet ignores the condition.
    """

    def __init__(self, embedding_channels: int, conditioning_channels: int, block_out_channels: Sequence[int]):
        super().__init__()
        boc = tuple(block_out_channels)
        self.conv_in = nn.Conv2d(conditioning_channels, boc[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for c_in, c_out in zip(boc[:-1], boc[1:]):
            self.blocks.append(nn.Conv2d(c_in, c_in, 3, padding=1))
            self.blocks.append(nn.Conv2d(c_in, c_out, 3, padding=1, stride=2))
        self.conv_out = _zero(nn.Conv2d(boc[-1], embedding_channels, 3, padding=1))

    def forward(self, c: Tensor) -> Tensor:
        h = F.silu(self.conv_in(c))
        for conv in self.blocks:
            h = F.silu(conv(h))
        return self.conv_out(h)


class ControlNet(UNetEncoder):
    """Trainable encoder copy + condition embedding + zero convolutions (thesis §3.1.3).

    ``forward(x, t, cond, control_image, scale)`` returns ``{"down": [...], "mid": tensor}``, the
    residuals a :class:`~condiff.nn.unet.UNet` adds when given ``cond.control``. Several
    ControlNets combine by summing their residuals (:func:`sum_controls`).
    """

    def __init__(self, config: ControlNetConfig):
        super().__init__(config.unet)
        self.controlnet_config = config
        boc = config.unet.block_out_channels
        self.controlnet_cond_embedding = ConditioningEmbedding(
            boc[0], config.conditioning_channels, config.conditioning_embedding_out_channels
        )
        widths = [boc[0]]
        for i, ch in enumerate(boc):
            widths += [ch] * config.unet.layers_per_block + ([ch] if i < len(boc) - 1 else [])
        self.controlnet_down_blocks = nn.ModuleList(_zero(nn.Conv2d(w, w, 1)) for w in widths)
        self.controlnet_mid_block = _zero(nn.Conv2d(boc[-1], boc[-1], 1))

    @classmethod
    def from_unet(cls, unet: UNet, conditioning_channels: int = 3, **kwargs) -> "ControlNet":
        """A ControlNet whose encoder starts as an exact copy of ``unet``'s (Zhang et al. 2023 §3.2).

        ``kwargs`` go to :class:`ControlNetConfig` (e.g. ``conditioning_embedding_out_channels``).
        """
        config = ControlNetConfig(unet=UNetConfig.from_dict(unet.config.to_dict()),
                                  conditioning_channels=conditioning_channels, **kwargs)
        net = cls(config)
        for name in ("conv_in", "time_embedding", "class_embedding", "down_blocks", "mid_block"):
            src, dst = getattr(unet, name), getattr(net, name)
            if src is not None:
                dst.load_state_dict(src.state_dict())
        ref = next(unet.parameters())
        return net.to(device=ref.device, dtype=ref.dtype)

    def forward(
        self,
        x: Tensor,
        t: Tensor | float,
        cond: Cond | None,
        control_image: Tensor,
        scale: float = 1.0,
        *,
        guess_mode: bool = False,
    ) -> dict[str, Any]:
        """Residuals for the locked U-Net, multiplied by ``scale`` (the conditioning strength).

        ``guess_mode`` scales the residuals from 0.1 (shallowest) to 1.0 (middle) geometrically,
        as in the reference implementation's "guess mode" for prompt-free control.
        """
        cfg = self.controlnet_config
        cond = cond if cond is not None else Cond()
        self._check_input(x, cond.context)
        if control_image.ndim != 4 or control_image.shape[1] != cfg.conditioning_channels:
            raise ValueError(
                f"control image must be [B, {cfg.conditioning_channels}, H, W], got {tuple(control_image.shape)}"
            )
        expected = tuple(s * cfg.condition_downsampling for s in x.shape[-2:])
        if tuple(control_image.shape[-2:]) != expected:
            raise ValueError(
                f"control image is {tuple(control_image.shape[-2:])} but this ControlNet needs {expected} "
                f"({cfg.condition_downsampling}× the network input {tuple(x.shape[-2:])}); resize it"
            )
        if control_image.shape[0] != x.shape[0]:
            raise ValueError(f"control image batch {control_image.shape[0]} does not match input batch {x.shape[0]}")
        if cfg.conditioning_channel_order == "bgr":
            control_image = control_image.flip(1)
        context = cond.context.to(x.dtype) if cond.context is not None else None
        emb = self.embed(t, cond.class_labels, x.shape[0], x.dtype, x.device)
        h = self.conv_in(x) + self.controlnet_cond_embedding(control_image.to(x.dtype))
        h, skips = self.encode(h, emb, context, cond.context_mask)
        h = self.middle(h, emb, context, cond.context_mask)
        down = [conv(s) for conv, s in zip(self.controlnet_down_blocks, skips)]
        mid = self.controlnet_mid_block(h)
        if guess_mode and not cfg.global_pool_conditions:
            scales = torch.logspace(-1, 0, len(down) + 1, device=x.device) * scale
            down = [d * s for d, s in zip(down, scales)]
            mid = mid * scales[-1]
        else:
            down = [d * scale for d in down]
            mid = mid * scale
        if cfg.global_pool_conditions:
            down = [d.mean(dim=(2, 3), keepdim=True) for d in down]
            mid = mid.mean(dim=(2, 3), keepdim=True)
        return {"down": down, "mid": mid}


def sum_controls(controls: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Multi-ControlNet: the element-wise sum of several residual dicts."""
    if not controls:
        raise ValueError("sum_controls needs at least one control dict")
    down = [torch.stack(ts).sum(0) for ts in zip(*(c["down"] for c in controls))]
    if any(len(c["down"]) != len(down) for c in controls):
        raise ValueError("control dicts have different numbers of down residuals")
    return {"down": down, "mid": torch.stack([c["mid"] for c in controls]).sum(0)}


class ControlledUNet(nn.Module):
    """A locked :class:`UNet` plus ControlNets, itself a condiff ``Network`` ``net(x, t, cond)``.

    ``units`` is a list of ``(controlnet, control_image, scale)``. A control image with batch 1, or
    with a batch that divides the input batch (e.g. the doubled batch of classifier-free guidance),
    is repeated to fit. ControlNet inputs are the first ``in_channels`` channels of ``x``, so an
    inpainting U-Net (9 channels) can use a 4-channel ControlNet.
    """

    def __init__(self, unet: UNet, units: Sequence[tuple[ControlNet, Tensor, float]]):
        super().__init__()
        self.unet = unet
        self.controlnets = nn.ModuleList(u[0] for u in units)
        self.images = [u[1] for u in units]
        self.scales = [float(u[2]) for u in units]

    def forward(self, x: Tensor, t: Tensor | float, cond: Cond | None = None) -> Tensor:
        cond = cond if cond is not None else Cond()
        controls = []
        for net, image, scale in zip(self.controlnets, self.images, self.scales):
            if x.shape[0] % image.shape[0]:
                raise ValueError(f"control image batch {image.shape[0]} does not divide input batch {x.shape[0]}")
            image = image.to(x.device).repeat(x.shape[0] // image.shape[0], 1, 1, 1)
            controls.append(net(x[:, : net.config.in_channels], t, cond, image, scale))
        if cond.control is not None:
            controls.append(cond.control)
        return self.unet(x, t, cond.replace(control=sum_controls(controls) if controls else None))
