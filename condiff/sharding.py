"""Work split across processes started by ``torchrun`` (one or many GPUs, one or many machines).

condiff brings no scheduler of its own: under ``torchrun --nproc-per-node N`` (or a multi-node
rendezvous) every process runs the same command, joins the process group
(:func:`condiff.train.distributed.init_distributed`: NCCL on CUDA, gloo on CPU) and takes its share
of a list of jobs by index. Without torchrun the same code runs everything in one process.

Rules that make a sharded run equal to a single-device run:

* **Chunks are planned before the split.** :func:`plan_chunks` cuts the job list into network
  batches of at most ``batch`` consecutive jobs with the same options, independently of the number
  of processes; chunk ``c`` goes to rank ``c mod W`` (:func:`chunks_for_rank`). Every image is
  therefore computed in exactly the batch it would have on one device — with per-sample seeded
  noise (``condiff.noise``) its pixels are identical on the same kind of device.
* **No gap, no duplicate.** The chunks partition the job list, and each output file has one owner.
* **Written once, resumable.** Outputs are written atomically by their owner; a re-run skips
  chunks whose files all exist (unless ``overwrite``), so a killed run resumes where it stopped.
* **Failures fail the run.** A rank that fails stops its own work, and the outcome of every rank is
  gathered: the run raises with the failing rank's message on every rank, and rank 0 records what
  was written in ``manifest.json``. (A rank that dies outright is handled by torchrun, which
  stops the others.)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import Tensor

from .errors import CondiffError, OutputError
from .images import save_png
from .io import atomic_path
from .prompt_file import ImageJob
from .train.distributed import DistContext, gather_objects

__all__ = ["plan_chunks", "chunks_for_rank", "run_sharded", "ShardReport", "ShardFailure"]

Render = Callable[[list[ImageJob]], tuple[Tensor, list[dict[str, Any]]]]


class ShardFailure(CondiffError, RuntimeError):
    """A rank of a sharded run failed (its message names the rank and the first failing image)."""


@dataclass
class ShardReport:
    """What one rank did: image indices written and skipped, seconds, and its error if any."""

    rank: int
    written: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


def plan_chunks(jobs: Sequence[ImageJob], batch: int) -> list[list[ImageJob]]:
    """Consecutive runs of jobs with equal options, cut into chunks of at most ``batch``."""
    if batch < 1:
        raise ValueError(f"batch must be ≥ 1, got {batch}")
    chunks: list[list[ImageJob]] = []
    for job in jobs:
        last = chunks[-1] if chunks else None
        if last is not None and len(last) < batch and last[0].batch_key() == job.batch_key():
            last.append(job)
        else:
            chunks.append([job])
    return chunks


def chunks_for_rank(chunks: Sequence[list[ImageJob]], rank: int, world_size: int) -> list[list[ImageJob]]:
    """Rank ``rank``'s chunks: every ``world_size``-th one starting at ``rank`` (balanced, fixed)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} does not lie in [0, {world_size})")
    return list(chunks[rank::world_size])


def _render_chunk(chunk: list[ImageJob], out_dir: Path, render: Render, overwrite: bool, report: ShardReport) -> None:
    paths = [out_dir / job.file_name for job in chunk]
    todo = [i for i, p in enumerate(paths) if overwrite or not p.exists()]
    if not todo:
        report.skipped.extend(job.index for job in chunk)
        return
    images, params = render(chunk)  # the whole chunk, so every image sees the batch it would on one device
    for i, (job, path) in enumerate(zip(chunk, paths)):
        if i in todo:
            save_png(images[i:i + 1], path, params[i], overwrite=True)
            report.written.append(job.index)
        else:
            report.skipped.append(job.index)


def _write_manifest(out_dir: Path, jobs: Sequence[ImageJob], reports: list[ShardReport], wall: float) -> None:
    manifest = {
        "images": [{"index": j.index, "file": j.file_name, "prompt": j.prompt, "seed": j.seed, **j.options}
                   for j in jobs],
        "ranks": [asdict(r) | {"written": len(r.written), "skipped": len(r.skipped)} for r in reports],
        "world_size": len(reports),
        "wall_seconds": round(wall, 3),
    }
    with atomic_path(out_dir / "manifest.json") as tmp:
        Path(tmp).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def run_sharded(ctx: DistContext, jobs: Sequence[ImageJob], out_dir: str | Path, render: Render, *, batch: int,
                overwrite: bool = False, echo: Callable[[str], None] | None = None) -> list[ShardReport]:
    """Render this rank's share of ``jobs`` into ``out_dir`` and gather every rank's report.

    ``render(chunk) -> (images [B, 3, H, W] in [0, 1], per-image parameter dicts)``. Returns the
    reports of all ranks (on every rank); raises :class:`ShardFailure` if any rank failed.
    """
    out_dir = Path(out_dir)
    if out_dir.suffix.lower() == ".png" or (out_dir.exists() and not out_dir.is_dir()):
        raise OutputError(f"{out_dir} must be a folder for the images of a prompt file, not a file")
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    mine = chunks_for_rank(plan_chunks(jobs, batch), ctx.rank, ctx.world_size)
    report = ShardReport(ctx.rank)
    tag = f"[rank {ctx.rank}] " if ctx.is_distributed else ""
    for done, chunk in enumerate(mine, 1):
        try:
            _render_chunk(chunk, out_dir, render, overwrite, report)
        except Exception as err:  # recorded and re-raised below, after every rank has reported
            report.error = f"image {chunk[0].index}: {err}"
            break
        if echo is not None:
            elapsed = time.perf_counter() - start
            eta = elapsed / done * (len(mine) - done)
            echo(f"{tag}chunk {done}/{len(mine)} (images {chunk[0].index}–{chunk[-1].index}), ETA {eta:.0f} s")
    report.seconds = time.perf_counter() - start
    reports: list[ShardReport] = gather_objects(report, ctx)
    failed = [r for r in reports if r.error]
    if ctx.is_main:
        _write_manifest(out_dir, jobs, reports, time.perf_counter() - start)
    if failed:
        first = failed[0]
        raise ShardFailure(f"rank {first.rank} of {ctx.world_size} failed on {first.error}; "
                           "fix the cause and run the same command again (finished images are kept)")
    return reports
