"""One usage record per request, made exactly once, on every way out.

A handler enters a `Meter` once the alias is resolved and tells it which
deployment and `Reply` it got (`attach`). It calls `settle()` before the last
byte of the response goes out; every other ending is the meter's own
business, in `__aexit__`:

- a `GatewayError` (upstream refused, timed out, sent nonsense): its status
  and code, no tokens;
- the client gone (`CancelledError` from handler cancellation, or
  `ConnectionResetError` on a write): 499, and what was produced is billed;
- the shutdown's grace over (`CancelledError` on a request marked
  `ENDED_BY_SHUTDOWN` by `proxy.server.runner`): 503 and error
  `server_shutting_down`, and what was produced is billed;
- anything else (a bug): 500, and what was produced is billed.

Billed tokens are the upstream's report (`reply.usage`) or, where it sent
none (or a report with counts that cannot be right), a local tiktoken count of
the prompt and of `reply.text()`; `usage_source` says which. A client that
left before any upstream answered is billed nothing: the upstream may never
have seen the prompt. An audio endpoint (`audio=True`) bills the seconds its
handler gives `bill_audio` instead of tokens, and `audio_source` says where
they were read (`file`, `upstream`, or `none` when nothing was billed). The record
goes to the process's `UsageWriter` and is left on the request for the log
line that `proxy.http.middleware` writes. Writing it settles the request's
admission (`proxy.auth.admission.Reservation`, when the key's limits made one)
with the tokens and cost it bills: a failed request gives its reservation back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from aiohttp import web

from proxy.auth.admission import settle
from proxy.config.model import AliasRoute, Deployment
from proxy.http.errors import GatewayError
from proxy.observability import metrics
from proxy.providers.base import Reply, Usage
from proxy.server.state import ENDED_BY_SHUTDOWN
from proxy.usage.writer import UsageWriter

CLIENT_GONE = 499  # nginx's status for "client closed the request"
SHUTTING_DOWN = 503
NO_USAGE = Usage(0, 0)
OVERHEAD_KEY_ID = "gateway:hedge"  # usage the gateway spent on its own account

LocalCount = Callable[[Deployment, str], Awaitable[tuple[int, int]]]
"""(input, output) tokens counted locally, given the deployment and the text produced."""


class Meter:
    __slots__ = (
        "_writer",
        "_request",
        "_route",
        "_endpoint",
        "_stream",
        "_count",
        "deployment",
        "reply",
        "record",
        "_overhead",
        "_audio",
        "audio_seconds",
        "audio_source",
    )

    def __init__(
        self,
        writer: UsageWriter,
        request: web.Request,
        route: AliasRoute,
        endpoint: str,
        stream: bool,
        count_locally: LocalCount,
        *,
        audio: bool = False,
    ) -> None:
        self._writer = writer
        self._request = request
        self._route = route
        self._endpoint = endpoint
        self._stream = stream
        self._count = count_locally
        self.deployment: Deployment | None = None
        self.reply: Reply | None = None
        self.record: dict[str, Any] | None = None
        # audio endpoints bill seconds, not tokens: `bill_audio` sets them
        self._audio = audio
        self.audio_seconds = 0.0
        self.audio_source: str | None = "none" if audio else None
        self._overhead = False  # the gateway's own cost (a hedge's loser), not the key's

    def bill_audio(self, seconds: float, source: str) -> None:
        """Seconds of source audio to bill, and where they were read (file | upstream)."""
        self.audio_seconds = seconds
        self.audio_source = source

    def for_overhead(self) -> Meter:
        """A meter for work the gateway did on its own account for this request (the
        losing side of a hedge): recorded under `OVERHEAD_KEY_ID`, never billed to
        the caller's key."""
        meter = Meter(
            self._writer, self._request, self._route, self._endpoint, self._stream, self._count
        )
        meter._overhead = True
        return meter

    def attach(self, deployment: Deployment, reply: Reply) -> None:
        self.deployment = deployment
        self.reply = reply

    async def __aenter__(self) -> Meter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is not None and self.reply is not None:
            self.reply.close()
        # a stream's client that reset the connection has nobody left to answer
        swallow = self._stream and isinstance(exc, ConnectionResetError)
        if self.record is not None:
            return swallow
        if exc is None:
            await self.settle()
        elif isinstance(exc, GatewayError):
            if self._audio:  # the upstream failed: no audio was transcribed
                self.bill_audio(0.0, "none")
            self._write(exc.status, None, "none", exc.code)
        elif isinstance(exc, asyncio.CancelledError) and self._request.get(ENDED_BY_SHUTDOWN):
            await self.settle(SHUTTING_DOWN, "server_shutting_down")
        elif isinstance(exc, (asyncio.CancelledError, ConnectionResetError)):
            await self.settle(CLIENT_GONE, "client_disconnected")
        elif isinstance(exc, Exception):
            await self.settle(500, "internal_error")
        return swallow

    async def settle(self, status: int = 200, error: str | None = None) -> None:
        """Bill what the reply produced; the first call writes the record, later ones
        do nothing."""
        if self.record is not None:
            return
        reply = self.reply
        if reply is None or self._audio:  # no upstream answered, or no tokens to count
            self._write(status, None, "none", error)
            return
        if reply.usage is not None:
            self._write(status, reply.usage, "upstream", error)
            return
        source = "local_invalid_upstream" if reply.usage_rejected else "local"
        counted: Usage | None = None
        try:
            dep = self.deployment or self._route.deployments[0]
            counted = Usage(*await self._count(dep, reply.text()))
        except Exception:  # the record matters more than the count: write it uncounted
            source = "uncounted"
        if self.record is None:  # not written meanwhile by another way out
            self._write(status, counted, source, error)

    def _write(self, status: int, usage: Usage | None, source: str, error: str | None) -> None:
        request = self._request
        usage = usage or NO_USAGE
        input_tokens, output_tokens = usage.input_tokens, usage.output_tokens
        ttft_ms = None
        first = None if self.reply is None or not self._stream else self.reply.first_content_at
        if first is not None:
            ttft_ms = round((first - request["t0"]) * 1000.0, 3)
        record = {
            "request_id": request["rid"] + "-hedge" if self._overhead else request["rid"],
            "ts": request["ts"],
            "key_id": OVERHEAD_KEY_ID if self._overhead else request["key"].id,
            "model": self._route.alias,
            "deployment": "-" if self.deployment is None else self.deployment.name,
            "endpoint": self._endpoint,
            "status": status,
            "stream": int(self._stream),
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cached_tokens": usage.cached_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "audio_seconds": self.audio_seconds,
            "audio_source": self.audio_source,
            "cost_usd": self._route.price.cost(input_tokens, output_tokens, self.audio_seconds),
            "latency_ms": round((time.perf_counter() - request["t0"]) * 1000.0, 3),
            "ttft_ms": ttft_ms,
            "usage_source": source,
            "error": error,
        }
        self.record = record
        self._writer.append(record)
        metrics.observe(record)
        if not self._overhead:
            request["usage"] = record
            settle(request, input_tokens + output_tokens, record["cost_usd"])
