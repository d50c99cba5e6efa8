"""The official openai SDK against a running gateway in front of a fake upstream.

Every test runs twice (conftest.py): against the gateway serving with the
compiled `_fastpath` twin, then with the pure-Python one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import openai
import pytest
from gateway_process import GatewayProcess
from upstream_app import UPSTREAM_KEY, Upstream, reply_words

HELLO = [{"role": "user", "content": "Say hello to the test suite"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}

pytestmark = pytest.mark.both_fastpath_twins


def _last_upstream_body(upstream: Upstream, path: str = "/chat/completions") -> dict[str, Any]:
    got = upstream.received(path)
    assert got, "the upstream received nothing"
    return dict(got[-1]["body"])


def test_the_gateway_streams_with_the_twin_it_was_started_with(
    gateway: GatewayProcess, client: openai.OpenAI, fastpath_twin: str
) -> None:
    pure = fastpath_twin == "pure"
    list(client.chat.completions.create(model="prometheus-lite", messages=HELLO, stream=True))
    # seen in the running gateway: the compiled twin is a shared object it maps
    compiled = sorted(f for f in gateway.mapped_files() if "/_fastpath/_sse_c." in f)
    assert bool(compiled) is not pure, (
        f"the {fastpath_twin} gateway maps {compiled or 'no'} compiled _fastpath"
    )
    # and what _fastpath says of itself in the gateway's environment and directory
    probe = subprocess.run(
        [sys.executable, "-c", "import _fastpath; print(_fastpath.IMPLEMENTATION)"],
        cwd=gateway.workdir,
        env=gateway.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == ("py" if pure else "c")


def test_streamed_text_equals_plain_text(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model="prometheus-lite", messages=HELLO)
    chunks = list(
        client.chat.completions.create(model="prometheus-lite", messages=HELLO, stream=True)
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert plain.choices[0].message.content == "".join(reply_words(12))
    assert streamed == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_model_is_the_alias_in_reply_and_every_chunk(
    client: openai.OpenAI, upstream: Upstream
) -> None:
    plain = client.chat.completions.create(model="prometheus-core", messages=HELLO)
    assert plain.model == "prometheus-core"
    assert _last_upstream_body(upstream)["model"] == "up-core"
    chunks = list(
        client.chat.completions.create(
            model="prometheus-core",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len(chunks) >= 14
    assert {c.model for c in chunks} == {"prometheus-core"}


def test_custom_alias_from_the_config_is_served(client: openai.OpenAI, upstream: Upstream) -> None:
    reply = client.chat.completions.create(model="team-custom", messages=HELLO)
    assert reply.model == "team-custom"
    assert _last_upstream_body(upstream)["model"] == "up-custom"


def test_tool_calls_pass_through(client: openai.OpenAI, upstream: Upstream) -> None:
    reply = client.chat.completions.create(
        model="prometheus-lite", messages=HELLO, tools=[WEATHER_TOOL], tool_choice="auto"
    )
    sent = _last_upstream_body(upstream)
    assert sent["tools"] == [WEATHER_TOOL]
    assert sent["tool_choice"] == "auto"
    call = reply.choices[0].message.tool_calls[0]
    assert reply.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    chunks = list(
        client.chat.completions.create(
            model="prometheus-lite", messages=HELLO, tools=[WEATHER_TOOL], stream=True
        )
    )
    args = "".join(
        tc.function.arguments or ""
        for c in chunks
        if c.choices
        for tc in (c.choices[0].delta.tool_calls or [])
    )
    assert json.loads(args) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_response_format_passes_through(client: openai.OpenAI, upstream: Upstream) -> None:
    schema = {
        "type": "json_schema",
        "json_schema": {
            "name": "answer",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"answer": {"type": "string"}},
                "required": ["answer"],
                "additionalProperties": False,
            },
        },
    }
    reply = client.chat.completions.create(
        model="prometheus-lite", messages=HELLO, response_format=schema
    )  # type: ignore[arg-type]
    assert _last_upstream_body(upstream)["response_format"] == schema
    assert json.loads(reply.choices[0].message.content or "") == {"answer": "forty-two"}


def test_unknown_fields_reach_the_upstream_unchanged(
    client: openai.OpenAI, upstream: Upstream
) -> None:
    extra = {
        "x_vendor_flag": {"nested": [1, 2.5, None, "s"]},
        "seed": 42,
        "top_p": 0.3,
        "logit_bias": {"50256": -100},
        "user": "u-17",
    }
    client.chat.completions.create(
        model="prometheus-lite", messages=HELLO, temperature=0.2, extra_body=extra
    )
    sent = _last_upstream_body(upstream)
    for field, value in extra.items():
        assert sent[field] == value
    assert sent["temperature"] == 0.2
    assert sent["messages"] == HELLO


def test_upstream_gets_its_own_key_never_the_clients(
    client: openai.OpenAI, upstream: Upstream, api_key: dict[str, Any]
) -> None:
    upstream.clear()
    client.chat.completions.create(model="prometheus-lite", messages=HELLO)
    list(client.chat.completions.create(model="prometheus-lite", messages=HELLO, stream=True))
    client.embeddings.create(model="prometheus-atlas", input="hi")
    seen = upstream.received()
    assert len(seen) == 3
    for req in seen:
        assert req["headers"]["Authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert api_key["key"] not in json.dumps(req["headers"])
        assert api_key["key"].encode() not in req["raw"]


def test_usage_chunk_hidden_when_client_did_not_ask(
    client: openai.OpenAI, upstream: Upstream
) -> None:
    chunks = list(
        client.chat.completions.create(model="prometheus-lite", messages=HELLO, stream=True)
    )
    # the gateway asked the upstream for usage anyway ...
    assert _last_upstream_body(upstream)["stream_options"] == {"include_usage": True}
    # ... and the client does not see the usage chunk
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_usage_chunk_forwarded_when_client_asked(client: openai.OpenAI, upstream: Upstream) -> None:
    chunks = list(
        client.chat.completions.create(
            model="prometheus-lite",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert _last_upstream_body(upstream)["stream_options"] == {"include_usage": True}
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 12
    assert last.usage.prompt_tokens == len(HELLO[0]["content"].split()) + 7
    assert all(c.usage is None for c in chunks[:-1])


def test_simulator_alias_streams_and_answers(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model="prometheus-pulse", messages=HELLO, max_tokens=20)
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="prometheus-pulse", messages=HELLO, max_tokens=20, stream=True
        )
        if c.choices
    )
    assert plain.model == "prometheus-pulse"
    assert plain.choices[0].message.content
    assert streamed == plain.choices[0].message.content
    assert plain.usage is not None and plain.usage.completion_tokens > 0


def test_simulator_tool_calls_and_json(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="prometheus-pulse", messages=HELLO, tools=[WEATHER_TOOL]
    )
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments), dict)
    reply = client.chat.completions.create(
        model="prometheus-pulse", messages=HELLO, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)


@pytest.mark.parametrize(
    "inp", ["one two three", ["one two", "three"], [[1, 2, 3], [4, 5]], [101, 102, 103]]
)
def test_embeddings_inputs(client: openai.OpenAI, upstream: Upstream, inp: Any) -> None:
    reply = client.embeddings.create(model="prometheus-atlas", input=inp, encoding_format="float")
    assert reply.model == "prometheus-atlas"
    sent = _last_upstream_body(upstream, "/embeddings")
    assert sent["input"] == inp and sent["model"] == "up-embed"
    expected = 1 if isinstance(inp, str) or isinstance(inp[0], int) else len(inp)
    assert len(reply.data) == expected
    assert all(len(d.embedding) == 8 for d in reply.data)


def test_embeddings_base64_default_and_dimensions(
    client: openai.OpenAI, upstream: Upstream
) -> None:
    # the SDK asks for base64 by default and decodes it back to floats
    reply = client.embeddings.create(model="prometheus-atlas", input="hello", dimensions=5)
    sent = _last_upstream_body(upstream, "/embeddings")
    assert sent["encoding_format"] == "base64"
    assert sent["dimensions"] == 5
    assert reply.data[0].embedding == pytest.approx([0.001 * (j + 1) for j in range(5)], rel=1e-5)


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    for alias in (
        "prometheus-spark",
        "prometheus-lite",
        "prometheus-core",
        "prometheus-vision",
        "prometheus-pulse",
        "prometheus-surge",
        "prometheus-atlas",
        "prometheus-echo",
    ):
        assert alias in ids
    assert "team-custom" in ids
    model = client.models.retrieve("prometheus-core")
    assert model.id == "prometheus-core" and model.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-nonexistent")


def test_async_client_streams_too(gateway: GatewayProcess, api_key: dict[str, Any]) -> None:
    import asyncio

    async def run() -> str:
        aclient = openai.AsyncOpenAI(
            base_url=gateway.base_url, api_key=api_key["key"], max_retries=0
        )
        stream = await aclient.chat.completions.create(
            model="prometheus-lite", messages=HELLO, stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await aclient.close()
        return text

    assert asyncio.run(run()) == "".join(reply_words(12))
