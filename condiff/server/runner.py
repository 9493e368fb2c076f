"""Running a request's work in the job queue and waiting for it from an async route.

:func:`run_job` is what every image route does: submit ``fn(progress)`` to the one queue, await it
while polling whether the client is still connected (a client that goes away cancels its job, so no
job runs on for nobody), and return ``job.result`` or raise ``job.error`` (mapped to HTTP by
:func:`condiff.server.app.exception_response`). :func:`sampler_callback` turns a job's progress into
the ``callback`` argument of the pipelines, with a lazily decoded live preview.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from fastapi import Request

from ..pipelines.common import to_unit
from .jobs import Job, Progress
from .state import ServerState

__all__ = ["run_job", "submit", "sampler_callback", "state_of"]


def state_of(request: Request) -> ServerState:
    return request.app.state.condiff


def submit(state: ServerState, kind: str, fn: Callable[[Progress], Any], meta: dict | None = None) -> Job:
    """Queue ``fn`` with the server's per-job time limit (QueueFull → 429)."""
    return state.queue.submit(kind, fn, timeout_s=state.limits.max_job_seconds, meta=meta)


async def run_job(request: Request, kind: str, fn: Callable[[Progress], Any], meta: dict | None = None) -> Any:
    """Submit ``fn``, await it (cancelling it if the client disconnects), return its result or raise its error."""
    state = state_of(request)
    job = submit(state, kind, fn, meta)
    await job.wait_async(should_cancel=request.is_disconnected)
    if job.error is not None:
        raise job.error
    return job.result


def sampler_callback(progress: Progress, state: ServerState, total: int, decode: Callable | None = None):
    """The pipelines' ``callback``: step counting (``total`` over all sampler runs of the job) and, when
    the ``live_previews_enable`` option is on, a preview of x̂0 decoded only when a client asks for it."""
    every = max(1, int(state.options.get("show_progress_every_n_steps", 1) or 1))
    if not state.options.get("live_previews_enable", True):
        return progress.stage(total)
    counter = [0]

    def preview(info: dict):
        counter[0] += 1
        if counter[0] % every:
            return None
        denoised = info["denoised"][:1].detach()

        def make():
            with torch.no_grad():
                return to_unit(decode(denoised)) if decode is not None else to_unit(denoised)

        return make

    return progress.stage(total, preview)
