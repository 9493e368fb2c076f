"""`condiff serve`: the HTTP server (A1111-compatible API + condiff's routes, one job queue; no maths here)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import _common as C


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def parse_auth(spec: Optional[str]) -> tuple[str, str] | None:
    """``USER:PASSWORD`` → (user, password); ValueError when malformed."""
    if spec is None:
        return None
    user, sep, password = spec.partition(":")
    if not sep or not user or not password:
        raise ValueError("--api-auth takes USER:PASSWORD (both non-empty)")
    return user, password


def check_bind(host: str, listen: bool, auth, insecure: bool) -> str:
    """The interface to bind: localhost unless --listen, which needs --api-auth or an explicit --insecure."""
    if not listen:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"--host {host} is not a loopback address; pass --listen (with --api-auth) to serve "
                             "other interfaces")
        return host
    if auth is None and not insecure:
        raise ValueError("--listen exposes the server to the network; add --api-auth USER:PASSWORD "
                         "(or --insecure to serve without authentication)")
    return "0.0.0.0" if host in ("127.0.0.1", "localhost") else host


def _speed_note(options: dict) -> str:
    """The model's dtype and the speed options that are on, e.g. ``fp16, fused_qkv+channels_last``."""
    on = [k for k, v in (options.get("condiff_speed") or {}).items() if v is True]
    return ", ".join([str(options.get("condiff_dtype")), *(["+".join(on)] if on else [])])


@C.with_options(speed=C.SPEED)
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (loopback only unless --listen)."),
    port: int = typer.Option(7860, "--port", help="TCP port (A1111's default: 7860)."),
    model: str = C.MODEL_OPT,
    device: Optional[str] = C.DEVICE_OPT,
    dtype: str = C.DTYPE_OPT,
    listen: bool = typer.Option(False, "--listen", help="Serve on all interfaces (0.0.0.0); needs --api-auth or --insecure."),
    api_auth: Optional[str] = typer.Option(None, "--api-auth", help="USER:PASSWORD: require HTTP basic authentication."),
    insecure: bool = typer.Option(False, "--insecure", help="Allow --listen without --api-auth."),
    max_pixels: int = typer.Option(1024 * 1024, "--max-pixels", help="Largest width × height of a requested image."),
    max_steps: int = typer.Option(150, "--max-steps", help="Most sampling steps of one request."),
    max_batch: int = typer.Option(8, "--max-batch", help="Most images of one request (batch_size × n_iter; variations n)."),
    max_body_bytes: int = typer.Option(32 * 1024 * 1024, "--max-body-bytes", help="Largest request body (bytes) → 413."),
    max_prompt_chars: int = typer.Option(2000, "--max-prompt-chars", help="Longest prompt / negative prompt (characters)."),
    max_image_pixels: int = typer.Option(4096 * 4096, "--max-image-pixels", help="Largest decoded input image (pixels; decompression bombs)."),
    max_job_seconds: float = typer.Option(600.0, "--max-job-seconds", help="Per-job time limit; a job past it is cancelled."),
    max_queue: int = typer.Option(8, "--max-queue", help="Jobs waiting or running; more are refused with 429 + Retry-After."),
    max_train_steps: int = typer.Option(1000, "--max-train-steps", help="Most steps of a personalization job."),
    max_train_images: int = typer.Option(32, "--max-train-images", help="Most subject images of a personalization job."),
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", help="Folder for long jobs' files (default: a temporary folder)."),
    studio: bool = typer.Option(True, "--studio/--no-studio", help="Also serve the browser studio at /studio (same "
                                "queue and model)."),
    *, speed: dict,
) -> None:
    """Serve the AUTOMATIC1111-compatible HTTP API (/sdapi/v1, /controlnet) and condiff's own (/condiff/v1).

    One process, the model loaded once, every request a job in one FIFO queue. OpenAPI page: /docs.
    --dtype, --fast and --compile apply once, when the model loads (GET /sdapi/v1/options
    reports them as condiff_dtype and condiff_speed); an option the device cannot run stops the
    server before it binds its port.
    """
    import logging

    import uvicorn

    from ..acceleration import resolve_speed
    from ..server.app import create_app
    from ..server.state import Limits, ServerState

    auth = parse_auth(api_auth)
    bind = check_bind(host, listen, auth, insecure)
    limits = Limits(max_pixels=max_pixels, max_steps=max_steps, max_batch=max_batch, max_body_bytes=max_body_bytes,
                    max_prompt_chars=max_prompt_chars, max_image_pixels=max_image_pixels,
                    max_job_seconds=max_job_seconds, max_queue=max_queue, max_train_steps=max_train_steps,
                    max_train_images=max_train_images)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    state = ServerState.create(model, device, dtype=dtype, speed=resolve_speed(**speed), limits=limits, auth=auth,
                               work_dir=work_dir)
    app = create_app(state)
    shown = "127.0.0.1" if bind == "0.0.0.0" else bind
    pages = f"http://{shown}:{port}/docs"
    if studio:
        from ..studio import STUDIO_PATH, mount_studio

        app = mount_studio(app, state)
        pages += f" and http://{shown}:{port}{STUDIO_PATH}/"
    typer.echo(f"condiff serve: model {model!r} on {state.device} ({_speed_note(state.options)}); {pages}", err=True)
    try:
        uvicorn.run(app, host=bind, port=port, log_level="info", timeout_graceful_shutdown=5)
    finally:
        state.close()
