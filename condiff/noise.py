"""Per-sample seeded noise: the same seed gives the same image whatever the batch size.

Every random draw of a sampler goes through a :class:`NoiseSource`. Sample ``i`` of a batch owns
its own ``torch.Generator`` (seeded with ``seeds[i]``), and draws happen on the CPU in float32
before moving to the target device/dtype, so a result depends only on (seed, call order), not on
the batch it shares or on the device that runs the network.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["NoiseSource", "seeds_for_batch"]


def seeds_for_batch(seed: int, batch_size: int) -> list[int]:
    """Seeds of a batch started at ``seed``: sample i gets ``seed + i`` (A1111's convention)."""
    if batch_size < 1:
        raise ValueError("batch size must be ≥ 1")
    return [int(seed) + i for i in range(batch_size)]


def _to_device(t: Tensor, device, dtype) -> Tensor:
    """Move host noise to ``device``. To a CUDA device it goes through pinned memory without
    blocking, so a stochastic sampler step does not wait for the GPU to drain its queue (the
    caching host allocator keeps the pinned buffer alive until the copy has run)."""
    device = torch.device(device) if device is not None else t.device
    if device.type == "cuda":
        return t.pin_memory().to(device=device, non_blocking=True).to(dtype)
    return t.to(device=device, dtype=dtype)


class NoiseSource:
    """A stream of standard-normal noise with one generator per sample."""

    def __init__(self, seeds: int | Sequence[int], batch_size: int | None = None):
        if isinstance(seeds, int):
            seeds = seeds_for_batch(seeds, batch_size or 1)
        elif batch_size is not None and len(seeds) != batch_size:
            raise ValueError(f"got {len(seeds)} seeds for a batch of {batch_size}")
        if len(seeds) == 0:
            raise ValueError("need at least one seed")
        self.seeds = [int(s) for s in seeds]
        self._gens = []
        for s in self.seeds:
            g = torch.Generator(device="cpu")
            g.manual_seed(s % (2**63))
            self._gens.append(g)

    def __len__(self) -> int:
        return len(self._gens)

    def randn(self, shape: Sequence[int], device=None, dtype=torch.float32) -> Tensor:
        """Noise of shape ``[len(self), *shape]``; row i drawn from generator i."""
        rows = [torch.randn(tuple(shape), generator=g, dtype=torch.float32) for g in self._gens]
        return _to_device(torch.stack(rows), device, dtype)

    def randn_like(self, x: Tensor) -> Tensor:
        if x.shape[0] != len(self):
            raise ValueError(f"noise source has {len(self)} seeds but the batch has {x.shape[0]} samples")
        return self.randn(x.shape[1:], device=x.device, dtype=x.dtype)

    def rand(self, shape: Sequence[int], device=None, dtype=torch.float32) -> Tensor:
        rows = [torch.rand(tuple(shape), generator=g, dtype=torch.float32) for g in self._gens]
        return _to_device(torch.stack(rows), device, dtype)

    def state(self) -> list[Tensor]:
        return [g.get_state() for g in self._gens]

    def set_state(self, states: list[Tensor]) -> None:
        for g, s in zip(self._gens, states, strict=True):
            g.set_state(s)
