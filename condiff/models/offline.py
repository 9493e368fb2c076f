"""Offline enforcement: condiff never reaches a model hub, and tests can prove it.

Two tools:

* :func:`set_offline_env` sets the flags that make ``huggingface_hub``, ``transformers`` and
  ``datasets`` refuse any download (``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``,
  ``HF_DATASETS_OFFLINE``, plus ``HF_HUB_DISABLE_TELEMETRY``). The Stable Diffusion loaders call it
  before touching ``transformers``.
* :func:`no_network` is a context manager that makes every attempt to open a network connection
  raise :class:`NetworkAccessError` (socket ``connect``/``connect_ex``, ``create_connection`` and
  name resolution). Unix-domain sockets stay allowed, since they never leave the machine. It is
  used in the tests around every loader call, so a hidden download would fail loudly instead of
  silently hanging or succeeding on a developer machine with internet.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import Iterator

__all__ = ["OFFLINE_ENV", "set_offline_env", "no_network", "NetworkAccessError"]

#: Environment flags that switch the Hugging Face libraries to local files only.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


class NetworkAccessError(RuntimeError):
    """Something tried to open a network connection inside :func:`no_network`."""


def set_offline_env(force: bool = False) -> None:
    """Set the offline flags (keeps a value the user already set unless ``force``)."""
    for key, value in OFFLINE_ENV.items():
        if force:
            os.environ[key] = value
        else:
            os.environ.setdefault(key, value)


def _is_local_family(sock: socket.socket) -> bool:
    return getattr(socket, "AF_UNIX", None) is not None and sock.family == socket.AF_UNIX


_lock = threading.Lock()
_stack: list[dict[str, object]] = []  # guard sets of the active blocks; _stack[0] holds the originals


def _install(fns: dict[str, object]) -> None:
    socket.socket.connect = fns["connect"]
    socket.socket.connect_ex = fns["connect_ex"]
    socket.create_connection = fns["create_connection"]
    socket.getaddrinfo = fns["getaddrinfo"]


@contextlib.contextmanager
def no_network() -> Iterator[list[str]]:
    """Within this block any network connection attempt raises :class:`NetworkAccessError`.

    Yields a list that collects a description of every blocked attempt (useful in asserts).
    Re-entrant; restores the original socket functions on exit.
    """
    attempts: list[str] = []

    def refuse(what: str):
        attempts.append(what)
        raise NetworkAccessError(f"network access attempted inside condiff.models.offline.no_network(): {what}")

    with _lock:
        if not _stack:
            _stack.append(dict(
                connect=socket.socket.connect, connect_ex=socket.socket.connect_ex,
                create_connection=socket.create_connection, getaddrinfo=socket.getaddrinfo,
            ))
        orig = _stack[0]

        def connect(self, address):
            if _is_local_family(self):
                return orig["connect"](self, address)
            refuse(f"socket.connect({address!r})")

        def connect_ex(self, address):
            if _is_local_family(self):
                return orig["connect_ex"](self, address)
            refuse(f"socket.connect_ex({address!r})")

        def create_connection(address, *args, **kwargs):
            refuse(f"socket.create_connection({address!r})")

        def getaddrinfo(host, *args, **kwargs):
            refuse(f"socket.getaddrinfo({host!r})")

        guards = dict(connect=connect, connect_ex=connect_ex, create_connection=create_connection,
                      getaddrinfo=getaddrinfo)
        _stack.append(guards)
        _install(guards)
    try:
        yield attempts
    finally:
        with _lock:
            _stack.remove(guards)
            _install(_stack[-1])
            if len(_stack) == 1:
                _stack.clear()
