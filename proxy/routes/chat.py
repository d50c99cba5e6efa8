"""POST /v1/chat/completions: the hot path.

Validates the body, resolves the alias, opens the upstream through
`proxy.routing`, then either relays one JSON reply (model rewritten, usage
read) or pipes the upstream's SSE bytes through `_fastpath.SseRewriter`
(model rewritten per event, first content noted for TTFT, usage picked out
and dropped again when the client did not ask for it), writing each piece to
the client as it comes. The usage record is made before the last byte goes
out; if the client leaves mid-stream the upstream request is closed and what
was produced is still billed, counted locally when the upstream sent no usage.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

from _fastpath import SseRewriter, encode_alias, rewrite_model
from proxy import errors, tokens
from proxy.config import AliasRoute, Deployment
from proxy.errors import GatewayError
from proxy.metering import CLIENT_GONE, RequestMeter
from proxy.providers import UpstreamReply, UpstreamTimeout, UpstreamUnavailable
from proxy.routes.body import read_json_body, require_alias
from proxy.routing import open_upstream, read_reply, resolve_route
from proxy.state import STATE

ENDPOINT = "chat.completions"
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
_ALIAS_JSON: dict[str, bytes] = {}  # alias -> its JSON string token


def _validate(body: dict[str, Any]) -> str:
    alias = require_alias(body)
    messages = body.get("messages")
    if messages is None:
        raise errors.missing_param("messages")
    if not isinstance(messages, list) or not messages:
        raise errors.invalid_param("messages", "'messages' must be a non-empty array.")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise errors.invalid_param("stream", "'stream' must be a boolean.")
    return alias


def _usage_tokens(usage: Any) -> tuple[int, int] | None:
    if not isinstance(usage, dict):
        return None
    pin, pout = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(pin, int):
        return None
    return pin, pout if isinstance(pout, int) else 0


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body = await read_json_body(request)
    alias = _validate(body)
    route = resolve_route(state, request["key"], alias, "chat")
    stream = body.get("stream") is True
    meter = RequestMeter(state.journal, request, route, ENDPOINT, stream)
    reply: UpstreamReply | None = None
    dep: Deployment | None = None
    try:
        reply, dep = await open_upstream(state, route, "chat/completions", body, stream)
        if stream:
            return await _relay_stream(request, meter, route, dep, body, reply)
        return await _relay_json(meter, route, dep, body, reply)
    except GatewayError as err:
        meter.finish(status=err.status, deployment="-" if dep is None else dep.name,
                     error=err.code)
        raise
    except asyncio.CancelledError:
        # the client left before its reply (streams handle this themselves):
        # stop the upstream and bill the prompt, counted locally
        if meter.record is None:
            if reply is not None:
                reply.close()
            counted = await tokens.count_locally(body, "", route.deployments[0].encoding
                                                 if dep is None else dep.encoding)
            meter.finish(status=CLIENT_GONE, deployment="-" if dep is None else dep.name,
                         input_tokens=counted[0], output_tokens=0, usage_source="local",
                         error="client_disconnected")
        raise


def _alias_json(alias: str) -> bytes:
    token = _ALIAS_JSON.get(alias)
    if token is None:
        token = _ALIAS_JSON[alias] = encode_alias(alias)
    return token


async def _relay_json(
    meter: RequestMeter, route: AliasRoute, dep: Deployment, body: dict[str, Any],
    reply: UpstreamReply,
) -> web.Response:
    raw = await read_reply(reply)
    # Fast path: the upstream's bytes with only the top-level "model" replaced,
    # usage read from its own small slice; nothing else is parsed or re-encoded.
    fast = rewrite_model(raw, _alias_json(route.alias))
    if fast is not None and fast[1] is not None:
        counted = _usage_tokens(orjson.loads(fast[1]))
        if counted is not None:
            meter.finish(status=200, deployment=dep.name, input_tokens=counted[0],
                         output_tokens=counted[1], usage_source="upstream")
            return web.Response(body=fast[0], content_type="application/json")
    # Slow path: not one valid JSON object (a parser gives the verdict), or no
    # usable usage (the text must be counted locally).
    try:
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise errors.upstream_unavailable(f"bad reply ({exc})") from None
    counted = _usage_tokens(data.get("usage"))
    source = "upstream"
    if counted is None:
        text = "".join(_message_text(c) for c in data.get("choices") or ())
        counted = await tokens.count_locally(body, text, dep.encoding)
        source = "local"
    meter.finish(status=200, deployment=dep.name, input_tokens=counted[0],
                 output_tokens=counted[1], usage_source=source)
    if fast is None:
        data["model"] = route.alias
        return web.Response(body=orjson.dumps(data), content_type="application/json")
    return web.Response(body=fast[0], content_type="application/json")


def _message_text(choice: Any) -> str:
    msg = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(msg, dict):
        return ""
    parts = [msg.get("content") or "", msg.get("refusal") or ""]
    for call in msg.get("tool_calls") or ():
        parts.append(((call or {}).get("function") or {}).get("arguments") or "")
    return "".join(p for p in parts if isinstance(p, str))


async def _relay_stream(
    request: web.Request, meter: RequestMeter, route: AliasRoute, dep: Deployment,
    body: dict[str, Any], reply: UpstreamReply,
) -> web.StreamResponse:
    opts = body.get("stream_options")
    forward_usage = isinstance(opts, dict) and opts.get("include_usage") is True
    rewriter = SseRewriter(route.alias, forward_usage)
    resp = web.StreamResponse(headers={**SSE_HEADERS, "x-request-id": request["rid"]})
    t0 = request["t0"]
    ttft_ms: float | None = None
    status, error = 200, None
    try:
        await resp.prepare(request)
        async for piece in reply.chunks():
            out = rewriter.feed(piece)
            if ttft_ms is None and rewriter.first_content:
                ttft_ms = (time.perf_counter() - t0) * 1000.0
            if out:
                if rewriter.done:
                    await _finish_stream(meter, dep, body, rewriter, ttft_ms, status, error)
                await resp.write(out)
        tail = rewriter.finish()
        if not rewriter.done and rewriter.usage_json is None:
            status, error = 502, "upstream_incomplete_stream"
        await _finish_stream(meter, dep, body, rewriter, ttft_ms, status, error)
        if tail:
            await resp.write(tail)
        await resp.write_eof()
    except (ConnectionResetError, asyncio.CancelledError) as exc:
        # the client went away: stop the upstream, bill what was produced
        reply.close()
        await _finish_stream(meter, dep, body, rewriter, ttft_ms, CLIENT_GONE, "client_disconnected")
        if isinstance(exc, asyncio.CancelledError):
            raise
    except (UpstreamUnavailable, UpstreamTimeout) as exc:
        reply.close()
        code = "upstream_timeout" if isinstance(exc, UpstreamTimeout) else "upstream_disconnected"
        await _finish_stream(meter, dep, body, rewriter, ttft_ms, 502, code)
        message = orjson.dumps({"error": {"message": "The upstream stream broke off.",
                                          "type": "api_error", "param": None, "code": code}})
        try:
            await resp.write(b"data: " + message + b"\n\n")
            await resp.write_eof()
        except ConnectionResetError:
            pass
    return resp


async def _finish_stream(
    meter: RequestMeter, dep: Deployment, body: dict[str, Any], rewriter: SseRewriter,
    ttft_ms: float | None, status: int, error: str | None,
) -> None:
    if meter.record is not None:
        return
    counted = _usage_tokens(orjson.loads(rewriter.usage_json)) if rewriter.usage_json else None
    source = "upstream"
    if counted is None:
        counted = await tokens.count_locally(body, rewriter.text(), dep.encoding)
        source = "local"
    meter.finish(status=status, deployment=dep.name, input_tokens=counted[0],
                 output_tokens=counted[1], usage_source=source, ttft_ms=ttft_ms, error=error)
