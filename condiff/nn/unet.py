"""The conditional diffusion U-Net (thesis §2.6, §3.2.3) in Stable Diffusion's layout.

Contracting path of residual blocks (§2.6.2) and spatial transformers (self-attention eq. 2.23,
cross-attention eqs. 3.11–3.13) with stride-2 downsampling; a middle block; an expansive path
that concatenates the skip connections (§2.6.1) and upsamples. The timestep enters through the
sinusoidal embedding of eq. (2.22) and an MLP, added inside every residual block; class labels
(or a projected float vector, e.g. unCLIP image embeddings) add to that time embedding.

The module tree produces exactly the state-dict keys and shapes of diffusers'
``UNet2DConditionModel`` (``conv_in``, ``time_embedding.linear_1``, ``down_blocks.N.resnets.M``,
``down_blocks.N.attentions.M.transformer_blocks.K.attn2.to_k``, ``mid_block``, ``up_blocks``,
``conv_norm_out``, ``conv_out`` …), so a diffusers state dict loads with ``strict=True``.

ControlNet residuals (Zhang et al. 2023, thesis §3.1.3) are added to the skip connections and to
the middle-block output, exactly where diffusers adds ``down_block_additional_residuals`` /
``mid_block_additional_residual``. :class:`UNetEncoder` (time embedding + contracting path +
middle block) is shared with :class:`condiff.nn.controlnet.ControlNet`, its trainable copy.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..denoisers import Cond
from .attention import SpatialTransformer
from .layers import Downsample, ResnetBlock, SinusoidalEmbedding, TimestepEmbedding, Upsample, maybe_checkpoint
from .unet_config import UNET_PRESETS, UNetConfig

__all__ = ["UNetConfig", "UNET_PRESETS", "DownBlock", "MidBlock", "UpBlock", "UNetEncoder", "UNet", "count_parameters",
           "component_parameter_counts"]


def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())


def component_parameter_counts(components: Mapping[str, object]) -> dict[str, int]:
    """``{name: count_parameters(m)}`` of a model's components, in order, skipping those that are not
    modules (absent: None; or plain callables such as a text encoder that is a function)."""
    return {name: count_parameters(m) for name, m in components.items() if isinstance(m, nn.Module)}


# ===================================================================== blocks
def _attention_kwargs(cfg: UNetConfig, level: int) -> dict[str, Any]:
    ch, heads = cfg.block_out_channels[level], cfg.heads[level]
    return dict(
        heads=heads, head_dim=ch // heads, depth=cfg.transformer_depths[level], context_dim=cfg.cross_attention_dim,
        groups=cfg.norm_num_groups, use_linear_projection=cfg.use_linear_projection, dropout=cfg.dropout,
        upcast=cfg.upcast_attention,
    )


class _Checkpointable(nn.Module):
    gradient_checkpointing = False

    def _call(self, fn, *args):
        return maybe_checkpoint(fn, *args, enabled=self.gradient_checkpointing and self.training)


class DownBlock(_Checkpointable):
    """One level of the contracting path: ``num_layers`` × (resnet [+ spatial transformer]) [+ downsample].

    Returns the output and the tuple of skip tensors (one per layer, one after the downsampler).
    With ``temb_channels=None`` and no attention it is the autoencoder's encoder block.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        num_layers: int,
        temb_channels: int | None,
        attention: dict[str, Any] | None = None,
        add_downsample: bool = True,
        downsample_padding: int = 1,
        groups: int = 32,
        eps: float = 1e-5,
        dropout: float = 0.0,
        time_scale_shift: str = "default",
    ):
        super().__init__()
        if attention is not None:
            self.attentions = nn.ModuleList(SpatialTransformer(out_channels, **attention) for _ in range(num_layers))
        else:
            self.attentions = None
        self.resnets = nn.ModuleList(
            ResnetBlock(
                in_channels if i == 0 else out_channels, out_channels, temb_channels=temb_channels, groups=groups,
                eps=eps, dropout=dropout, time_scale_shift=time_scale_shift,
            )
            for i in range(num_layers)
        )
        self.downsamplers = nn.ModuleList([Downsample(out_channels, padding=downsample_padding)]) if add_downsample else None

    def forward(self, h: Tensor, temb: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, ...]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            h = self._call(resnet, h, temb)
            if self.attentions is not None:
                h = self._call(self.attentions[i], h, context, context_mask)
            skips.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
            skips.append(h)
        return h, tuple(skips)


class MidBlock(_Checkpointable):
    """resnet → spatial transformer → resnet at the lowest resolution."""

    def __init__(self, channels: int, *, temb_channels: int, attention: dict[str, Any], groups: int, eps: float,
                 dropout: float = 0.0, time_scale_shift: str = "default"):
        super().__init__()
        self.attentions = nn.ModuleList([SpatialTransformer(channels, **attention)])
        self.resnets = nn.ModuleList(
            ResnetBlock(channels, channels, temb_channels=temb_channels, groups=groups, eps=eps, dropout=dropout,
                        time_scale_shift=time_scale_shift)
            for _ in range(2)
        )

    def forward(self, h: Tensor, temb: Tensor, context: Tensor | None = None,
                context_mask: Tensor | None = None) -> Tensor:
        h = self._call(self.resnets[0], h, temb)
        h = self._call(self.attentions[0], h, context, context_mask)
        return self._call(self.resnets[1], h, temb)


class UpBlock(_Checkpointable):
    """One level of the expansive path: each resnet sees ``cat([h, skip])`` (thesis §2.6.1).

    ``prev_channels`` comes from the level below; the skip widths are ``out_channels`` except the
    last one, which is ``skip_channels`` (the width of the next-higher level).
    """

    def __init__(
        self,
        skip_channels: int,
        prev_channels: int,
        out_channels: int,
        *,
        num_layers: int,
        temb_channels: int,
        attention: dict[str, Any] | None,
        add_upsample: bool,
        groups: int,
        eps: float,
        dropout: float = 0.0,
        time_scale_shift: str = "default",
        depths: Sequence[int] | None = None,
    ):
        super().__init__()
        if attention is not None:
            depths = tuple(depths) if depths is not None else (attention.get("depth", 1),) * num_layers
            if len(depths) != num_layers:
                raise ValueError(f"depths lists {len(depths)} transformer depths for {num_layers} layers")
            self.attentions = nn.ModuleList(SpatialTransformer(out_channels, **{**attention, "depth": d})
                                            for d in depths)
        else:
            self.attentions = None
        self.resnets = nn.ModuleList()
        for i in range(num_layers):
            res_in = prev_channels if i == 0 else out_channels
            skip = skip_channels if i == num_layers - 1 else out_channels
            self.resnets.append(
                ResnetBlock(res_in + skip, out_channels, temb_channels=temb_channels, groups=groups, eps=eps,
                            dropout=dropout, time_scale_shift=time_scale_shift)
            )
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if add_upsample else None

    def forward(self, h: Tensor, skips: list[Tensor], temb: Tensor, context: Tensor | None = None,
                context_mask: Tensor | None = None, upsample_size: tuple[int, int] | None = None) -> Tensor:
        """Consumes ``len(self.resnets)`` tensors from the end of ``skips`` (in place)."""
        for i, resnet in enumerate(self.resnets):
            h = torch.cat([h, skips.pop()], dim=1)
            h = self._call(resnet, h, temb)
            if self.attentions is not None:
                h = self._call(self.attentions[i], h, context, context_mask)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h, upsample_size)
        return h


# ===================================================================== networks
class UNetEncoder(nn.Module):
    """Time/class embedding, ``conv_in``, contracting path and middle block of a U-Net.

    The part a ControlNet copies (Zhang et al. 2023); :class:`UNet` adds the expansive path.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        cfg = self.config = config
        boc = cfg.block_out_channels
        self.conv_in = nn.Conv2d(cfg.in_channels, boc[0], 3, padding=1)
        self.time_proj = SinusoidalEmbedding(boc[0], flip_sin_to_cos=cfg.flip_sin_to_cos, freq_shift=cfg.freq_shift)
        self.time_embedding = TimestepEmbedding(boc[0], cfg.time_embed_dim)
        self.class_embedding = self._make_class_embedding(cfg)
        resnet_kw = dict(groups=cfg.norm_num_groups, eps=cfg.norm_eps, dropout=cfg.dropout,
                         time_scale_shift=cfg.resnet_time_scale_shift)
        self.down_blocks = nn.ModuleList(
            DownBlock(
                boc[max(i - 1, 0)], boc[i], num_layers=cfg.layers_per_block, temb_channels=cfg.temb_channels,
                attention=_attention_kwargs(cfg, i) if cfg.attention_levels[i] else None,
                add_downsample=i < cfg.num_levels - 1, **resnet_kw,
            )
            for i in range(cfg.num_levels)
        )
        self.mid_block = None
        if cfg.mid_block:
            self.mid_block = MidBlock(boc[-1], temb_channels=cfg.temb_channels,
                                      attention=_attention_kwargs(cfg, cfg.num_levels - 1), **resnet_kw)

    @staticmethod
    def _make_class_embedding(cfg: UNetConfig) -> nn.Module | None:
        if cfg.num_class_embeds is not None:
            return nn.Embedding(cfg.num_class_embeds, cfg.time_embed_dim)
        if cfg.class_embed_type == "timestep":
            return TimestepEmbedding(cfg.block_out_channels[0], cfg.time_embed_dim)
        if cfg.class_embed_type == "projection":
            return TimestepEmbedding(cfg.projection_class_embeddings_input_dim, cfg.time_embed_dim)
        if cfg.class_embed_type == "identity":
            return nn.Identity()
        return None

    # ------------------------------------------------------------------ helpers
    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute block activations in the backward pass (training mode only) to save memory."""
        for m in self.modules():
            if isinstance(m, _Checkpointable):
                m.gradient_checkpointing = enabled

    def _check_input(self, x: Tensor, context: Tensor | None) -> None:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects input [B, {cfg.in_channels}, H, W], got {tuple(x.shape)}"
                " (concat conditioning channels are part of in_channels)"
            )
        needs_context = cfg.cross_attention_dim is not None and (any(cfg.attention_levels) or cfg.mid_block)
        if needs_context and context is None:
            raise ValueError(f"this network is cross-attention conditioned: pass cond.context [B, L, {cfg.cross_attention_dim}]")
        if not needs_context and context is not None:
            raise ValueError("this network has no cross-attention; cond.context must be None")
        if context is not None and (context.ndim != 3 or context.shape[0] != x.shape[0]):
            raise ValueError(f"cond.context must be [B={x.shape[0]}, L, D], got {tuple(context.shape)}")

    def embed(self, t: Tensor | float, class_labels: Tensor | None, batch: int, dtype: torch.dtype,
              device: torch.device) -> Tensor:
        """Time embedding MLP(PE(t)) (eq. 2.22) plus the class embedding, as the resnets see it."""
        t = torch.as_tensor(t, device=device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"timesteps must be a scalar or a [{batch}] tensor, got shape {tuple(t.shape)}")
        emb = self.time_embedding(self.time_proj(t).to(dtype))
        if self.class_embedding is None:
            if class_labels is not None:
                raise ValueError("this network has no class embedding; cond.class_labels must be None")
            return emb
        if class_labels is None:
            raise ValueError("this network is class-conditioned: pass cond.class_labels")
        class_labels = class_labels.to(device)
        if class_labels.shape[0] != batch:
            raise ValueError(f"class_labels batch {class_labels.shape[0]} does not match input batch {batch}")
        cfg = self.config
        if cfg.num_class_embeds is not None:
            if class_labels.dtype.is_floating_point or class_labels.ndim != 1:
                raise ValueError("class_labels must be a [B] integer tensor for an embedding-table class embedding")
        elif cfg.class_embed_type == "timestep":
            class_labels = self.time_proj(class_labels.reshape(batch)).to(dtype)
        else:
            class_labels = class_labels.to(dtype)
        class_emb = self.class_embedding(class_labels).to(dtype)
        if class_emb.shape != (batch, cfg.time_embed_dim):
            raise ValueError(f"class embedding has shape {tuple(class_emb.shape)}, expected [{batch}, {cfg.time_embed_dim}]")
        return torch.cat([emb, class_emb], dim=-1) if cfg.class_embeddings_concat else emb + class_emb

    def encode(self, h: Tensor, emb: Tensor, context: Tensor | None, context_mask: Tensor | None
               ) -> tuple[Tensor, list[Tensor]]:
        """Contracting path from the ``conv_in`` features ``h``: returns (output, skip tensors)."""
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, emb, context, context_mask)
            skips.extend(block_skips)
        return h, skips

    def middle(self, h: Tensor, emb: Tensor, context: Tensor | None, context_mask: Tensor | None) -> Tensor:
        return h if self.mid_block is None else self.mid_block(h, emb, context, context_mask)


class UNet(UNetEncoder):
    """Conditional U-Net ``ε̂ / v̂ / x̂0 = net(x, t, cond)`` (the condiff ``Network`` protocol).

    ``forward(x, t, cond)``: x [B, in_channels, H, W]; t a [B] float tensor (fractional timesteps
    allowed) or a scalar; ``cond.context`` [B, L, cross_attention_dim]; ``cond.context_mask`` [B, L]
    bool; ``cond.class_labels``; ``cond.control = {"down": [...], "mid": tensor}`` ControlNet
    residuals. :meth:`compute` is the same with keyword arguments.
    """

    def __init__(self, config: UNetConfig):
        super().__init__(config)
        cfg = config
        boc = cfg.block_out_channels
        rev = list(reversed(boc))
        resnet_kw = dict(groups=cfg.norm_num_groups, eps=cfg.norm_eps, dropout=cfg.dropout,
                         time_scale_shift=cfg.resnet_time_scale_shift)
        self.up_blocks = nn.ModuleList()
        for i in range(cfg.num_levels):
            level = cfg.num_levels - 1 - i
            self.up_blocks.append(
                UpBlock(
                    rev[min(i + 1, cfg.num_levels - 1)], rev[max(i - 1, 0)], rev[i],
                    num_layers=cfg.layers_per_block + 1, temb_channels=cfg.temb_channels,
                    attention=_attention_kwargs(cfg, level) if cfg.attention_levels[level] else None,
                    add_upsample=i < cfg.num_levels - 1, depths=cfg.up_transformer_depths(i), **resnet_kw,
                )
            )
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, boc[0], eps=cfg.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(boc[0], cfg.out_channels, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor | float, cond: Cond | None = None) -> Tensor:
        cond = cond if cond is not None else Cond()
        control = cond.control or {}
        return self.compute(
            x, t, context=cond.context, context_mask=cond.context_mask, class_labels=cond.class_labels,
            down_residuals=control.get("down"), mid_residual=control.get("mid"),
        )

    def compute(
        self,
        x: Tensor,
        t: Tensor | float,
        *,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        class_labels: Tensor | None = None,
        down_residuals: Sequence[Tensor] | None = None,
        mid_residual: Tensor | None = None,
    ) -> Tensor:
        """Keyword form of :meth:`forward`; residuals are added as in diffusers' ControlNet path."""
        self._check_input(x, context)
        context = context.to(x.dtype) if context is not None else None
        emb = self.embed(t, class_labels, x.shape[0], x.dtype, x.device)
        h, skips = self.encode(self.conv_in(x), emb, context, context_mask)
        if down_residuals is not None:
            if len(down_residuals) != len(skips):
                raise ValueError(f"control has {len(down_residuals)} down residuals; this U-Net has {len(skips)} skips")
            for s, r in zip(skips, down_residuals):
                if r.shape != s.shape:
                    raise ValueError(f"control residual of shape {tuple(r.shape)} does not fit skip {tuple(s.shape)}")
            skips = [s + r.to(s.dtype) for s, r in zip(skips, down_residuals)]
        h = self.middle(h, emb, context, context_mask)
        if mid_residual is not None:
            if mid_residual.shape != h.shape:
                raise ValueError(f"control mid residual {tuple(mid_residual.shape)} does not fit {tuple(h.shape)}")
            h = h + mid_residual.to(h.dtype)
        for block in self.up_blocks:
            upsample_size = None
            if block.upsamplers is not None:  # after this block, the next skip's size is the target
                upsample_size = tuple(skips[-1 - len(block.resnets)].shape[-2:])
            h = block(h, skips, emb, context, context_mask, upsample_size)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))
