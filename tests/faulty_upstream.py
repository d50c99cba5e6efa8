"""An OpenAI-compatible upstream that misbehaves on purpose, for the fault tests.

The behaviour is chosen by the upstream model name the gateway sends (each
test alias's deployment names one), so one server serves every case:

- `usage-neg`, `usage-bool`, `usage-float`, `usage-huge`, `usage-notjson`: a
  normal reply whose usage counts are not sane (or, in a stream, whose usage
  event is not valid JSON);
- `html`: a 200 with an HTML page, whatever was asked;
- `slow-headers`: answers only after `SLOW_S`;
- `leaky-500`: a 500 whose message names an internal host and port;
- `echo-key-400`: a 400 whose message repeats the bearer key it was sent;
- `redirect`: a 307 to `/v1/redirect-target` on this server;
- `trickle`: a stream that sends one content event every 0.2 s, forever;
- `huge`: a 50 KB JSON reply, or one 10 KB SSE event;
- `rate-limited`: a 429 with `Retry-After: 7`; `rate-limited-ms`: with `retry-after-ms: 300`;
- `slow-first-token`: a stream whose first content comes after `SLOW_FIRST_TOKEN_S`;
- `details`: usage with cached (6) and reasoning (3) tokens in its details;
- anything else: a normal reply with sane usage (and `x-ratelimit-*` headers);
- any GET (an image URL, say) is recorded as `(path, "GET")`.

It runs on its own event loop in a thread, on a free loopback port, and
records the paths and models it was asked for, and when (monotonic clock) a
client hung up on a reply still being written.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web
from threaded_server import ThreadedServer

SLOW_S = 5.0
SLOW_FIRST_TOKEN_S = 1.0
REPLY = ["one", " two", " three", " four"]
LIMITS = {"x-ratelimit-limit-requests": "100", "x-ratelimit-remaining-requests": "99"}


def _usage(model: str) -> bytes:
    """The usage object's JSON (hand-written: some values are beyond JSON encoders)."""
    if model == "usage-huge":
        return b'{"prompt_tokens":18446744073709551615,"completion_tokens":4}'
    bad: dict[str, Any] = {
        "usage-neg": {"prompt_tokens": -5, "completion_tokens": 4, "total_tokens": -1},
        "usage-bool": {"prompt_tokens": True, "completion_tokens": 4, "total_tokens": 5},
        "usage-float": {"prompt_tokens": 10.5, "completion_tokens": 4, "total_tokens": 14.5},
    }
    if model == "usage-notjson":
        return b'{"prompt_tokens": 10, "completion_tokens": 4,,}'
    if model == "details":  # a reasoning model's report, with a cache hit
        return orjson.dumps(
            {
                "prompt_tokens": 10,
                "completion_tokens": 4,
                "prompt_tokens_details": {"cached_tokens": 6},
                "completion_tokens_details": {"reasoning_tokens": 3},
            }
        )
    return orjson.dumps(bad.get(model, {"prompt_tokens": 10, "completion_tokens": 4}))


def _completion(model: str, text: str) -> bytes:
    usage = _usage(model)
    if model == "usage-notjson":  # a JSON body cannot hold invalid JSON: a string instead
        usage = b'"not a usage object"'
    body = {
        "id": "chatcmpl-faulty",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": None,
    }
    return orjson.dumps(body).replace(b'"usage":null', b'"usage":' + usage)


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    event = {
        "id": "chatcmpl-faulty",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"


def _usage_chunk(model: str) -> bytes:
    raw = _usage(model)
    head = b'{"id":"chatcmpl-faulty","object":"chat.completion.chunk","created":1,"model":'
    return b"data: " + head + orjson.dumps(model) + b',"choices":[],"usage":' + raw + b"}\n\n"


class FaultyUpstream(ThreadedServer):
    NAME = "faulty-upstream"
    URL_SUFFIX = "/v1"
    RUNNER_OPTIONS = {"handler_cancellation": True}  # a hang-up reaches the handler

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []  # (path, model)
        self.hung_up: list[tuple[str, float]] = []  # (model, time.monotonic())

    def models_seen(self, path_suffix: str) -> list[str]:
        return [m for p, m in list(self.seen) if p.endswith(path_suffix)]

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/redirect-target", self._redirect_target)
        app.router.add_get("/{tail:.*}", self._any_get)
        return app

    async def _any_get(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, "GET"))
        return web.Response(body=b"\x89PNG\r\n\x1a\n", content_type="image/png")

    async def _redirect_target(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, "redirected"))
        return web.Response(body=_completion("redirected", "you were redirected"))

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        model = str(body.get("model"))
        try:
            return await self._answer(request, body, model)
        except asyncio.CancelledError:
            self.hung_up.append((model, time.monotonic()))
            raise

    async def _answer(
        self, request: web.Request, body: dict[str, Any], model: str
    ) -> web.StreamResponse:
        self.seen.append((request.path, model))
        stream = body.get("stream") is True
        if model == "html":
            return web.Response(
                text="<html><body>Bad gateway</body></html>", content_type="text/html"
            )
        if model == "slow-headers":
            await asyncio.sleep(SLOW_S)
        if model == "leaky-500":
            return _error(500, "db pool exhausted at 10.0.3.7:5432", "server_error")
        if model == "echo-key-400":
            sent = request.headers.get("Authorization", "")
            return _error(400, f"bad parameter for credential {sent[7:]}", "invalid_value")
        if model == "redirect":
            raise web.HTTPTemporaryRedirect("/v1/redirect-target")
        if model == "rate-limited-ms":
            return _error(429, "slow down", "rate_limit_exceeded", {"retry-after-ms": "300"})
        if model == "rate-limited":
            return _error(429, "slow down", "rate_limit_exceeded", {"Retry-After": "7"})
        if not stream:
            text = "x" * 50_000 if model == "huge" else "".join(REPLY)
            return web.Response(
                body=_completion(model, text), content_type="application/json", headers=LIMITS
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **LIMITS})
        await resp.prepare(request)
        await resp.write(_chunk(model, {"role": "assistant", "content": ""}))
        if model == "slow-first-token":
            await asyncio.sleep(SLOW_FIRST_TOKEN_S)
        if model == "trickle":
            while True:
                await resp.write(_chunk(model, {"content": " more"}))
                await asyncio.sleep(0.2)
        if model == "huge":  # one 10 KB event, arriving in 1 KB slices
            event = _chunk(model, {"content": "y" * 10_000})
            for start in range(0, len(event), 1024):
                await resp.write(event[start : start + 1024])
                await asyncio.sleep(0.01)
        for word in REPLY:
            await resp.write(_chunk(model, {"content": word}))
        await resp.write(_chunk(model, {}, "stop"))
        await resp.write(_usage_chunk(model))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _error(
    status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    }
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )
