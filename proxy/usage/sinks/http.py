"""The HTTP sink (`[ship] http_url`): each batch one POST of gzip NDJSON.

`Content-Type: application/x-ndjson`, `Content-Encoding: gzip`, one usage
row per line (with its stable `id`), and `Idempotency-Key`: the sha256 of the
batch's row ids, so a receiver that sees the same batch twice (a 500 after it
stored it, a timeout) can tell. Only a 2xx confirms the batch.
"""

from __future__ import annotations

import gzip
import hashlib

import aiohttp
import orjson

from proxy.usage.sinks import Row, SinkError

IDEMPOTENCY_HEADER = "Idempotency-Key"


def idempotency_key(rows: list[Row]) -> str:
    return hashlib.sha256("\n".join(str(r["id"]) for r in rows).encode()).hexdigest()


def ndjson_gzip(rows: list[Row]) -> bytes:
    return gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in rows), compresslevel=5)


class HttpSink:
    name = "http"

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self._url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def ready(self) -> None:
        pass  # nothing to open ahead: each batch is one request

    async def send(self, rows: list[Row]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {
            "Content-Type": "application/x-ndjson",
            "Content-Encoding": "gzip",
            IDEMPOTENCY_HEADER: idempotency_key(rows),
        }
        try:
            async with self._session.post(self._url, data=ndjson_gzip(rows), headers=headers) as r:
                await r.read()
                if not 200 <= r.status < 300:
                    raise SinkError(f"http: {self._url} answered {r.status}")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise SinkError(f"http: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
