"""Request ids and the server's answer to its own failures.

Every HTTP request gets an id (:func:`new_request_id`), kept in ``request.state.request_id`` and
sent back in the ``x-request-id`` header of every response. An exception that nothing else
handled is logged with its traceback and that id (logger ``saetools.serve.middleware``; the
engine logs its failures under ``saetools.serve.engine``) and answered with a generic 500
(:func:`internal_error`): the client learns the id to quote, never the internal exception text.
"""

from __future__ import annotations

import logging
import uuid

from starlette.responses import JSONResponse

from .protocol import APIError

logger = logging.getLogger(__name__)

HEADER = "x-request-id"


def new_request_id() -> str:
    return f"req-{uuid.uuid4().hex[:24]}"


def internal_error(request_id: str | None) -> APIError:
    """The 500 a client gets when the server failed: the request id, no internal details."""
    return APIError(
        500, f"internal error (request id {request_id or 'unknown'})", type="server_error"
    )


def request_id_of(request) -> str | None:
    """The id :class:`RequestIds` gave a Starlette ``request`` (None outside the middleware)."""
    return getattr(request.state, "request_id", None)


class RequestIds:
    """ASGI middleware: an id per HTTP request (``scope["state"]["request_id"]``), the
    ``x-request-id`` response header, and a logged, generic 500 for an unhandled exception."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = new_request_id()
        scope.setdefault("state", {})["request_id"] = rid
        started = False

        async def send_with_id(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [*message.get("headers", []), (HEADER.encode(), rid.encode())]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception(
                "request %s (%s %s) failed", rid, scope.get("method"), scope.get("path")
            )
            if started:  # a stream already under way: nothing left to answer with
                raise
            err = internal_error(rid)
            await JSONResponse(err.body(), status_code=err.status)(scope, receive, send_with_id)
