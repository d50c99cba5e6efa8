"""Relaying a streamed `Reply` to the client as server-sent events.

Used by the chat handler for `stream: true`, whatever the provider: each
piece the reply yields (already in OpenAI's chunk shape) is written as it
comes. The meter settles before the last bytes go out; an upstream that
breaks off mid-stream gets the client an OpenAI-shaped error event and a 502
record, and so does a stream the shutdown ended (`proxy.server.runner`: its
grace is over), with a 503 `server_shutting_down` record.
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from proxy.http import errors
from proxy.metering.meter import SHUTTING_DOWN, Meter
from proxy.providers.base import Reply, UpstreamTimeout, UpstreamUnavailable
from proxy.server.state import ENDED_BY_SHUTDOWN

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
        code = "upstream_timeout" if isinstance(exc, UpstreamTimeout) else "upstream_disconnected"
        await meter.settle(502, code)
        message = orjson.dumps(
            {
                "error": {
                    "message": "The upstream stream broke off.",
                    "type": "api_error",
                    "param": None,
                    "code": code,
                }
            }
        )
        try:
            await resp.write(b"data: " + message + b"\n\n")
            await resp.write_eof()
        except ConnectionResetError:
            pass
        return
    except asyncio.CancelledError:
        if not request.get(ENDED_BY_SHUTDOWN):
            raise  # the client left
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # answered below, not cancelled
        reply.close()
        await meter.settle(SHUTTING_DOWN, "server_shutting_down")
        try:
            await resp.write(b"data: " + orjson.dumps(errors.shutting_down().body()) + b"\n\n")
            await resp.write_eof()
        except ConnectionResetError:
            pass
        return
    await _settle_ended(meter, reply)
    await resp.write_eof()
