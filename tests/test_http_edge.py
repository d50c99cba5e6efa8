"""The HTTP edge: requests aiohttp's parser refuses before any middleware runs.

Each malformed request, sent over a raw socket, gets a 400 in OpenAI's error
shape with an `x-request-id`, and one log line with that id; neither the
answer nor the log quotes a header value (a bearer key with a control
character in it least of all), and nothing is logged as a traceback. The
`Server` header names no versions, on every kind of response. The process
starts with the open-files limit raised for 1,000 streams.
"""

from __future__ import annotations

import http.client
import json
import re
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_process import ADMIN_KEY, GatewayProcess, gateway_config
from upstream_app import Upstream
from waiting import wait_for

MARKER = "hdr-value-7f3a9c"  # a header value that must never be echoed or logged
REQUEST_ID = re.compile(r"^req_[0-9a-f]{24}$")


@pytest.fixture(scope="module")
def edge_gateway(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway of this module's own, so that its log holds only these requests."""
    gw = GatewayProcess(tmp_path_factory.mktemp("edge"), gateway_config(upstream.base_url))
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def edge_key(edge_gateway: GatewayProcess) -> str:
    return str(edge_gateway.create_key("edge-client")["key"])


class RawReply:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status_line = lines[0]
        self.status = int(lines[0].split()[1])
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()

    def json(self) -> Any:
        return json.loads(self.body)


def send_raw(port: int, *parts: bytes, pause: float = 0.0) -> RawReply:
    """Send `parts` (with `pause` seconds between them) and read until the gateway
    closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for i, part in enumerate(parts):
            if i and pause:
                time.sleep(pause)  # a client that sends its body in pieces
            sock.sendall(part)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received, "the gateway closed the connection without an answer"
    return RawReply(received)


def assert_openai_error(reply: RawReply, status: int, code: str) -> str:
    """The reply is an OpenAI-shaped error with a request id; returns the id."""
    assert reply.status == status, reply.raw[:300]
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    request_id = reply.headers.get("x-request-id", "")
    assert REQUEST_ID.match(request_id), reply.headers
    return request_id


def assert_no_version(server: str | None) -> None:
    assert server, "no Server header"
    assert not re.search(r"\d", server), f"Server header names a version: {server!r}"
    assert "aiohttp" not in server.lower() and "python" not in server.lower(), server


def logged(gw: GatewayProcess, request_id: str) -> dict[str, Any]:
    lines = wait_for(
        lambda: gw.log_lines_for(request_id),
        message=f"the log line of {request_id}",
    )
    assert len(lines) == 1, lines
    return lines[0]


def assert_log_clean(gw: GatewayProcess, *secrets: str) -> None:
    text = gw.log_text()
    for secret in secrets:
        assert secret not in text, f"the log holds {secret!r}"
    assert "Traceback" not in text, text[-3000:]


PARSE_ERRORS = {
    # name: (request bytes, expected code)
    "header_too_long": (
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + (MARKER * 1000).encode() + b"\r\n\r\n",
        "line_too_long",
    ),
    "control_char_in_header": (
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Custom: " + MARKER.encode() + b"\x0b\r\n\r\n",
        "invalid_http_request",
    ),
    "nul_in_header_name": (
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-" + MARKER.encode() + b"\x00: 1\r\n\r\n",
        "invalid_http_request",
    ),
    "bad_chunked_encoding": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"X-Custom: " + MARKER.encode() + b"\r\n\r\nzz" + MARKER.encode() + b"\r\n0\r\n\r\n",
        "invalid_http_request",
    ),
    "http_0_9": (b"GET /v1/models\r\n\r\n", "unsupported_http_version"),
    "http_2_request_line": (
        b"GET /v1/models HTTP/2.0\r\nHost: x\r\nX-Custom: " + MARKER.encode() + b"\r\n\r\n",
        "unsupported_http_version",
    ),
}


@pytest.mark.parametrize("case", list(PARSE_ERRORS))
def test_parse_error_is_an_openai_error_without_the_bytes(
    edge_gateway: GatewayProcess, case: str
) -> None:
    data, code = PARSE_ERRORS[case]
    reply = send_raw(edge_gateway.port, data)
    request_id = assert_openai_error(reply, 400, code)
    assert MARKER.encode() not in reply.raw
    assert reply.status_line.startswith("HTTP/1."), reply.status_line  # and it was closed
    assert_no_version(reply.headers.get("server"))
    line = logged(edge_gateway, request_id)
    assert line["status"] == 400 and line["error"] == code
    assert line["reason"]  # the parser's exception class
    assert_log_clean(edge_gateway, MARKER)


def test_bad_chunk_after_a_pause_fails_the_request_being_read(
    edge_gateway: GatewayProcess, edge_key: str
) -> None:
    """A chunked body that turns bad after the handler began reading it: answered
    at once (not left waiting for a body that cannot come), key not echoed."""
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + edge_key.encode() + b"\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"mod\r\n'
    )
    reply = send_raw(edge_gateway.port, head, b"zz\r\n" + MARKER.encode() + b"\r\n", pause=0.3)
    request_id = assert_openai_error(reply, 400, "invalid_http_request")
    assert edge_key.encode() not in reply.raw and MARKER.encode() not in reply.raw
    assert logged(edge_gateway, request_id)["status"] == 400
    assert_log_clean(edge_gateway, edge_key, MARKER)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/admin/keys"])
def test_control_char_in_authorization_never_shows_the_key(
    edge_gateway: GatewayProcess, edge_key: str, path: str
) -> None:
    key = ADMIN_KEY if path.startswith("/admin") else edge_key
    method = b"GET" if path.startswith("/admin") else b"POST"
    data = (
        method + b" " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + key.encode() + b"\x0b\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )
    reply = send_raw(edge_gateway.port, data)
    request_id = assert_openai_error(reply, 400, "invalid_http_request")
    assert key.encode() not in reply.raw
    assert key[8:24].encode() not in reply.raw  # not even a slice of it
    logged(edge_gateway, request_id)
    assert_log_clean(edge_gateway, key, key[8:24])


def _get(gw: GatewayProcess, path: str, key: str | None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("GET", path, headers={"Authorization": f"Bearer {key}"} if key else {})
    return conn.getresponse()


def test_server_header_names_no_version(edge_gateway: GatewayProcess, edge_key: str) -> None:
    ok = _get(edge_gateway, "/v1/models", edge_key)
    ok.read()
    assert ok.status == 200
    assert_no_version(ok.headers["Server"])

    refused = _get(edge_gateway, "/v1/models", None)
    refused.read()
    assert refused.status == 401
    assert_no_version(refused.headers["Server"])

    conn = http.client.HTTPConnection("127.0.0.1", edge_gateway.port, timeout=30)
    body = {
        "model": "prometheus-lite",
        "stream": True,
        "messages": [{"role": "user", "content": "hello"}],
    }
    conn.request(
        "POST",
        "/v1/chat/completions",
        json.dumps(body),
        {"Authorization": f"Bearer {edge_key}", "Content-Type": "application/json"},
    )
    stream = conn.getresponse()
    assert stream.status == 200
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    assert stream.read().rstrip().endswith(b"data: [DONE]")
    assert_no_version(stream.headers["Server"])


def _open_files_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no 'Max open files' in /proc/PID/limits")


def test_open_files_limit_is_raised_for_a_thousand_streams(
    upstream: Upstream, tmp_path: Path
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"the hard open-files limit here is {hard}: nothing to raise to")
    gw = GatewayProcess(tmp_path, gateway_config(upstream.base_url))
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # the gateway inherits it
    try:
        gw.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        assert gw.proc is not None
        limit = _open_files_limit(gw.proc.pid)
        assert limit >= 2 * 1000, limit
        if hard != resource.RLIM_INFINITY:
            assert limit == hard
    finally:
        gw.stop()
