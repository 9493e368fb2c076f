"""HTTP answers for errors: one body shape, one mapping from condiff's exceptions (table in app.py).

:class:`CondiffRoute` is the route class of every router of the server (and of the studio's): an
exception escaping an endpoint becomes its mapped answer right there, so nothing reaches the
ASGI server's error page and no traceback ever reaches a client (it is logged here instead).
"""

from __future__ import annotations

import logging

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from ..errors import Cancelled, CondiffError, DeviceError, InputError, LimitError, ModelError, NonFiniteError, OutputError
from .jobs import QueueFull

__all__ = ["LOG", "CondiffRoute", "error_response", "exception_response", "validation_response"]

LOG = logging.getLogger("condiff.server")


def error_response(status: int, kind: str, message: str, field: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    """The one error body of the server (A1111's keys + the offending ``field``)."""
    message = (message or kind).splitlines()[0] if message else kind
    return JSONResponse({"error": kind, "detail": message, "errors": message, "field": field},
                        status_code=status, headers=headers)


def _field_of(err: BaseException) -> str | None:
    """The field a message starts with (``"steps: …"``), by the convention of the request checks."""
    head = str(err).split(":", 1)[0]
    return head if head and " " not in head and len(head) < 60 else None


def exception_response(err: BaseException) -> JSONResponse:
    """Map an exception raised by a route or a job to its HTTP answer (table in the module doc)."""
    if isinstance(err, QueueFull):
        return error_response(429, "QueueFull", str(err), headers={"Retry-After": str(err.retry_after)})
    if isinstance(err, Cancelled):
        timed_out = "time limit" in str(err)
        return error_response(409, "TimedOut" if timed_out else "Interrupted", str(err))
    if isinstance(err, LimitError):
        return error_response(413, "LimitError", str(err), _field_of(err))
    if isinstance(err, (InputError, ModelError, NonFiniteError)):
        return error_response(422, type(err).__name__, str(err), _field_of(err))
    if isinstance(err, OutputError):
        return error_response(409, "OutputError", str(err))
    if isinstance(err, DeviceError):
        return error_response(503, "DeviceError", str(err))
    if isinstance(err, ValueError) and not isinstance(err, CondiffError):
        return error_response(422, "InputError", str(err), _field_of(err))
    LOG.error("internal error", exc_info=(type(err), err, err.__traceback__))
    return error_response(500, "InternalError", "internal error (logged on the server)")


def validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    field = ".".join(loc) or None
    msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    return error_response(422, "ValidationError", f"{field}: {msg}" if field else msg, field)


class CondiffRoute(APIRoute):
    """An APIRoute whose endpoint exceptions are answered by :func:`exception_response`."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def guarded(request):
            try:
                return await handler(request)
            except (HTTPException, RequestValidationError):
                raise
            except Exception as err:  # noqa: BLE001 -- mapped; unexpected ones are logged with their traceback
                return exception_response(err)

        return guarded
