"""`condiff variations IMAGE`: unCLIP image variations (thesis 3.2.1, DALL-E 2's feature; no maths here)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import validate as V
from . import _common as C


def register(app: typer.Typer) -> None:
    app.command("variations")(variations)


@C.with_options(speed=C.SPEED)
def variations(
    image: Path = typer.Argument(..., help="The picture to vary (center-cropped to a square)."),
    n: int = typer.Option(4, "--n", "-n", help="Number of variations, 1-64 (--limit n=N); written as OUT-0.png … "
                          "OUT-{N-1}.png (one variation: OUT itself)."),
    seed: int = C.SEED_OPT,
    prompt: str = typer.Option("", "--prompt", "-p", help="Optional caption also given to the decoder."),
    guidance: Optional[float] = typer.Option(None, "--guidance", "-g", help="CFG on the image embedding, a finite number (default: the model card's)."),
    steps: Optional[int] = C.STEPS_OPT,
    sr_steps: Optional[int] = typer.Option(None, "--sr-steps", min=1, help="Steps of the ×2 upsampler stage (default: --steps)."),
    noise_level: Optional[float] = typer.Option(None, "--noise-level", min=0.0, max=1.0, help="Upsampler noise augmentation in [0, 1] (default: the model card's)."),
    sampler: str = C.SAMPLER_OPT, schedule: Optional[str] = C.SCHEDULE_OPT,
    out: Path = typer.Option(Path("condiff-variations.png"), "--out", "-o", help="Output PNG; several get -0, -1, … suffixes."),
    device: Optional[str] = C.DEVICE_OPT, dtype: str = C.DTYPE_OPT, overwrite: bool = C.OVERWRITE_OPT,
    progress: bool = C.PROGRESS_OPT, as_json: bool = C.JSON_OPT, threads: Optional[int] = C.THREADS_OPT,
    provenance: Optional[bool] = C.PROVENANCE_OPT, *, speed: dict,
) -> None:
    """Encode the picture with unCLIP's image tower (unclip-embedder) and decode it with fresh noise: same meaning, new details."""
    from ..images import fit_image, load_image
    from ..models.unclip import load_unclip
    from ..pipelines.unclip import variations as run

    n = V.check_count(n, "--n", limit="n")
    kw = C.sampling(steps, sampler, schedule, seed, guidance, "")
    kw.pop("negative")
    V.check_prompt(prompt)
    V.check_steps(sr_steps, "--sr-steps")
    C.output_paths(out, n, overwrite)
    img = load_image(image)
    side = min(img.shape[-2:])
    img = fit_image(img, size=(side, side), multiple=1)
    dev = C.resolve_device(device)
    model = C.speed_up(load_unclip(device=dev, dtype=C.resolve_dtype(dtype, dev)), **speed)
    res = run(model, img, n=n, prompt=prompt, sr_steps=sr_steps, noise_level=noise_level, show_progress=progress,
              **kw)
    res.params["input"] = str(image)
    C.save_result(res, out, overwrite, as_json, provenance)
