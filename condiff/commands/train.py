"""`condiff train …`: train the toy 2-D model, run a training recipe, or run the built-in models' training job
(the ``training`` package of a source checkout; no maths here)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import typer

from ..errors import InputError

LOSS_HELP = "Objective: eps (DDPM, eq. 2.13), dsm (NCSN, eq. 2.6), v (v-prediction), edm (eq. 2.20, EDM weighting)."


def register(app: typer.Typer) -> None:
    train = typer.Typer(help="Train models: the toy 2-D diffusion model, or any recipe (TOML).", no_args_is_help=True)
    app.add_typer(train, name="train")

    @train.command("toy")
    def toy(
        loss: str = typer.Option("eps", "--loss", help=LOSS_HELP),
        steps: Optional[int] = typer.Option(None, "--steps", help="Training steps (default: the toy config's)."),
        out: Path = typer.Option(Path("runs/toy2d"), "--out", help="Output folder (weights, metrics, plot, checkpoints)."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in --out."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Start afresh even if --out holds a run."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when present)."),
        seed: int = typer.Option(0, "--seed", help="Seed of data, initial weights, noise and sampling."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    ) -> None:
        """Train a small MLP diffusion model on a 2-D Gaussian mixture; report the sliced-W distance."""
        from condiff.toy import ToyConfig, run_toy

        config = ToyConfig(loss=loss, seed=seed)
        if steps is not None:
            config.steps = steps
        config.validate()
        _train(device, lambda ctx: run_toy(config, out, resume=resume, overwrite=overwrite, progress=progress, dist=ctx))

    @train.command("run")
    def run(
        recipe: Path = typer.Argument(..., help="Recipe file (TOML) with a top-level kind."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: the recipe's 'out')."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Start afresh even if the folder holds a run."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when present)."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    ) -> None:
        """Run a training recipe, e.g. recipes/toy2d.toml."""
        from condiff.train import load_recipe, run_recipe

        spec = load_recipe(recipe)
        _train(device, lambda ctx: run_recipe(spec, out, resume=resume, overwrite=overwrite, progress=progress, dist=ctx))

    @train.command("job", add_help_option=False,
                   context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def job(ctx: typer.Context) -> None:
        """Reproduce the built-in weights: the training job of the source checkout's `training` package (train and
        export the stages in order; `condiff train job --help` lists its options; torchrun works too)."""
        try:
            _training_job_main()(list(ctx.args), prog="condiff train job")
        except SystemExit as done:  # argparse's --help and usage errors: its exit status, no traceback
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 2)
            raise typer.Exit(code) from None


def _train(device: Optional[str], train: Callable) -> None:
    """Run ``train(dist_context)`` in this process's place of a torchrun job (or alone); rank 0 reports."""
    from condiff.train import init_distributed, shutdown_distributed

    ctx = init_distributed(device)
    try:
        result = train(ctx)
    finally:
        shutdown_distributed(ctx)
    if ctx.is_main:
        _report(result)


def _training_job_main() -> Callable[..., None]:
    """The job's command line (``training.job_cli.main``), importable only from a source checkout: the wheel ships
    the library, not the recipes. The checkout's root is put on ``sys.path`` when the package lies beside
    ``condiff/`` (the ``condiff`` script does not start in the repository)."""
    import importlib
    import sys

    root = Path(__file__).resolve().parents[2]
    if (root / "training" / "__init__.py").is_file() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module("training.job_cli")
    except ModuleNotFoundError as err:
        if err.name not in ("training", "training.job_cli"):
            raise
        raise InputError("condiff train job needs the `training` package of a source checkout; run it from a clone "
                         "of the condiff repository (the installed package holds the library only)") from None
    return module.main


def _report(result) -> None:
    from dataclasses import is_dataclass

    if not is_dataclass(result):
        typer.echo(str(result))
        return
    for key, value in asdict(result).items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        if isinstance(value, dict):
            for k, v in value.items():
                typer.echo(f"{key}.{k}: {v}")
            continue
        typer.echo(f"{key}: {value}")
