"""`condiff models list`: the built-in components; `condiff models inspect PATH`: what a Stable Diffusion
checkpoint or ControlNet holds; `condiff models merge A B … --out DIR`: a weighted average of component
folders (no maths here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    models = typer.Typer(help="List the built-in components; inspect local Stable Diffusion checkpoints and "
                              "ControlNets (offline).", no_args_is_help=True)
    app.add_typer(models, name="models")

    @models.command("list")
    def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print the list as JSON.")) -> None:
        """The built-in components: name, kind, weight size, whether present, what each is for."""
        from condiff.models import registry

        rows = []
        for name, present in registry.builtin_components().items():
            folder = registry.component_dir(name)
            kind = json.loads((folder / "config.json").read_text()).get("kind", "?") if present else "-"
            size = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
            rows.append({"name": name, "kind": kind, "bytes": size, "present": present,
                         "role": registry.component_role(name)})
        if as_json:
            typer.echo(json.dumps({"weights_dir": str(registry.WEIGHTS_DIR), "components": rows}, indent=2))
            return
        typer.echo(f"built-in components in {registry.WEIGHTS_DIR}:")
        for r in rows:
            typer.echo(f"  {r['name']:<20} {r['kind']:<15} {r['bytes'] / 1e6:7.1f} MB  {r['role']}")
        typer.echo(f"  {'total':<20} {'':<15} {sum(r['bytes'] for r in rows) / 1e6:7.1f} MB")

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

    @models.command("merge")
    def merge_cmd(
        sources: List[Path] = typer.Argument(..., help="Two or more component folders of one architecture "
                                                        "(e.g. condiff/weights/ldm and a fine-tuned copy)."),
        out: Path = typer.Option(..., "--out", "-o", help="New folder for the merged component."),
        weights: Optional[str] = typer.Option(None, "--weights", help="Comma-separated weights, one per source "
                                              "(normalised to sum 1); default: equal."),
        dtype: str = typer.Option("same", "--dtype", help="same (as the first source stores its weights), fp16, fp32 or int8."),
        force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
    ) -> None:
        """Average the weights of components fine-tuned from one starting point ("model soup"); measure the
        result before using it (condiff eval adherence with CONDIFF_WEIGHTS)."""
        from condiff.models.merge import MergeError, merge_components

        try:
            w = [float(x) for x in weights.split(",")] if weights else None
        except ValueError:
            raise typer.BadParameter(f"--weights must be comma-separated numbers, got {weights!r}") from None
        try:
            config = merge_components(sources, out, w, dtype=dtype, overwrite=force)
        except MergeError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        parts = ", ".join(f"{m['weight']:.3g} × {m['source']}" for m in config["merged_from"])
        typer.echo(f"wrote {out} ({config.get('kind', '?')}): {parts}")
