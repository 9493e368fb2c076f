"""A `condiff serve` child process on a free 127.0.0.1 port (for tests, benchmarks and scripts).

    with local_server(["--max-queue", "3"]) as (base_url, proc):
        requests.post(base_url + "/sdapi/v1/txt2img", json={...})
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

__all__ = ["free_port", "local_server"]

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(port: int, path: str) -> bool:
    """Whether the server on 127.0.0.1:``port`` answers ``GET path`` with 200 (loopback only)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


@contextlib.contextmanager
def local_server(args: Sequence[str] = (), *, command: str = "serve", ready_path: str = "/sdapi/v1/sd-models",
                 threads: int = 1, env: dict[str, str] | None = None, log_path: Path | None = None,
                 start_timeout: float = 180) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``condiff COMMAND --host 127.0.0.1 --port P ARGS`` (``serve`` or ``studio``) until the block ends
    (then terminate it). ``env`` adds environment variables; the server's log goes to ``log_path``
    (default: a temporary file) — a file, not a pipe, so that the log never blocks the server."""
    port = free_port()
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads), **(env or {}))
    log = open(log_path, "w+b") if log_path is not None else tempfile.TemporaryFile()  # noqa: SIM115 -- closed below
    proc = subprocess.Popen([sys.executable, "-m", "condiff.cli", command, "--host", "127.0.0.1", "--port", str(port),
                             *args], cwd=ROOT, env=full_env, stdout=log, stderr=log)
    try:
        end = time.time() + start_timeout
        while not _ready(port, ready_path):
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"condiff {command} exited during start-up: " + log.read().decode()[-3000:])
            if time.time() > end:
                raise RuntimeError(f"condiff {command} did not answer within {start_timeout:g} s")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
