"""`prometheus-gateway sim`: the simulator as a standalone OpenAI-compatible server.

Serves `proxy.providers.sim` over HTTP so that load tests (bench/) and demos
have an upstream that behaves like OpenAI's API: POST /v1/chat/completions
(plain and streamed, paced by --ttft-ms and --tokens-per-second),
POST /v1/embeddings, GET /v1/models. No auth; any model name is accepted.
"""

from __future__ import annotations

import asyncio
import time

import orjson
from aiohttp import web

from proxy.providers import sim


def build_sim_app(ttft_ms: float, tokens_per_second: float) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            status, payload = sim._error(400, "invalid JSON body")
            return web.Response(status=status, body=payload, content_type="application/json")
        bad = sim.validate_chat(body)
        if bad is not None:
            return web.Response(status=bad[0], body=bad[1], content_type="application/json")
        model = str(body.get("model", "sim"))
        if body.get("stream") is True:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
            await resp.prepare(request)
            async for chunk in sim.chat_stream(body, model, ttft_ms, tokens_per_second):
                await resp.write(chunk)
            await resp.write_eof()
            return resp
        reply = sim.chat_completion(body, model)
        delay = ttft_ms / 1000.0
        if tokens_per_second > 0:
            delay += reply["usage"]["completion_tokens"] / tokens_per_second
        if delay > 0:
            await asyncio.sleep(delay)
        return web.Response(body=orjson.dumps(reply), content_type="application/json")

    async def embeddings(request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            status, payload = sim._error(400, "invalid JSON body")
        else:
            status, payload = sim.embeddings(body, str(body.get("model", "sim")))
        return web.Response(status=status, body=payload, content_type="application/json")

    async def models(request: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps({"object": "list", "data": [
                {"id": "sim", "object": "model", "created": int(time.time()), "owned_by": "sim"}
            ]}),
            content_type="application/json",
        )

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    return app


def run_sim(host: str, port: int, ttft_ms: float, tokens_per_second: float) -> None:
    import uvloop

    print(f"simulator listening on http://{host}:{port}/v1 "
          f"(ttft {ttft_ms} ms, {tokens_per_second or 'unlimited'} tokens/s)", flush=True)
    web.run_app(build_sim_app(ttft_ms, tokens_per_second), host=host, port=port,
                print=None, access_log=None, loop=uvloop.new_event_loop())
