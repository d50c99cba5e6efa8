"""Relaying a streamed `Reply` to the client as server-sent events.

Used by the chat handler for `stream: true`, whatever the provider: each
piece the reply yields (already in OpenAI's chunk shape) is written as it
comes. The meter settles before the last bytes go out. Once the response has
begun, no failure may start a second one: an upstream that breaks off, or
anything unexpected, ends the stream with an OpenAI-shaped error event, the
upstream closed and the meter's record written (502, or 500 for a bug), and so
does a stream the shutdown ended (`proxy.server.runner`: its grace is over),
with a 503 `server_shutting_down` record.
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from proxy.http import errors
from proxy.metering.meter import SHUTTING_DOWN, Meter
from proxy.providers.base import Reply, UpstreamBadReply, UpstreamTimeout, UpstreamUnavailable
from proxy.server.state import ENDED_BY_SHUTDOWN, STATE

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def sse_response(request_id: str) -> web.StreamResponse:
    return web.StreamResponse(headers={**SSE_HEADERS, "x-request-id": request_id})


async def _settle_ended(meter: Meter, reply: Reply) -> None:
    if reply.complete:
        await meter.settle()
    else:
        await meter.settle(502, "upstream_incomplete_stream")


def error_event(message: str, code: str, kind: str = "api_error") -> bytes:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def _end_with_error(resp: web.StreamResponse, event: bytes) -> None:
    try:
        await resp.write(event)
        await resp.write_eof()
    except ConnectionResetError:
        pass


async def relay_stream(
    request: web.Request, resp: web.StreamResponse, meter: Meter, reply: Reply
) -> None:
    await resp.prepare(request)
    try:
        async for piece in reply.chunks():
            if reply.ended:
                await _settle_ended(meter, reply)
            await resp.write(piece)
    except (UpstreamUnavailable, UpstreamTimeout) as exc:
        reply.close()
        if isinstance(exc, UpstreamTimeout):
            code = "upstream_timeout"
        elif isinstance(exc, UpstreamBadReply):
            code = "upstream_bad_reply"
        else:
            code = "upstream_disconnected"
        request["error_detail"] = str(exc)
        await meter.settle(502, code)
        await _end_with_error(resp, error_event("The upstream stream broke off.", code))
        return
    except ConnectionResetError:
        raise  # the client left: the meter bills it as such
    except Exception:
        reply.close()
        request.app[STATE].log.exception("stream_failed", request_id=request["rid"])
        await meter.settle(500, "internal_error")
        message = "The gateway failed while streaming the reply."
        await _end_with_error(resp, error_event(message, "internal_error"))
        return
    except asyncio.CancelledError:
        if not request.get(ENDED_BY_SHUTDOWN):
            raise  # the client left
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # answered below, not cancelled
        reply.close()
        await meter.settle(SHUTTING_DOWN, "server_shutting_down")
        await _end_with_error(
            resp, b"data: " + orjson.dumps(errors.shutting_down().body()) + b"\n\n"
        )
        return
    await _settle_ended(meter, reply)
    await resp.write_eof()
