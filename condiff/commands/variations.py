"""`condiff variations IMAGE`: unCLIP image variations (thesis 3.2.1, DALL-E 2's feature; no maths here)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import _common as C


def register(app: typer.Typer) -> None:
    app.command("variations")(variations)


def variations(
    image: Path = typer.Argument(..., help="The picture to vary (center-cropped to a square)."),
    n: int = typer.Option(4, "--n", "-n", help="Number of variations."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first variation; variation i uses seed + i."),
    prompt: str = typer.Option("", "--prompt", "-p", help="Optional caption also given to the decoder."),
    guidance: Optional[float] = typer.Option(None, "--guidance", "-g", help="CFG on the image embedding (default: the model card's)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Decoder sampling steps (default: the model card's)."),
    sampler: str = typer.Option("dpmpp_2m", "--sampler", help="Sampler name (condiff samplers list)."),
    out: Path = typer.Option(Path("condiff-variations.png"), "--out", "-o", help="Output PNG; several get -0, -1, … suffixes."),
    device: str = C.DEVICE_OPT, overwrite: bool = C.OVERWRITE_OPT, progress: bool = C.PROGRESS_OPT,
) -> None:
    """Encode the picture with unCLIP's image tower (unclip-embedder) and decode it with fresh noise: same meaning, new details."""
    from ..images import fit_image, load_image
    from ..models.unclip import load_unclip
    from ..pipelines.unclip import variations as run

    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    paths = C.output_paths(out, n)
    for p in paths:
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p} exists; pass --overwrite to replace it")
    img = load_image(image)
    side = min(img.shape[-2:])
    img = fit_image(img, size=(side, side), multiple=1)
    model = load_unclip(device=C.resolve_device(device))
    res = run(model, img, n=n, seed=seed, prompt=prompt, guidance=guidance, steps=steps, sampler=sampler,
              show_progress=progress)
    res.params["input"] = str(image)
    C.save_result(res, out, overwrite)
