"""One usage record per request, made when the request ends.

Route handlers create a `RequestMeter` once the alias is resolved and call
`finish` exactly once, whatever the ending (done, failed, client gone), before
the last byte of the response goes out. The record goes to the process's
`UsageJournal` and is left on the request for the access log line written
by `proxy.app`'s middleware.
"""

from __future__ import annotations

import time
from typing import Any

from proxy.config import AliasRoute
from proxy.usage_journal import UsageJournal

CLIENT_GONE = 499  # nginx's status for "client closed the request"


class RequestMeter:
    __slots__ = ("_journal", "_request", "_route", "_endpoint", "_stream", "record")

    def __init__(
        self,
        journal: UsageJournal,
        request: Any,
        route: AliasRoute,
        endpoint: str,
        stream: bool,
    ) -> None:
        self._journal = journal
        self._request = request
        self._route = route
        self._endpoint = endpoint
        self._stream = stream
        self.record: dict[str, Any] | None = None

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self._request["t0"]) * 1000.0

    def finish(
        self,
        *,
        status: int,
        deployment: str,
        input_tokens: int = 0,
        output_tokens: int = 0,
        audio_seconds: float = 0.0,
        usage_source: str = "none",
        ttft_ms: float | None = None,
        error: str | None = None,
    ) -> dict[str, Any]:
        if self.record is not None:
            return self.record
        record = {
            "request_id": self._request["rid"],
            "ts": self._request["ts"],
            "key_id": self._request["key"].id,
            "model": self._route.alias,
            "deployment": deployment,
            "endpoint": self._endpoint,
            "status": status,
            "stream": int(self._stream),
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "audio_seconds": audio_seconds,
            "cost_usd": self._route.price.cost(input_tokens, output_tokens, audio_seconds),
            "latency_ms": round(self.elapsed_ms(), 3),
            "ttft_ms": None if ttft_ms is None else round(ttft_ms, 3),
            "usage_source": usage_source,
            "error": error,
        }
        self.record = record
        self._journal.append(record)
        self._request["usage"] = record
        return record
