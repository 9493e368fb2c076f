"""The FastAPI application of ``condiff serve``: routes, error mapping, body limit, authentication.

``create_app(state) -> FastAPI`` builds the whole server around one
:class:`~condiff.server.state.ServerState`; the browser studio mounts itself into the returned app
(``app.mount(...)`` / ``app.include_router(...)``) and uses the same ``state`` (``app.state.condiff``).

Error answers (never a traceback; the full one is logged server-side) follow A1111's shape
``{"error": TYPE, "detail": MESSAGE, "errors": MESSAGE, "field": NAME|null}``:

=========================================  ======  =============================================
raised                                     status  notes
=========================================  ======  =============================================
request validation (pydantic)              422     ``field`` is the dotted path of the first bad field
:class:`~condiff.server.jobs.QueueFull`    429     ``Retry-After`` header (seconds)
body over ``--max-body-bytes``             413
:class:`~condiff.errors.LimitError`        413
InputError, ModelError, NonFiniteError,    422     condiff's one-line message (plain ``ValueError``
plain ``ValueError``                               messages come from condiff's own checks)
:class:`~condiff.errors.OutputError`       409
:class:`~condiff.errors.Cancelled`         409     ``error`` = ``Interrupted`` (interrupt, skip,
                                                   cancel) or ``TimedOut`` (``--max-job-seconds``)
:class:`~condiff.errors.DeviceError`       503
anything else                              500     ``"internal error (logged on the server)"``
=========================================  ======  =============================================
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import Cancelled, CondiffError, DeviceError, InputError, LimitError, ModelError, NonFiniteError, OutputError
from .jobs import QueueFull
from .state import ServerState

__all__ = ["create_app", "error_response", "LOG"]

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


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    field = ".".join(loc) or None
    msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    return error_response(422, "ValidationError", f"{field}: {msg}" if field else msg, field)


class _Guard:
    """ASGI middleware: HTTP basic authentication (``--api-auth``) and the request-body limit."""

    def __init__(self, app, state: ServerState):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        if self.state.auth is not None and not self._authorised(headers.get("authorization", "")):
            resp = error_response(401, "Unauthorized", "HTTP basic authentication required (server started with --api-auth)",
                                  headers={"WWW-Authenticate": 'Basic realm="condiff"'})
            return await resp(scope, receive, send)
        limit = self.state.limits.max_body_bytes
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            resp = error_response(413, "LimitError", f"body: request body of {length} bytes is over the server's "
                                  f"limit of {limit} bytes (flag --max-body-bytes)", "body")
            return await resp(scope, receive, send)
        seen = [0]

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > limit:
                    raise _BodyTooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            resp = error_response(413, "LimitError", f"body: request body is over the server's limit of {limit} bytes "
                                  "(flag --max-body-bytes)", "body")
            await resp(scope, receive, send)

    def _authorised(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        want_user, want_password = self.state.auth
        return hmac.compare_digest(user, want_user) & hmac.compare_digest(password, want_password)


class _BodyTooLarge(Exception):
    pass


def create_app(state: ServerState) -> FastAPI:
    """The server's FastAPI app around ``state`` (also reachable as ``app.state.condiff``)."""
    from . import a1111, controlnet_routes, own_routes

    app = FastAPI(
        title="condiff serve",
        description="condiff's HTTP API: AUTOMATIC1111-compatible `/sdapi/v1/...` and ControlNet `/controlnet/...` "
                    "routes, and condiff's own `/condiff/v1/...` routes (variations, personalization, experiments, jobs). "
                    "All work runs in one FIFO job queue.",
        version="1",
    )
    app.state.condiff = state

    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError):
        return _validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(request: Request, exc: StarletteHTTPException):
        kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        return error_response(exc.status_code, kind, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _on_error(request: Request, exc: Exception):
        return exception_response(exc)

    app.include_router(a1111.router)
    app.include_router(controlnet_routes.router)
    app.include_router(own_routes.router)
    app.add_middleware(_Guard, state=state)
    return app
