"""The HTTP edge of a gateway process: bytes that never become a request the app sees.

aiohttp's parser refuses a malformed request (a header too long or with a
control character in it, bad chunked encoding, a bad request line) before any
middleware runs, and its own answer is text/plain quoting the offending bytes,
a whole `Authorization: Bearer prom_sk_...` header included, with a traceback
on stderr. `GatewayRequestHandler`, the protocol `proxy.server.runner` makes
for each connection, answers these like every other error instead: OpenAI's
JSON shape, an `x-request-id`, `Connection: close`, and one log line with the
status, the code and the parser's exception class, never the bytes. Request
lines that are not HTTP/1.x (aiohttp's C parser lets HTTP/0.9 through) are
refused the same way.

`hide_server_version` makes the `Server` header of every response name the
product only, without Python's or aiohttp's version.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import http_exceptions, web, web_protocol, web_response
from aiohttp.http import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD

from proxy.http import errors
from proxy.http.errors import GatewayError
from proxy.http.middleware import new_request_id
from proxy.observability.logs import get_logger

SERVER_NAME = "prometheus-gateway"


class UnsupportedHttpVersion(http_exceptions.BadHttpMessage):
    """A request line that is not HTTP/1.0 or HTTP/1.1."""


# (parser exception, code, message); the first class that matches wins, so
# subclasses come before their bases. No message quotes the request.
_REFUSALS: tuple[tuple[type[BaseException], str, str], ...] = (
    (
        UnsupportedHttpVersion,
        "unsupported_http_version",
        "Only HTTP/1.0 and HTTP/1.1 are supported.",
    ),
    (
        http_exceptions.LineTooLong,
        "line_too_long",
        "The request line or a header is too long.",
    ),
    (
        http_exceptions.PayloadEncodingError,
        "invalid_body_encoding",
        "The request body's framing or encoding is invalid.",
    ),
    (
        http_exceptions.InvalidHeader,
        "invalid_header",
        "A request header is not valid HTTP.",
    ),
    (
        http_exceptions.BadHttpMethod,
        "invalid_method",
        "The request method is not valid HTTP.",
    ),
    (
        http_exceptions.InvalidURLError,
        "invalid_url",
        "The request target is not a valid URL.",
    ),
    (
        http_exceptions.BadStatusLine,
        "invalid_request_line",
        "The request line is not valid HTTP/1.1.",
    ),
    (
        http_exceptions.HttpProcessingError,
        "invalid_http_request",
        "The request is not valid HTTP/1.1: its request line, a header or its "
        "chunked body is malformed.",
    ),
)


def refusal(status: int, exc: BaseException | None) -> GatewayError:
    """What the client is told for an error aiohttp met outside the app."""
    for kind, code, message in _REFUSALS:
        if isinstance(exc, kind):
            return GatewayError(status if 400 <= status < 500 else 400, message, code=code)
    if status == 504:
        return GatewayError(
            504, "The gateway timed out handling the request.", type="api_error", code="timeout"
        )
    return errors.internal_error()


def hide_server_version() -> None:
    """Name the product, and no versions, in the `Server` header of every response.

    aiohttp fills the header in `StreamResponse._prepare_headers` with
    `headers.setdefault(SERVER, SERVER_SOFTWARE)`, a global of `web_response`
    read for each response; replacing it covers every response this process
    sends (JSON, streams, parse errors) at no cost per request.
    """
    web_response.SERVER_SOFTWARE = SERVER_NAME  # type: ignore[attr-defined]


class GatewayRequestHandler(web.RequestHandler):
    """aiohttp's protocol for one connection, with the gateway's answers at the edge."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) > queued:
            self._check_parsed(queued)

    def _check_parsed(self, first: int) -> None:
        """Requests that are not HTTP/1.x become parse errors (answered by
        `handle_error`, with an HTTP/1.0 status line); a parse error in the body of
        the request being handled (bad chunked encoding after a pause) fails that
        request's body read with the refusal, instead of leaving it waiting."""
        i = first
        while i < len(self._messages):
            message, _payload = self._messages[i]
            if isinstance(message, RawRequestMessage):
                if message.version.major != 1:
                    exc = UnsupportedHttpVersion(f"HTTP/{message.version.major}.x")
                    info = web_protocol._ErrInfo(status=400, exc=exc, message=exc.message)
                    self._messages[i] = (info, EMPTY_PAYLOAD)
            elif (current := self._current_request) is not None and not current.content.is_eof():
                del self._messages[i]
                current.content.set_exception(refusal(message.status, message.exc))
                current.content.feed_eof()  # nothing more to read (nor to linger for)
                self.close()  # the connection's framing is lost: no request after this one
                continue
            i += 1

    def take_no_more_requests(self) -> None:
        """At shutdown: close the connection now if it waits for a request; if it is
        handling one whose body has fully arrived, close it after that response.
        (One whose body is still arriving is left alone: closing would stop reading
        the body too; the drain asks again a moment later.)"""
        if self._waiter is not None and not self._waiter.done():
            self.force_close()
        elif (current := self._current_request) is not None and current.content.is_eof():
            self.close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        err = refusal(status, exc)
        request_id = new_request_id(time.time())
        fields: dict[str, Any] = {
            "request_id": request_id,
            "status": err.status,
            "error": err.code,
            "reason": None if exc is None else type(exc).__name__,
        }
        if err.status >= 500:  # our own failure: its traceback is worth having
            get_logger().error("request", **fields, exc_info=exc)
        else:  # the client's bytes: never logged, nor the parser's text quoting them
            get_logger().info("request", **fields)
        if request.writer.output_size > 0:
            raise ConnectionError("a response is under way: no error response can follow")
        resp = err.response()
        resp.headers["x-request-id"] = request_id
        resp.force_close()
        return resp

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's other server-side failures: the class, never a traceback or text
        that may quote the request."""
        exc = kw.get("exc_info")
        get_logger().error(
            "http_server_error",
            message=str(args[0]) if args else "",
            reason=type(exc).__name__ if isinstance(exc, BaseException) else None,
        )
