"""Long jobs (personalization training, experiments) as ``condiff`` CLI child processes in the job queue.

They run through the same queue as image requests (one at a time on the device), but in a child
process running the ordinary CLI command, because

* training changes the model it trains (LoRA layers, new tokens, fine-tuned weights) and must not
  touch the model the server keeps serving;
* cancellation is then immediate and complete (the child is terminated), where a training loop or
  an experiment has no step callback to stop at;
* the CLI is the one code path: the job is exactly ``condiff personalize …`` / ``condiff experiment run …``.

Progress is read from the child's progress bar on stderr (``k/n``); the job's files stay in its own
folder (:meth:`ServerState.job_dir`) and are served by name only.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..errors import Cancelled, CondiffError, InputError
from .jobs import Progress

__all__ = ["run_cli", "ChildFailed"]

_BAR = re.compile(rb"(\d+)/(\d+) \[")


class ChildFailed(CondiffError):
    """A CLI child process ended with an error (its one-line message)."""


def _drain(stream, sink: list[bytes]) -> None:
    for chunk in iter(lambda: stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096), b""):
        sink.append(chunk)
        if len(sink) > 256:  # keep the tail only
            del sink[:128]


def run_cli(args: list[str], progress: Progress, cwd: Path, *, expected_s: float | None = None) -> str:
    """Run ``python -m condiff.cli ARGS`` in ``cwd``; report its progress bar; terminate it on cancel.

    Returns the child's stdout tail; raises :class:`InputError` (exit status 2: bad input) or
    :class:`ChildFailed` with the child's last error line, :class:`Cancelled` when the job was cancelled.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_MININTERVAL="0.2")
    proc = subprocess.Popen([sys.executable, "-m", "condiff.cli", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [threading.Thread(target=_drain, args=(proc.stdout, out), daemon=True),
               threading.Thread(target=_drain, args=(proc.stderr, err), daemon=True)]
    for t in readers:
        t.start()
    start = time.time()
    try:
        while proc.poll() is None:
            time.sleep(0.2)
            bars = _BAR.findall(b"".join(err[-8:]))
            if bars:
                step, total = (int(v) for v in bars[-1])
                progress.update(step, max(total, 1))
            elif expected_s:
                progress.update(min(99, int(100 * (time.time() - start) / expected_s)), 100)
            else:
                progress.check()
    except Cancelled:
        _stop(proc)
        raise
    for t in readers:
        t.join(timeout=5)
    tail = b"".join(err).decode("utf-8", "replace").strip().splitlines()
    if proc.returncode != 0:
        message = next((ln for ln in reversed(tail) if ln.strip()), f"exit status {proc.returncode}")
        message = message.removeprefix("error: ").strip()
        raise (InputError if proc.returncode == 2 else ChildFailed)(message)
    return b"".join(out).decode("utf-8", "replace")[-4000:]


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the child's process group, then kill it if it lingers."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)
