"""`condiff upscale IMAGE`: the cascade's SR3 stage on any picture (thesis 3.2.2; no maths here)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import validate as V
from . import _common as C


def register(app: typer.Typer) -> None:
    app.command("upscale")(upscale)


@C.with_options(speed=C.SPEED)
def upscale(
    image: Path = typer.Argument(..., help="Input picture (PNG/JPEG…); cropped by at most 3 px to a multiple of 4."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Optional caption of the picture (the SR stage is text-conditioned)."),
    noise_level: Optional[float] = typer.Option(
        None, "--noise-level", min=0.0, max=1.0, help="Noise-conditioning augmentation level s in [0, 1]: 0 trusts "
        "the input, higher values let the model invent more detail (default: the model card's, 0.1)."),
    guidance: float = typer.Option(1.0, "--guidance", "-g", help="Classifier-free guidance on the prompt, a finite number (1 = none)."),
    steps: Optional[int] = C.STEPS_OPT, sampler: str = C.SAMPLER_OPT, schedule: Optional[str] = C.SCHEDULE_OPT,
    seed: int = C.SEED_OPT,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output PNG (default: IMAGE-x2.png beside the input)."),
    device: Optional[str] = C.DEVICE_OPT, dtype: str = C.DTYPE_OPT, overwrite: bool = C.OVERWRITE_OPT,
    progress: bool = C.PROGRESS_OPT, as_json: bool = C.JSON_OPT, threads: Optional[int] = C.THREADS_OPT,
    provenance: Optional[bool] = C.PROVENANCE_OPT, *, speed: dict,
) -> None:
    """Super-resolve a picture ×2 with the built-in SR3 stage (64→128 trained; any size works)."""
    from ..images import fit_image, load_image
    from ..models.cascade import load_cascade
    from ..pipelines.cascade import upscale as run

    kw = C.sampling(steps, sampler, schedule, seed, guidance, "")
    kw.pop("negative")
    if prompt is not None:
        V.check_prompt(prompt)
    out = out or image.with_name(f"{image.stem}-x2.png")
    C.output_paths(out, 1, overwrite)
    img = fit_image(load_image(image), multiple=4)
    V.check_size(img.shape[-2] * 2, img.shape[-1] * 2, name="upscaled size")
    dev = C.resolve_device(device)
    model = C.speed_up(load_cascade(device=dev, dtype=C.resolve_dtype(dtype, dev), stages=("sr",)), **speed)
    res = run(model, img, prompt, noise_level=noise_level, show_progress=progress, **kw)
    res.params["input"] = str(image)
    C.save_result(res, out, overwrite, as_json, provenance)
