"""POST /v1/chat/completions: the hot path.

Validates the body (`proxy.api.chat_params`), resolves the alias, calls the
upstream through `proxy.routing.failover`, then relays the reply: one JSON
body, or the stream piece by piece (`proxy.api.streaming`). A `Meter` makes
the request's one usage record on every way out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from time import perf_counter
from typing import Any

from aiohttp import web

from proxy.api.chat_params import check_chat
from proxy.api.streaming import relay_stream, sse_response
from proxy.api.timing import served_headers
from proxy.auth.admission import admit
from proxy.auth.estimate import chat_estimate
from proxy.config.model import Deployment
from proxy.http.bodies import read_json_body, require_alias
from proxy.metering import tokens
from proxy.metering.meter import CLIENT_GONE, LocalCount, Meter
from proxy.providers.base import ChatRequest, Provider, Reply
from proxy.routing.failover import call_upstream, read_body
from proxy.routing.hedge import LoserSink, hedged_call
from proxy.routing.router import resolve_route
from proxy.server.state import STATE

ENDPOINT = "chat.completions"


def parse_chat(body: dict[str, Any]) -> ChatRequest:
    alias = require_alias(body)
    check_chat(body)  # a bad parameter is a 400 here, before any upstream is called
    opts = body.get("stream_options")
    include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
    return ChatRequest(alias, body, body.get("stream") is True, include_usage)


def chat_counter(body: dict[str, Any]) -> LocalCount:
    async def count(dep: Deployment, text: str) -> tuple[int, int]:
        return await tokens.count_locally(body, text, dep.encoding)

    return count


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    chat = parse_chat(await read_json_body(request))
    route = resolve_route(state.routes, request["key"], chat.alias, "chat")
    await admit(request, route, lambda: chat_estimate(chat.body, route.deployments[0].encoding))

    def call(provider: Provider, dep: Deployment) -> Awaitable[Reply]:
        return provider.chat(dep, chat)  # no coroutine of its own: one await level less

    async with Meter(
        state.usage, request, route, ENDPOINT, chat.stream, chat_counter(chat.body)
    ) as meter:
        called_at = perf_counter()
        if chat.stream and route.hedge_ms is not None:
            on_loser = _record_overhead(meter)
            reply, dep = await hedged_call(state.providers, route, call, state.health, on_loser)
        else:
            reply, dep = await call_upstream(state.providers, route, call, state.health)
        meter.attach(dep, reply)
        headers = served_headers(request, called_at, dep, reply)
        if not chat.stream:
            payload = await read_body(reply)
            await meter.settle()
            return web.Response(body=payload, content_type="application/json", headers=headers)
        resp = sse_response(request["rid"])
        resp.headers.update(headers)
        await relay_stream(request, resp, meter, reply)
    return resp


_overhead_tasks: set[asyncio.Task[None]] = set()


def _record_overhead(meter: Meter) -> LoserSink:
    """Record a hedge's loser as the gateway's own overhead, beside the stream (its
    count must neither delay the winner's bytes nor die with the client's handler)."""

    def sink(dep: Deployment, reply: Reply) -> None:
        overhead = meter.for_overhead()
        overhead.attach(dep, reply)
        task = asyncio.create_task(overhead.settle(CLIENT_GONE, "hedge_lost"))
        _overhead_tasks.add(task)
        task.add_done_callback(_overhead_tasks.discard)

    return sink
