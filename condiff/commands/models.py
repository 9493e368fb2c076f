"""`condiff models inspect PATH`: what a Stable Diffusion checkpoint or ControlNet holds (no maths here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    models = typer.Typer(help="Inspect local Stable Diffusion checkpoints and ControlNets (offline).",
                         no_args_is_help=True)
    app.add_typer(models, name="models")

    @models.command("inspect")
    def inspect_cmd(
        path: Path = typer.Argument(..., help="A diffusers folder, a .safetensors/.ckpt file or a ControlNet."),
        prediction: Optional[str] = typer.Option(
            None, "--prediction", help="Override the detected prediction type ('eps' or 'v')."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Print the detected format, variant, prediction type, components, dtypes and what is missing."""
        from condiff.models.inspect import inspect_model
        from condiff.models.offline import set_offline_env

        set_offline_env()
        report = inspect_model(path, prediction=prediction)
        typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.format())
