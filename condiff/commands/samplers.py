"""`condiff samplers`: the registered samplers with their cost per step and defaults (no maths here)."""

from __future__ import annotations

import inspect
import json

import typer


def register(app: typer.Typer) -> None:
    app.command("samplers")(samplers)


def samplers(as_json: bool = typer.Option(False, "--json", help="Print the list as JSON.")) -> None:
    """List the samplers: network evaluations (NFE) per step, default steps and schedule, whether they take --eta."""
    from ..samplers.registry import list_samplers, sampler_info

    rows = []
    for name in list_samplers():
        info = sampler_info(name)
        rows.append({"name": name, "nfe_per_step": info.nfe_per_step, "default_steps": info.default_steps,
                     "default_schedule": info.default_schedule, "stochastic": info.stochastic,
                     "eta": "eta" in inspect.signature(info.fn).parameters, "description": info.description})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"{'sampler':<16} {'NFE/step':>8} {'steps':>6}  {'schedule':<10} {'kind':<13} description")
    for r in rows:
        kind = "stochastic" if r["stochastic"] else "deterministic"
        typer.echo(f"{r['name']:<16} {r['nfe_per_step']:>8} {r['default_steps']:>6}  {r['default_schedule']:<10} "
                   f"{kind:<13} {r['description']}{' [--eta]' if r['eta'] else ''}")
