"""`condiff upscale IMAGE`: the cascade's SR3 stage on any picture (thesis 3.2.2; no maths here)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import _common as C


def register(app: typer.Typer) -> None:
    app.command("upscale")(upscale)


def upscale(
    image: Path = typer.Argument(..., help="Input picture (PNG/JPEG…); cropped by at most 3 px to a multiple of 4."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Optional caption of the picture (the SR stage is text-conditioned)."),
    noise_level: Optional[float] = typer.Option(
        None, "--noise-level", help="Noise-conditioning augmentation level s in [0, 1]: 0 trusts the input, "
        "higher values let the model invent more detail (default: the model card's, 0.1)."),
    guidance: float = typer.Option(1.0, "--guidance", "-g", help="Classifier-free guidance on the prompt (1 = none)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps (default: the model card's)."),
    sampler: str = typer.Option("dpmpp_2m", "--sampler", help="Sampler name (condiff samplers list)."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random draw."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output PNG (default: IMAGE-x2.png beside the input)."),
    device: str = C.DEVICE_OPT, overwrite: bool = C.OVERWRITE_OPT, progress: bool = C.PROGRESS_OPT,
) -> None:
    """Super-resolve a picture ×2 with the built-in SR3 stage (64→128 trained; any size works)."""
    from ..images import fit_image, load_image
    from ..models.cascade import load_cascade
    from ..pipelines.cascade import upscale as run

    out = out or image.with_name(f"{image.stem}-x2.png")
    C.output_paths(out, 1)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    img = fit_image(load_image(image), multiple=4)
    model = load_cascade(device=C.resolve_device(device), stages=("sr",))
    res = run(model, img, prompt, noise_level=noise_level, guidance=guidance, steps=steps, sampler=sampler,
              seed=seed, show_progress=progress)
    res.params["input"] = str(image)
    C.save_result(res, out, overwrite)
