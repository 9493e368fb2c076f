"""Attention layers of the U-Net and autoencoder (thesis §2.6.4 and §3.2.3).

* :class:`Attention` — multi-head scaled dot-product attention, thesis eq. (2.23)
  ``softmax(QKᵀ/√d_k)V``, computed by :func:`torch.nn.functional.scaled_dot_product_attention`.
  As **cross-attention** the queries come from the flattened feature map φ_i(z_t) and the keys and
  values from the conditioning tokens τ_θ(y): thesis eqs. (3.11)–(3.13).
* :class:`FeedForward` with :class:`GEGLU` (Shazeer 2020): ``W₂·(a ⊙ GELU(b))`` with ``[a, b] = W₁x``.
* :class:`TransformerBlock` — pre-LayerNorm self-attention, cross-attention and feed-forward, each
  with a residual connection (Rombach et al. 2022, "BasicTransformerBlock").
* :class:`SpatialTransformer` — GroupNorm, ``proj_in`` (1×1 conv or linear), transformer blocks over
  the H·W tokens, ``proj_out``, plus the input (Stable Diffusion's ``Transformer2DModel``).
* :class:`SpatialSelfAttention` — the single-head self-attention of the autoencoder's mid block.

Module and attribute names follow diffusers' checkpoint layout (``to_q``, ``to_out.0``,
``ff.net.0.proj``, ``ff.net.2``, ``proj_in`` …) so Stable Diffusion weights load without a key map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Attention", "GEGLU", "FeedForward", "TransformerBlock", "SpatialTransformer", "SpatialSelfAttention"]


def _key_mask(mask: Tensor | None, batch: int, length: int, device) -> Tensor | None:
    """[B, L] bool (True = attend) -> [B, 1, 1, L] for SDPA.

    A row with no True entry would make softmax undefined; it attends to every token instead
    (the same result as diffusers' additive −10000 bias).
    """
    if mask is None:
        return None
    if mask.shape != (batch, length):
        raise ValueError(f"context mask must have shape [{batch}, {length}], got {tuple(mask.shape)}")
    mask = mask.to(device=device, dtype=torch.bool)
    empty = ~mask.any(dim=1, keepdim=True)
    mask = mask | empty
    return mask[:, None, None, :]


class Attention(nn.Module):
    """Multi-head attention, thesis eq. (2.23); cross-attention (eqs. 3.11–3.13) when ``context_dim`` is set.

    ``x`` [B, N, query_dim] gives Q = W_Q x; ``context`` [B, L, context_dim] (or ``x`` itself for
    self-attention) gives K = W_K c, V = W_V c. ``upcast`` computes the attention in float32 when the
    inputs are half precision (Stable Diffusion 2.1 needs it in fp16).
    """

    def __init__(
        self,
        query_dim: int,
        *,
        heads: int,
        head_dim: int,
        context_dim: int | None = None,
        qkv_bias: bool = False,
        out_bias: bool = True,
        dropout: float = 0.0,
        upcast: bool = False,
    ):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.head_dim = head_dim
        self.upcast = upcast
        self.is_cross = context_dim is not None
        kv_dim = context_dim if context_dim is not None else query_dim
        self.to_q = nn.Linear(query_dim, inner, bias=qkv_bias)
        self.to_k = nn.Linear(kv_dim, inner, bias=qkv_bias)
        self.to_v = nn.Linear(kv_dim, inner, bias=qkv_bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim, bias=out_bias), nn.Dropout(dropout)])
        self.fused: tuple[Tensor, Tensor | None] | None = None

    def fuse_projections(self, on: bool = True) -> None:
        """Compute K and V (and Q, for self-attention) with one matrix product of the stacked weights.

        Exact in exact arithmetic (each output is the same dot product); the fused weights are a
        copy taken now and are not saved in the state dict, so fuse after loading or merging
        weights (LoRA merges) and call ``fuse_projections(False)`` before changing them.
        """
        if not on:
            self.fused = None
            return
        parts = [self.to_k, self.to_v] if self.is_cross else [self.to_q, self.to_k, self.to_v]
        weight = torch.cat([m.weight.detach() for m in parts])
        bias = None if parts[0].bias is None else torch.cat([m.bias.detach() for m in parts])
        self.fused = (weight, bias)

    def _hooked(self) -> bool:
        """True when a projection carries forward hooks (e.g. an unmerged LoRA): fused weights
        would bypass them, so the separate projections run instead."""
        return any(m._forward_hooks or m._forward_pre_hooks for m in (self.to_q, self.to_k, self.to_v))

    def _projections(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.fused is None or (not self.is_cross and context is not x) or self._hooked():
            return self.to_q(x), self.to_k(context), self.to_v(context)
        weight, bias = self.fused
        if self.is_cross:
            k, v = F.linear(context, weight, bias).chunk(2, dim=-1)
            return self.to_q(x), k, v
        q, k, v = F.linear(x, weight, bias).chunk(3, dim=-1)
        return q, k, v

    def _split(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        if context is None:
            if self.is_cross:
                raise ValueError("cross-attention needs context tokens [B, L, D] (cond.context)")
            context = x
        elif context.shape[-1] != self.to_k.in_features:
            raise ValueError(
                f"context has width {context.shape[-1]} but this attention expects {self.to_k.in_features} "
                "(cross_attention_dim of the network config)"
            )
        b = x.shape[0]
        if context.shape[0] != b:
            raise ValueError(f"context batch {context.shape[0]} does not match feature batch {b}")
        q, k, v = (self._split(t) for t in self._projections(x, context))
        attn_mask = _key_mask(mask, b, context.shape[1], x.device)
        dtype = q.dtype
        if self.upcast and dtype in (torch.float16, torch.bfloat16):
            q, k, v = q.float(), k.float(), v.float()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = out.to(dtype).transpose(1, 2).reshape(b, -1, self.heads * self.head_dim)
        return self.to_out[1](self.to_out[0](out))


class GEGLU(nn.Module):
    """Gated GELU unit ``a ⊙ GELU(b)`` with ``[a, b] = proj(x)`` (Shazeer 2020)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: Tensor) -> Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """``Linear(GEGLU(x))`` with hidden width ``mult·dim``; layout ``net = [GEGLU, Dropout, Linear]``."""

    def __init__(self, dim: int, *, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        hidden = mult * dim
        self.net = nn.ModuleList([GEGLU(dim, hidden), nn.Dropout(dropout), nn.Linear(hidden, dim)])

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x += attn1(LN x)``; ``x += attn2(LN x, context)``; ``x += ff(LN x)``.

    Without ``context_dim`` the block has no cross-attention (``attn2``/``norm2`` absent): a
    self-attention-only block for networks not conditioned on tokens.
    """

    # A keyword-only signature whose shape alone matches other functions' (e.g. langevin_corrector): nothing shared.
    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        head_dim: int,
        context_dim: int | None = None,
        dropout: float = 0.0,
        upcast: bool = False,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads=heads, head_dim=head_dim, dropout=dropout, upcast=upcast)
        if context_dim is not None:
            self.norm2 = nn.LayerNorm(dim)
            self.attn2 = Attention(
                dim, heads=heads, head_dim=head_dim, context_dim=context_dim, dropout=dropout, upcast=upcast
            )
        else:
            self.norm2 = self.attn2 = None
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout)

    def forward(self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn1(self.norm1(x))
        if self.attn2 is not None:
            x = x + self.attn2(self.norm2(x), context, context_mask)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Attention over the H·W positions of a feature map, with a residual connection.

    ``use_linear_projection`` selects linear ``proj_in``/``proj_out`` (Stable Diffusion 2.x) instead
    of 1×1 convolutions (1.x); they are the same map applied before/after flattening.
    """

    def __init__(
        self,
        channels: int,
        *,
        heads: int,
        head_dim: int,
        depth: int = 1,
        context_dim: int | None = None,
        groups: int = 32,
        use_linear_projection: bool = False,
        dropout: float = 0.0,
        upcast: bool = False,
    ):
        super().__init__()
        if channels % groups:
            raise ValueError(f"{channels} channels are not divisible into {groups} GroupNorm groups")
        inner = heads * head_dim
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        if use_linear_projection:
            self.proj_in, self.proj_out = nn.Linear(channels, inner), nn.Linear(inner, channels)
        else:
            self.proj_in, self.proj_out = nn.Conv2d(channels, inner, 1), nn.Conv2d(inner, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(inner, heads=heads, head_dim=head_dim, context_dim=context_dim, dropout=dropout, upcast=upcast)
            for _ in range(depth)
        )

    def forward(self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        b, _, h, w = x.shape
        y = self.norm(x)
        if not self.use_linear_projection:
            y = self.proj_in(y)
        y = y.permute(0, 2, 3, 1).reshape(b, h * w, -1)
        if self.use_linear_projection:
            y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y, context, context_mask)
        if self.use_linear_projection:
            y = self.proj_out(y)
        y = y.reshape(b, h, w, -1).permute(0, 3, 1, 2)
        if not self.use_linear_projection:
            y = self.proj_out(y)
        return x + y


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over H·W with GroupNorm and a residual (LDM autoencoder mid block).

    Linear ``to_q/to_k/to_v/to_out.0`` with biases (the original LDM files store them as 1×1
    convolutions; reshape ``[C, C, 1, 1] -> [C, C]`` when mapping keys).
    """

    def __init__(self, channels: int, *, groups: int = 32, eps: float = 1e-6):
        super().__init__()
        if channels % groups:
            raise ValueError(f"{channels} channels are not divisible into {groups} GroupNorm groups")
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.group_norm(x).reshape(b, c, h * w).transpose(1, 2)
        q, k, v = (proj(y)[:, None] for proj in (self.to_q, self.to_k, self.to_v))
        dtype = q.dtype
        if dtype in (torch.float16, torch.bfloat16):  # softmax in float32, as the SD autoencoder does
            q, k, v = q.float(), k.float(), v.float()
        y = F.scaled_dot_product_attention(q, k, v).to(dtype)[:, 0]
        y = self.to_out[0](y).transpose(1, 2).reshape(b, c, h, w)
        return x + y
