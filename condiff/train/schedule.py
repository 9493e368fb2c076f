"""Learning-rate schedules shared by every trainer: the generic :class:`~condiff.train.loop.Trainer` and the
personalization trainers (:mod:`condiff.personalize.train_common`).

A schedule is a multiplier of the base learning rate per optimizer update: linear warm-up, then
constant or cosine decay (SGDR, Loshchilov & Hutter 2017, eq. 5 without restarts). It imports
nothing of condiff, so any trainer can use it without depending on the training loop.
"""

from __future__ import annotations

import math

__all__ = ["LRSchedule"]


class LRSchedule:
    """Multiplier of the base LR for update ``step`` (0-based): linear warm-up, then constant or
    cosine decay to ``min_ratio`` at ``total`` steps (Loshchilov & Hutter 2017)."""

    def __init__(self, kind: str, warmup: int, total: int, min_ratio: float = 0.0):
        self.kind, self.warmup, self.total, self.min_ratio = kind, int(warmup), int(total), float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def state_dict(self) -> dict:
        return {"kind": self.kind, "warmup": self.warmup, "total": self.total, "min_ratio": self.min_ratio}
