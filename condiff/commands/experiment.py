"""`condiff experiment run|sweep` and `condiff demo`: the thesis's experiments from the shell (no maths here)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from . import _common as C

_NAMES_HELP = "sketch, inpainting, personalization or all (several allowed)."


def register(app: typer.Typer) -> None:
    exp = typer.Typer(help="The thesis's three experiments, measured (recipes/experiments/*.toml).",
                      no_args_is_help=True)
    exp.command("run")(run)
    exp.command("sweep")(sweep)
    app.add_typer(exp, name="experiment")
    app.command("demo")(demo)


def _check_out(out: Path, overwrite: bool) -> None:
    for name in ("report.html", "results.json"):
        if (out / name).exists() and not overwrite:
            raise FileExistsError(f"{out / name} exists; pass --overwrite to replace the earlier report")


def _pairs(items: List[str], option: str, form: str) -> dict[str, Path]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not path.strip() or not name.strip():
            raise ValueError(f"{option} takes {form}, got {item!r}")
        out[name.strip()] = Path(path.strip())
    return out


def _configs(items: List[str]) -> dict[str, Path]:
    return _pairs(items, "--config", "NAME=FILE.toml (e.g. sketch=my_sketch.toml)")


def _done(res) -> None:
    for r in res.results:
        for s in r.skipped:
            typer.secho(f"[{r.name}] skipped {s}", fg=typer.colors.YELLOW, err=True)
    load = res.info.get("load_average_end") or res.info.get("load_average")
    typer.echo(f"wrote {res.report} and {res.results_json} ({res.info['wall_s']} s wall, {res.info.get('cpu_s')} s CPU"
               + (f", load average {load[0]:.2f} at the end)" if load else ")"))


def run(
    names: List[str] = typer.Argument(..., help=_NAMES_HELP),
    model: str = C.MODEL_OPT,
    device: str = C.DEVICE_OPT,
    out: Path = typer.Option(Path("experiments-out"), "--out", "-o", help="Folder for report.html, results.json, figures/."),
    quick: bool = typer.Option(False, "--quick", help="Each config's reduced 'quick' settings (fewer steps and images)."),
    config: List[str] = typer.Option([], "--config", help="NAME=FILE.toml: another config for an experiment."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override every config's seed."),
    controlnet: List[str] = typer.Option([], "--controlnet", help="TYPE=PATH: a ControlNet checkpoint for --model (experiment 1)."),
    train: bool = typer.Option(False, "--train", help="Train personalization methods that have no cached result."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Cache of personalization results (default $CONDIFF_CACHE or ~/.cache/condiff)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads (default: torch's; numbers are bit-identical per thread count)."),
    overwrite: bool = C.OVERWRITE_OPT,
    progress: bool = C.PROGRESS_OPT,
) -> None:
    """Run experiments at full size (or --quick) and write the HTML report + results.json."""
    from ..experiments.runner import resolve_names, run_experiments

    order = resolve_names(names)
    _check_out(out, overwrite)
    res = run_experiments(order, model=model, device=C.resolve_device(device), out=out, quick=quick,
                          configs=_configs(config), seed=seed, train=train, cache_dir=cache,
                          controlnets=_pairs(controlnet, "--controlnet", "TYPE=PATH"), threads=threads, show_progress=progress,
                          command="condiff experiment run " + " ".join(order))
    _done(res)


def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for the report (an earlier demo's report there is replaced)."),
    device: str = C.DEVICE_OPT,
    train: bool = typer.Option(False, "--train", help="Train the personalization methods (tiny runs) if no cached results exist."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Cache of personalization results."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads (default on CPU: $OMP_NUM_THREADS, else the cores not busy now, at least 1)."),
    progress: bool = C.PROGRESS_OPT,
) -> None:
    """All three experiments, reduced, on the built-in models (every cell; about 4 min on an idle 2-core CPU) -> report.html."""
    from ..experiments.runner import run_demo

    res = run_demo(out, device=C.resolve_device(device), train=train, cache_dir=cache, show_progress=progress,
                   threads=threads, command="condiff demo")
    _done(res)


def sweep(
    pipeline: str = typer.Argument(..., help="text2img, sdedit, control or inpaint."),
    prompt: str = typer.Argument(..., help="The prompt (or sweep it with -x prompt=…)."),
    x: str = typer.Option(..., "-x", help="X axis (columns): NAME=V1,V2,… or NAME=start:stop:step."),
    y: Optional[str] = typer.Option(None, "-y", help="Y axis (rows)."),
    z: Optional[str] = typer.Option(None, "-z", help="Z axis (one grid per value)."),
    fixed: List[str] = typer.Option([], "--set", help="Fixed parameter NAME=VALUE (e.g. strength=0.6, control_type=canny)."),
    image: Optional[Path] = typer.Option(None, "--image", help="Input image (sdedit, control, inpaint)."),
    mask: Optional[Path] = typer.Option(None, "--mask", help="Mask (inpaint): white = repaint."),
    lora: Optional[Path] = typer.Option(None, "--lora", help="A LoRA file whose weight 'lora_weight' sweeps."),
    images: int = typer.Option(2, "--images", help="Images per cell (seeds seed, seed+1, …)."),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(Path("sweep-out"), "--out", "-o", help="Folder for the grids, table and report."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads (default: torch's)."),
    model: str = C.MODEL_OPT, device: str = C.DEVICE_OPT,
    overwrite: bool = C.OVERWRITE_OPT, progress: bool = C.PROGRESS_OPT,
) -> None:
    """An X/Y/Z sweep of any pipeline parameter: labelled grids + a metric table (AUTOMATIC1111-style)."""
    from ..experiments.runner import run_adhoc_sweep

    _check_out(out, overwrite)
    axes = [a for a in (x, y, z) if a]
    res = run_adhoc_sweep(pipeline, prompt, axes, fixed, image=image, mask=mask, lora=lora, images=images, seed=seed,
                        out=out, model=model, device=C.resolve_device(device), threads=threads, show_progress=progress)
    _done(res)
