"""POST /v1/embeddings: pass-through with the alias rewritten and input tokens billed.

`encoding_format` (float or base64) and `dimensions` reach the upstream as the
client sent them; `input` may be a string, a list of strings, or token-id lists.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from proxy import errors, tokens
from proxy.errors import GatewayError
from proxy.config import Deployment
from proxy.metering import CLIENT_GONE, RequestMeter
from proxy.routes.body import read_json_body, require_alias
from proxy.routing import open_upstream, read_reply, resolve_route
from proxy.state import STATE


def _valid_input(inp: Any) -> bool:
    if isinstance(inp, str):
        return True
    if not isinstance(inp, list) or not inp:
        return False
    if all(isinstance(x, int) for x in inp):
        return True
    return all(isinstance(x, str) or (isinstance(x, list) and x and
                                      all(isinstance(t, int) for t in x)) for x in inp)


async def create_embeddings(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await read_json_body(request)
    alias = require_alias(body)
    if "input" not in body:
        raise errors.missing_param("input")
    if not _valid_input(body["input"]):
        raise errors.invalid_param(
            "input", "'input' must be a string, an array of strings, or arrays of token ids."
        )
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise errors.invalid_param("encoding_format", "'encoding_format' must be 'float' or 'base64'.")
    route = resolve_route(state, request["key"], alias, "embeddings")
    meter = RequestMeter(state.journal, request, route, "embeddings", False)
    dep: Deployment | None = None
    try:
        reply, dep = await open_upstream(state, route, "embeddings", body, False)
        raw = await read_reply(reply)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise errors.upstream_unavailable("bad reply (not a JSON object)")
    except GatewayError as err:
        meter.finish(status=err.status, deployment="-" if dep is None else dep.name,
                     error=err.code)
        raise
    except asyncio.CancelledError:
        # the client left before its reply: bill the input, counted locally
        encoding = (route.deployments[0] if dep is None else dep).encoding
        prompt = await tokens.count_embedding_locally(body["input"], encoding)
        meter.finish(status=CLIENT_GONE, deployment="-" if dep is None else dep.name,
                     input_tokens=prompt, usage_source="local", error="client_disconnected")
        raise
    data["model"] = alias
    usage = data.get("usage")
    prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if isinstance(prompt, int):
        source = "upstream"
    else:
        prompt = await tokens.count_embedding_locally(body["input"], dep.encoding)
        source = "local"
    meter.finish(status=200, deployment=dep.name, input_tokens=prompt, usage_source=source)
    return web.Response(body=orjson.dumps(data), content_type="application/json")
