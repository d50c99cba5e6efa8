"""The gateway's real responses validate against OpenAI's published OpenAPI schemas.

The reference is `shared/openai-openapi.yaml` (OpenAI's own description of its
REST API). Every check here fetches raw JSON over HTTP (urllib, no SDK objects
in between) and validates it against a component schema of that document:

- `CreateChatCompletionResponse`: plain, tool-call, JSON-mode and length-capped
  replies, from the fake upstream (prometheus-lite/-core) and from the
  gateway's built-in simulator (prometheus-pulse);
- `CreateChatCompletionStreamResponse`: every SSE chunk of a stream, with and
  without `stream_options.include_usage`, with and without tool calls;
- `CreateEmbeddingResponse` (float encoding), from the fake upstream
  (prometheus-atlas) and from the simulator (a second, small gateway whose
  prometheus-atlas is the simulator). Base64 replies are left out: the spec's
  `Embedding` describes the vector as an array of floats only;
- `ErrorResponse`: 400, 401, 403, 404, 405, 413, 429 and 502 bodies, and the
  error event a broken stream ends with;
- `ListModelsResponse` / `Model`: GET /v1/models and /v1/models/{id}.

The document is OpenAPI 3.1 but still carries OpenAPI 3.0's `nullable: true`
in places; that is turned into the JSON Schema equivalent (a `null` type
union) and OpenAPI-only keywords (`x-*`, `discriminator`, `example`, ...) are
dropped. Nothing else about the schemas is changed.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from functools import cache, lru_cache
from typing import Any

import pytest
from gateway_process import SHARED, GatewayProcess

SPEC_PATH = SHARED / "openai-openapi.yaml"
if not SPEC_PATH.is_file():
    pytest.skip(
        f"OpenAI's OpenAPI description is not at {SPEC_PATH}: nothing to validate against",
        allow_module_level=True,
    )

import yaml  # noqa: E402
from jsonschema import Draft202012Validator  # noqa: E402
from referencing import Registry, Resource  # noqa: E402
from referencing.jsonschema import DRAFT202012  # noqa: E402

SPEC_URI = "urn:openai:openapi"
HELLO = [{"role": "user", "content": "hello there"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
FAKE_CHAT = ("prometheus-lite", "prometheus-core")
SIM_CHAT = "prometheus-pulse"

# -- the schemas -------------------------------------------------------------

# keys whose value maps names to schemas (the names are data, not keywords)
_SCHEMA_MAPS = {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
# OpenAPI keywords that are not JSON Schema (`x-*` extensions are dropped too)
_OPENAPI_ONLY = {"discriminator", "example", "xml", "externalDocs"}


def _to_json_schema(node: Any) -> Any:
    """One OpenAPI schema object as plain JSON Schema 2020-12."""
    if isinstance(node, list):
        return [_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _OPENAPI_ONLY or key.startswith("x-") or key == "nullable":
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _to_json_schema(sub) for name, sub in value.items()}
        else:
            out[key] = _to_json_schema(value)
    if node.get("nullable") is True:
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
        elif isinstance(kind, list):
            out["type"] = kind if "null" in kind else [*kind, "null"]
        else:  # a $ref or a combinator: null is one more alternative
            return {"anyOf": [out, {"type": "null"}]}
        if isinstance(out.get("enum"), list) and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    return out


@lru_cache(maxsize=1)
def _spec() -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with SPEC_PATH.open("rb") as fh:
        doc = yaml.load(fh, Loader=loader)  # noqa: S506 - a safe loader
    schemas = doc["components"]["schemas"]
    return {"components": {"schemas": {name: _to_json_schema(s) for name, s in schemas.items()}}}


@cache
def validator(name: str) -> Draft202012Validator:
    doc = _spec()
    if name not in doc["components"]["schemas"]:
        pytest.skip(f"{name} is not among the spec's component schemas")
    resource = Resource.from_contents(doc, default_specification=DRAFT202012)
    registry: Registry = Registry().with_resource(SPEC_URI, resource)
    return Draft202012Validator(
        {"$ref": f"{SPEC_URI}#/components/schemas/{name}"},
        registry=registry,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def assert_conforms(name: str, instance: Any, what: str = "") -> None:
    errors = sorted(validator(name).iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors[:8]:
            # anyOf/oneOf failures: say which alternative broke where
            detail = "; ".join(f"{list(c.absolute_path)}: {c.message}" for c in err.context[:6])
            lines.append(
                f"at {list(err.absolute_path)}: {err.message[:300]}"
                + (f" [{detail}]" if detail else "")
            )
        pytest.fail(
            f"{what or 'response'} does not conform to {name}:\n  "
            + "\n  ".join(lines)
            + f"\ninstance: {json.dumps(instance)[:1500]}",
            pytrace=False,
        )


def test_the_translation_keeps_null_out_unless_nullable() -> None:
    """The translation itself: nullable adds null, and nothing else admits it."""
    assert _to_json_schema({"type": "string", "enum": ["a"], "nullable": True}) == {
        "type": ["string", "null"],
        "enum": ["a", None],
    }
    assert _to_json_schema({"$ref": "#/x", "nullable": True, "x-stainless-const": True}) == {
        "anyOf": [{"$ref": "#/x"}, {"type": "null"}]
    }
    assert _to_json_schema(
        {"properties": {"nullable": {"type": "string"}, "x-name": {"type": "integer"}}}
    ) == {"properties": {"nullable": {"type": "string"}, "x-name": {"type": "integer"}}}
    stream = _spec()["components"]["schemas"]["CreateChatCompletionStreamResponse"]
    assert "null" in stream["properties"]["choices"]["items"]["properties"]["finish_reason"]["type"]
    with pytest.raises(pytest.fail.Exception):
        assert_conforms(
            "CreateChatCompletionResponse",
            {
                "id": "x",
                "object": "chat.completion",
                "created": 1,
                "model": "m",
                "choices": [],
                "usage": None,
            },
        )


# -- raw HTTP ----------------------------------------------------------------


def http(
    gateway: GatewayProcess,
    path: str,
    payload: Any = None,
    *,
    key: str | None = None,
    method: str | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    data = raw if raw is not None else (None if payload is None else json.dumps(payload).encode())
    req = urllib.request.Request(
        gateway.root_url + path, data=data, method=method or ("POST" if data is not None else "GET")
    )
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def json_of(status: int, headers: dict[str, str], body: bytes, want: int) -> Any:
    assert status == want, body[:500]
    content_type = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    assert content_type.startswith("application/json"), content_type
    return json.loads(body)


def sse_events(status: int, headers: dict[str, str], body: bytes) -> list[Any]:
    """The JSON of each `data:` event of an SSE body, checked to end in [DONE]."""
    assert status == 200, body[:500]
    content_type = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    assert content_type.startswith("text/event-stream"), content_type
    datas: list[str] = []
    for block in body.decode().replace("\r\n", "\n").split("\n\n"):
        lines = [ln for ln in block.split("\n") if ln and not ln.startswith(":")]
        if not lines:
            continue
        assert all(ln.startswith("data:") for ln in lines), block
        datas.append("\n".join(ln[5:].removeprefix(" ") for ln in lines))
    assert datas, "an empty stream"
    assert datas[-1] == "[DONE]", datas[-1][:300]
    assert "[DONE]" not in datas[:-1]
    return [json.loads(d) for d in datas[:-1]]


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": HELLO, **extra}


# -- chat completions --------------------------------------------------------

CHAT_CASES = {
    "plain": {},
    "tools": {"tools": [WEATHER_TOOL]},
    "tool_choice": {
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    },
    "json_object": {"response_format": {"type": "json_object"}},
    "json_schema": {
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "answer",
                "schema": {
                    "type": "object",
                    "properties": {"answer": {"type": "string"}},
                    "required": ["answer"],
                },
            },
        }
    },
    "max_tokens": {"max_tokens": 3},
    "max_completion_tokens": {"max_completion_tokens": 3},
}


@pytest.mark.parametrize("case", sorted(CHAT_CASES))
@pytest.mark.parametrize("model", [*FAKE_CHAT, SIM_CHAT])
def test_chat_completion(
    gateway: GatewayProcess, api_key: dict[str, Any], model: str, case: str
) -> None:
    reply = json_of(
        *http(gateway, "/v1/chat/completions", chat(model, **CHAT_CASES[case]), key=api_key["key"]),
        200,
    )
    assert_conforms("CreateChatCompletionResponse", reply, f"{model} {case} reply")
    assert reply["model"] == model
    if "tools" in CHAT_CASES[case]:
        assert reply["choices"][0]["finish_reason"] == "tool_calls"
        assert reply["choices"][0]["message"]["tool_calls"][0]["type"] == "function"


def test_chat_completion_without_upstream_usage(
    gateway: GatewayProcess, api_key: dict[str, Any]
) -> None:
    payload = {
        "model": "prometheus-lite",
        "messages": [{"role": "user", "content": "__no_usage__"}],
    }
    reply = json_of(*http(gateway, "/v1/chat/completions", payload, key=api_key["key"]), 200)
    assert_conforms("CreateChatCompletionResponse", reply, "reply without usage")


def test_chat_completion_multi_turn_with_tool_result(
    gateway: GatewayProcess, api_key: dict[str, Any]
) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
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
        {"role": "user", "content": [{"type": "text", "text": "and so?"}]},
    ]
    for model in (*FAKE_CHAT, SIM_CHAT):
        reply = json_of(
            *http(
                gateway,
                "/v1/chat/completions",
                {"model": model, "messages": messages},
                key=api_key["key"],
            ),
            200,
        )
        assert_conforms("CreateChatCompletionResponse", reply, f"{model} multi-turn reply")


# -- streams -----------------------------------------------------------------

STREAM_OPTIONS = {
    "absent": None,
    "usage_false": {"include_usage": False},
    "usage_true": {"include_usage": True},
}


@pytest.mark.parametrize("tools", [False, True], ids=["text", "tools"])
@pytest.mark.parametrize("options", sorted(STREAM_OPTIONS))
@pytest.mark.parametrize("model", [FAKE_CHAT[0], SIM_CHAT])
def test_chat_stream(
    gateway: GatewayProcess, api_key: dict[str, Any], model: str, options: str, tools: bool
) -> None:
    extra: dict[str, Any] = {"stream": True}
    if STREAM_OPTIONS[options] is not None:
        extra["stream_options"] = STREAM_OPTIONS[options]
    if tools:
        extra["tools"] = [WEATHER_TOOL]
    chunks = sse_events(
        *http(gateway, "/v1/chat/completions", chat(model, **extra), key=api_key["key"])
    )
    for i, chunk in enumerate(chunks):
        assert_conforms(
            "CreateChatCompletionStreamResponse",
            chunk,
            f"{model} stream chunk {i} of {len(chunks)}",
        )
        assert chunk["model"] == model
    want_usage = options == "usage_true"
    with_usage = [c for c in chunks if c.get("usage") is not None]
    if want_usage:
        # the spec: usage only on the last chunk, whose choices are empty
        assert with_usage == [chunks[-1]] and chunks[-1]["choices"] == []
    else:
        assert with_usage == []
    finishes = [
        ch["finish_reason"]
        for c in chunks
        for ch in c["choices"]
        if ch.get("finish_reason") is not None
    ]
    assert finishes == ["tool_calls" if tools else "stop"]
    if tools:
        calls = [
            tc for c in chunks for ch in c["choices"] for tc in ch["delta"].get("tool_calls") or ()
        ]
        assert calls and calls[0]["id"] and calls[0]["function"]["name"] == "get_weather"


@pytest.mark.parametrize("model", [FAKE_CHAT[1], SIM_CHAT])
def test_chat_stream_capped_and_json(
    gateway: GatewayProcess, api_key: dict[str, Any], model: str
) -> None:
    for extra in ({"max_tokens": 2}, {"response_format": {"type": "json_object"}}):
        chunks = sse_events(
            *http(
                gateway,
                "/v1/chat/completions",
                chat(model, stream=True, stream_options={"include_usage": True}, **extra),
                key=api_key["key"],
            )
        )
        for i, chunk in enumerate(chunks):
            assert_conforms(
                "CreateChatCompletionStreamResponse", chunk, f"{model} {extra} stream chunk {i}"
            )


def test_chat_stream_without_upstream_usage(
    gateway: GatewayProcess, api_key: dict[str, Any]
) -> None:
    payload = {
        "model": "prometheus-lite",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "__no_usage__"}],
    }
    chunks = sse_events(*http(gateway, "/v1/chat/completions", payload, key=api_key["key"]))
    for i, chunk in enumerate(chunks):
        assert_conforms("CreateChatCompletionStreamResponse", chunk, f"no-usage stream chunk {i}")


def test_broken_stream_ends_with_an_error_event(
    gateway: GatewayProcess, api_key: dict[str, Any]
) -> None:
    payload = {
        "model": "prometheus-lite",
        "stream": True,
        "messages": [{"role": "user", "content": "__cut_after_3__"}],
    }
    status, _, body = http(gateway, "/v1/chat/completions", payload, key=api_key["key"])
    assert status == 200
    events = [
        json.loads(line[5:])
        for line in body.decode().splitlines()
        if line.startswith("data:") and line[5:].strip() != "[DONE]"
    ]
    assert events and "error" in events[-1], body[-500:]
    for i, chunk in enumerate(events[:-1]):
        assert_conforms("CreateChatCompletionStreamResponse", chunk, f"cut stream chunk {i}")
    assert_conforms("ErrorResponse", events[-1], "the error event of a broken stream")


# -- embeddings --------------------------------------------------------------

EMBEDDING_INPUTS = {
    "string": {"input": "the quick brown fox"},
    "strings": {"input": ["one", "two words", "three little words"]},
    "token_ids": {"input": [101, 2023, 2003]},
    "token_id_lists": {"input": [[1, 2, 3], [4, 5]]},
    "dimensions": {"input": "short", "dimensions": 16},
    "explicit_float": {"input": ["a", "b"], "encoding_format": "float"},
}


@pytest.fixture(scope="module")
def sim_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A small gateway whose embeddings alias is the simulator (the session's is the fake)."""
    config = (
        '[storage]\npath = "gateway.db"\n\n'
        '[[models.prometheus-atlas.deployments]]\nprovider = "sim"\nttft_ms = 1\n'
    )
    gw = GatewayProcess(tmp_path_factory.mktemp("sim-gateway"), config)
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def sim_key(sim_gateway: GatewayProcess) -> str:
    return str(sim_gateway.create_key("openapi-conformance")["key"])


@pytest.mark.parametrize("case", sorted(EMBEDDING_INPUTS))
def test_embeddings_fake_upstream(
    gateway: GatewayProcess, api_key: dict[str, Any], case: str
) -> None:
    reply = json_of(
        *http(
            gateway,
            "/v1/embeddings",
            {"model": "prometheus-atlas", **EMBEDDING_INPUTS[case]},
            key=api_key["key"],
        ),
        200,
    )
    assert_conforms("CreateEmbeddingResponse", reply, f"fake-upstream embeddings ({case})")
    assert reply["model"] == "prometheus-atlas"


@pytest.mark.parametrize("case", sorted(EMBEDDING_INPUTS))
def test_embeddings_simulator(sim_gateway: GatewayProcess, sim_key: str, case: str) -> None:
    reply = json_of(
        *http(
            sim_gateway,
            "/v1/embeddings",
            {"model": "prometheus-atlas", **EMBEDDING_INPUTS[case]},
            key=sim_key,
        ),
        200,
    )
    assert_conforms("CreateEmbeddingResponse", reply, f"simulator embeddings ({case})")
    assert reply["model"] == "prometheus-atlas"


# -- models ------------------------------------------------------------------


def test_models_list_and_each_model(gateway: GatewayProcess, api_key: dict[str, Any]) -> None:
    listed = json_of(*http(gateway, "/v1/models", key=api_key["key"]), 200)
    assert_conforms("ListModelsResponse", listed, "GET /v1/models")
    ids = [m["id"] for m in listed["data"]]
    assert {*FAKE_CHAT, SIM_CHAT, "prometheus-atlas", "prometheus-surge"} <= set(ids)
    for model_id in ids:
        one = json_of(*http(gateway, f"/v1/models/{model_id}", key=api_key["key"]), 200)
        assert_conforms("Model", one, f"GET /v1/models/{model_id}")
        assert one == next(m for m in listed["data"] if m["id"] == model_id)


def test_models_list_for_a_limited_key(gateway: GatewayProcess) -> None:
    limited = gateway.create_key("openapi-lite-only", models="prometheus-lite")
    listed = json_of(*http(gateway, "/v1/models", key=limited["key"]), 200)
    assert_conforms("ListModelsResponse", listed, "GET /v1/models (limited key)")
    assert [m["id"] for m in listed["data"]] == ["prometheus-lite"]


# -- errors ------------------------------------------------------------------


def _magic(text: str, model: str = "prometheus-lite", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


# (name, method, path, payload or raw bytes, key: "good" | "none" | "bad", status)
ERROR_CASES: list[tuple[str, str, str, Any, str, int]] = [
    ("no_key", "POST", "/v1/chat/completions", chat("prometheus-lite"), "none", 401),
    ("bad_key", "POST", "/v1/chat/completions", chat("prometheus-lite"), "bad", 401),
    ("bad_key_models", "GET", "/v1/models", None, "bad", 401),
    (
        "no_key_embeddings",
        "POST",
        "/v1/embeddings",
        {"model": "prometheus-atlas", "input": "x"},
        "none",
        401,
    ),
    ("unknown_model", "POST", "/v1/chat/completions", chat("gpt-unknown"), "good", 404),
    (
        "unknown_model_stream",
        "POST",
        "/v1/chat/completions",
        chat("gpt-unknown", stream=True),
        "good",
        404,
    ),
    ("unknown_model_get", "GET", "/v1/models/gpt-unknown", None, "good", 404),
    ("unknown_path", "POST", "/v1/nothing-here", {}, "good", 404),
    ("wrong_method", "GET", "/v1/chat/completions", None, "good", 405),
    ("invalid_json", "POST", "/v1/chat/completions", b"{not json", "good", 400),
    ("not_an_object", "POST", "/v1/chat/completions", b"[1, 2]", "good", 400),
    ("missing_model", "POST", "/v1/chat/completions", {"messages": HELLO}, "good", 400),
    ("missing_messages", "POST", "/v1/chat/completions", {"model": SIM_CHAT}, "good", 400),
    (
        "empty_messages",
        "POST",
        "/v1/chat/completions",
        {"model": SIM_CHAT, "messages": []},
        "good",
        400,
    ),
    ("bad_stream_flag", "POST", "/v1/chat/completions", chat(SIM_CHAT, stream="yes"), "good", 400),
    ("wrong_endpoint", "POST", "/v1/chat/completions", chat("prometheus-atlas"), "good", 400),
    (
        "chat_alias_on_embeddings",
        "POST",
        "/v1/embeddings",
        {"model": SIM_CHAT, "input": "x"},
        "good",
        400,
    ),
    ("missing_input", "POST", "/v1/embeddings", {"model": "prometheus-atlas"}, "good", 400),
    (
        "bad_encoding",
        "POST",
        "/v1/embeddings",
        {"model": "prometheus-atlas", "input": "x", "encoding_format": "hex"},
        "good",
        400,
    ),
    ("upstream_400", "POST", "/v1/chat/completions", _magic("__status_400__"), "good", 400),
    (
        "too_large",
        "POST",
        "/v1/chat/completions",
        chat("prometheus-lite", padding="x" * (1024 * 1024 + 10)),
        "good",
        413,
    ),
    ("upstream_429", "POST", "/v1/chat/completions", _magic("__status_429__"), "good", 429),
    ("upstream_down", "POST", "/v1/chat/completions", chat("prometheus-surge"), "good", 502),
    (
        "upstream_down_stream",
        "POST",
        "/v1/chat/completions",
        chat("prometheus-surge", stream=True),
        "good",
        502,
    ),
    ("upstream_500", "POST", "/v1/chat/completions", _magic("__status_500__"), "good", 502),
    ("upstream_401", "POST", "/v1/chat/completions", _magic("__status_401__"), "good", 502),
    (
        "upstream_500_stream",
        "POST",
        "/v1/chat/completions",
        _magic("__status_500__", stream=True),
        "good",
        502,
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "payload", "key", "status"),
    [case[1:] for case in ERROR_CASES],
    ids=[c[0] for c in ERROR_CASES],
)
def test_error_body(
    gateway: GatewayProcess,
    api_key: dict[str, Any],
    method: str,
    path: str,
    payload: Any,
    key: str,
    status: int,
) -> None:
    token = {"good": api_key["key"], "bad": "prom_sk_" + "x" * 40, "none": None}[key]
    raw = payload if isinstance(payload, bytes) else None
    reply = json_of(
        *http(
            gateway, path, None if raw is not None else payload, key=token, method=method, raw=raw
        ),
        status,
    )
    assert_conforms("ErrorResponse", reply, f"{status} body of {method} {path}")


def test_error_body_not_allowed_for_key(gateway: GatewayProcess) -> None:
    limited = gateway.create_key("openapi-forbidden", models="prometheus-lite")
    for method, path, payload in (
        ("POST", "/v1/chat/completions", chat("prometheus-core")),
        ("GET", "/v1/models/prometheus-core", None),
    ):
        status, headers, body = http(gateway, path, payload, key=limited["key"], method=method)
        assert status in (403, 404), body
        assert_conforms(
            "ErrorResponse",
            json_of(status, headers, body, status),
            f"{status} body of {method} {path}",
        )


def test_error_body_from_the_simulator(sim_gateway: GatewayProcess, sim_key: str) -> None:
    """The simulator's own refusal (dimensions out of its range), relayed by the gateway."""
    status, headers, body = http(
        sim_gateway,
        "/v1/embeddings",
        {"model": "prometheus-atlas", "input": "x", "dimensions": 99999},
        key=sim_key,
    )
    assert status == 400, body
    assert_conforms("ErrorResponse", json_of(status, headers, body, 400), "simulator 400")


def test_413_before_the_body_is_read(gateway: GatewayProcess, api_key: dict[str, Any]) -> None:
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {api_key['key']}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {50 * 1024 * 1024}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(head + b'{"model": "prometheus-lite", "messages": [')
        reply = b""
        while b"\r\n\r\n" not in reply or not _complete(reply):
            piece = sock.recv(65536)
            if not piece:
                break
            reply += piece
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert_conforms("ErrorResponse", json.loads(reply.split(b"\r\n\r\n", 1)[1]), "early 413 body")


def _complete(reply: bytes) -> bool:
    head, _, body = reply.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False
