"""`condiff generate --prompts FILE --out DIR`: a prompt file, sharded over ``torchrun`` processes (no maths here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from . import _common as C

__all__ = ["generate_from_file"]


def generate_from_file(prompts: Path, out: Path, *, seed: int, n: int, batch: int, defaults: dict[str, Any],
                       model: str, device: str | None, dtype: str, loras: list[str], embeddings: list,
                       overwrite: bool, speed: dict | None = None) -> None:
    """Every image of ``prompts`` into ``out/NNNNN.png``; the same files on 1 or N processes.

    ``speed``: the ``--fast`` / ``--compile`` flags (:func:`condiff.commands._common.speed_up`).
    """
    from ..pipelines.text2img import generate
    from ..prompt_file import read_prompt_file
    from ..sharding import run_sharded
    from ..train.distributed import init_distributed, shutdown_distributed

    jobs = read_prompt_file(prompts, base_seed=seed, n=n, defaults=defaults)
    ctx = init_distributed(device)
    try:
        m = C.load(model, str(ctx.device), dtype)
        applied = C.personalize(m, loras, embeddings)
        C.speed_up(m, **(speed or {}))

        def render(chunk):
            res = generate(m, [j.prompt for j in chunk], seed=[j.seed for j in chunk], batch_size=len(chunk),
                           show_progress=False, **chunk[0].options)
            params = []
            for i, job in enumerate(chunk):
                p = res.params_for(i)
                p.update(applied, prompt_file=str(prompts), index=job.index)
                params.append(p)
            return res.images, params

        reports = run_sharded(ctx, jobs, out, render, batch=batch, overwrite=overwrite, echo=typer.echo)
        if ctx.is_main:
            written = sum(len(r.written) for r in reports)
            skipped = sum(len(r.skipped) for r in reports)
            typer.echo(f"wrote {written} images to {out}/ ({skipped} already there, kept); "
                       f"manifest {out / 'manifest.json'}")
    finally:
        shutdown_distributed(ctx)
