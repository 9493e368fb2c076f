"""condiff's exception types: one small hierarchy shared by the Python API, CLI, server and UI.

Each type is also a subclass of the built-in type a caller would expect, so existing
``except ValueError`` / ``except RuntimeError`` code keeps working:

=====================  ===========================  ==========================================
type                   built-in base                raised when
=====================  ===========================  ==========================================
``InputError``         ``ValueError``               an argument, image, mask, prompt or path is bad
``LimitError``         ``InputError``               a size, count or length is over its limit
``ModelError``         ``ValueError``               a weight file or model folder cannot be used
``NonFiniteError``     ``RuntimeError``             a computation produced NaN/inf
``DeviceError``        ``RuntimeError``             a device or dtype is not available here
``OutputError``        ``OSError``                  an output exists (no overwrite) or is not writable
``Cancelled``          ``RuntimeError``             a job was cancelled (interrupt, client gone)
=====================  ===========================  ==========================================

The CLI maps ``InputError``/``ModelError``/``OutputError`` to exit status 2 and the rest to 1;
the HTTP server maps them to 4xx (input) or 5xx (runtime) responses. Messages name the problem
and, where there is one, the fix, in one line.
"""

from __future__ import annotations

__all__ = [
    "CondiffError", "InputError", "LimitError", "ModelError", "NonFiniteError", "DeviceError",
    "OutputError", "Cancelled",
]


class CondiffError(Exception):
    """Base of every error condiff raises on purpose."""


class InputError(CondiffError, ValueError):
    """A bad argument, image, mask, prompt, number or path given by the caller."""


class LimitError(InputError):
    """A size, count or length over its configured limit (refused before any allocation)."""


class ModelError(CondiffError, ValueError):
    """A weight file, model folder or checkpoint that cannot be loaded or used."""


class NonFiniteError(CondiffError, RuntimeError):
    """NaN or inf in a result (e.g. extreme guidance, a broken LoRA or checkpoint)."""


class DeviceError(CondiffError, RuntimeError):
    """A device or precision that is not available on this machine (e.g. ``cuda`` without a GPU)."""


class OutputError(CondiffError, OSError):
    """An output that exists (and overwriting was not asked for) or cannot be written."""


class Cancelled(CondiffError, RuntimeError):
    """A job was cancelled: interrupted by the user, skipped, timed out or its client went away."""
