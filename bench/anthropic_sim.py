#!/usr/bin/env python3
"""A standalone Anthropic-shaped upstream for benchmarks: `POST /v1/messages`.

The Anthropic twin of `prometheus-gateway sim --ttft-ms 0 --tokens-per-second 0`:
it answers as fast as it can, a reply of `max_tokens` words (60 in the bench),
as one Messages JSON or as the real event sequence (`message_start`, `ping`,
`content_block_start`, one `text_delta` per word, `content_block_stop`,
`message_delta`, `message_stop`), one write per event, so that a stream of
60 words is 60 content events, as the OpenAI simulator's is. It checks
nothing and keeps nothing; `bench/anthropic_compare.py` starts it.

    python bench/anthropic_sim.py --port 18091
"""

from __future__ import annotations

import argparse
import asyncio

import orjson
from aiohttp import web

VOCAB = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]


def sse(kind: str, data: dict[str, object]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def words(n: int) -> list[str]:
    return [("" if i == 0 else " ") + VOCAB[i % len(VOCAB)] for i in range(n)]


async def messages(request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    n = max(1, min(int(body.get("max_tokens") or 60), 4096))
    model = str(body.get("model"))
    usage = {"input_tokens": 12, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    if not body.get("stream"):
        reply = {
            "id": "msg_bench",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": "".join(words(n))}],
            "stop_reason": "max_tokens",
            "stop_sequence": None,
            "usage": {**usage, "output_tokens": n},
        }
        return web.Response(body=orjson.dumps(reply), content_type="application/json")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await resp.prepare(request)
    start = {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1},
    }
    await resp.write(sse("message_start", {"type": "message_start", "message": start}))
    await resp.write(sse("ping", {"type": "ping"}))
    block = {"type": "text", "text": ""}
    await resp.write(
        sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        )
    )
    for word in words(n):
        delta = {"type": "text_delta", "text": word}
        await resp.write(
            sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        )
    await resp.write(sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
    end = {
        "type": "message_delta",
        "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
        "usage": {"output_tokens": n},
    }
    await resp.write(sse("message_delta", end))
    await resp.write(sse("message_stop", {"type": "message_stop"}))
    await resp.write_eof()
    return resp


def main() -> None:
    p = argparse.ArgumentParser(description="an Anthropic-shaped upstream for benchmarks")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18091)
    a = p.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    web.run_app(app, host=a.host, port=a.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
