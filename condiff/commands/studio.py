"""`condiff studio`: ``condiff serve`` with the browser studio at /studio (one process, one queue, one
model). Same options as ``condiff serve`` (no maths here)."""

from __future__ import annotations

import functools
import inspect

import typer

from .serve import serve


def register(app: typer.Typer) -> None:
    app.command("studio")(studio)


@functools.wraps(serve)
def studio(**options) -> None:
    serve(**options, studio=True)


_params = [p for p in inspect.signature(serve, eval_str=True).parameters.values() if p.name != "studio"]
studio.__signature__ = inspect.Signature(_params)  # typer reads the options' types from here
studio.__doc__ = "Serve the browser studio at /studio together with the HTTP API (same options as `condiff serve`)."
