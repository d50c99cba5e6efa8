"""The upstream HTTP/1.1 client (`proxy.providers.http1`) against a raw loopback
server that answers with exactly the bytes each test scripts: what the
gateway's providers get back (status, headers, body pieces, errors), and how
connections are kept, reused, refused and closed. The gateway-level faults
(500s, HTML, hangs, closed ports) are in test_upstream_faults.py."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from yarl import URL

from proxy.providers.base import UpstreamTimeout, UpstreamUnavailable
from proxy.providers.http1 import Head, Http1Pool

Answer = Callable[[bytes], list[bytes] | None]
"""request bytes -> the pieces to send (a last b"": then close; None: close at once)"""


class ScriptedServer:
    """Counts connections and requests; answers each request with `answer(request)`."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                pieces = self.answer(request)
                if pieces is None:
                    break
                for piece in pieces:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.005)
                if pieces and pieces[-1] == b"":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client left, or the test ended
        finally:
            writer.close()

    def url(self, path: str = "/v1/chat/completions") -> URL:
        return URL(f"http://127.0.0.1:{self.port}{path}")


@pytest.fixture
async def served() -> AsyncIterator[Callable[[Answer], asyncio.Future[ScriptedServer]]]:
    servers: list[ScriptedServer] = []

    async def make(answer: Answer) -> ScriptedServer:
        server = ScriptedServer(answer)
        await server.start()
        servers.append(server)
        return server

    yield make  # type: ignore[misc]
    for server in servers:
        assert server.server is not None
        server.server.close()


def ok(body: bytes, extra: bytes = b"") -> list[bytes]:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % len(
        body
    )
    return [head + extra + b"\r\n" + body]


async def post(pool: Http1Pool, url: URL, body: bytes = b"{}", **kw: float) -> tuple[int, bytes]:
    resp = await pool.post(
        Head(url, {"Authorization": "Bearer sk-up", "Content-Type": "application/json"}),
        body,
        connect_s=kw.get("connect_s", 2.0),
        head_s=kw.get("head_s", 2.0),
        read_s=kw.get("read_s", 2.0),
        total_s=kw.get("total_s", 5.0),
        max_body=1 << 20,
    )
    data = b"".join([piece async for piece in resp.content.iter_any()])
    resp.release()
    return resp.status, data


async def test_request_bytes_and_keep_alive_reuse(served) -> None:  # type: ignore[no-untyped-def]
    server = await served(lambda req: ok(b'{"n":1}'))
    pool = Http1Pool(8)
    for _ in range(5):
        assert await post(pool, server.url(), b'{"model":"m"}') == (200, b'{"n":1}')
    assert server.connections == 1  # one connection, kept alive
    first = server.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:%d\r\n" % server.port in first
    assert b"\r\nAuthorization: Bearer sk-up\r\n" in first
    assert first.endswith(b'Content-Length: 13\r\n\r\n{"model":"m"}')
    pool.close()


async def test_chunked_stream_arrives_piece_by_piece(served) -> None:  # type: ignore[no-untyped-def]
    events = [b'data: {"n":%d}\n\n' % i for i in range(3)] + [b"data: [DONE]\n\n"]
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n"
    chunks = [b"%x\r\n%s\r\n" % (len(e), e) for e in events] + [b"0\r\n\r\n"]
    server = await served(lambda req: [head] + chunks)
    pool = Http1Pool(8)
    resp = await pool.post(
        Head(server.url(), {}), b"{}", connect_s=2, head_s=2, read_s=2, total_s=5, max_body=1 << 20
    )
    assert resp.content_type == "text/event-stream"
    assert resp.content_length is None
    got = [piece async for piece in resp.content.iter_any()]
    assert b"".join(got) == b"".join(events)
    assert len(got) >= 3  # as they came, not gathered to the end
    assert await post(pool, server.url()) == (200, b"".join(events))
    assert server.connections == 1
    pool.close()


async def test_gzip_answer_is_decoded(served) -> None:  # type: ignore[no-untyped-def]
    body = b'{"text":"' + b"a" * 5000 + b'"}'
    packed = gzip.compress(body)
    server = await served(lambda req: ok(packed, b"Content-Encoding: gzip\r\n"))
    pool = Http1Pool(8)
    assert await post(pool, server.url()) == (200, body)
    assert b"Accept-Encoding: gzip, deflate" in server.requests[0]
    pool.close()


async def test_body_until_close_and_truncated_body(served) -> None:  # type: ignore[no-untyped-def]
    whole = await served(
        lambda req: [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it", b""]
    )
    pool = Http1Pool(8)
    assert await post(pool, whole.url()) == (200, b"all of it")

    cut = await served(
        lambda req: [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this", b""]
    )
    with pytest.raises(aiohttp.ClientPayloadError):
        await post(pool, cut.url())
    pool.close()


async def test_idle_read_timeout_and_refused_connection(served) -> None:  # type: ignore[no-untyped-def]
    server = await served(lambda req: [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"])
    pool = Http1Pool(8)
    resp = await pool.post(
        Head(server.url(), {}),
        b"{}",
        connect_s=2,
        head_s=2,
        read_s=0.2,
        total_s=5,
        max_body=1 << 20,
    )
    with pytest.raises(TimeoutError):
        async for _ in resp.content.iter_any():
            pass
    resp.close()

    dead_port = server.port
    assert server.server is not None
    server.server.close()
    await server.server.wait_closed()
    with pytest.raises(UpstreamUnavailable, match="cannot connect"):
        await post(pool, URL(f"http://127.0.0.1:{dead_port}/v1/x"))
    pool.close()


async def test_stale_kept_connection_is_replaced(served) -> None:  # type: ignore[no-untyped-def]
    """The upstream closes a kept-alive connection after one answer: the next post
    goes out again on a new connection instead of failing."""
    server = await served(lambda req: ok(b"{}", b"Connection: keep-alive\r\n"))
    pool = Http1Pool(8)
    assert await post(pool, server.url()) == (200, b"{}")
    server.answer = lambda req: None  # hang up on the next request, answering nothing
    fresh = ok(b'{"fresh":true}')
    calls = 0

    def answer(req: bytes) -> list[bytes] | None:
        nonlocal calls
        calls += 1
        return None if calls == 1 else fresh

    server.answer = answer
    assert await post(pool, server.url()) == (200, b'{"fresh":true}')
    assert server.connections == 2
    pool.close()


async def test_pool_limit_queues_requests(served) -> None:  # type: ignore[no-untyped-def]
    server = await served(lambda req: ok(b"{}"))
    pool = Http1Pool(2)
    results = await asyncio.gather(*(post(pool, server.url()) for _ in range(10)))
    assert results == [(200, b"{}")] * 10
    assert server.connections <= 2
    pool.close()


async def test_no_head_in_time_is_a_timeout(served) -> None:  # type: ignore[no-untyped-def]
    server = await served(lambda req: [])  # reads the request, never answers
    pool = Http1Pool(8)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamTimeout):
        await post(pool, server.url(), head_s=0.3)
    assert 0.25 < loop.time() - started < 2.0
    pool.close()


@pytest.fixture
def loopback_cert(tmp_path):  # type: ignore[no-untyped-def]
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_upstream_verified_against_the_trust_store(loopback_cert, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    cert, key = loopback_cert
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    requests: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            requests.append(head + await reader.readexactly(2))
            writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{"tls":1}')
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    url = URL(f"https://127.0.0.1:{port}/v1/chat/completions")
    try:
        # not in the trust store: refused, never sent
        with pytest.raises(UpstreamUnavailable, match="(?i)certificate"):
            await post(Http1Pool(4), url)
        assert requests == []
        # trusted (SSL_CERT_FILE is read when the pool makes its TLS context)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        pool = Http1Pool(4)
        assert await post(pool, url) == (200, b'{"tls":1}')
        assert requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
        assert b"\r\nHost: 127.0.0.1:%d\r\n" % port in requests[0]
        pool.close()
    finally:
        server.close()
