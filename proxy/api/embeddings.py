"""POST /v1/embeddings: pass-through with the alias rewritten and input tokens billed.

`encoding_format` (float or base64) and `dimensions` reach the upstream as the
client sent them; `input` may be a string, a list of strings, or token-id lists
(`proxy.api.embeddings_params` checks them all before the upstream is called).
"""

from __future__ import annotations

from collections.abc import Awaitable
from time import perf_counter
from typing import Any

from aiohttp import web

from proxy.api.embeddings_params import check_embeddings
from proxy.api.timing import served_headers
from proxy.auth.admission import admit
from proxy.auth.estimate import embeddings_estimate
from proxy.config.model import Deployment
from proxy.http.bodies import read_json_body, require_alias
from proxy.metering import tokens
from proxy.metering.meter import LocalCount, Meter
from proxy.providers.base import EmbeddingsRequest, Provider, Reply
from proxy.routing.failover import call_upstream, read_body
from proxy.routing.router import resolve_route
from proxy.server.state import STATE


def parse_embeddings(body: dict[str, Any]) -> EmbeddingsRequest:
    alias = require_alias(body)
    check_embeddings(body)  # a bad parameter is a 400 here, before any upstream is called
    return EmbeddingsRequest(alias, body)


def input_counter(inp: Any) -> LocalCount:
    async def count(dep: Deployment, _text: str) -> tuple[int, int]:
        return await tokens.count_embedding_locally(inp, dep.encoding), 0

    return count


async def create_embeddings(request: web.Request) -> web.Response:
    state = request.app[STATE]
    emb = parse_embeddings(await read_json_body(request))
    route = resolve_route(state.routes, request["key"], emb.alias, "embeddings")
    inp = emb.body["input"]
    await admit(request, route, lambda: embeddings_estimate(inp, route.deployments[0].encoding))

    def call(provider: Provider, dep: Deployment) -> Awaitable[Reply]:
        return provider.embeddings(dep, emb)  # no coroutine of its own: one await level less

    async with Meter(
        state.usage, request, route, "embeddings", False, input_counter(emb.body["input"])
    ) as meter:
        called_at = perf_counter()
        reply, dep = await call_upstream(state.providers, route, call, state.health)
        meter.attach(dep, reply)
        headers = served_headers(request, called_at, dep, reply)
        payload = await read_body(reply)
        await meter.settle()
    return web.Response(body=payload, content_type="application/json", headers=headers)
