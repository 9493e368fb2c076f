"""Exponential moving average of model weights (Polyak averaging, as DDPM/LDM training uses).

After update n (counting from 0) the shadow weights are

    θ̄ ← d_n·θ̄ + (1 − d_n)·θ,   d_n = min(decay, (1 + n)/(10 + n))   (with warm-up)

or d_n = decay without warm-up. The warm-up keeps the early average from being dominated by the
random initial weights (the schedule of the TensorFlow/LDM EMA). Only trainable parameters are
averaged (frozen ones never change); floating-point buffers are copied as they are. Shadows are
kept in float32 even when the model trains in lower precision.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn

__all__ = ["EMA", "ema_decay_at"]


def ema_decay_at(num_updates: int, decay: float, warmup: bool = True) -> float:
    """The decay d_n used by update number ``num_updates`` (0-based)."""
    if warmup:
        return min(decay, (1.0 + num_updates) / (10.0 + num_updates))
    return decay


class EMA:
    """Shadow copies of a module's trainable parameters (and buffers)."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.param_names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.buffer_names = [n for n, b in model.named_buffers() if b.is_floating_point()]
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        self.shadow: dict[str, Tensor] = {n: params[n].detach().float().clone() for n in self.param_names}
        self.shadow.update({n: buffers[n].detach().float().clone() for n in self.buffer_names})

    def current_decay(self) -> float:
        return ema_decay_at(self.num_updates, self.decay, self.warmup)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        weight = 1.0 - self.current_decay()
        params = dict(model.named_parameters())
        shadows = [self.shadow[n] for n in self.param_names]
        values = [params[n].detach().to(torch.float32) for n in self.param_names]
        if shadows:
            torch._foreach_lerp_(shadows, values, weight)
        buffers = dict(model.named_buffers())
        for n in self.buffer_names:
            self.shadow[n].copy_(buffers[n].detach())
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into ``model`` (in the model's dtype)."""
        tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        for n, s in self.shadow.items():
            if n not in tensors:
                raise ValueError(f"the model has no tensor {n!r} that this EMA tracks; was it built for another model?")
            tensors[n].copy_(s)

    @contextmanager
    def average_parameters(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily evaluate ``model`` with the EMA weights; the training weights come back after."""
        tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        backup = {n: tensors[n].detach().clone() for n in self.shadow}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, b in backup.items():
                    tensors[n].copy_(b)

    def to(self, device) -> "EMA":
        self.shadow = {n: s.to(device) for n, s in self.shadow.items()}
        return self

    def state_dict(self) -> dict:
        """Plain types and tensors only (loadable with ``torch.load(weights_only=True)``)."""
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow"]
        missing = set(self.shadow) - set(shadow)
        unexpected = set(shadow) - set(self.shadow)
        if missing or unexpected:
            raise ValueError(
                f"EMA state does not fit this model (missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
            )
        for n, s in shadow.items():
            if s.shape != self.shadow[n].shape:
                raise ValueError(f"EMA tensor {n!r} has shape {tuple(s.shape)}, model has {tuple(self.shadow[n].shape)}")
            self.shadow[n].copy_(s)
        self.decay = float(state.get("decay", self.decay))
        self.warmup = bool(state.get("warmup", self.warmup))
        self.num_updates = int(state["num_updates"])
