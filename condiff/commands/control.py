"""`condiff control INPUT PROMPT --type T [--type T2 …]`: ControlNet generation (thesis §3.1.3; no maths here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from .. import validate as V
from ..preprocess.domain import DOMAINS
from . import _common as C


def load_model(name_or_path: str, device: str, dtype: str = "auto") -> Any:
    """The model registry's loader (imported lazily; tests replace this function)."""
    from condiff.models.registry import load_model as registry_load

    dev = V.check_device(device)
    return registry_load(name_or_path, device=dev, dtype=V.check_dtype(dtype, dev))


def register(app: typer.Typer) -> None:
    app.command("control")(control_cmd)


@C.with_options(speed=C.SPEED)
def control_cmd(
    input: Path = typer.Argument(..., help="Picture to take the condition from (or the condition itself with --no-preprocess)."),
    prompt: str = typer.Argument(..., help="Text prompt."),
    types: List[str] = typer.Option(..., "--type", help="Condition type (repeat for several ControlNets); what each "
                                    "preprocessor is made for: " + "; ".join(f"{k}: {v}" for k, v in DOMAINS.items()) + "."),
    scale: List[float] = typer.Option([1.0], "--scale", help="Conditioning scale, a finite number (1 = as trained): one for all types or one per --type."),
    preprocess: bool = typer.Option(True, "--preprocess/--no-preprocess", help="Run the type's preprocessor on INPUT (off: INPUT is a ready condition image)."),
    start: float = typer.Option(0.0, "--start", min=0.0, max=1.0, help="Fraction of the schedule in [0, 1] where control starts (0 = pure noise)."),
    end: float = typer.Option(1.0, "--end", min=0.0, max=1.0, help="Fraction of the schedule in [0, 1] where control ends (1 = clean image)."),
    steps: Optional[int] = C.STEPS_OPT, seed: int = C.SEED_OPT, guidance: Optional[float] = C.GUIDANCE_OPT,
    negative: str = C.NEGATIVE_OPT, sampler: str = C.SAMPLER_OPT, schedule: Optional[str] = C.SCHEDULE_OPT,
    eta: Optional[float] = C.ETA_OPT,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Result PNG (default: INPUT-control.png in the current folder); each condition is written beside it as OUT.TYPE.png."),
    model: str = typer.Option("builtin", "--model", "-m", help="Built-in model name or a local Stable Diffusion path."),
    controlnet: List[Path] = typer.Option([], "--controlnet", help="ControlNet checkpoint per --type, in order (needed for non-built-in models)."),
    device: Optional[str] = C.DEVICE_OPT, dtype: str = C.DTYPE_OPT, overwrite: bool = C.OVERWRITE_OPT,
    progress: bool = C.PROGRESS_OPT, as_json: bool = C.JSON_OPT, threads: Optional[int] = C.THREADS_OPT,
    provenance: Optional[bool] = C.PROVENANCE_OPT, *, speed: dict,
) -> None:
    """Generate an image that follows INPUT's edges/depth/normals/pose; saves the condition beside it."""
    from condiff.images import save_png
    from condiff.pipelines.control import check_control_types, control

    check_control_types(types)  # before loading anything
    V.check_prompt(prompt)
    kw = C.sampling(steps, sampler, schedule, seed, guidance, negative, eta)
    for s in scale:
        V.check_float("--scale", s)
    if controlnet and len(controlnet) != len(types):
        raise V.InputError(f"got {len(controlnet)} --controlnet paths for {len(types)} --type values; give one per type")
    V.check_input_file(input, "input image")
    out = out or Path.cwd() / f"{input.stem}-control.png"
    cond_paths = {t: out.with_name(f"{out.stem}.{t}.png") for t in types}
    V.check_outputs([out, *cond_paths.values()], overwrite)
    ldm = C.speed_up(load_model(model, str(V.check_device(device)), dtype), **speed)
    result = control(ldm, input, prompt, kinds=types, scales=scale, preprocess=preprocess, start=start, end=end,
                     controlnets=dict(zip(types, controlnet)) or None, show_progress=progress, **kw)
    params = result.params_for(0)
    save_png(result.images[0:1], out, params, overwrite=overwrite, provenance=provenance, ingredients=[input])
    for t, c in result.extras["conditions"].items():
        save_png(c[0:1], cond_paths[t], {"condition": t, "source": str(input), "preprocess": preprocess},
                 overwrite=overwrite, provenance=False)
    C.report([out, *cond_paths.values()], as_json, out=str(out),
             conditions={t: str(p) for t, p in cond_paths.items()}, seed=params.get("seed"), steps=params.get("steps"))
