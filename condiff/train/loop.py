"""The generic training loop: AdamW, LR schedule, EMA, bf16, clipping, accumulation, exact resume.

The :class:`Trainer` knows nothing of diffusion. It trains ``model`` (an ``nn.Module``; its
parameters with ``requires_grad`` are optimised) on an **objective**

    objective(model, batch, generator) -> Tensor      (per-sample losses [b], or a scalar)

drawn on a **data source**, which is either

* an indexable dataset (``len`` + ``[i]``; a tensor, or a tuple/dict of equal-length tensors, is
  indexed in one go), visited in seeded epoch-wise permutations (:class:`SeededBatchOrder`), or
* a callable ``batch_fn(step, generator) -> global batch`` (data generated on the fly; the
  generator is seeded by (seed, step), identical on every rank).

``config.batch_size`` is the *global* batch of one optimizer step: it is split over the processes
of a torchrun job (contiguous blocks) and then into ``grad_accum`` micro-batches. Diffusion losses
plug in through :class:`DiffusionObjective`; later models (autoencoder, U-Net, ControlNet, LoRA)
bring their own objectives and data.

Randomness and exact resume: the objective's generator is re-seeded for every micro-batch from
(seed, rank, step, micro-batch), the data order is an integer cursor, and the global RNGs (dropout)
are saved per rank in each checkpoint with the model, EMA, optimizer and LR schedule
(:mod:`condiff.train.checkpoint`). A run killed after the checkpoint at step k and resumed
reproduces the losses of an uninterrupted run bit for bit (tests/test_train.py checks it).

Each logged record (``metrics.jsonl``, one JSON object a line) holds step, loss (mean over the
steps since the last record and over all ranks), lr, grad_norm (before clipping), time (seconds of
training so far, across resumes). On CUDA the objective runs under bf16 autocast; on CPU in fp32.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import default_collate
from tqdm.auto import tqdm

from ..denoisers import Cond
from ..io import atomic_path
from .checkpoint import (
    LATEST,
    capture_rng_state,
    find_latest,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .distributed import (
    DistContext,
    SeededBatchOrder,
    all_reduce_mean,
    average_gradients,
    broadcast_module,
    gather_objects,
    mix_seed,
    shard_slice,
)
from .ema import EMA
from .schedule import LRSchedule

__all__ = ["TrainConfig", "LRSchedule", "Trainer", "TrainResult", "DiffusionObjective", "split_diffusion_batch",
           "check_option_names"]

Objective = Callable[[nn.Module, Any, torch.Generator], Tensor]


def check_option_names(cls: type, options: dict, what: str) -> None:
    """A ValueError naming the keys of ``options`` that are no field of the dataclass ``cls`` (``what`` options)."""
    known = {f.name for f in fields(cls)}
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"unknown {what} option(s) {sorted(unknown)}; known: {sorted(known)}")


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (saved in every checkpoint)."""

    steps: int = 1000
    batch_size: int = 64  # global batch per optimizer step (all ranks × accumulation)
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    lr_schedule: str = "constant"  # "constant" or "cosine" (both after linear warm-up)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    ema_decay: float = 0.999  # 0 turns EMA off
    ema_warmup: bool = True
    grad_clip: float | None = 1.0  # max global grad norm; None: no clipping
    seed: int = 0
    precision: str = "auto"  # "auto": bf16 autocast on CUDA, fp32 on CPU; "bf16"; "fp32"
    log_every: int = 10
    checkpoint_every: int = 0  # steps between checkpoints; 0: only at the end of fit()
    checkpoint_minutes: float = 0.0  # also checkpoint after this much wall time (checked when logging)
    keep_checkpoints: int = 2
    progress: bool = True

    def validate(self) -> "TrainConfig":
        def need(cond: bool, msg: str):
            if not cond:
                raise ValueError(f"invalid training config: {msg}")

        need(isinstance(self.steps, int) and self.steps >= 0, f"steps must be an integer ≥ 0, got {self.steps}")
        need(self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be ≥ 1")
        need(self.lr > 0 and math.isfinite(self.lr), f"lr must be positive, got {self.lr}")
        need(self.lr_schedule in ("constant", "cosine"), f"lr_schedule must be 'constant' or 'cosine', not {self.lr_schedule!r}")
        need(self.warmup_steps >= 0 and 0 <= self.min_lr_ratio <= 1, "warmup_steps ≥ 0 and 0 ≤ min_lr_ratio ≤ 1")
        need(0 <= self.ema_decay < 1, f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        need(self.grad_clip is None or self.grad_clip > 0, "grad_clip must be positive or None")
        need(self.precision in ("auto", "bf16", "fp32"), f"precision must be auto, bf16 or fp32, not {self.precision!r}")
        need(self.log_every >= 1 and self.checkpoint_every >= 0 and self.keep_checkpoints >= 1,
             "log_every ≥ 1, checkpoint_every ≥ 0, keep_checkpoints ≥ 1")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        check_option_names(cls, d, "training")
        d = dict(d)
        if "adam_betas" in d:
            d["adam_betas"] = tuple(d["adam_betas"])
        return cls(**d).validate()


# --------------------------------------------------------------------------------------------
# batches: fetching, slicing, moving


def _is_tensor_table(data: Any) -> bool:
    if isinstance(data, (tuple, list)):
        return len(data) > 0 and all(isinstance(t, Tensor) for t in data)
    if isinstance(data, dict):
        return len(data) > 0 and all(isinstance(t, Tensor) for t in data.values())
    return False


def _table_len(data: Any) -> int:
    lens = {len(t) for t in (data.values() if isinstance(data, dict) else data)}
    if len(lens) != 1:
        raise ValueError(f"the tensors of a tensor dataset must have equal lengths, got {sorted(lens)}")
    return lens.pop()


def _slice(batch: Any, index: Tensor | slice) -> Any:
    if isinstance(batch, Tensor):
        return batch[index]
    if isinstance(batch, Cond):
        return batch.select(index)
    if isinstance(batch, dict):
        return {k: _slice(v, index) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_slice(v, index) for v in batch)
    return batch


def _batch_len(batch: Any) -> int | None:
    if isinstance(batch, Tensor):
        return batch.shape[0] if batch.ndim else None
    if isinstance(batch, Cond):
        return batch.batch_size()
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (tuple, list)) else ()
    for v in values:
        n = _batch_len(v)
        if n is not None:
            return n
    return None


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(v, device) for v in batch)
    if is_dataclass(batch) and not isinstance(batch, type):
        return replace(batch, **{f.name: _to_device(getattr(batch, f.name), device) for f in fields(batch)})
    return batch


def _fetch(data: Any, indices: Tensor) -> Any:
    if isinstance(data, Tensor) or _is_tensor_table(data):
        return _slice(data, indices)
    getitems = getattr(data, "__getitems__", None)
    items = getitems(indices.tolist()) if getitems is not None else [data[int(i)] for i in indices]
    return default_collate(items)


def split_diffusion_batch(batch: Any) -> tuple[Tensor, Cond | None]:
    """``x0`` | ``(x0, labels)`` | ``(x0, Cond)`` | ``{"x0": ..., "cond": Cond}`` -> (x0, cond)."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], Tensor):
        x0, c = batch
        if isinstance(c, Cond) or c is None:
            return x0, c
        if isinstance(c, Tensor):
            return x0, Cond(class_labels=c)
    if isinstance(batch, dict) and isinstance(batch.get("x0"), Tensor):
        return batch["x0"], batch.get("cond")
    raise ValueError(
        "a diffusion batch must be x0, (x0, class_labels), (x0, Cond) or {'x0': ..., 'cond': Cond}; "
        f"got {type(batch).__name__}"
    )


class DiffusionObjective:
    """Adapts a diffusion loss (:mod:`condiff.losses`) to the trainer's objective interface.

    ``denoiser``: the Denoiser the loss calls; None means the trained module *is* the denoiser
    (e.g. a :class:`~condiff.denoisers.NetworkDenoiser`). Pass a wrapper when the trained module
    sits inside a larger denoiser (ControlNet, LoRA).
    """

    def __init__(self, loss: Callable, denoiser: Callable | None = None):
        self.loss = loss
        self.denoiser = denoiser

    def __call__(self, model: nn.Module, batch: Any, generator: torch.Generator) -> Tensor:
        x0, cond = split_diffusion_batch(batch)
        return self.loss(self.denoiser if self.denoiser is not None else model, x0, cond, generator)


@dataclass
class TrainResult:
    step: int
    history: list[dict] = field(default_factory=list)
    checkpoint: Path | None = None
    elapsed_s: float = 0.0
    stopped_early: bool = False

    def summary(self, cfg: TrainConfig, wall_s: float, processes: int = 1) -> dict:
        """The run's record for job logs and model cards: steps, global batch, process count, peak lr, wall
        time, final loss and about 20 points of the loss curve."""
        h = self.history
        return {"steps": self.step, "batch_size": cfg.batch_size, "processes": processes, "lr": cfg.lr,
                "wall_s": round(wall_s, 1), "final_loss": h[-1]["loss"] if h else None,
                "loss_curve": [(r["step"], round(r["loss"], 5)) for r in h[:: max(1, len(h) // 20)]]}


# --------------------------------------------------------------------------------------------


class Trainer:
    """Trains ``model`` on ``objective`` over ``data`` (see the module docstring).

    ``out_dir``: where ``metrics.jsonl`` and ``checkpoints/`` go (None: nothing is written).
    ``dist``: the :class:`DistContext` of a torchrun job (default: one process on ``device``,
    which defaults to CUDA when present). ``callbacks``: ``fn(trainer, record_or_None)`` after
    every step (e.g. to sample images); ``overwrite``: allow a fresh run in a folder that already
    holds checkpoints (they are deleted).
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        data: Any,
        config: TrainConfig,
        *,
        out_dir: str | Path | None = None,
        dist: DistContext | None = None,
        device: str | torch.device | None = None,
        callbacks: Sequence[Callable[["Trainer", dict | None], None]] = (),
        overwrite: bool = False,
    ):
        self.config = config.validate()
        if dist is None:
            dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
            dist = DistContext(device=dev)
        self.dist = dist
        self.device = dist.device
        self.model = model.to(self.device)
        self.objective = objective
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.callbacks = list(callbacks)
        self.overwrite = overwrite
        c = self.config
        per_rank = c.batch_size // dist.world_size
        if c.batch_size % (dist.world_size * c.grad_accum):
            raise ValueError(
                f"batch_size {c.batch_size} must be divisible by processes × grad_accum = "
                f"{dist.world_size} × {c.grad_accum}"
            )
        self.micro_batch = per_rank // c.grad_accum
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
        self._frozen = {n for n, p in self.model.named_parameters(remove_duplicate=False) if not p.requires_grad}
        # fused kernels on CUDA; multi-tensor (foreach) updates on CPU, where the default is per-tensor
        impl = {"fused": True} if self.device.type == "cuda" else {"foreach": True}
        self.optimizer = torch.optim.AdamW(
            self.params, lr=c.lr, betas=tuple(c.adam_betas), eps=c.adam_eps, weight_decay=c.weight_decay, **impl
        )
        self.lr_schedule = LRSchedule(c.lr_schedule, c.warmup_steps, c.steps, c.min_lr_ratio)
        self.ema = EMA(self.model, c.ema_decay, c.ema_warmup).to(self.device) if c.ema_decay > 0 else None
        self._set_data(data)
        self.step = 0
        self._saved_step = -1  # step of the newest checkpoint this trainer wrote or loaded
        self.elapsed = 0.0
        self.history: list[dict] = []
        self._generator = torch.Generator(device=self.device)
        self.autocast = (c.precision == "bf16") or (c.precision == "auto" and self.device.type == "cuda")

    # ---------------------------------------------------------------- data
    def _set_data(self, data: Any) -> None:
        self.data = data
        self.order: SeededBatchOrder | None = None
        if isinstance(data, Tensor) or _is_tensor_table(data):
            length = len(data) if isinstance(data, Tensor) else _table_len(data)
        elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
            length = len(data)
        elif callable(data):
            return
        else:
            raise ValueError("data must be an indexable dataset (len and [i]) or a callable batch_fn(step, generator)")
        self.order = SeededBatchOrder(length, self.config.batch_size, self.config.seed)

    def _local_batch(self) -> Any:
        """This rank's part of the global batch of the current step."""
        shard = shard_slice(self.config.batch_size, self.dist.rank, self.dist.world_size)
        if self.order is not None:
            return _fetch(self.data, self.order.next_batch()[shard])
        g = torch.Generator().manual_seed(mix_seed(self.config.seed, self.step, 0xBA7C))
        batch = self.data(self.step, g)
        n = _batch_len(batch)
        if n != self.config.batch_size:
            raise ValueError(f"batch_fn returned a batch of {n} samples; the global batch size is {self.config.batch_size}")
        return _slice(batch, shard)

    # ---------------------------------------------------------------- state
    @property
    def checkpoint_dir(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / "checkpoints"

    def model_state(self) -> dict[str, Tensor]:
        """Trainable parameters and buffers (frozen parameters are rebuilt by whoever builds the model)."""
        return {k: v for k, v in self.model.state_dict().items() if k not in self._frozen}

    def save_checkpoint(self) -> Path | None:
        """Checkpoint the current step (collective: every rank must call it; rank 0 writes)."""
        if self.checkpoint_dir is None:
            return None
        rngs = gather_objects(capture_rng_state(), self.dist)
        self._saved_step = self.step
        if not self.dist.is_main:
            return None
        state = {
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "ema": None if self.ema is None else {k: v for k, v in self.ema.state_dict().items() if k != "shadow"},
            "rng": rngs,
            "world_size": self.dist.world_size,
            "data_order": None if self.order is None else self.order.state_dict(),
            "elapsed": self.elapsed,
            "config": self.config.to_dict(),
        }
        ema = None if self.ema is None else self.ema.shadow
        return save_checkpoint(self.checkpoint_dir, self.step, self.model_state(), state, ema, self.config.keep_checkpoints)

    def load_checkpoint(self, path: str | Path) -> int:
        ckpt = load_checkpoint(path, map_location="cpu")
        st = ckpt.state
        for key in ("batch_size", "grad_accum", "seed"):
            if st["config"][key] != getattr(self.config, key):
                raise ValueError(
                    f"the checkpoint was trained with {key}={st['config'][key]} but this run has "
                    f"{key}={getattr(self.config, key)}; resume with the same value"
                )
        result = self.model.load_state_dict(ckpt.model, strict=False)
        missing = set(result.missing_keys) - self._frozen
        if missing or result.unexpected_keys:
            raise ValueError(
                f"checkpoint {ckpt.path} does not fit the model (missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(result.unexpected_keys)[:5]})"
            )
        self.optimizer.load_state_dict(st["optimizer"])
        if self.ema is not None:
            if ckpt.ema is None:
                raise ValueError(f"checkpoint {ckpt.path} has no EMA weights but this run uses EMA")
            self.ema.load_state_dict({**st["ema"], "shadow": ckpt.ema})
        if self.order is not None:
            if st["data_order"] is None:
                raise ValueError("the checkpoint was trained on a batch_fn, this run on a dataset")
            self.order.load_state_dict(st["data_order"])
        rngs = st["rng"]
        restore_rng_state(rngs[self.dist.rank] if len(rngs) == self.dist.world_size else rngs[0])
        self.step = self._saved_step = int(st["step"])
        self.elapsed = float(st["elapsed"])
        return self.step

    def _seed_globals(self) -> None:
        s = mix_seed(self.config.seed, self.dist.rank, 0x61_0BA1)
        torch.manual_seed(s)
        np.random.seed(s % (2**32))
        random.seed(s)

    def _prepare_out_dir(self, resumed: bool) -> None:
        if self.out_dir is None or not self.dist.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        metrics = self.out_dir / "metrics.jsonl"
        if resumed and metrics.exists():  # drop records of steps after the checkpoint (the killed tail)
            kept = [ln for ln in metrics.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= self.step]
            with atomic_path(metrics) as tmp:
                tmp.write_text("".join(ln + "\n" for ln in kept))
        elif not resumed:
            ckdir = self.checkpoint_dir
            if ckdir is not None and (ckdir / LATEST).exists():
                if not self.overwrite:
                    raise FileExistsError(
                        f"{self.out_dir} already holds a training run; resume it (--resume) or pass overwrite "
                        "(--overwrite) to start afresh"
                    )
                for p in list(ckdir.glob("step_*")) + [ckdir / LATEST]:
                    p.unlink()
            metrics.write_text("")

    # ---------------------------------------------------------------- the loop
    def _resolve_resume(self, resume: bool | str | Path) -> Path | None:
        if resume is False or resume is None:
            return None
        if resume is True:
            if self.checkpoint_dir is None:
                raise ValueError("resume=True needs an out_dir to look for checkpoints in")
            return find_latest(self.checkpoint_dir)
        return Path(resume)

    def fit(self, resume: bool | str | Path = False, stop_at: int | None = None, time_limit_s: float | None = None) -> TrainResult:
        """Train up to ``config.steps`` (or ``stop_at``) steps; checkpoint at the end.

        ``resume``: True (newest checkpoint in out_dir, fresh start if there is none) or a path.
        ``time_limit_s``: stop early (after a checkpoint) once this much wall time has passed — to
        split a long run into pieces; checked when logging, so all ranks stop at the same step.
        """
        c = self.config
        ckpt = self._resolve_resume(resume)
        continuing = ckpt is not None or self.step > 0  # a second fit() in-process continues
        if ckpt is not None:
            self.load_checkpoint(ckpt)
        elif self.step == 0:
            self._seed_globals()
            broadcast_module(self.model, self.dist)
            if self.ema is not None:  # shadows start from the (broadcast) initial weights
                self.ema = EMA(self.model, c.ema_decay, c.ema_warmup).to(self.device)
        self._prepare_out_dir(resumed=continuing)
        end = c.steps if stop_at is None else min(stop_at, c.steps)
        bar = tqdm(total=c.steps, initial=self.step, disable=not (c.progress and self.dist.is_main), desc="train")
        start_wall = time.perf_counter()
        last_ckpt_wall = start_wall
        elapsed0 = self.elapsed
        sums = torch.zeros(2, device=self.device)  # loss, grad norm since the last record
        n_sum = 0
        last_path: Path | None = None
        stopped = False
        self.model.train()
        while self.step < end:
            loss, grad_norm, lr = self._train_step()
            sums += torch.stack([loss, grad_norm])
            n_sum += 1
            self.step += 1
            self.elapsed = elapsed0 + time.perf_counter() - start_wall
            bar.update(1)
            record = None
            want_ckpt = c.checkpoint_every > 0 and self.step % c.checkpoint_every == 0
            if self.step % c.log_every == 0 or self.step == end:
                now = time.perf_counter()
                flags = [0.0, 0.0]
                if self.dist.is_main:
                    flags[0] = float(c.checkpoint_minutes > 0 and now - last_ckpt_wall >= 60 * c.checkpoint_minutes)
                    flags[1] = float(time_limit_s is not None and now - start_wall >= time_limit_s)
                reduced = all_reduce_mean(torch.cat([sums / n_sum, torch.tensor(flags, device=self.device)]), self.dist)
                reduced = reduced.tolist()
                record = {"step": self.step, "loss": reduced[0], "lr": lr, "grad_norm": reduced[1], "time": round(self.elapsed, 4)}
                if not (math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"])):
                    raise FloatingPointError(
                        f"non-finite loss or gradient at step {self.step} (loss {record['loss']}, grad norm "
                        f"{record['grad_norm']}); lower the learning rate or check the data"
                    )
                self._log(record)
                bar.set_postfix(loss=f"{record['loss']:.4g}", refresh=False)
                sums.zero_()
                n_sum = 0
                want_ckpt = want_ckpt or reduced[2] > 0
                stopped = reduced[3] > 0 and self.step < end
            if want_ckpt and self.step < end and not stopped:
                last_path = self.save_checkpoint() or last_path
                last_ckpt_wall = time.perf_counter()
            for cb in self.callbacks:
                cb(self, record)
            if stopped:
                break
        bar.close()
        if self._saved_step != self.step:
            last_path = self.save_checkpoint() or last_path
        if self.dist.is_distributed:
            torch.distributed.barrier()
        return TrainResult(self.step, list(self.history), last_path, self.elapsed, stopped)

    def _train_step(self) -> tuple[Tensor, Tensor, float]:
        c = self.config
        batch = self._local_batch()
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for m in range(c.grad_accum):
            micro = _slice(batch, slice(m * self.micro_batch, (m + 1) * self.micro_batch))
            micro = _to_device(micro, self.device)
            self._generator.manual_seed(mix_seed(c.seed, self.dist.rank, self.step, m))
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                per_sample = self.objective(self.model, micro, self._generator)
            loss = per_sample.float().mean()
            (loss / c.grad_accum).backward()
            total += loss.detach() / c.grad_accum
        average_gradients(self.params, self.dist)
        max_norm = c.grad_clip if c.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        lr = c.lr * self.lr_schedule(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return total, grad_norm.detach().float(), lr

    def _log(self, record: dict) -> None:
        self.history.append(record)
        if self.out_dir is not None and self.dist.is_main:
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
