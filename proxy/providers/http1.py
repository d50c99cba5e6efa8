"""A lean keep-alive HTTP/1.1 client for the upstream posts on the request path.

`proxy.providers.upstream_http` sends every JSON post (chat and embeddings,
both providers) through one `Http1Pool` per provider per process, and only
multipart uploads (transcription) through aiohttp's client. The pool keeps
connections to each origin alive and reuses the most recently used one; the
answer is parsed by llhttp (`httptools`, the parser aiohttp's own server
uses), whose callbacks fill an `Http1Response`. That response has the part of
`aiohttp.ClientResponse`'s surface the replies read (`status`, `headers`,
`content_type`, `content_length`, `content.iter_any()`, `release()`,
`close()`), and fails the way aiohttp does (`aiohttp.ClientConnectionError`,
`aiohttp.ClientPayloadError`, `TimeoutError`), so nothing above this module
changed its error handling.

Why not aiohttp's client: per request it builds a `ClientRequest`, a
`ClientResponse`, header multidicts, a payload object, a timer context and
several tasks' worth of awaits; the request line and the deployment's headers
never change, so here they are bytes made once per deployment and one
`transport.writelines` sends head and body. Redirects are never followed (a
3xx is just an answer), as before.

Timeouts: connecting is bounded by `connect_s`; the wait for the head by the
caller (`first_byte_timeout_s`); after that each wait for more body by
`read_s` (idle) and the whole exchange by `total_s`.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import deque
from typing import Any, cast

import aiohttp
import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.providers.base import UpstreamTimeout, UpstreamUnavailable
from proxy.providers.http1_answer import Http1Response

KEEPALIVE_S = 60.0  # an idle connection older than this is closed, not reused
ACCEPT_ENCODING = b"gzip, deflate"


class Head:
    """A request's head for one URL and header set, made once: the method line,
    Host and the headers as bytes, to be followed by Content-Length and body."""

    __slots__ = ("origin", "host", "port", "ssl", "prefix")

    def __init__(self, url: URL, headers: dict[str, str]) -> None:
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"not an http(s) URL: {url}")
        self.ssl = url.scheme == "https"
        self.host = url.raw_host or url.host
        self.port = url.port or (443 if self.ssl else 80)
        self.origin = (url.scheme, self.host, self.port)
        default_port = self.port == (443 if self.ssl else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        host = host if default_port else f"{host}:{self.port}"
        lines = [f"POST {url.raw_path_qs or '/'} HTTP/1.1", f"Host: {host}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if not any(name.lower() == "accept-encoding" for name in headers):
            lines.append("Accept-Encoding: " + ACCEPT_ENCODING.decode())
        self.prefix = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")

    def request(self, body: bytes) -> tuple[bytes, bytes]:
        return self.prefix + str(len(body)).encode() + b"\r\n\r\n", body


class _Connection(asyncio.Protocol):
    """One upstream connection: parses answers with llhttp, one at a time."""

    def __init__(self, pool: Http1Pool, origin: tuple[str, str, int]) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.read_s = 0.0
        self.deadline = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._head_waiter: asyncio.Future[Http1Response] | None = None
        self._response: Http1Response | None = None
        self._header_list: list[tuple[str, str]] = []
        self._got_bytes = False
        self._complete = False
        self._keep_alive = False
        self._decoder: Any = None
        self._decoded = 0
        self._max_body = 0
        self._paused = False
        self._write_waiter: asyncio.Future[None] | None = None
        self.counted = True  # holds one of the pool's places until it closes

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except aiohttp.ClientError as exc:  # raised by a callback below
            self._fail(exc)
        except Exception as exc:  # llhttp's verdict: not HTTP/1.1 we can read
            self._fail(aiohttp.ClientPayloadError(f"malformed answer from the upstream: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self._write_waiter is not None and not self._write_waiter.done():
            self._write_waiter.set_result(None)
        resp = self._response
        if resp is not None and not self._complete:
            if self._head_waiter is None and self._until_close():
                self._complete = True
                resp.end()
            else:
                resp.end(aiohttp.ClientPayloadError("the upstream closed the answer unfinished"))
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            error: Exception = (
                _StaleConnection()
                if self.reused and not self._got_bytes
                else aiohttp.ServerDisconnectedError("the upstream closed the connection")
            )
            waiter.set_exception(error)

    def pause_writing(self) -> None:
        self._write_waiter = self.loop.create_future()

    def resume_writing(self) -> None:
        waiter, self._write_waiter = self._write_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # llhttp callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_list.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer: the real one follows
            self._header_list = []
            return
        headers = CIMultiDictProxy(CIMultiDict(self._header_list))
        self._keep_alive = self._parser.should_keep_alive()
        coding = headers.get("Content-Encoding", "").strip().lower()
        if coding in ("gzip", "deflate", "x-gzip"):
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)
        elif coding not in ("", "identity"):
            raise aiohttp.ClientPayloadError(f"unsupported Content-Encoding {coding!r}")
        resp = self._response = Http1Response(self, status, headers)
        waiter, self._head_waiter = self._head_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(resp)

    def on_body(self, body: bytes) -> None:
        resp = self._response
        if resp is None:
            return
        if self._decoder is not None:
            try:
                body = self._decoder.decompress(body)
            except zlib.error as exc:
                raise aiohttp.ClientPayloadError(f"broken {exc}") from None
            self._decoded += len(body)
            if self._decoded > self._max_body:
                raise aiohttp.ClientPayloadError("decompressed answer over the cap")
            if not body:
                return
        resp.feed(body)

    def on_message_complete(self) -> None:
        resp = self._response
        if resp is None:  # the end of an interim answer
            return
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                resp.feed(tail)
        self._complete = True
        self._response = None
        resp.detach()
        resp.end()
        if self._keep_alive and not self.closed:
            self.resume()
            self.pool.put_back(self)
        else:
            self.abort()

    # used by the pool and the response
    def _until_close(self) -> bool:
        """The answer's body ends with the connection (no length, not chunked)."""
        resp = self._response
        if resp is None or resp.content_length is not None:
            return False
        return "chunked" not in resp.headers.get("Transfer-Encoding", "").lower()

    def _fail(self, exc: BaseException) -> None:
        resp = self._response
        if resp is not None:
            resp.end(exc)
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.abort()

    def send(
        self, head: bytes, body: bytes, read_s: float, deadline: float, max_body: int
    ) -> asyncio.Future[Http1Response]:
        assert self.transport is not None
        self._parser = httptools.HttpResponseParser(self)
        self._header_list = []
        self._response = None
        self._got_bytes = False
        self._complete = False
        self._keep_alive = False
        self._decoder = None
        self._decoded = 0
        self._max_body = max_body
        self.read_s = read_s
        self.deadline = deadline
        waiter = self._head_waiter = self.loop.create_future()
        self.transport.writelines((head, body))
        return waiter

    async def drained(self) -> None:
        if self._write_waiter is not None:
            await self._write_waiter

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
        self.pool.forget(self)


class _StaleConnection(aiohttp.ServerDisconnectedError):
    """A kept-alive connection the upstream had closed before our request reached
    it: no byte of an answer came, so the request is sent again on a new one."""


class Http1Pool:
    """The kept-alive connections of one provider in one process, at most `limit`
    open at once (a request past that waits for one to come back)."""

    def __init__(self, limit: int) -> None:
        self.loop = asyncio.get_running_loop()
        self._limit = limit
        self._open = 0
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._ssl: ssl.SSLContext | None = None

    async def post(
        self,
        head: Head,
        body: bytes,
        *,
        connect_s: float,
        head_s: float,
        read_s: float,
        total_s: float,
        max_body: int,
    ) -> Http1Response:
        """The answer once its status and headers arrived, within `head_s` of the
        call: else `UpstreamTimeout`, or `UpstreamUnavailable` if it failed."""
        now = self.loop.time()
        deadline = now + total_s
        head_deadline = min(now + head_s, deadline)
        request_head, payload = head.request(body)
        try:
            for _ in range(2):
                conn = await self._acquire(head, connect_s, head_deadline)
                try:
                    waiter = conn.send(request_head, payload, read_s, deadline, max_body)
                    await conn.drained()
                    timer = self.loop.call_at(head_deadline, _expire_head, waiter)
                    try:
                        return await waiter
                    finally:
                        timer.cancel()
                except _StaleConnection:
                    conn.abort()
                    continue
                except BaseException:
                    conn.abort()
                    raise
            raise aiohttp.ServerDisconnectedError("the upstream closed the connection")
        except TimeoutError as exc:
            raise UpstreamTimeout(f"no answer within {head_s} s") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(str(exc) or type(exc).__name__) from exc

    async def _acquire(self, head: Head, connect_s: float, head_deadline: float) -> _Connection:
        idle = self._idle.get(head.origin)
        now = self.loop.time()
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if now - conn.idle_since > KEEPALIVE_S:
                conn.abort()
                continue
            conn.reused = True
            return conn
        while self._open >= self._limit:
            ready = self.loop.create_future()
            self._waiting.append(ready)
            try:
                async with asyncio.timeout_at(head_deadline):
                    await ready
            except BaseException:
                if ready.done() and not ready.cancelled():
                    self._wake_one()  # pass the turn we were given on
                raise
            return await self._acquire(head, connect_s, head_deadline)
        self._open += 1
        try:
            return await self._connect(head, min(connect_s, head_deadline - now))
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    async def _connect(self, head: Head, connect_s: float) -> _Connection:
        context = None
        if head.ssl:
            if self._ssl is None:  # reading the system's CA store blocks: not on the loop
                self._ssl = await asyncio.to_thread(ssl.create_default_context)
            context = self._ssl
        try:
            async with asyncio.timeout(connect_s):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self, head.origin),
                    head.host,
                    head.port,
                    ssl=context,
                    server_hostname=head.host if context is not None else None,
                )
        except TimeoutError:
            raise aiohttp.ConnectionTimeoutError(
                f"could not connect within {connect_s} s"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise aiohttp.ClientConnectionError(
                f"cannot connect to the upstream: {exc.strerror or exc}"
            ) from None
        return conn

    def put_back(self, conn: _Connection) -> None:
        conn.idle_since = self.loop.time()
        self._idle.setdefault(conn.origin, []).append(conn)
        self._wake_one()

    def forget(self, conn: _Connection) -> None:
        """A connection closed: its place is free."""
        if not conn.counted:
            return
        conn.counted = False
        self._open -= 1
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiting:
            ready = self._waiting.popleft()
            if not ready.done():
                ready.set_result(None)
                return

    def close(self) -> None:
        for conns in list(self._idle.values()):
            for conn in list(conns):
                conn.abort()
        self._idle.clear()


def _expire_head(waiter: asyncio.Future[Http1Response]) -> None:
    if not waiter.done():
        waiter.set_exception(aiohttp.ServerTimeoutError("no answer from the upstream in time"))
