"""An upstream's answer as `proxy.providers.http1` receives it.

`Http1Response` is what the replies read (`status`, `headers`,
`content_type`, `content_length`, `content.iter_any()`, `release()`,
`close()`, as on `aiohttp.ClientResponse`). Its connection feeds it
(`feed`, `end`) from llhttp's callbacks; the reader takes what is buffered,
waiting at most the idle `read_s` and never past the exchange's deadline. A
large unread backlog pauses the socket (`Link.pause`) until it is read.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

import aiohttp
from multidict import CIMultiDictProxy

READ_HIGH_WATER = 256 * 1024  # bytes buffered before the socket stops being read


class Link(Protocol):
    """The connection an answer arrives on, as the answer sees it."""

    loop: asyncio.AbstractEventLoop
    read_s: float
    deadline: float

    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def abort(self) -> None: ...


class Http1Response:
    """One answer: the head once it arrived, then the body piece by piece."""

    __slots__ = (
        "status",
        "headers",
        "content_type",
        "content_length",
        "_conn",
        "_pieces",
        "_buffered",
        "_eof",
        "_exc",
        "_waiter",
        "_read_s",
        "_deadline",
        "_loop",
    )

    def __init__(self, conn: Link, status: int, headers: CIMultiDictProxy[str]) -> None:
        self._conn: Link | None = conn
        self._loop = conn.loop
        self.status = status
        self.headers = headers
        ctype = headers.get("Content-Type", "application/octet-stream")
        self.content_type = ctype.partition(";")[0].strip().lower()
        length = headers.get("Content-Length")
        self.content_length = int(length) if length is not None and length.isdigit() else None
        self._pieces: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._read_s = conn.read_s
        self._deadline = conn.deadline

    @property
    def content(self) -> Http1Response:
        return self

    def iter_any(self) -> _Pieces:
        return _Pieces(self)

    # fed by the connection
    def feed(self, data: bytes) -> None:
        self._pieces.append(data)
        self._buffered += len(data)
        if self._buffered > READ_HIGH_WATER and self._conn is not None:
            self._conn.pause()
        self._wake()

    def end(self, exc: BaseException | None = None) -> None:
        if exc is None:
            self._eof = True
        elif not self._eof:
            self._exc = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _next(self) -> bytes | None:
        """The bytes buffered so far (waiting for some), or None at the end."""
        while not self._pieces:
            if self._exc is not None:
                raise self._exc
            if self._eof:
                return None
            await self._wait()
        pieces = self._pieces
        data = pieces.popleft() if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        if self._buffered > READ_HIGH_WATER and self._conn is not None:
            self._conn.resume()
        self._buffered = 0
        return data

    async def _wait(self) -> None:
        loop = self._loop
        timeout = min(loop.time() + self._read_s, self._deadline)
        waiter = self._waiter = loop.create_future()
        timer = loop.call_at(timeout, expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def release(self) -> None:
        """Done with this answer. Its connection went back to the pool when the
        answer ended (as aiohttp's does); one still unfinished is closed."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()

    def close(self) -> None:
        self.release()

    def detach(self) -> None:
        """The answer arrived whole: the connection is no longer this answer's."""
        self._conn = None

    def __del__(self) -> None:
        if self._conn is not None:  # dropped unfinished, never released: not reusable
            self._conn.abort()


def expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(aiohttp.ServerTimeoutError("timeout reading the upstream's answer"))


class _Pieces:
    """`async for piece in response.content.iter_any()`; a cancelled wait leaves
    it usable (unlike an async generator)."""

    __slots__ = ("_resp",)

    def __init__(self, resp: Http1Response) -> None:
        self._resp = resp

    def __aiter__(self) -> _Pieces:
        return self

    async def __anext__(self) -> bytes:
        data = await self._resp._next()
        if data is None:
            raise StopAsyncIteration
        return data
