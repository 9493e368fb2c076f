"""`condiff studio`: ``condiff serve`` with the browser studio mounted at /studio (one process, one
queue, one model); prints the studio's URL. Same options as ``condiff serve`` (no maths here)."""

from __future__ import annotations

import dataclasses
import functools
import inspect

import typer

from .serve import check_bind, parse_auth, serve


def register(app: typer.Typer) -> None:
    app.command("studio")(studio)


@functools.wraps(serve)
def studio(**options) -> None:
    """Serve the browser studio (/studio) together with the HTTP API (/sdapi/v1, /condiff/v1, /docs)."""
    import logging

    import uvicorn

    from ..server.app import create_app
    from ..server.state import Limits, ServerState
    from ..studio import STUDIO_PATH, mount_studio

    auth = parse_auth(options["api_auth"])
    bind = check_bind(options["host"], options["listen"], auth, options["insecure"])
    limits = Limits(**{f.name: options[f.name] for f in dataclasses.fields(Limits) if f.name in options})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    state = ServerState.create(options["model"], options["device"], limits=limits, auth=auth,
                               work_dir=options["work_dir"])
    app = mount_studio(create_app(state), state)
    shown = "127.0.0.1" if bind == "0.0.0.0" else bind
    typer.echo(f"condiff studio: http://{shown}:{options['port']}{STUDIO_PATH}/  (model {options['model']!r} on "
               f"{state.device}; API docs at /docs)", err=True)
    try:
        uvicorn.run(app, host=bind, port=options["port"], log_level="warning", timeout_graceful_shutdown=5)
    finally:
        state.close()


studio.__signature__ = inspect.signature(serve, eval_str=True)  # typer reads the options' types from here
studio.__doc__ = "Serve the browser studio at /studio together with the HTTP API (same options as `condiff serve`)."
