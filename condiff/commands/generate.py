"""`condiff generate`, `condiff sdedit`, `condiff inpaint`: the image pipelines from the shell."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import validate as V
from ..errors import InputError
from ..pipelines.inpaint import DEFAULT_BLEND
from . import _common as C


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.command("sdedit")(sdedit)
    app.command("inpaint")(inpaint)


@C.with_options(sampling=C.SAMPLING, run=C.RUN, speed=C.SPEED)
def generate(
    prompt: Optional[str] = typer.Argument(None, help="What to draw, e.g. 'a cat face, flat style' (or --from-png, "
                                           "--prompts)."),
    batch: int = typer.Option(1, "--batch", min=1, help="Number of images, 1-64 (--limit batch=N); several are "
                              "written as OUT-0.png, OUT-1.png, …"),
    width: Optional[int] = typer.Option(None, "--width", min=8, help="Image width in px, a multiple of the model's "
                                        "latent factor (default: the model's size; at most 4.2 Mpx in all)."),
    height: Optional[int] = typer.Option(None, "--height", min=8, help="Image height in px (as --width)."),
    deterministic: bool = typer.Option(False, "--deterministic", help="Image i of a batch bit-identical to the "
                                       "single image of seed + i (one network pass per image: batch × slower)."),
    out: Path = typer.Option(Path("condiff-out.png"), "--out", "-o", help="Output PNG (parameters stored inside)."),
    lora: list[str] = C.LORA_OPT, embedding: list[Path] = C.EMBEDDING_OPT,
    style_guidance: Optional[str] = typer.Option(None, "--classifier-guidance", help="STYLE[:SCALE]: classifier "
                                                 "guidance (thesis eq. 3.4) towards a style with the built-in noisy "
                                                 "classifier."),
    from_png: Optional[Path] = typer.Option(None, "--from-png", help="Re-run the recipe stored in a PNG (condiff's "
                                            "or A1111's parameters); options typed on the command line override it."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="A prompt file (one prompt or JSON object per "
                                           "line); --out is then a folder of NNNNN.png. Runs sharded under torchrun."),
    max_batch: int = typer.Option(8, "--max-batch", min=1, max=256, help="With --prompts: images per network call, "
                                  "1-256 (lines with the same options only)."),
    ctx: typer.Context = None,
    *, sampling: dict, run: dict, speed: dict,
) -> None:
    """Text to image (one prompt; a picture's recipe with --from-png; a prompt file with --prompts)."""
    from ..pipelines.text2img import generate as pipeline
    from ..provenance.recipe import rerun_arguments

    if prompts is not None:
        if prompt is not None or from_png is not None:
            raise InputError("give either a PROMPT, --from-png FILE or --prompts FILE, not several")
        return _from_prompt_file(prompts, out, batch, max_batch, lora, embedding, sampling, run, speed)
    (prompt, sampling["negative"], sampling["guidance"], sampling["steps"], sampling["sampler"], sampling["seed"],
     run["model"], lora, style_guidance) = rerun_arguments(
        ctx, from_png, prompt, sampling["negative"], sampling["guidance"], sampling["steps"], sampling["sampler"],
        sampling["seed"], run["model"], lora, style_guidance)
    V.check_prompt(prompt)
    kw = C.sampling(**sampling)
    V.check_count(batch, "--batch")
    if width is not None or height is not None:
        V.check_size(height or width, width or height)
    C.output_paths(out, batch, run["overwrite"])
    C.check_personalization_files(lora, embedding)
    m = C.load(run["model"], run["device"], run["dtype"])
    applied = C.personalize(m, lora, embedding)
    C.speed_up(m, **speed)
    base = None
    if style_guidance:
        base, info = C.classifier_guided(m, style_guidance)
        applied["classifier_guidance"] = info
    res = pipeline(m, prompt, batch_size=batch, width=width, height=height, deterministic=deterministic,
              show_progress=run["progress"], base=base, **kw)
    res.params.update(applied)
    C.save_result(res, out, run["overwrite"], run["as_json"], run["provenance"])


@C.with_options(sampling=C.SAMPLING, run=C.RUN, speed=C.SPEED)
def sdedit(
    image: Path = typer.Argument(..., help="Input image (a sketch or a picture)."),
    prompt: str = typer.Argument(..., help="What the result should show."),
    strength: float = typer.Option(0.6, "--strength", "-s", min=0.0, max=1.0,
                                   help="SDEdit t0 in [0, 1]: 0 keeps the input, 1 ignores it."),
    out: Path = typer.Option(Path("condiff-sdedit.png"), "--out", "-o", help="Output PNG."),
    *, sampling: dict, run: dict, speed: dict,
) -> None:
    """SDEdit (thesis 3.1.2): noise the input to strength t0, then denoise towards the prompt."""
    from ..images import fit_image, load_image
    from ..pipelines.text2img import sdedit as pipeline

    V.check_prompt(prompt)
    kw = C.sampling(**sampling)
    strength = V.check_fraction("strength", strength)
    C.output_paths(out, 1, run["overwrite"])
    img = load_image(image)
    m = C.speed_up(C.load(run["model"], run["device"], run["dtype"]), **speed)
    img = fit_image(img, size=(m.image_size, m.image_size))
    res = pipeline(m, img, prompt, strength=strength, show_progress=run["progress"], **kw)
    res.params["input"] = str(image)
    C.save_result(res, out, run["overwrite"], run["as_json"], run["provenance"])


@C.with_options(sampling=C.SAMPLING, run=C.RUN, speed=C.SPEED)
def inpaint(
    image: Path = typer.Argument(..., help="Input image."),
    mask: Path = typer.Argument(..., help="Mask image, same size: white = repaint (L, RGB or RGBA)."),
    prompt: str = typer.Argument(..., help="What to paint into the masked region."),
    method: str = typer.Option("model", "--method", help="model (inpainting U-Net), blend (latent blending) or repaint."),
    blend: str = typer.Option(DEFAULT_BLEND, "--blend", help="Compositing: laplacian (default: the most coherent fill measured), alpha or poisson (seam-aware)."),
    color_match: bool = typer.Option(False, "--color-match", help="Match the generated colours to the surroundings."),
    feather: float = typer.Option(0.0, "--feather", help="Inward Gaussian feathering radius of the mask, 0-256 px "
                                  "(--limit radius=R)."),
    crop_to_mask: bool = typer.Option(False, "--only-masked", help="Inpaint only a window around the mask at full "
                                      "model resolution."),
    padding: int = typer.Option(16, "--padding", min=0, max=4096, help="Context in px around the mask with "
                                "--only-masked."),
    jump_length: int = typer.Option(5, "--jump-length", min=1, max=1000, help="RePaint jump length j."),
    resamples: int = typer.Option(4, "--resamples", min=1, max=100, help="RePaint resamplings r per jump."),
    no_composite: bool = typer.Option(False, "--no-composite", help="Return the raw model output (pixels outside "
                                      "the mask change)."),
    out: Path = typer.Option(Path("condiff-inpaint.png"), "--out", "-o", help="Output PNG."),
    *, sampling: dict, run: dict, speed: dict,
) -> None:
    """Inpainting (thesis 4.3): outside the mask the input is returned exactly (unless --no-composite)."""
    from ..compositing import BLEND_METHODS
    from ..images import load_image, load_mask
    from ..pipelines.inpaint import INPAINT_METHODS
    from ..pipelines.inpaint import inpaint as pipeline

    V.check_prompt(prompt)
    V.check_choice("--method", method, INPAINT_METHODS)
    V.check_choice("--blend", blend, BLEND_METHODS)
    feather = V.check_radius("--feather", feather)
    kw = C.sampling(**sampling)
    C.output_paths(out, 1, run["overwrite"])
    img, msk = load_image(image), load_mask(mask)
    V.check_mask_tensor(msk, img)
    m = C.speed_up(C.load(run["model"], run["device"], run["dtype"]), **speed)
    res = pipeline(m, img, msk, prompt, method=method, blend=blend, color_match=color_match, feather=feather,
              composite=not no_composite, crop_to_mask=crop_to_mask, crop_padding=padding, jump_length=jump_length,
              resamples=resamples, show_progress=run["progress"], **kw)
    res.params.update(input=str(image), mask=str(mask))
    C.save_result(res, out, run["overwrite"], run["as_json"], run["provenance"])


def _from_prompt_file(prompts: Path, out: Path, n: int, max_batch: int, lora, embedding, sampling: dict,
                      run: dict, speed: dict) -> None:
    from ._prompt_file import generate_from_file

    kw = C.sampling(**sampling)
    defaults = {k: kw.get(k) for k in ("negative", "guidance", "steps", "sampler")}
    defaults["negative"] = defaults["negative"] or None
    C.check_personalization_files(lora, embedding)
    generate_from_file(prompts, out, seed=kw["seed"], n=n, batch=max_batch, defaults=defaults, model=run["model"],
                       device=run["device"], dtype=run["dtype"], loras=lora, embeddings=embedding,
                       overwrite=run["overwrite"], speed=speed)
