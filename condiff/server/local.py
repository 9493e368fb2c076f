"""A `condiff serve` child process on a free 127.0.0.1 port (for tests, benchmarks and scripts).

    with local_server(["--max-queue", "3"]) as (base_url, proc):
        requests.post(base_url + "/sdapi/v1/txt2img", json={...})
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, Sequence

__all__ = ["free_port", "local_server"]

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(url: str) -> bool:
    """Whether the local server answers ``url`` with 200 (loopback only: nothing here leaves the machine)."""
    if not url.startswith(("http://127.0.0.1:", "http://localhost:")):
        raise ValueError(f"{url}: local_server only polls 127.0.0.1")
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def local_server(args: Sequence[str] = (), *, threads: int = 1, start_timeout: float = 180) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``condiff serve --host 127.0.0.1 --port P ARGS`` until the block ends (then terminate it)."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads))
    log = tempfile.TemporaryFile()  # a file, not a pipe: the server's log must never block it
    proc = subprocess.Popen([sys.executable, "-m", "condiff.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                             *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        end = time.time() + start_timeout
        while not _ready(base + "/sdapi/v1/sd-models"):
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError("condiff serve exited during start-up: " + log.read().decode()[-2000:])
            if time.time() > end:
                raise RuntimeError(f"condiff serve did not answer within {start_timeout:g} s")
            time.sleep(0.5)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
