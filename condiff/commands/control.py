"""`condiff control INPUT PROMPT --type T [--type T2 …]`: ControlNet generation (thesis §3.1.3; no maths here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer


def load_model(name_or_path: str, device: str) -> Any:
    """The model registry's loader (imported lazily; tests replace this function)."""
    from condiff.models.registry import load_model as registry_load

    return registry_load(name_or_path, device=device)


def _device(device: Optional[str]) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def register(app: typer.Typer) -> None:
    from condiff.preprocess.domain import DOMAINS

    @app.command("control")
    def control_cmd(
        input: Path = typer.Argument(..., help="Picture to take the condition from (or the condition itself with --no-preprocess)."),
        prompt: str = typer.Argument(..., help="Text prompt."),
        types: List[str] = typer.Option(..., "--type", help="Condition type (repeat for several ControlNets); what each "
                                        "preprocessor is made for: " + "; ".join(f"{k}: {v}" for k, v in DOMAINS.items()) + "."),
        scale: List[float] = typer.Option([1.0], "--scale", help="Conditioning scale: one for all types or one per --type."),
        preprocess: bool = typer.Option(True, "--preprocess/--no-preprocess", help="Run the type's preprocessor on INPUT (off: INPUT is a ready condition image)."),
        start: float = typer.Option(0.0, "--start", help="Fraction of the schedule where control starts (0 = pure noise)."),
        end: float = typer.Option(1.0, "--end", help="Fraction of the schedule where control ends (1 = clean image)."),
        steps: Optional[int] = typer.Option(None, "--steps", help="Sampler steps (default: the sampler's)."),
        seed: int = typer.Option(0, "--seed", help="Noise seed."),
        guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance scale γ (default: the model's)."),
        negative: str = typer.Option("", "--negative", help="Negative prompt."),
        sampler: str = typer.Option("dpmpp_2m", "--sampler", help="Sampler name (see the samplers registry)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Result PNG (default: INPUT-control.png in the current folder)."),
        model: str = typer.Option("builtin", "--model", help="Built-in model name or a local Stable Diffusion path."),
        controlnet: List[Path] = typer.Option([], "--controlnet", help="ControlNet checkpoint per --type, in order (needed for non-built-in models)."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when present)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    ) -> None:
        """Generate an image that follows INPUT's edges/depth/normals/pose; saves the condition beside it."""
        from condiff.images import save_png
        from condiff.io import check_writable
        from condiff.pipelines.control import check_control_types, control

        check_control_types(types)  # before loading anything
        if controlnet and len(controlnet) != len(types):
            raise ValueError(f"got {len(controlnet)} --controlnet paths for {len(types)} --type values; give one per type")
        if not input.is_file():
            raise FileNotFoundError(f"input image {input} does not exist")
        out = out or Path.cwd() / f"{input.stem}-control.png"
        cond_paths = {t: out.with_name(f"{out.stem}.{t}.png") for t in types}
        for p in (out, *cond_paths.values()):
            check_writable(p, overwrite)
        ldm = load_model(model, _device(device))
        result = control(ldm, input, prompt, kinds=types, scales=scale, preprocess=preprocess, start=start, end=end,
                         controlnets=dict(zip(types, controlnet)) or None, negative=negative, guidance=guidance,
                         steps=steps, sampler=sampler, seed=seed, show_progress=progress)
        params = result.params_for(0)
        save_png(result.images[0:1], out, params, overwrite=overwrite)
        for t, c in result.extras["conditions"].items():
            save_png(c[0:1], cond_paths[t], {"condition": t, "source": str(input), "preprocess": preprocess},
                     overwrite=overwrite)
        typer.echo(json.dumps({"out": str(out), "conditions": {t: str(p) for t, p in cond_paths.items()},
                               "seed": params.get("seed"), "steps": params.get("steps")}))
