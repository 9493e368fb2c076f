"""`condiff generate`, `condiff sdedit`, `condiff inpaint`: the image pipelines from the shell."""

from __future__ import annotations

from pathlib import Path

import typer

from . import _common as C


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.command("sdedit")(sdedit)
    app.command("inpaint")(inpaint)


def generate(
    prompt: str = typer.Argument(..., help="What to draw, e.g. 'a cat face, flat style'."),
    negative: str = typer.Option("", "--negative", "-n", help="Negative prompt (the CFG 'unconditional' branch)."),
    guidance: float = typer.Option(None, "--guidance", "-g", help="Classifier-free guidance γ (0 = unconditional, 1 = conditional)."),
    steps: int = typer.Option(None, "--steps", help="Sampling steps (default: the sampler's)."),
    sampler: str = typer.Option("dpmpp_2m", "--sampler", help="Sampler name (condiff samplers list)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first image; image i uses seed + i."),
    batch: int = typer.Option(1, "--batch", help="Number of images."),
    out: Path = typer.Option(Path("condiff-out.png"), "--out", "-o", help="Output PNG (parameters stored inside)."),
    lora: list[str] = C.LORA_OPT, embedding: list[Path] = C.EMBEDDING_OPT,
    style_guidance: str = typer.Option(None, "--classifier-guidance", help="STYLE[:SCALE]: classifier guidance "
                                       "(thesis eq. 3.4) towards a style with the built-in noisy classifier."),
    model: str = C.MODEL_OPT, device: str = C.DEVICE_OPT, dtype: str = C.DTYPE_OPT,
    fast: bool = C.FAST_OPT, compile_: bool = C.COMPILE_OPT,
    overwrite: bool = C.OVERWRITE_OPT, progress: bool = C.PROGRESS_OPT,
) -> None:
    """Text to image."""
    from ..pipelines.text2img import generate as run

    C.output_paths(out, batch)
    m = C.load(model, device, dtype)
    applied = C.personalize(m, lora, embedding)
    C.speed_up(m, fast, compile_)
    base = None
    if style_guidance:
        base, info = C.classifier_guided(m, style_guidance)
        applied["classifier_guidance"] = info
    res = run(m, prompt, negative=negative, guidance=guidance, steps=steps, sampler=sampler, seed=seed,
              batch_size=batch, show_progress=progress, base=base)
    res.params.update(applied)
    C.save_result(res, out, overwrite)


def sdedit(
    image: Path = typer.Argument(..., help="Input image (a sketch or a picture)."),
    prompt: str = typer.Argument(...),
    strength: float = typer.Option(0.6, "--strength", "-s", help="SDEdit t0 in [0, 1]: 0 keeps the input, 1 ignores it."),
    negative: str = typer.Option("", "--negative", "-n"),
    guidance: float = typer.Option(None, "--guidance", "-g"),
    steps: int = typer.Option(None, "--steps"),
    sampler: str = typer.Option("dpmpp_2m", "--sampler"),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(Path("condiff-sdedit.png"), "--out", "-o"),
    model: str = C.MODEL_OPT, device: str = C.DEVICE_OPT, dtype: str = C.DTYPE_OPT,
    overwrite: bool = C.OVERWRITE_OPT, progress: bool = C.PROGRESS_OPT,
) -> None:
    """SDEdit (thesis 3.1.2): noise the input to strength t0, then denoise towards the prompt."""
    from ..images import fit_image, load_image
    from ..pipelines.text2img import sdedit as run

    C.output_paths(out, 1)
    m = C.load(model, device, dtype)
    img = fit_image(load_image(image), size=(m.image_size, m.image_size))
    res = run(m, img, prompt, strength=strength, negative=negative, guidance=guidance, steps=steps, sampler=sampler,
              seed=seed, show_progress=progress)
    res.params["input"] = str(image)
    C.save_result(res, out, overwrite)


def inpaint(
    image: Path = typer.Argument(..., help="Input image."),
    mask: Path = typer.Argument(..., help="Mask image, same size: white = repaint (L, RGB or RGBA)."),
    prompt: str = typer.Argument(...),
    method: str = typer.Option("model", "--method", help="model (inpainting U-Net), blend (latent blending) or repaint."),
    blend: str = typer.Option("alpha", "--blend", help="Compositing: alpha, laplacian or poisson (seam-aware)."),
    color_match: bool = typer.Option(False, "--color-match", help="Match the generated colours to the surroundings."),
    feather: float = typer.Option(0.0, "--feather", help="Inward Gaussian feathering radius (px) of the mask."),
    crop_to_mask: bool = typer.Option(False, "--only-masked", help="Inpaint only a window around the mask at full model resolution."),
    no_composite: bool = typer.Option(False, "--no-composite", help="Return the raw model output (pixels outside the mask change)."),
    negative: str = typer.Option("", "--negative", "-n"),
    guidance: float = typer.Option(None, "--guidance", "-g"),
    steps: int = typer.Option(None, "--steps"),
    sampler: str = typer.Option("dpmpp_2m", "--sampler"),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(Path("condiff-inpaint.png"), "--out", "-o"),
    model: str = C.MODEL_OPT, device: str = C.DEVICE_OPT, dtype: str = C.DTYPE_OPT,
    overwrite: bool = C.OVERWRITE_OPT, progress: bool = C.PROGRESS_OPT,
) -> None:
    """Inpainting (thesis 4.3): outside the mask the input is returned exactly (unless --no-composite)."""
    from ..images import load_image, load_mask
    from ..pipelines.inpaint import inpaint as run

    C.output_paths(out, 1)
    img, msk = load_image(image), load_mask(mask)
    if img.shape[-2:] != msk.shape[-2:]:
        raise ValueError(
            f"mask size {msk.shape[-1]}×{msk.shape[-2]} differs from image size {img.shape[-1]}×{img.shape[-2]}; "
            "draw the mask on this image"
        )
    m = C.load(model, device, dtype)
    res = run(m, img, msk, prompt, method=method, negative=negative, guidance=guidance, steps=steps, sampler=sampler,
              seed=seed, blend=blend, color_match=color_match, feather=feather, composite=not no_composite,
              crop_to_mask=crop_to_mask, show_progress=progress)
    res.params.update(input=str(image), mask=str(mask))
    C.save_result(res, out, overwrite)
