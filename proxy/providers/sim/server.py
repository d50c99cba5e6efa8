"""`prometheus-gateway sim`: the simulator as a standalone OpenAI-compatible server.

Serves `proxy.providers.sim.engine` over HTTP so that load tests (bench/) and demos
have an upstream that behaves like OpenAI's API: POST /v1/chat/completions
(plain and streamed, paced by --ttft-ms and --tokens-per-second),
POST /v1/embeddings, GET /v1/models. No auth; any model name is accepted.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

from proxy.http.bodies import check_depth, read_raw_body
from proxy.http.errors import GatewayError
from proxy.providers.sim import engine as sim
from proxy.providers.sim.embeddings import embed


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        raw = await read_raw_body(request)
    except GatewayError as err:
        raise sim.SimError.of(err) from None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise sim.SimError("invalid JSON body") from None
    if not isinstance(body, dict):
        raise sim.SimError("the body must be a JSON object")
    try:
        check_depth(raw, body)  # what orjson could not encode again
    except GatewayError as err:
        raise sim.SimError.of(err) from None
    return body


def _refusal(err: sim.SimError) -> web.Response:
    return web.Response(
        status=err.status, body=err.body(), content_type="application/json", headers=err.headers
    )


def build_sim_app(ttft_ms: float, tokens_per_second: float) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        try:
            body = await _json_body(request)
            prompt_tokens = sim.validate_chat(body)
        except sim.SimError as err:
            return _refusal(err)
        model = body.get("model") or "sim"
        plan = sim.ChatPlan(body, prompt_tokens)
        if body.get("stream") is True:
            opts = body.get("stream_options")
            include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
            resp = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await resp.prepare(request)
            async for chunk in sim.chat_stream(
                plan, model, ttft_ms, tokens_per_second, include_usage
            ):
                await resp.write(chunk)
            await resp.write_eof()
            return resp
        reply = sim.chat_completion(plan, model)
        delay = ttft_ms / 1000.0
        if tokens_per_second > 0:
            delay += reply["usage"]["completion_tokens"] / tokens_per_second
        if delay > 0:
            await asyncio.sleep(delay)
        return web.Response(body=orjson.dumps(reply), content_type="application/json")

    async def embeddings(request: web.Request) -> web.Response:
        try:
            body = await _json_body(request)
            model = body.get("model")
            if model is not None and type(model) is not str:
                raise sim.SimError("'model' must be a string.", "model", code="invalid_type")
            payload, _ = await asyncio.to_thread(embed, body, model or "sim")
        except sim.SimError as err:
            return _refusal(err)
        return web.Response(body=payload, content_type="application/json")

    async def models(request: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps(
                {
                    "object": "list",
                    "data": [
                        {
                            "id": "sim",
                            "object": "model",
                            "created": int(time.time()),
                            "owned_by": "sim",
                        }
                    ],
                }
            ),
            content_type="application/json",
        )

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    return app


def run_sim(host: str, port: int, ttft_ms: float, tokens_per_second: float) -> None:
    import uvloop

    print(
        f"simulator listening on http://{host}:{port}/v1 "
        f"(ttft {ttft_ms} ms, {tokens_per_second or 'unlimited'} tokens/s)",
        flush=True,
    )
    web.run_app(
        build_sim_app(ttft_ms, tokens_per_second),
        host=host,
        port=port,
        print=None,
        access_log=None,
        loop=uvloop.new_event_loop(),
    )
