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

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .http_errors import LOG, error_response, exception_response, validation_response
from .state import ServerState

__all__ = ["create_app", "error_response", "exception_response", "LOG"]


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
        body, more = [], True
        size = 0
        while more:  # read the whole (bounded) body first: an over-long one is refused before any route sees it
            message = await receive()
            if message["type"] != "http.request":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                resp = error_response(413, "LimitError", f"body: request body is over the server's limit of {limit} "
                                      "bytes (flag --max-body-bytes)", "body")
                return await resp(scope, receive, send)
            body.append(chunk)
            more = message.get("more_body", False)
        replayed = [False]

        async def replay():
            if not replayed[0]:
                replayed[0] = True
                return {"type": "http.request", "body": b"".join(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

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
        return validation_response(exc)

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
