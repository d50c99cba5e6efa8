"""`provider = "anthropic"`: the official openai SDKs against aliases served by an
Anthropic-shaped upstream, through the real gateway.

`anthropic_upstream.AnthropicUpstream` checks every request the way the
Messages API does (headers and shape; `.problems` must stay empty) and
answers with real-shaped replies and event streams (pings, a streamed tool
call, events cut mid-way across writes). The gateway serves:
- prometheus-core -> it, `base_url` ending in /v1, the key from `api_key_env`;
- prometheus-lite -> it, `base_url` without /v1;
- prometheus-atlas -> it (embeddings: Anthropic has none, a 400);
- team-failover -> an always-overloaded (529) deployment first, then a good one;
- team-badkey -> it with a key it refuses (401).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from anthropic_upstream import (
    ANTHROPIC_KEY,
    API_VERSION,
    CACHE_READ,
    CACHE_WRITE,
    HOLD_FRAGMENT,
    JSON_INPUT,
    THINKING,
    TOOL_ID,
    TOOL_INPUT,
    TOOL_TEXT,
    AnthropicUpstream,
    reply_words,
    sse,
)
from gateway_process import GatewayProcess
from hypothesis import example, given, settings
from hypothesis import strategies as st
from waiting import wait_for

from proxy.metering.tokens import count_chat_input, count_text
from proxy.providers.anthropic.request import Untranslatable, translate
from proxy.providers.anthropic.stream import StreamTranslator
from proxy.providers.base import UpstreamBadReply, UpstreamUnavailable, Usage

NPM_DIR = Path(__file__).resolve().parent / "npm_anthropic"
NPM_NETWORK_ERRORS = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT")
PRICES = {"prometheus-core": (1.10, 4.40), "prometheus-lite": (0.10, 0.40)}
WORDS = "".join(reply_words(12))
HELLO = [{"role": "user", "content": "Say hello to the suite"}]  # 5 words: 12 input tokens
FORECAST_TOOL = {
    "type": "function",
    "function": {
        "name": "get_forecast",
        "description": "The weather forecast for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
# the smallest valid PNG (1x1, transparent)
PNG_1X1 = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6300010000050001a5f645400000000049454e44ae426082"
    )
).decode()


def _deployment(alias: str, base_url: str, model: str, extra: str = "") -> str:
    return (
        f'\n[[models.{alias}.deployments]]\nprovider = "anthropic"\nbase_url = "{base_url}"\n'
        f'model = "{model}"\n{extra}'
    )


def _config(base: str) -> str:
    key = f'api_key = "{ANTHROPIC_KEY}"\n'
    price = "\n[models.{}.price]\ninput_per_mtok = 2.0\noutput_per_mtok = 8.0\n"
    return (
        '[storage]\npath = "gateway.db"\n'
        + _deployment(
            "prometheus-core",
            f"{base}/v1",
            "claude-sonnet-test",
            'api_key_env = "ANTHROPIC_API_KEY"\n',
        )
        + _deployment("prometheus-lite", base, "claude-haiku-test", key)
        + _deployment(
            "team-slow-token", base, "claude-haiku-test", key + "first_token_timeout_s = 0.3\n"
        )
        + _deployment("prometheus-atlas", base, "claude-haiku-test", key)
        + _deployment("team-failover", base, "claude-overloaded", key + "weight = 1000000\n")
        + _deployment(
            "team-failover", f"{base}/v1/", "claude-haiku-test", key + "weight = 0.000001\n"
        )
        + price.format("team-failover")
        + _deployment("team-badkey", base, "claude-haiku-test", 'api_key = "sk-ant-wrong"\n')
        + price.format("team-badkey")
    )


@pytest.fixture(scope="module")
def anthropic() -> Iterator[AnthropicUpstream]:
    up = AnthropicUpstream().start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def gw(
    anthropic: AnthropicUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(
        tmp_path_factory.mktemp("anthropic"),
        _config(anthropic.base_url),
        env={"ANTHROPIC_API_KEY": ANTHROPIC_KEY},
    )
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture()
def key(gw: GatewayProcess, request: pytest.FixtureRequest) -> dict[str, Any]:
    """A key of this test's own, so that its usage rows are its alone."""
    return gw.create_key(f"a-{request.node.name[:40]}")


@pytest.fixture()
def client(gw: GatewayProcess, key: dict[str, Any], anthropic: AnthropicUpstream) -> openai.OpenAI:
    anthropic.clear()
    return openai.OpenAI(base_url=gw.base_url, api_key=key["key"], max_retries=0, timeout=30)


@pytest.fixture(autouse=True)
def _the_upstream_had_nothing_to_refuse(anthropic: AnthropicUpstream) -> Iterator[None]:
    yield
    assert anthropic.problems == [], "the gateway sent what the Messages API would refuse"


def _sent(anthropic: AnthropicUpstream) -> dict[str, Any]:
    got = anthropic.received()
    assert got, "the Anthropic upstream received nothing"
    return dict(got[-1]["body"])


def _records(gw: GatewayProcess, key_id: str, n: int = 1) -> list[dict[str, Any]]:
    cols = "request_id, status, input_tokens, output_tokens, cost_usd, usage_source, error"

    def rows() -> list[tuple[Any, ...]] | None:
        found = gw.db_rows(f"SELECT {cols} FROM requests WHERE key_id = ?", key_id)
        return found if len(found) >= n else None

    rows_found = wait_for(rows, message=f"{n} usage record(s) of key {key_id}")
    return [dict(zip(cols.split(", "), row, strict=True)) for row in rows_found]


def _cost(alias: str, tin: int, tout: int) -> float:
    pin, pout = PRICES[alias]
    return tin * pin / 1e6 + tout * pout / 1e6


# -- plain requests ----------------------------------------------------------


def test_a_plain_chat_is_a_chat_completion_and_the_request_a_messages_request(
    client: openai.OpenAI, anthropic: AnthropicUpstream, gw: GatewayProcess, key: dict[str, Any]
) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
        {"role": "user", "content": "Say hello"},
        {"role": "user", "content": [{"type": "text", "text": "to the suite"}]},
    ]
    reply = client.chat.completions.create(model="prometheus-core", messages=messages)
    assert reply.model == "prometheus-core"
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == WORDS
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    # 5 + 6 words + 7; no cache: nothing cached
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (18, 12)
    assert reply.usage.total_tokens == 30
    assert reply.usage.prompt_tokens_details.cached_tokens == 0

    got = anthropic.received()[-1]
    assert got["path"] == "/v1/messages"
    headers = {k.lower(): v for k, v in got["headers"].items()}
    assert headers["x-api-key"] == ANTHROPIC_KEY  # from api_key_env
    assert headers["anthropic-version"] == API_VERSION
    assert "authorization" not in headers  # neither the client's key nor a bearer
    body = got["body"]
    assert body["model"] == "claude-sonnet-test"
    assert body["system"] == [
        {"type": "text", "text": "You are terse."},
        {"type": "text", "text": "Answer in English."},
    ]
    # the two user messages are one user turn
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Say hello"},
                {"type": "text", "text": "to the suite"},
            ],
        }
    ]
    assert body["max_tokens"] == 4096  # the client named no limit; Messages needs one
    (record,) = _records(gw, key["id"])
    assert (record["status"], record["input_tokens"], record["output_tokens"]) == (200, 18, 12)
    assert record["usage_source"] == "upstream"
    assert record["cost_usd"] == pytest.approx(_cost("prometheus-core", 18, 12))


def test_a_base_url_without_v1_reaches_the_same_endpoint(
    client: openai.OpenAI, anthropic: AnthropicUpstream
) -> None:
    reply = client.chat.completions.create(model="prometheus-lite", messages=HELLO)
    assert reply.choices[0].message.content == WORDS
    assert reply.model == "prometheus-lite"
    got = anthropic.received()[-1]
    assert got["path"] == "/v1/messages" and got["body"]["model"] == "claude-haiku-test"


def test_sampling_parameters_and_limits_are_translated(
    client: openai.OpenAI, anthropic: AnthropicUpstream
) -> None:
    reply = client.chat.completions.create(
        model="prometheus-core",
        messages=HELLO,
        max_completion_tokens=3,
        temperature=1.7,
        top_p=0.9,
        stop="zulu",
        user="user-42",
        seed=7,
        presence_penalty=0.5,
    )
    body = _sent(anthropic)
    assert body["max_tokens"] == 3
    assert body["temperature"] == 1.0  # OpenAI's 0-2 range, Anthropic's 0-1
    assert body["top_p"] == 0.9
    assert body["stop_sequences"] == ["zulu"]
    assert body["metadata"] == {"user_id": "user-42"}
    assert "seed" not in body and "presence_penalty" not in body
    assert reply.choices[0].message.content == "".join(reply_words(3))
    assert reply.choices[0].finish_reason == "length"  # max_tokens
    reply = client.chat.completions.create(
        model="prometheus-core", messages=HELLO, max_tokens=50, stop=["delta", " "]
    )
    body = _sent(anthropic)
    assert body["max_tokens"] == 50 and body["stop_sequences"] == ["delta"]
    assert reply.choices[0].message.content == "".join(reply_words(3))
    assert reply.choices[0].finish_reason == "stop"  # stop_sequence


# -- streams -----------------------------------------------------------------


def _raw_stream(gw: GatewayProcess, key: str, body: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    req = urllib.request.Request(
        f"{gw.base_url}/chat/completions",
        data=json.dumps({**body, "stream": True}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return {k.lower(): v for k, v in resp.headers.items()}, resp.read()


def _events(raw: bytes) -> list[Any]:
    assert raw.endswith(b"data: [DONE]\n\n")
    events = []
    for block in raw.split(b"\n\n"):
        if block and block != b"data: [DONE]":
            assert block.startswith(b"data: ") and b"\n" not in block, block
            events.append(json.loads(block[6:]))
    return events


def test_a_stream_is_chat_completion_chunks_with_one_id_and_the_alias(
    gw: GatewayProcess, key: dict[str, Any], anthropic: AnthropicUpstream
) -> None:
    headers, raw = _raw_stream(gw, key["key"], {"model": "prometheus-core", "messages": HELLO})
    assert headers["content-type"].startswith("text/event-stream") and headers["x-request-id"]
    assert _sent(anthropic)["stream"] is True
    assert b"ping" not in raw and b"content_block" not in raw and b"message_" not in raw
    chunks = _events(raw)
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["id"].startswith(
        "chatcmpl-"
    )
    assert {c["model"] for c in chunks} == {"prometheus-core"}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert all(len(c["choices"]) == 1 for c in chunks)  # no usage chunk: not asked for
    assert all("usage" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == WORDS
    assert [c["choices"][0]["finish_reason"] for c in chunks[-1:]] == ["stop"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    (record,) = _records(gw, key["id"])
    assert (record["input_tokens"], record["output_tokens"]) == (12, 12)
    assert record["usage_source"] == "upstream"  # asked upstream whether or not the client did


def test_usage_with_cache_tokens_is_folded_into_prompt_tokens_and_billed(
    client: openai.OpenAI, gw: GatewayProcess, key: dict[str, Any]
) -> None:
    cached = [{"role": "user", "content": "__cache__ remember this long document"}]
    fresh = 5 + 7
    prompt = fresh + CACHE_READ + CACHE_WRITE
    reply = client.chat.completions.create(model="prometheus-core", messages=cached)
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == prompt
    assert reply.usage.prompt_tokens_details.cached_tokens == CACHE_READ
    assert reply.usage.total_tokens == prompt + 12

    last = None
    for chunk in client.chat.completions.create(
        model="prometheus-core",
        messages=cached,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.usage is not None:
            last = chunk
        else:
            assert chunk.choices, "only the usage chunk has no choices"
    assert last is not None and last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (prompt, 12)
    assert last.usage.prompt_tokens_details.cached_tokens == CACHE_READ
    records = _records(gw, key["id"], 2)
    for record in records:
        assert (record["input_tokens"], record["output_tokens"]) == (prompt, 12)
        # cache reads and writes are billed as prompt tokens at the alias's input price
        assert record["cost_usd"] == pytest.approx(_cost("prometheus-core", prompt, 12))


# -- tools -------------------------------------------------------------------


def test_a_tool_call_keeps_its_id_and_the_tool_result_goes_back_as_a_block(
    client: openai.OpenAI, anthropic: AnthropicUpstream
) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris for 3 days?"}]
    reply = client.chat.completions.create(
        model="prometheus-core", messages=ask, tools=[FORECAST_TOOL]
    )
    sent = _sent(anthropic)
    assert sent["tools"] == [
        {
            "name": "get_forecast",
            "description": "The weather forecast for a city",
            "input_schema": FORECAST_TOOL["function"]["parameters"],
        }
    ]
    assert sent["tool_choice"] == {"type": "auto"}
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == TOOL_TEXT
    (call,) = choice.message.tool_calls or []
    assert call.id == TOOL_ID and call.type == "function"
    assert call.function.name == "get_forecast"
    assert json.loads(call.function.arguments) == TOOL_INPUT

    follow_up = [
        *ask,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 C."},
        {"role": "user", "content": "And in words?"},
    ]
    reply = client.chat.completions.create(
        model="prometheus-core", messages=follow_up, tools=[FORECAST_TOOL], tool_choice="none"
    )
    assert reply.choices[0].message.content == WORDS
    sent = _sent(anthropic)
    assert sent["tool_choice"] == {"type": "none"}
    assert sent["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": TOOL_TEXT},
            {"type": "tool_use", "id": TOOL_ID, "name": "get_forecast", "input": TOOL_INPUT},
        ],
    }
    # the tool result and the next user message are one user turn, the result first
    assert sent["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": TOOL_ID, "content": "Sunny, 24 C."},
            {"type": "text", "text": "And in words?"},
        ],
    }


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get_forecast"}},
            None,
            {"type": "tool", "name": "get_forecast"},
        ),
        ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    ],
)
def test_tool_choice_and_parallel_tool_calls_are_translated(
    client: openai.OpenAI,
    anthropic: AnthropicUpstream,
    tool_choice: Any,
    parallel: bool | None,
    expected: dict[str, Any],
) -> None:
    extra: dict[str, Any] = {} if parallel is None else {"parallel_tool_calls": parallel}
    reply = client.chat.completions.create(
        model="prometheus-core",
        messages=HELLO,
        tools=[FORECAST_TOOL],
        tool_choice=tool_choice,
        **extra,
    )
    assert _sent(anthropic)["tool_choice"] == expected
    want_call = expected["type"] != "none"
    assert bool(reply.choices[0].message.tool_calls) is want_call


def test_a_streamed_tool_call_has_index_on_every_delta_and_arguments_that_parse(
    client: openai.OpenAI, gw: GatewayProcess, key: dict[str, Any]
) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris for 3 days?"}]
    text, deltas, finish, ids = "", [], None, set()
    for chunk in client.chat.completions.create(
        model="prometheus-core", messages=ask, tools=[FORECAST_TOOL], stream=True
    ):
        ids.add(chunk.id)
        assert chunk.model == "prometheus-core"
        delta = chunk.choices[0].delta
        text += delta.content or ""
        deltas += delta.tool_calls or []
        finish = chunk.choices[0].finish_reason or finish
    assert len(ids) == 1
    assert text == TOOL_TEXT and finish == "tool_calls"
    assert len(deltas) == 4  # the start, then three argument fragments
    assert all(d.index == 0 for d in deltas)
    first, rest = deltas[0], deltas[1:]
    assert (first.id, first.type, first.function.name) == (TOOL_ID, "function", "get_forecast")
    assert all(d.id is None and d.function.name is None for d in rest)
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert json.loads(arguments) == TOOL_INPUT
    (record,) = _records(gw, key["id"])
    assert record["usage_source"] == "upstream" and record["status"] == 200


def test_the_npm_sdk_streams_a_tool_call_whose_arguments_parse(
    gw: GatewayProcess, key: dict[str, Any]
) -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed on this machine")
    if not (NPM_DIR / "node_modules" / "openai").exists():
        try:
            done = subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund"],
                cwd=NPM_DIR,
                capture_output=True,
                text=True,
                timeout=300,
            )
        except subprocess.TimeoutExpired:
            pytest.skip("npm ci got no answer from the npm registry within 300 s")
        if done.returncode != 0:
            if any(code in done.stderr for code in NPM_NETWORK_ERRORS):
                pytest.skip(f"the npm registry is unreachable: {done.stderr[-300:]}")
            pytest.fail(f"npm ci failed: {done.stderr[-1000:]}")
    done = subprocess.run(
        ["node", "tool_stream.mjs", gw.base_url, key["key"], "prometheus-core"],
        cwd=NPM_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NODE_NO_WARNINGS": "1"},
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert len(seen["ids"]) == 1 and seen["models"] == ["prometheus-core"]
    deltas = seen["toolDeltas"]
    assert all(d["index"] == 0 for d in deltas)
    assert deltas[0]["id"] == TOOL_ID and deltas[0]["function"]["name"] == "get_forecast"
    assert all("id" not in d and "name" not in d["function"] for d in deltas[1:])
    final = seen["final"]["choices"][0]
    assert final["finish_reason"] == "tool_calls"
    (call,) = final["message"]["tool_calls"]
    assert call["id"] == TOOL_ID
    assert json.loads(call["function"]["arguments"]) == TOOL_INPUT


# -- images, structured output, reasoning ------------------------------------


def test_image_parts_become_base64_and_url_image_blocks(
    client: openai.OpenAI, anthropic: AnthropicUpstream
) -> None:
    content = [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1X1}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    reply = client.chat.completions.create(
        model="prometheus-core",
        messages=[{"role": "user", "content": content}],
    )
    assert reply.choices[0].message.content == WORDS
    assert _sent(anthropic)["messages"][0]["content"] == [
        {"type": "text", "text": "What is in these?"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": PNG_1X1},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


SCHEMA = {
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


def test_a_json_schema_response_format_is_a_forced_tool_answered_as_content(
    client: openai.OpenAI, anthropic: AnthropicUpstream
) -> None:
    reply = client.chat.completions.create(
        model="prometheus-core",
        messages=HELLO,
        response_format=SCHEMA,
    )
    sent = _sent(anthropic)
    assert sent["tool_choice"] == {"type": "tool", "name": "answer"}
    assert sent["tools"][0]["input_schema"] == SCHEMA["json_schema"]["schema"]
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    assert json.loads(choice.message.content or "") == JSON_INPUT

    text, finish = "", None
    for chunk in client.chat.completions.create(
        model="prometheus-core",
        messages=HELLO,
        response_format=SCHEMA,
        stream=True,
    ):
        assert not chunk.choices[0].delta.tool_calls
        text += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    assert json.loads(text) == JSON_INPUT and finish == "stop"


def test_reasoning_effort_is_a_thinking_budget_and_thinking_stays_upstream(
    client: openai.OpenAI, anthropic: AnthropicUpstream
) -> None:
    reply = client.chat.completions.create(
        model="prometheus-core", messages=HELLO, reasoning_effort="low", temperature=0.7
    )
    sent = _sent(anthropic)
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert sent["max_tokens"] > 1024
    assert "temperature" not in sent  # Anthropic refuses it with thinking
    assert reply.choices[0].message.content == WORDS
    text = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model="prometheus-core",
            messages=HELLO,
            reasoning_effort="medium",
            max_completion_tokens=3000,
            stream=True,
        )
    )
    sent = _sent(anthropic)
    assert sent["thinking"]["budget_tokens"] == 2999 and sent["max_tokens"] == 3000
    assert text == WORDS and THINKING not in text


def _raw_chat(gw: GatewayProcess, key: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        f"{gw.base_url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return json.loads(err.read())


def test_replies_chunks_and_errors_conform_to_openais_schemas(
    gw: GatewayProcess, key: dict[str, Any]
) -> None:
    # skipped, saying why, where OpenAI's OpenAPI description is absent
    from test_openapi_conformance import assert_conforms

    core = {"model": "prometheus-core", "messages": HELLO}
    tools = {**core, "tools": [FORECAST_TOOL]}
    for body in (core, tools, {**core, "response_format": SCHEMA}, {**core, "max_tokens": 2}):
        assert_conforms("CreateChatCompletionResponse", _raw_chat(gw, key["key"], body))
    for body in (core, tools):
        for options in ({}, {"stream_options": {"include_usage": True}}):
            _headers, raw = _raw_stream(gw, key["key"], {**body, **options})
            for chunk in _events(raw):
                assert_conforms("CreateChatCompletionStreamResponse", chunk)
    for magic in ("__status_529__", "__status_429__", "__status_400__"):
        error = _raw_chat(
            gw, key["key"], {**core, "messages": [{"role": "user", "content": magic}]}
        )
        assert_conforms("ErrorResponse", error)


# -- errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("magic", "status", "code"),
    [
        ("__status_529__", 503, "upstream_overloaded"),
        ("__status_429__", 429, "rate_limit_exceeded"),
        ("__status_400__", 400, None),
        ("__status_401__", 502, "upstream_auth_failed"),
        ("__status_500__", 502, "upstream_error"),
    ],
)
def test_anthropic_errors_reach_the_client_in_openai_shape(
    client: openai.OpenAI,
    gw: GatewayProcess,
    key: dict[str, Any],
    magic: str,
    status: int,
    code: str | None,
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model="prometheus-core", messages=[{"role": "user", "content": f"{magic} hi"}]
        )
    err = caught.value
    assert err.status_code == status
    assert err.response.headers.get("x-request-id")
    body = err.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert "10.1.2.3" not in err.response.text  # an upstream's 5xx message stays in the log
    if status == 429:
        assert err.response.headers["retry-after"] == "13"
        assert body["error"]["message"] == "Number of requests exceeded"
    if status == 400:
        assert body["error"]["message"] == "prompt is too long: 210000 tokens"
        assert body["error"]["type"] == "invalid_request_error"
    (record,) = _records(gw, key["id"])
    assert record["status"] == status and record["input_tokens"] == 0
    assert record["cost_usd"] == 0


def test_an_overloaded_deployment_fails_over_to_the_next(
    client: openai.OpenAI, anthropic: AnthropicUpstream, gw: GatewayProcess, key: dict[str, Any]
) -> None:
    reply = client.chat.completions.create(model="team-failover", messages=HELLO)
    assert reply.choices[0].message.content == WORDS and reply.model == "team-failover"
    assert [r["body"]["model"] for r in anthropic.received()] == [
        "claude-overloaded",
        "claude-haiku-test",
    ]
    (record,) = _records(gw, key["id"])
    assert record["status"] == 200 and record["cost_usd"] == pytest.approx(
        12 * 2.0 / 1e6 + 12 * 8.0 / 1e6
    )


def test_a_refused_deployment_key_is_the_gateways_problem(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="team-badkey", messages=HELLO)
    assert caught.value.status_code == 502
    assert caught.value.response.json()["error"]["code"] == "upstream_auth_failed"
    assert "sk-ant-wrong" not in caught.value.response.text


def test_embeddings_on_an_anthropic_alias_are_a_400_saying_why(
    client: openai.OpenAI, anthropic: AnthropicUpstream
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="prometheus-atlas", input="hello")
    error = caught.value.response.json()["error"]
    assert "Anthropic" in error["message"] and "embeddings" in error["message"]
    assert anthropic.received() == []


def test_a_body_with_no_messages_form_is_a_400_before_anything_is_sent(
    client: openai.OpenAI, anthropic: AnthropicUpstream
) -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="prometheus-core",
            messages=[{"role": "user", "content": [audio]}],
        )
    error = caught.value.response.json()["error"]
    assert error["param"] == "messages[0].content[0]" and error["code"] == "invalid_value"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="prometheus-core", messages=HELLO, n=2)
    assert anthropic.received() == []


# -- streams that end early ----------------------------------------------------


def test_a_client_that_drops_a_stream_is_billed_what_it_was_sent(
    client: openai.OpenAI, anthropic: AnthropicUpstream, gw: GatewayProcess, key: dict[str, Any]
) -> None:
    # three words, the tool call's start and its first fragment; then the upstream waits
    ask = [{"role": "user", "content": "__hold_after_3__ weather in Paris?"}]
    text, arguments = "", ""
    with client.chat.completions.create(
        model="prometheus-core", messages=ask, tools=[FORECAST_TOOL], stream=True
    ) as stream:
        for chunk in stream:
            delta = chunk.choices[0].delta
            text += delta.content or ""
            for call in delta.tool_calls or ():
                arguments += call.function.arguments or "" if call.function else ""
            if arguments:
                break
    assert (text, arguments) == (TOOL_TEXT, HOLD_FRAGMENT)
    (record,) = _records(gw, key["id"])
    assert record["status"] == 499 and record["error"] == "client_disconnected"
    assert record["usage_source"] == "local"  # Anthropic never got to its message_delta
    body = {"messages": ask, "tools": [FORECAST_TOOL]}
    assert record["output_tokens"] == count_text(TOOL_TEXT + HOLD_FRAGMENT)
    assert record["input_tokens"] == count_chat_input(body)
    assert record["cost_usd"] == pytest.approx(
        _cost("prometheus-core", record["input_tokens"], record["output_tokens"])
    )
    wait_for(lambda: anthropic.disconnects, message="the upstream to see the gateway hang up")


def test_an_error_event_mid_stream_ends_it_with_an_openai_error_event(
    gw: GatewayProcess, key: dict[str, Any]
) -> None:
    body = {
        "model": "prometheus-core",
        "messages": [{"role": "user", "content": "__stream_error__"}],
    }
    req = urllib.request.Request(
        f"{gw.base_url}/chat/completions",
        data=json.dumps({**body, "stream": True}).encode(),
        headers={"Authorization": f"Bearer {key['key']}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        raw = resp.read()
    blocks = [b for b in raw.split(b"\n\n") if b]
    *chunks, last = blocks
    error = json.loads(last[6:])["error"]
    assert error["code"] == "upstream_overloaded" and error["type"] == "api_error"
    text = "".join(json.loads(c[6:])["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "".join(reply_words(2))
    assert b"[DONE]" not in raw
    (record,) = _records(gw, key["id"])
    assert record["status"] == 502 and record["usage_source"] == "local"
    assert record["output_tokens"] == count_text(text)


def test_an_upstream_that_breaks_off_ends_the_stream_with_an_error_event(
    client: openai.OpenAI, gw: GatewayProcess, key: dict[str, Any]
) -> None:
    text = ""
    with pytest.raises(openai.APIError):
        for chunk in client.chat.completions.create(
            model="prometheus-core",
            messages=[{"role": "user", "content": "__cut__ go"}],
            stream=True,
        ):
            text += chunk.choices[0].delta.content or ""
    assert text == "".join(reply_words(2))
    (record,) = _records(gw, key["id"])
    assert record["status"] == 502 and record["error"] == "upstream_disconnected"
    assert record["output_tokens"] == count_text(text)


# -- the translation on its own (no gateway) -----------------------------------


def _recorded_stream() -> bytes:
    """A whole real-shaped Messages stream: text, a ping, a tool call, the end."""
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_01Rec",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "claude-sonnet-test",
            "usage": {"input_tokens": 9, "cache_read_input_tokens": 4, "output_tokens": 1},
        },
    }
    text = {"type": "text", "text": 'Hé "quoted" \\ text\n'}
    tool = {"type": "tool_use", "id": TOOL_ID, "name": "get_forecast", "input": TOOL_INPUT}
    end = {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {}}
    end["usage"] = {"output_tokens": 30}
    return b"".join(
        [
            sse("message_start", start),
            sse("ping", {"type": "ping"}),
            *AnthropicUpstream._block_events(0, text),
            *AnthropicUpstream._block_events(1, tool),
            sse("message_delta", end),
            sse("message_stop", {"type": "message_stop"}),
        ]
    )


def _chunks(out: bytes) -> list[Any]:
    """The chunks, without `created` (a clock reading)."""
    events = _events(out)
    for event in events:
        event.pop("created", None)
    return events


RECORDED = _recorded_stream()


def _relaid(stream: bytes, layout: str) -> bytes:
    """The same events in another layout the SSE and JSON rules allow: spaced JSON,
    data lines alone (no `event:` line), CRLF line ends."""
    if layout == "crlf":
        return stream.replace(b"\n", b"\r\n")
    events = []
    for block in stream.split(b"\n\n")[:-1]:
        name, data = block.split(b"\n")
        if layout == "spaced":
            data = b"data: " + json.dumps(json.loads(data[6:])).encode()
            events.append(name + b"\n" + data)
        else:
            events.append(data)
    return b"\n\n".join(events) + b"\n\n"


@settings(max_examples=200, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=2 * len(RECORDED)), max_size=80),
    layout=st.sampled_from(["compact", "crlf", "spaced", "data-only"]),
)
def test_the_translation_does_not_depend_on_where_the_pieces_end(
    cuts: list[int], layout: str
) -> None:
    whole = StreamTranslator("prometheus-core", True, None, 1 << 20)
    expected = _chunks(whole.feed(RECORDED))
    data = RECORDED if layout == "compact" else _relaid(RECORDED, layout)
    pieces = StreamTranslator("prometheus-core", True, None, 1 << 20)
    out, prev = b"", 0
    for cut in [*sorted({c % len(data) for c in cuts} - {0}), len(data)]:
        out += pieces.feed(data[prev:cut])
        prev = cut
    assert _chunks(out) == expected
    assert pieces.stopped and pieces.text() == whole.text()
    assert pieces.usage == whole.usage == Usage(13, 30, cached_tokens=4)


def test_each_event_goes_out_as_soon_as_it_is_complete() -> None:
    translator = StreamTranslator("prometheus-core", False, None, 1 << 20)
    first_text = RECORDED.index(b"text_delta")
    end_of_event = RECORDED.index(b"\n\n", first_text) + 2
    out = translator.feed(RECORDED[: end_of_event - 1])  # one byte short of the event
    assert b'"content":"H' not in out and translator.text() == ""
    out = translator.feed(RECORDED[end_of_event - 1 : end_of_event])
    assert b'"content":"H' in out and translator.text() == "H\u00e9"
    assert translator.usage is None  # output tokens are not known before message_delta


def test_an_event_over_the_cap_is_a_bad_reply() -> None:
    translator = StreamTranslator("prometheus-core", False, None, 1024)
    translator.feed(b'event: content_block_delta\ndata: {"type":"content_block_delta"')
    with pytest.raises(UpstreamBadReply):
        translator.feed(b" " * 2048)


def test_thinking_stays_off_where_anthropic_would_refuse_it() -> None:
    loop = {
        "messages": [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": TOOL_ID,
                        "type": "function",
                        "function": {"name": "get_forecast", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": TOOL_ID, "content": "Sunny"},
        ],
        "tools": [FORECAST_TOOL],
        "reasoning_effort": "high",
    }
    # in a tool loop Anthropic wants its earlier thinking blocks back: none to give
    assert "thinking" not in translate(loop, "m").body
    # a forced tool and thinking do not go together
    forced = {"messages": HELLO, "tools": [FORECAST_TOOL], "tool_choice": "required"}
    assert "thinking" not in translate({**forced, "reasoning_effort": "low"}, "m").body
    # nor does a budget that does not fit in the client's limit
    assert (
        "thinking"
        not in translate(
            {"messages": HELLO, "reasoning_effort": "low", "max_tokens": 500}, "m"
        ).body
    )
    assert translate({"messages": HELLO, "reasoning_effort": "high"}, "m").body["thinking"] == {
        "type": "enabled",
        "budget_tokens": 16384,
    }


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(0, 3) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)
_PART = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "file", "input_audio", "refusal"])},
    optional={
        "text": _JSON,
        "refusal": _JSON,
        "image_url": _JSON
        | st.fixed_dictionaries(
            {"url": st.sampled_from(["data:image/png;base64,AA", "data:,x", "https://a/b", "x"])}
        ),
        "file": _JSON | st.fixed_dictionaries({"file_data": st.text(max_size=40)}),
    },
)
_CALL = st.fixed_dictionaries(
    {},
    optional={
        "id": _JSON | st.just("call_1"),
        "type": st.just("function"),
        "function": _JSON
        | st.fixed_dictionaries(
            {"name": _JSON, "arguments": _JSON | st.sampled_from(["{}", '{"a": 1}', "[1]"])}
        ),
    },
)
_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "tool", "system", "developer", "function"])},
    optional={
        "content": _JSON | st.lists(_PART | _JSON, max_size=3),
        "tool_calls": _JSON | st.lists(_CALL, max_size=2),
        "tool_call_id": _JSON | st.just("call_1"),
    },
)
_EXTRA = {
    "tools": _JSON | st.lists(st.just(FORECAST_TOOL) | _JSON, max_size=2),
    "tool_choice": _JSON | st.sampled_from(["auto", "none", "required"]),
    "response_format": _JSON | st.just(SCHEMA) | st.just({"type": "json_object"}),
    "reasoning_effort": _JSON | st.sampled_from(["low", "medium", "high", "minimal"]),
    "n": st.sampled_from([1, 1, 1, 2, None]),
    "stop": _JSON,
    "max_tokens": _JSON | st.integers(1, 5000),
    "max_completion_tokens": _JSON | st.integers(1, 5000),
    "temperature": _JSON,
    "top_p": _JSON,
    "parallel_tool_calls": _JSON,
    "user": _JSON,
}


@settings(max_examples=300, deadline=None)
@given(
    messages=st.lists(_MESSAGE, min_size=1, max_size=4) | st.lists(_JSON, min_size=1, max_size=2),
    extra=st.fixed_dictionaries({}, optional=_EXTRA),
)
def test_no_client_body_breaks_the_translation(messages: list[Any], extra: dict[str, Any]) -> None:
    """Whatever the client sends, the translation answers or says 400: never a 500."""
    try:
        translated = translate({"messages": messages, **extra}, "m")
    except Untranslatable as exc:
        assert exc.param and exc.message
        return
    orjson.dumps(translated.body)


_EVENT = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
                "ping",
                "error",
            ]
        )
    },
    optional={
        "index": st.integers(0, 2) | st.lists(st.integers(0, 2), max_size=1) | _JSON,
        "message": _JSON,
        "content_block": _JSON
        | st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "tool_use", "thinking"])},
            optional={"id": _JSON, "name": _JSON | st.just("answer"), "text": _JSON},
        ),
        "delta": _JSON
        | st.fixed_dictionaries(
            {"type": st.sampled_from(["text_delta", "input_json_delta", "thinking_delta"])},
            optional={"text": _JSON, "partial_json": _JSON, "stop_reason": _JSON},
        ),
        "usage": _JSON,
        "error": _JSON,
    },
)


@settings(max_examples=300, deadline=None)
@given(events=st.lists(_EVENT | _JSON, max_size=8), json_tool=st.sampled_from([None, "answer"]))
@example(
    events=[
        {"type": "content_block_start", "index": [1], "content_block": {"type": "tool_use"}},
        {"type": "content_block_delta", "index": {}, "delta": {"partial_json": "{"}},
    ],
    json_tool=None,
)
def test_no_upstream_stream_breaks_the_translator(events: list[Any], json_tool: str | None) -> None:
    """Nonsense from the upstream is at worst a bad reply (a 502), never a gateway bug."""
    translator = StreamTranslator("prometheus-core", True, json_tool, 1 << 20)
    data = b"".join(sse(str(e.get("type")) if isinstance(e, dict) else "x", e) for e in events)
    try:
        out = translator.feed(data) + translator.finish()
    except (UpstreamBadReply, UpstreamUnavailable):
        return
    for block in out.split(b"\n\n")[:-1]:
        assert block.startswith(b"data: ")
        if block != b"data: [DONE]":
            json.loads(block[6:])


def test_an_anthropic_stream_without_a_first_token_in_time_ends_with_a_timeout_event(
    gw: GatewayProcess, client: openai.OpenAI
) -> None:
    messages = [{"role": "user", "content": "__slow_first__ take your time"}]
    with pytest.raises(openai.APIError) as caught:
        for _ in client.chat.completions.create(
            model="team-slow-token", messages=messages, stream=True
        ):
            pass
    assert "upstream" in str(caught.value).lower()
