"""Running studio work through the server's job queue: progress bar, step previews, cancel, errors.

Every button that computes something builds a function ``work(progress) -> result`` that calls
the same pipeline function as the CLI (its sampler ``callback`` from
:func:`condiff.server.runner.sampler_callback`), and hands it to :meth:`JobPanel.drive`, which
submits it to ``state.queue`` with :func:`condiff.server.runner.submit` (the one FIFO queue of
``condiff serve``, shared with the HTTP API, with its per-job time limit), then
streams the job's state into the page until it ends:

* a progress bar (``step / total``, ETA, place in the queue) and the latest step preview;
* a **Cancel** button that cancels the job in the queue (it stops at its next step); closing the
  page or the event being cancelled by gradio cancels it too;
* errors as one line in the page (and a gradio toast), never a traceback: condiff's own error
  types (:mod:`condiff.errors`) and the plain ``ValueError``/``OSError`` of its checks carry
  messages written for users; anything else is logged on the server and reported as an internal
  error.
"""

from __future__ import annotations

import html
import logging
from typing import Any, Callable, Iterator

from ..errors import Cancelled, CondiffError
from ..images import to_pil
from ..server.runner import submit

__all__ = ["JobPanel", "guarded", "page_errors", "user_message", "progress_html", "LOG"]

LOG = logging.getLogger("condiff.studio")
POLL_S = 0.2


def user_message(err: BaseException) -> str:
    """One line for the page: condiff's message, or a generic one for unexpected errors (logged)."""
    if isinstance(err, (CondiffError, ValueError, OSError)) and str(err).strip():
        return str(err).strip().splitlines()[0]
    LOG.error("studio: internal error", exc_info=(type(err), err, err.__traceback__))
    return f"internal error ({type(err).__name__}); the server log has the details"


def progress_html(state: str, step: int = 0, total: int = 0, eta: float | None = None, position: int = 0,
                  message: str = "") -> str:
    """The progress line shown above a tab's results (plain HTML, no script)."""
    if state == "failed":
        return f'<div class="cd-status cd-error" role="alert">error: {html.escape(message)}</div>'
    if state == "cancelled":
        return f'<div class="cd-status cd-cancelled">cancelled{": " + html.escape(message) if message else ""}</div>'
    if state == "queued":
        return f'<div class="cd-status cd-queued">waiting in the queue (position {position})</div>'
    if state == "idle":
        return '<div class="cd-status cd-idle">ready</div>'
    if state == "done":
        return f'<div class="cd-status cd-done">done{" — " + html.escape(message) if message else ""}</div>'
    frac = step / total if total else 0.0
    eta_txt = f", about {eta:.0f} s left" if eta is not None else ""
    return (f'<div class="cd-status cd-running"><progress max="1" value="{frac:.3f}"></progress> '
            f'step {step} / {total}{eta_txt}{(" — " + html.escape(message)) if message else ""}</div>')


class JobPanel:
    """The progress line, step preview and Cancel button of one tab, bound to the server's queue."""

    def __init__(self, state, kind: str, preview: bool = True):
        import gradio as gr

        self.state = state
        self.kind = kind
        with gr.Row(equal_height=False):
            self.status = gr.HTML(progress_html("idle"), elem_classes=["cd-progress"],
                                  elem_id=f"cd-{kind}-status")
            self.cancel = gr.Button("Cancel", variant="stop", size="sm", scale=0, min_width=90,
                                    elem_id=f"cd-{kind}-cancel")
        self.preview = gr.Image(label="step preview", interactive=False, visible=preview, height=160,
                                type="pil", elem_id=f"cd-{kind}-preview")
        self.job = gr.State(None)
        self.cancel.click(self._cancel, inputs=self.job, outputs=self.status, queue=False)

    @property
    def outputs(self) -> list:
        return [self.status, self.preview, self.job]

    def _cancel(self, job_id: str | None) -> str:
        if job_id and self.state.queue.cancel(job_id):
            return progress_html("running", message="cancelling…")
        return progress_html("idle")

    def drive(self, work: Callable[[Any], Any], done: Callable[[Any], dict], meta: dict | None = None,
              watch: Callable[[Any], dict] | None = None) -> Iterator[dict]:
        """Submit ``work`` and stream progress; finally yield ``done(result)`` (a dict of updates).
        ``watch(job)`` (optional) adds updates of its own at every poll (e.g. a loss curve)."""
        import gradio as gr

        try:
            job = submit(self.state, self.kind, work, meta)
        except Exception as err:  # noqa: BLE001 -- queue full, shut down: a message, not a trace
            message = user_message(err)
            yield {self.status: progress_html("failed", message=message)}
            raise gr.Error(message, print_exception=False) from None
        try:
            yield {self.job: job.id, self.status: progress_html("queued", position=self.state.queue.position(job))}
            last = None
            while not job.wait(POLL_S):
                snap = (job.state, job.step, job.total)
                if snap == last:
                    continue
                last = snap
                update = {self.status: progress_html(job.state, job.step, job.total, job.eta,
                                                     self.state.queue.position(job))}
                image = job.preview_image()
                if image is not None:
                    update[self.preview] = to_pil(image[:1].float().clamp(0, 1))
                if watch is not None:
                    update.update(watch(job))
                yield update
        finally:
            if not job.is_final():  # the page went away or gradio cancelled the event
                self.state.queue.cancel(job.id, "disconnected")
        if job.state == "cancelled":
            yield {self.status: progress_html("cancelled", message=str(job.error or "")), self.job: None}
            return
        if job.state == "failed":
            message = user_message(job.error)
            yield {self.status: progress_html("failed", message=message), self.job: None}
            raise gr.Error(message, print_exception=False)
        try:
            outputs = done(job.result)
        except Exception as err:  # noqa: BLE001 -- writing the outputs failed
            message = user_message(err)
            yield {self.status: progress_html("failed", message=message), self.job: None}
            raise gr.Error(message, print_exception=False) from None
        took = (job.finished or 0) - (job.started or 0)
        yield {**outputs, self.status: progress_html("done", message=f"{took:.1f} s"), self.job: None}


def guarded(panel: JobPanel, build: Callable[[], tuple], meta: dict | None = None) -> Iterator[dict]:
    """``build()`` checks the page's inputs and returns ``(work, done)`` or ``(work, done, watch)``;
    a bad input becomes a message in the page (no job is queued), else :meth:`JobPanel.drive` runs it."""
    import gradio as gr

    try:
        work, done, *watch = build()
    except Cancelled:
        raise
    except Exception as err:  # noqa: BLE001 -- input checks: condiff's messages
        message = user_message(err)
        yield {panel.status: progress_html("failed", message=message)}
        raise gr.Error(message, print_exception=False) from None
    yield from panel.drive(work, done, meta, watch[0] if watch else None)


def page_errors(fn: Callable) -> Callable:
    """Wrap a quick handler that runs outside the queue (loading a map, reading PNG info): its
    errors become a one-line message in the page."""
    import functools

    import gradio as gr

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as err:  # noqa: BLE001 -- shown as a message, never a trace
            raise gr.Error(user_message(err), print_exception=False) from None

    return wrapped
