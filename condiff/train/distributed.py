"""Data-parallel training across processes (torchrun), and the seeded data order it shards.

* :func:`init_distributed` reads the environment torchrun sets (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and joins the process group: NCCL on CUDA, gloo
  on CPU. Without those variables it returns a single-process context and touches nothing.
* Gradients are averaged with explicit bucketed all-reduces after the backward passes of a step
  (:func:`average_gradients`) rather than through ``DistributedDataParallel``. The trainer's
  objective may call the trained module in any way (a ControlNet inside a locked U-Net, LoRA layers
  inside a text encoder), which DDP's forward-hook bookkeeping does not allow, and gradient
  accumulation then needs no ``no_sync``. The cost — no overlap of communication with the backward
  pass — is small for the model sizes condiff trains.
* :class:`SeededBatchOrder` is the DistributedSampler analogue: epoch e visits the dataset in the
  permutation drawn from a generator seeded with (seed, e); a *global* batch is the next
  ``batch_size`` positions of that stream and rank r takes the r-th contiguous block of it. The whole
  state is one integer cursor, so resuming is exact, and a run on W processes sees the same global
  batches as a run on one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DistContext",
    "init_distributed",
    "shutdown_distributed",
    "all_reduce_mean",
    "average_gradients",
    "broadcast_module",
    "gather_objects",
    "mix_seed",
    "SeededBatchOrder",
    "shard_slice",
]

_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 chain), so streams of nearby ids are unrelated."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h & ((1 << 63) - 1)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a (possibly one-process) data-parallel job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"environment variable {name}={value!r} is not an integer (is torchrun setting it?)") from err


def init_distributed(device: str | torch.device | None = None) -> DistContext:
    """Join the torchrun process group if this process was started by torchrun.

    ``device``: "cpu" forces gloo on CPU; "cuda" (or None with CUDA present) uses NCCL and the GPU
    ``cuda:LOCAL_RANK``. Without torchrun's variables, a single-process context on ``device``.
    """
    world = _env_int("WORLD_SIZE") or 1
    rank = _env_int("RANK") or 0
    local_rank = _env_int("LOCAL_RANK") or 0
    want_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if want_cuda and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available; pass --device cpu")
    if want_cuda:
        dev = torch.device(device) if device is not None and torch.device(device).index is not None else torch.device(
            "cuda", local_rank
        )
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world <= 1:
        return DistContext(0, 1, 0, dev, None)
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} does not lie in [0, WORLD_SIZE={world})")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise ValueError(f"WORLD_SIZE={world} but {var} is unset; launch with torchrun")
        kwargs: dict[str, Any] = {"backend": backend, "rank": rank, "world_size": world}
        if backend == "nccl":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
    return DistContext(rank, world, local_rank, dev, dist.get_backend())


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: Tensor, ctx: DistContext) -> Tensor:
    """The mean of ``value`` over ranks (a copy; identity on one process)."""
    if not ctx.is_distributed:
        return value.clone()
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / ctx.world_size


@torch.no_grad()
def average_gradients(params: Iterable[nn.Parameter], ctx: DistContext, bucket_numel: int = 1 << 24) -> None:
    """Average ``.grad`` of ``params`` over ranks (missing grads count as zeros, so every rank
    sends the same buffers). Bucketed flat all-reduces of at most ``bucket_numel`` elements."""
    if not ctx.is_distributed:
        return
    params = list(params)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    buckets: list[list[nn.Parameter]] = []
    size = 0
    for p in params:
        if not buckets or size + p.numel() > bucket_numel or buckets[-1][0].grad.dtype != p.grad.dtype:
            buckets.append([])
            size = 0
        buckets[-1].append(p)
        size += p.numel()
    for bucket in buckets:
        flat = torch.cat([p.grad.reshape(-1) for p in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= ctx.world_size
        offset = 0
        for p in bucket:
            n = p.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n


@torch.no_grad()
def broadcast_module(module: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not ctx.is_distributed:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects)."""
    if not ctx.is_distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def shard_slice(batch_size: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous block of a global batch."""
    if batch_size % world_size:
        raise ValueError(f"global batch size {batch_size} is not divisible by the {world_size} processes")
    per = batch_size // world_size
    return slice(rank * per, (rank + 1) * per)


class SeededBatchOrder:
    """Epoch-wise seeded permutations of ``range(length)``, read as a stream of global batches."""

    def __init__(self, length: int, batch_size: int, seed: int = 0):
        if length < 1:
            raise ValueError("the dataset is empty")
        if batch_size < 1:
            raise ValueError(f"batch size must be ≥ 1, got {batch_size}")
        self.length, self.batch_size, self.seed = int(length), int(batch_size), int(seed)
        self.cursor = 0  # position in the infinite stream epoch·length + offset
        self._perm_epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    @property
    def epoch(self) -> int:
        return self.cursor // self.length

    def permutation(self, epoch: int) -> Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, 0xDA7A))
            self._perm = torch.randperm(self.length, generator=g)
            self._perm_epoch = epoch
        return self._perm

    def next_batch(self) -> Tensor:
        """Indices of the next global batch (may straddle an epoch boundary); advances the cursor."""
        out = []
        need = self.batch_size
        while need:
            epoch, offset = divmod(self.cursor, self.length)
            take = min(need, self.length - offset)
            out.append(self.permutation(epoch)[offset : offset + take])
            self.cursor += take
            need -= take
        return torch.cat(out)

    def state_dict(self) -> dict:
        return {"cursor": self.cursor, "length": self.length, "batch_size": self.batch_size, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        for key in ("length", "batch_size", "seed"):
            if int(state[key]) != getattr(self, key):
                raise ValueError(
                    f"the checkpoint's data order has {key}={state[key]}, this run has {getattr(self, key)}; "
                    "resume with the same dataset, batch size and seed"
                )
        self.cursor = int(state["cursor"])
