"""The job queue of ``condiff serve``: one worker thread per device, FIFO, bounded.

Every piece of work the server does on the model (an image request, a personalization run, an
experiment) is a :class:`Job` in one :class:`JobQueue`, so jobs never compete for the device and
progress, cancellation and time limits work the same way for all of them.

API (used by the A1111 routes, condiff's own routes and the browser studio)::

    q = JobQueue(max_pending=8, default_timeout_s=600)
    job = q.submit("txt2img", fn, timeout_s=120, meta={...})   # QueueFull (→ HTTP 429) when full
    # fn(progress) runs on the worker thread; it calls
    #     progress.update(step, total, preview=None)
    # at every step, which raises condiff.errors.Cancelled once the job is cancelled, interrupted,
    # skipped or past its time limit. fn's return value becomes job.result, an exception job.error.
    job.wait(timeout)              # blocking;  await job.wait_async(poll_s) from async code
    q.get(job_id) -> Job | None    q.current() -> Job | None   q.jobs() -> list[Job] (newest last)
    q.cancel(job_id) -> bool       q.interrupt() / q.skip() -> bool (the running job, A1111 words)
    q.retry_after() -> int         seconds a client refused with 429 should wait
    q.stats() -> dict              counts since start: submitted, rejected, done, failed, cancelled
    q.close()                      cancel everything and stop the worker

:class:`Job` fields: ``id`` (hex), ``kind``, ``state`` (``queued`` → ``running`` → ``done`` |
``failed`` | ``cancelled``), ``step``/``total``/``fraction``, ``eta`` (seconds, or None),
``preview`` (whatever the job last passed: an image tensor [1, 3, H, W] in [0, 1] or a zero-argument
callable returning one, read with :meth:`Job.preview_image`), ``result``, ``error`` (the exception),
``cancel_reason`` (``"cancelled"``, ``"interrupted"``, ``"skipped"``, ``"timeout"``,
``"disconnected"``), ``meta`` (a dict for the caller) and ``created``/``started``/``finished``
(``time.time()``). :meth:`Job.status` is the JSON-ready summary.

Cancellation is cooperative: a running job stops at its next ``progress.update``; a queued job is
removed before it starts. Finished jobs are kept for status queries up to ``keep_finished`` (oldest
dropped first, ``on_forget(job)`` called for each, e.g. to delete its files), so memory and disk stay
bounded however long the server runs.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
import uuid
from typing import Any, Callable

from ..errors import Cancelled, CondiffError, LimitError

__all__ = ["Job", "JobQueue", "Progress", "QueueFull", "JOB_STATES"]

LOG = logging.getLogger("condiff.server")
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
_FINAL = ("done", "failed", "cancelled")


class QueueFull(LimitError):
    """The queue holds ``max_pending`` jobs already; ``retry_after`` is a wait in seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Job:
    """One unit of work and its live state (mutated only by the queue and its worker)."""

    def __init__(self, kind: str, fn: Callable[["Progress"], Any], timeout_s: float | None, meta: dict | None):
        self.id = uuid.uuid4().hex
        self.kind = kind
        self.fn = fn
        self.timeout_s = timeout_s
        self.meta = dict(meta or {})
        self.state = "queued"
        self.step = 0
        self.total = 0
        self.preview: Any = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.cancel_reason: str | None = None
        self.created = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self._done = threading.Event()

    # ------------------------------------------------------------------ reading
    @property
    def fraction(self) -> float:
        if self.state == "done":
            return 1.0
        return self.step / self.total if self.total else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left, extrapolated from the elapsed time and the fraction done."""
        if self.state != "running" or self.started is None:
            return None
        f = self.fraction
        if f <= 0:
            return None
        elapsed = time.time() - self.started
        return max(0.0, elapsed / f * (1 - f))

    @property
    def finished_ok(self) -> bool:
        return self.state == "done"

    def is_final(self) -> bool:
        return self.state in _FINAL

    def preview_image(self):
        """The latest preview as an image tensor (evaluating a lazy preview), or None."""
        p = self.preview
        try:
            return p() if callable(p) else p
        except Exception:  # a preview must never break a status query
            return None

    def status(self) -> dict[str, Any]:
        """JSON-ready summary (no result payload, no traceback)."""
        return {
            "id": self.id, "kind": self.kind, "state": self.state, "step": self.step, "total": self.total,
            "fraction": round(self.fraction, 4), "eta": None if self.eta is None else round(self.eta, 2),
            "created": self.created, "started": self.started, "finished": self.finished,
            "cancel_reason": self.cancel_reason,
            "error": None if self.error is None or isinstance(self.error, Cancelled) else str(self.error).splitlines()[0],
        }

    # ------------------------------------------------------------------ waiting
    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job is final; False on timeout."""
        return self._done.wait(timeout)

    async def wait_async(self, poll_s: float = 0.05, should_cancel: Callable[[], Any] | None = None) -> None:
        """Await the end of the job from async code; ``should_cancel`` (sync or async, polled) returning
        true cancels the job (e.g. ``request.is_disconnected``) and the wait ends once it has stopped."""
        while not self._done.is_set():
            if should_cancel is not None:
                flag = should_cancel()
                if asyncio.iscoroutine(flag):
                    flag = await flag
                if flag and self.cancel_reason is None:
                    self._cancel("disconnected")
            await asyncio.sleep(poll_s)

    # ------------------------------------------------------------------ internal
    def _cancel(self, reason: str) -> None:
        if self.cancel_reason is None and not self.is_final():
            self.cancel_reason = reason

    def _finish(self, state: str) -> None:
        self.state = state
        self.finished = time.time()
        self.fn = None  # drop the closure (and whatever tensors it holds)
        self._done.set()


class Progress:
    """Handed to a job's function: report steps, receive cancellation."""

    def __init__(self, job: Job):
        self._job = job
        self._deadline = None if not job.timeout_s else (job.started or time.time()) + job.timeout_s

    @property
    def job(self) -> Job:
        return self._job

    def check(self) -> None:
        """Raise :class:`Cancelled` when the job was cancelled or ran past its time limit."""
        job = self._job
        if job.cancel_reason is None and self._deadline is not None and time.time() > self._deadline:
            job.cancel_reason = "timeout"
        if job.cancel_reason is not None:
            if job.cancel_reason == "timeout":
                raise Cancelled(f"job {job.kind} ran past its time limit of {job.timeout_s:g} s; "
                                "ask for fewer steps or a smaller image, or raise --max-job-seconds")
            raise Cancelled(f"job {job.kind} was {job.cancel_reason}")

    def update(self, step: int, total: int, preview: Any = None) -> None:
        """Record progress (``step`` of ``total`` done, optional preview), then :meth:`check`."""
        job = self._job
        job.step, job.total = int(step), int(total)
        if preview is not None:
            job.preview = preview
        self.check()

    def stage(self, total: int, preview: Callable[[dict], Any] | None = None) -> Callable[[dict], None]:
        """A sampler ``callback`` (condiff.samplers contract) counting up to ``total`` steps over all the
        sampler runs it is given to; ``preview(info)`` (optional) makes the preview of a step (lazily)."""
        count = [0]

        def cb(info: dict) -> None:
            count[0] += 1
            self.update(min(count[0], total), total, preview(info) if preview is not None else None)

        return cb


class JobQueue:
    """FIFO queue of :class:`Job` with one worker thread (one per device: one per server)."""

    def __init__(self, max_pending: int = 8, *, default_timeout_s: float | None = None, keep_finished: int = 64,
                 name: str = "condiff-worker", on_forget: Callable[[Job], None] | None = None):
        if max_pending < 1:
            raise LimitError(f"max_pending must be at least 1, got {max_pending}")
        self.max_pending = int(max_pending)
        self.default_timeout_s = default_timeout_s
        self._lock = threading.Condition()
        self._pending: collections.deque[Job] = collections.deque()
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._keep = int(keep_finished)
        self._on_forget = on_forget
        self._current: Job | None = None
        self._durations: collections.deque[float] = collections.deque(maxlen=16)
        self._closed = False
        self._counts = collections.Counter()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ submitting
    def submit(self, kind: str, fn: Callable[[Progress], Any], *, timeout_s: float | None = None,
               meta: dict | None = None) -> Job:
        """Queue ``fn(progress)``; raises :class:`QueueFull` when ``max_pending`` jobs wait or run."""
        with self._lock:
            if self._closed:
                raise CondiffError("the job queue is shut down")
            busy = len(self._pending) + (self._current is not None)
            if busy >= self.max_pending:
                self._counts["rejected"] += 1
                raise QueueFull(f"the job queue is full ({busy} jobs of at most {self.max_pending}); retry later",
                                self._retry_after_locked())
            job = Job(kind, fn, timeout_s if timeout_s is not None else self.default_timeout_s, meta)
            self._pending.append(job)
            self._counts["submitted"] += 1
            self._jobs[job.id] = job
            self._trim_locked()
            self._lock.notify_all()
            return job

    def stats(self) -> dict[str, int]:
        """Counts since start (``submitted`` = ``done`` + ``failed`` + ``cancelled`` + waiting/running)."""
        with self._lock:
            out = {k: self._counts[k] for k in ("submitted", "rejected", "done", "failed", "cancelled")}
            out["pending"] = len(self._pending)
            out["running"] = int(self._current is not None)
            return out

    def retry_after(self) -> int:
        with self._lock:
            return self._retry_after_locked()

    def _retry_after_locked(self) -> int:
        mean = sum(self._durations) / len(self._durations) if self._durations else 1.0
        return max(1, int(round(mean * max(1, len(self._pending)))))

    # ------------------------------------------------------------------ reading
    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def current(self) -> Job | None:
        return self._current

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def pending(self) -> int:
        """Jobs waiting (not counting the running one)."""
        return len(self._pending)

    def position(self, job: Job) -> int:
        """0 when running or final, else 1 + the number of jobs ahead of it."""
        with self._lock:
            try:
                return self._pending.index(job) + 1
            except ValueError:
                return 0

    # ------------------------------------------------------------------ cancelling
    def cancel(self, job_id: str, reason: str = "cancelled") -> bool:
        """Cancel a queued or running job; False when unknown or already final."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.is_final():
                return False
            job._cancel(reason)
            if job in self._pending:
                self._pending.remove(job)
                job.error = Cancelled(f"job {job.kind} was {reason} before it started")
                job._finish("cancelled")
                self._counts["cancelled"] += 1
            return True

    def interrupt(self) -> bool:
        """Stop the running job (A1111 ``/interrupt``)."""
        job = self._current
        return self.cancel(job.id, "interrupted") if job is not None else False

    def skip(self) -> bool:
        """Stop the running job (A1111 ``/skip``; condiff jobs are one unit, so skip ends the job)."""
        job = self._current
        return self.cancel(job.id, "skipped") if job is not None else False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for job in list(self._pending):
                self.cancel(job.id, "cancelled")
            if self._current is not None:
                self._current._cancel("cancelled")
            self._lock.notify_all()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ worker
    def _trim_locked(self) -> None:
        finished = [j for j in self._jobs.values() if j.is_final()]
        for job in finished[: max(0, len(finished) - self._keep)]:
            del self._jobs[job.id]
            if self._on_forget is not None:
                try:
                    self._on_forget(job)
                except Exception:  # noqa: BLE001 -- clean-up must never stop the worker
                    LOG.warning("clean-up of job %s failed", job.id, exc_info=True)

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._lock.wait()
                if self._closed and not self._pending:
                    return
                job = self._pending.popleft()
                job.state = "running"
                job.started = time.time()
                self._current = job
            self._run(job)
            with self._lock:
                self._current = None
                self._counts[job.state] += 1
                self._durations.append(job.finished - job.started)
                self._trim_locked()

    @staticmethod
    def _run(job: Job) -> None:
        progress = Progress(job)
        state = "done"
        try:
            progress.check()
            job.result = job.fn(progress)
        except Cancelled as err:
            job.error, state = err, "cancelled"
            job._cancel("cancelled")
        except BaseException as err:  # noqa: BLE001 -- recorded; the server maps it to an HTTP answer
            if not isinstance(err, (CondiffError, ValueError)):  # unexpected: keep the traceback in the log
                LOG.error("job %s (%s) failed", job.id, job.kind, exc_info=err)
            job.error, state = err, "failed"
        if job.error is not None:  # its frames would keep the job's tensors alive in the history
            job.error.__traceback__ = None
        job._finish(state)
