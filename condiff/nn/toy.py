"""A small MLP network for low-dimensional (2-D) data: the toy diffusion model.

It follows the :class:`~condiff.denoisers.Network` protocol ``net(x, t, cond) -> Tensor``: ``x`` is
the (already preconditioned) input [B, dim], ``t`` the time input made by the denoiser's time
encoding (a DDPM timestep in [0, T) or c_noise = ¼ ln σ), and ``cond.class_labels`` an optional
class label per sample. The time input is embedded with the sinusoidal encoding of the
transformer (thesis eq. 2.22) after multiplying it by ``time_scale`` (so that both a timestep in
[0, 1000) and ¼ ln σ ∈ [−2, 1.5] spread over the encoding's frequencies), then mapped by a
two-layer MLP. Class labels get a learned embedding; label −1 (or no labels) selects a learned
"null" embedding, which is what classifier-free guidance needs (thesis eq. 3.8).

The trunk is a stack of pre-norm residual blocks  h ← h + W₂ SiLU(W₁ LN(h) + e(t, y)); the output
layer reads the residual stream without a final normalisation, so the output can grow linearly
with the input (an ε-network at high noise must return ε̂ ≈ x_t even for inputs in the tails of
the prior; a final LayerNorm would saturate there and send those samples astray). The output layer
starts at zero, so an untrained ε-network predicts ε̂ = 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..denoisers import Cond

__all__ = ["sinusoidal_embedding", "ToyMLP"]


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """PE(t)_{2i} = sin(t / max_period^{2i/dim}), PE(t)_{2i+1} = cos(...) (thesis eq. 2.22), [B, dim]."""
    if dim % 2:
        raise ValueError(f"embedding dimension must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float().reshape(-1, 1) * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class _Block(nn.Module):
    def __init__(self, hidden: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.fc2(self.drop(torch.nn.functional.silu(self.fc1(self.norm(h)) + emb)))


class ToyMLP(nn.Module):
    """MLP ε/x0/v/score/F network for [B, dim] data with time embedding and optional class label."""

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        depth: int = 3,
        time_dim: int = 64,
        time_scale: float = 1.0,
        num_classes: int = 0,
        dropout: float = 0.0,
    ):
        super().__init__()
        if dim < 1 or hidden < 1 or depth < 1:
            raise ValueError("dim, hidden and depth must be ≥ 1")
        if num_classes < 0:
            raise ValueError("num_classes must be ≥ 0 (0: unconditional)")
        self.config = dict(dim=dim, hidden=hidden, depth=depth, time_dim=time_dim, time_scale=time_scale,
                           num_classes=num_classes, dropout=dropout)
        self.dim, self.time_dim, self.time_scale, self.num_classes = dim, time_dim, float(time_scale), num_classes
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.label_emb = nn.Embedding(num_classes + 1, hidden) if num_classes else None  # last row: "null"
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, dropout) for _ in range(depth))
        self.block_emb = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"ToyMLP expects input [B, {self.dim}], got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        emb = self.time_mlp(sinusoidal_embedding(t * self.time_scale, self.time_dim).to(x.dtype))
        labels = None if cond is None else cond.class_labels
        if self.label_emb is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
            labels = labels.long()
            if labels.shape != (x.shape[0],) or (labels >= self.num_classes).any() or (labels < -1).any():
                raise ValueError(f"class labels must be [B] integers in [-1, {self.num_classes}), -1 meaning none")
            emb = emb + self.label_emb(torch.where(labels < 0, self.num_classes, labels))
        elif labels is not None:
            raise ValueError("this ToyMLP is unconditional (num_classes=0) but class labels were given")
        h = self.inp(x)
        for block, proj in zip(self.blocks, self.block_emb):
            h = block(h, proj(torch.nn.functional.silu(emb)))
        return self.out(h)
