#!/usr/bin/env python3
"""A paced OpenAI-shaped upstream whose tokens carry the time they were sent.

`POST /v1/chat/completions` with `stream: true` answers like
`prometheus-gateway sim --ttft-ms 0 --tokens-per-second R` (a role chunk, one
chunk per token at R tokens/s, a finish chunk, a usage chunk when
`stream_options.include_usage`, `data: [DONE]`), except that each token's
content is `w<i>@<seconds> `: the sender's `time.perf_counter()` (on Linux
CLOCK_MONOTONIC, one clock for every process of the machine) read just before
the chunk is written. `bench/loadgen.py --stamps` subtracts it from the time
the chunk arrived: the token's transit from the upstream to the client, so
that transit through a hop minus transit direct is what the hop adds to every
token. Non-stream requests get a plain reply. It checks nothing and keeps
nothing; `compare.py`'s ITL phase (`itl_phase.py`) starts it.

    python bench/stamped_sim.py --port 18092 --tokens-per-second 200
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time

import orjson
from aiohttp import web


def build_app(tokens_per_second: float) -> web.Application:
    gap = 1.0 / tokens_per_second if tokens_per_second > 0 else 0.0

    async def chat(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        model = body.get("model") or "sim"
        n = int(body.get("max_tokens") or 60)
        usage = {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": 8 + n}
        head = (
            b'{"id":"chatcmpl-stamped' + secrets.token_hex(8).encode() + b'",'
            b'"object":"chat.completion.chunk","created":' + str(int(time.time())).encode()
            + b',"model":' + orjson.dumps(model) + b',"choices":[{"index":0,"delta":'
        )  # fmt: skip
        if body.get("stream") is not True:
            text = " ".join(f"w{i}" for i in range(n))
            reply = {
                "id": "chatcmpl-stamped",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
            return web.Response(body=orjson.dumps(reply), content_type="application/json")
        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        tail = b',"finish_reason":null}]}\n\n'
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        await resp.write(b"data: " + head + b'{"role":"assistant","content":""}' + tail)
        start = time.monotonic()
        for i in range(n):
            delay = start + (i + 1) * gap - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            stamp = f'{{"content":"w{i}@{time.perf_counter():.6f} "}}'.encode()
            await resp.write(b"data: " + head + stamp + tail)
        await resp.write(b"data: " + head + b'{},"finish_reason":"stop"}]}\n\n')
        if include_usage:
            split = head.index(b',"choices"')
            await resp.write(
                b"data: "
                + head[:split]
                + b',"choices":[],"usage":'
                + orjson.dumps(usage)
                + b"}\n\n"
            )
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description="a paced upstream whose tokens carry their send time")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18092)
    p.add_argument("--tokens-per-second", type=float, default=200.0)
    a = p.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    web.run_app(
        build_app(a.tokens_per_second), host=a.host, port=a.port, access_log=None, print=None
    )


if __name__ == "__main__":
    main()
