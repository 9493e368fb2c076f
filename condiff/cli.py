"""The ``condiff`` command line: a thin shell over the library (no maths here).

Sub-commands live one module each in ``condiff.commands``; every module there defines
``register(app: typer.Typer) -> None`` and is discovered at start-up, so commands can be added
without editing this file.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys

import typer

from . import __version__

app = typer.Typer(
    name="condiff",
    help="Image manipulation with conditional diffusion models (offline, reproducible, measured).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"condiff {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """condiff never downloads anything: every model is built in or a local file."""


def _register_commands() -> None:
    from . import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


def main() -> None:
    # Offline by design: no library may reach a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from .models.registry import configure_cpu

    configure_cpu()
    _register_commands()
    try:
        app()
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:  # clear errors, no traces
        if os.environ.get("CONDIFF_DEBUG"):
            raise
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
