"""Bad input is a 400 in OpenAI's shape, never a 5xx, and never reaches the upstream.

A sweep over every endpoint with the bodies of `bad_bodies.py` (a wrong type,
an out-of-range number, a bad role or content part, `tools: [1]`, ...), plus
bodies that used to make 500s: `Content-Encoding: gzip` on a plain body, and
nesting deeper than orjson can encode again. Every answer must carry the
right status, `code` and `param`, a message naming what is wrong, and an
`x-request-id`; and the fake upstream must have received nothing of it (each
bad body carries a unique marker in an unknown field, which the gateway would
pass through untouched). Valid bodies, unknown fields included, must still
reach the upstream exactly as sent. Last, the local token counter returns a
number for any JSON value.
"""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import uuid
import zlib
from typing import Any

import pytest
from bad_bodies import CHAT_CASES, EMBEDDING_CASES, USER, ids, nested
from gateway_process import GatewayProcess
from upstream_app import Upstream
from waiting import DEADLINE_S, wait_for

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"


def send(
    gateway: GatewayProcess,
    method: str,
    path: str,
    raw: bytes | None = None,
    key: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One request on its own connection; the answer's status, headers (lower-case
    names) and JSON body."""
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=60)
    try:
        head = {"Content-Type": "application/json", **(headers or {})}
        if key is not None:
            head["Authorization"] = f"Bearer {key}"
        conn.request(method, path, body=raw, headers=head)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(body)
    finally:
        conn.close()


def assert_refused(
    answer: tuple[int, dict[str, str], Any],
    param: str | None,
    code: str,
    status: int = 400,
    says: str | None = None,
) -> dict[str, Any]:
    """The answer is OpenAI's error shape with this status, code and param, and an
    x-request-id; its message contains `says`, or else names `param` (or the
    values it accepts)."""
    got, headers, body = answer
    assert got == status, body
    assert headers.get("x-request-id", "").startswith("req_")
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["type"], err["param"], err["code"]) == ("invalid_request_error", param, code)
    message = err["message"]
    assert isinstance(message, str) and message
    if says is not None:
        assert says in message
    elif param is not None:
        assert f"'{param}'" in message or "Supported values are" in message
    return dict(err)


def marked(fields: dict[str, Any], base: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """`base` with `fields`, and a unique marker in an unknown field."""
    marker = f"probe-{uuid.uuid4().hex}"
    return {**base, **fields, "x_probe": marker}, marker


def assert_nothing_reached(upstream: Upstream, marker: str) -> None:
    hits = [r["path"] for r in upstream.received() if marker.encode() in r["raw"]]
    assert hits == [], f"the upstream received a refused body: {hits}"


@pytest.mark.parametrize("model", ["prometheus-lite", "prometheus-pulse"])
@pytest.mark.parametrize(
    ("fields", "param", "code"), [c[1:] for c in CHAT_CASES], ids=ids(CHAT_CASES)
)
def test_bad_chat_body_is_a_400_before_the_upstream(
    gateway: GatewayProcess,
    api_key: dict[str, Any],
    upstream: Upstream,
    model: str,
    fields: dict[str, Any],
    param: str,
    code: str,
) -> None:
    body, marker = marked(fields, {"model": model, "messages": [USER]})
    answer = send(gateway, "POST", CHAT, json.dumps(body).encode(), api_key["key"])
    assert_refused(answer, param, code)
    assert_nothing_reached(upstream, marker)


@pytest.mark.parametrize(
    ("fields", "param", "code"), [c[1:] for c in EMBEDDING_CASES], ids=ids(EMBEDDING_CASES)
)
def test_bad_embeddings_body_is_a_400_before_the_upstream(
    gateway: GatewayProcess,
    api_key: dict[str, Any],
    upstream: Upstream,
    fields: dict[str, Any],
    param: str,
    code: str,
) -> None:
    body, marker = marked(fields, {"model": "prometheus-atlas", "input": "hello"})
    answer = send(gateway, "POST", EMBEDDINGS, json.dumps(body).encode(), api_key["key"])
    assert_refused(answer, param, code)
    assert_nothing_reached(upstream, marker)


VALID = {
    CHAT: {"model": "prometheus-lite", "messages": [USER]},
    EMBEDDINGS: {"model": "prometheus-atlas", "input": "hello"},
}


def _deflate(data: bytes) -> bytes:
    return zlib.compress(data)


def with_deep_field(body: dict[str, Any], arrays: int) -> bytes:
    """`body` as JSON with a field `x_deep` of `arrays` nested arrays (written
    as text: Python's own encoder stops near 1,000 levels)."""
    return (
        json.dumps(body)[:-1] + ', "x_deep": ' + "[" * arrays + "1" + "]" * arrays + "}"
    ).encode()


@pytest.mark.parametrize("path", [CHAT, EMBEDDINGS])
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_body_that_is_not_its_content_encoding_is_a_400(
    gateway: GatewayProcess, api_key: dict[str, Any], upstream: Upstream, path: str, encoding: str
) -> None:
    body, marker = marked({}, VALID[path])
    plain = json.dumps(body).encode()
    answer = send(gateway, "POST", path, plain, api_key["key"], {"Content-Encoding": encoding})
    err = assert_refused(answer, None, "invalid_json")
    assert encoding in err["message"]
    assert_nothing_reached(upstream, marker)
    # the same body, encoded as it says, goes through
    packed = gzip.compress(plain) if encoding == "gzip" else _deflate(plain)
    status, _, _ = send(
        gateway, "POST", path, packed, api_key["key"], {"Content-Encoding": encoding}
    )
    assert status == 200
    sent = [r["body"] for r in upstream.received() if marker.encode() in r["raw"]]
    assert len(sent) == 1 and sent[0]["x_probe"] == marker


def test_after_a_bad_gzip_body_the_connection_closes_cleanly(
    gateway: GatewayProcess, api_key: dict[str, Any]
) -> None:
    """The rest of such a body cannot be read past: the 400 says `Connection: close`,
    the gateway closes the connection, and logs no traceback for it."""
    log_before = len(gateway.log_text())
    body = json.dumps(VALID[CHAT]).encode()
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {api_key['key']}\r\n"
        f"Content-Type: application/json\r\nContent-Encoding: gzip\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    reply = b""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=DEADLINE_S) as sock:
        sock.sendall(head + body)
        while piece := sock.recv(65536):  # until the gateway closes the connection
            reply += piece
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 400 Bad Request"
    headers = rest.partition(b"\r\n\r\n")[0].lower()
    assert b"connection: close" in headers and b"x-request-id: req_" in headers
    rid = headers.split(b"x-request-id: ")[1].split(b"\r\n")[0].decode()
    wait_for(lambda: gateway.log_lines_for(rid), message=f"the log line of {rid}")
    assert "Traceback" not in gateway.log_text()[log_before:]


@pytest.mark.parametrize("path", [CHAT, EMBEDDINGS])
@pytest.mark.parametrize("levels", [255, 300, 1023, 1100])
def test_a_body_nested_too_deep_is_a_400(
    gateway: GatewayProcess, api_key: dict[str, Any], upstream: Upstream, path: str, levels: int
) -> None:
    """The body object is level 1, so `x_deep` holds `levels - 1` arrays."""
    body, marker = marked({}, VALID[path])
    answer = send(gateway, "POST", path, with_deep_field(body, levels - 1), api_key["key"])
    assert_refused(answer, None, "invalid_json")
    assert_nothing_reached(upstream, marker)


@pytest.mark.parametrize("path", [CHAT, EMBEDDINGS])
def test_a_body_254_levels_deep_still_reaches_the_upstream_untouched(
    gateway: GatewayProcess, api_key: dict[str, Any], upstream: Upstream, path: str
) -> None:
    body, marker = marked({"x_deep": nested(253)}, VALID[path])
    status, _, reply = send(gateway, "POST", path, json.dumps(body).encode(), api_key["key"])
    assert status == 200, reply
    sent = [r["body"] for r in upstream.received() if marker.encode() in r["raw"]]
    assert len(sent) == 1 and sent[0]["x_deep"] == body["x_deep"]


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v1/models/gpt%2F4", "model_not_found"),
        ("/v1/models/%00", "model_not_found"),
        ("/v1/models/%C3%BC", "model_not_found"),
        ("/v1/models/%FF", "model_not_found"),
        ("/v1/models/" + "x" * 3000, "model_not_found"),
        ("/v1/models/..%2F..%2Fadmin%2Fkeys", "model_not_found"),
        ("/v1/models/%20", "model_not_found"),
        ("/v1/models/prometheus-lite%0A", "model_not_found"),
        ("/v1/models/PROMETHEUS-LITE", "model_not_found"),
        ("/v1/models/prometheus-lite/extra", "not_found"),
        ("/v1/models/", "not_found"),
    ],
)
def test_odd_model_ids_are_a_404(
    gateway: GatewayProcess, api_key: dict[str, Any], path: str, code: str
) -> None:
    answer = send(gateway, "GET", path, key=api_key["key"])
    if code == "model_not_found":
        assert_refused(answer, "model", code, status=404, says="does not exist")
    else:
        assert_refused(answer, None, code, status=404, says="Unknown path")


def test_a_valid_body_reaches_the_upstream_exactly_as_sent(
    gateway: GatewayProcess, api_key: dict[str, Any], upstream: Upstream
) -> None:
    """Every checked field, with valid values and nulls, and unknown fields: the
    upstream gets the same body, only `model` renamed."""
    marker = f"probe-{uuid.uuid4().hex}"
    body = {
        "model": "prometheus-lite",
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "system", "content": [{"type": "text", "text": "Answer in English."}]},
            {
                "role": "user",
                "name": "ada",
                "content": [
                    {"type": "text", "text": "What is in this image, and the weather?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://x.test/a.png", "detail": "low"},
                    },
                    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                    {"type": "file", "file": {"file_id": "file-1"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
            {"role": "user", "content": marker},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "The weather in a city.",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                    "strict": None,
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "weather", "schema": {"type": "object"}, "strict": True},
        },
        "stream": False,
        "stream_options": None,
        "n": 1,
        "max_tokens": 50,
        "max_completion_tokens": 50,
        "temperature": 0,
        "top_p": 1,
        "frequency_penalty": -0.5,
        "presence_penalty": None,
        "logprobs": False,
        "top_logprobs": 0,
        "parallel_tool_calls": True,
        "seed": -7,
        "stop": ["\n\n", "END"],
        "user": "u-17",
        "x_vendor_flag": {"nested": [1, 2.5, None, "s", {"deep": [[[]]]}]},
        "metadata": {"team": "core"},
    }
    status, _, reply = send(gateway, "POST", CHAT, json.dumps(body).encode(), api_key["key"])
    assert status == 200, reply
    sent = [r["body"] for r in upstream.received() if marker.encode() in r["raw"]]
    assert sent == [{**body, "model": "up-lite"}]


@pytest.mark.parametrize(
    "inp",
    ["hello", ["a", "b"], [0, 1, 2], [[1, 2], [3]], ["x"] * 2048],
    ids=["string", "strings", "token_ids", "token_lists", "2048_strings"],
)
def test_valid_embeddings_reach_the_upstream_exactly_as_sent(
    gateway: GatewayProcess, api_key: dict[str, Any], upstream: Upstream, inp: Any
) -> None:
    body, marker = marked(
        {"input": inp, "dimensions": 4, "encoding_format": "float", "user": "u", "x_n": None},
        VALID[EMBEDDINGS],
    )
    status, _, reply = send(gateway, "POST", EMBEDDINGS, json.dumps(body).encode(), api_key["key"])
    assert status == 200, reply
    sent = [r["body"] for r in upstream.received() if marker.encode() in r["raw"]]
    assert sent == [{**body, "model": "up-embed"}]


# -- the local counter ----------------------------------------------------------


def _deep_python(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = [value]
    return value


ODD_CHAT_BODIES: list[Any] = [
    None,
    7,
    "messages",
    [],
    {},
    {"messages": "hello"},
    {"messages": [1, None, "x", []]},
    {"messages": [{"role": "user", "content": {"text": "hi"}, "name": 7}]},
    {"messages": [{"content": [{"type": "text", "text": 5}, {"type": "text"}, "x", 3, None]}]},
    {"messages": [{"content": "hi", "name": ["x"], "tool_calls": _deep_python(400)}]},
    {"messages": [USER], "tools": _deep_python(400)},
    {"messages": [USER], "tools": [1, {"a": 1.5}]},
]


@pytest.mark.parametrize("body", ODD_CHAT_BODIES, ids=[str(i) for i in range(len(ODD_CHAT_BODIES))])
def test_the_chat_counter_returns_a_number_for_any_body(body: Any) -> None:
    from proxy.metering import tokens

    count = tokens.count_chat_input(body)
    assert isinstance(count, int) and count >= 3


def test_the_chat_counter_counts_the_text_beside_what_it_cannot_read() -> None:
    from proxy.metering import tokens

    good = {"type": "text", "text": "hello there, general kenobi"}
    clean = tokens.count_chat_input({"messages": [{"role": "user", "content": [good]}]})
    odd = tokens.count_chat_input(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}, good]}]}
    )
    assert odd == clean > 6


@pytest.mark.parametrize(
    ("inp", "expected"),
    [
        (None, 0),
        (1.5, 0),
        ({"a": "b"}, 0),
        ([], 0),
        ([True, None, {}, 2.5], 0),
        ([1, 2, 3], 3),
        ([[1, 2], [3, "x", None]], 3),
        ([[["deep"]]], 0),
        (_deep_python(5000), 0),
    ],
    ids=lambda v: type(v).__name__,
)
def test_the_embeddings_counter_returns_a_number_for_any_input(inp: Any, expected: int) -> None:
    from proxy.metering import tokens

    assert tokens.count_embedding_input(inp) == expected


def test_the_embeddings_counter_counts_text_and_token_ids_beside_odd_items() -> None:
    from proxy.metering import tokens

    hello = tokens.count_embedding_input("hello world")
    assert hello > 0
    mixed = ["hello world", [7, 8, "x"], 9, None, {"a": 1}, _deep_python(5000)]
    assert tokens.count_embedding_input(mixed) == hello + 3
