"""The simulator's engine: what an OpenAI-compatible model would answer, and when.

Deterministic replies (the same request gives the same text), a configurable
time to first token and token rate, tool calls when `tools` are given, JSON
when `response_format` asks for it, and embeddings of the requested
dimensions. It produces the exact bytes an OpenAI upstream would send.
`proxy.providers.sim.provider` serves it in-process (with the alias as
`model`, so nothing needs rewriting); `proxy.providers.sim.server` serves the
same engine over HTTP as a standalone upstream for load tests.

Usage it reports: one completion token per emitted chunk; prompt tokens by a
cheap word-and-punctuation count (3 per message, 3 to prime), so that the
simulator needs no tokenizer in memory. What it refuses, and that count, live
in `proxy.providers.sim.limits`: callers run `validate_chat` first, and a
`ChatPlan` never raises even on a body that skipped it.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from proxy.providers.sim.limits import (
    MAX_COMPLETION_TOKENS,
    SimError,
    text_of,
    validate_chat,
)
from proxy.providers.sim.limits import prompt_tokens as count_prompt

__all__ = ["ChatPlan", "SimError", "chat_completion", "chat_stream", "validate_chat"]

WORDS = (
    " the",
    " gateway",
    " model",
    " answers",
    " quickly",
    " and",
    " every",
    " token",
    " is",
    " metered",
    " per",
    " key",
    " with",
    " care",
    " so",
    " teams",
    " can",
    " see",
    " what",
    " they",
    " spend",
    " on",
    " each",
    " request",
    " while",
    " latency",
    " stays",
    " low",
    " for",
    " voice",
    " agents",
    " that",
    " need",
    " a",
    " fast",
    " first",
    " reply",
    " from",
    " stable",
    " aliases",
    " which",
    " never",
    " change",
    " as",
    " the",
    " family",
    " improves",
    " over",
    " time",
    " in",
    " production",
)
DEFAULT_REPLY_TOKENS = 24


def _seed(body: dict[str, Any]) -> int:
    last = ""
    messages = body.get("messages")
    for msg in messages if type(messages) is list else ():
        if type(msg) is dict and msg.get("role") == "user":
            last = text_of(msg.get("content"))[0]
    return int.from_bytes(hashlib.sha256(last.encode(errors="replace")).digest()[:4], "little")


def sample_from_schema(schema: Any, depth: int = 0) -> Any:
    """A value that satisfies a (simple) JSON schema: enough for tool arguments.

    Any JSON value is accepted as a schema; what it cannot read gives `None`."""
    if type(schema) is not dict or depth > 8:
        return None
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if type(enum) is list and enum:
        return enum[0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if type(options) is list and options:
            return sample_from_schema(options[0], depth + 1)
    kind = schema.get("type")
    if type(kind) is list:
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties")
        if type(props) is not dict:
            return {}
        return {k: sample_from_schema(v, depth + 1) for k, v in props.items()}
    if kind == "array":
        return [sample_from_schema(schema.get("items", {"type": "string"}), depth + 1)]
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "sample"


def _json_text(value: Any) -> str:
    """`value` as JSON text; "{}" for one nested past what orjson encodes (a deep `const`)."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return "{}"


def _dict(value: Any) -> dict[str, Any]:
    return value if type(value) is dict else {}


def _pieces(text: str, size: int = 4) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class ChatPlan:
    """What the simulator will answer to one chat request."""

    __slots__ = (
        "content_pieces",
        "tool_name",
        "finish_reason",
        "prompt_tokens",
        "call_id",
        "pieces_sent",
        "first_content_at",
        "finished",
    )

    def __init__(self, body: dict[str, Any], prompt_tokens: int | None = None) -> None:
        """The plan for a body that `limits.validate_chat` accepted (whose result
        `prompt_tokens` is); on any other body it still answers, never raises."""
        # progress of a stream of this plan: read by the provider's reply
        self.pieces_sent = 0
        self.first_content_at: float | None = None
        self.finished = False
        if prompt_tokens is None:
            prompt_tokens = count_prompt(body.get("messages"))
        self.prompt_tokens = prompt_tokens
        self.tool_name: str | None = None
        self.call_id = "call_" + secrets.token_hex(12)
        limit: Any = body.get("max_completion_tokens") or body.get("max_tokens")
        capped = type(limit) is int and 0 < limit <= MAX_COMPLETION_TOKENS
        n = int(limit) if capped else DEFAULT_REPLY_TOKENS
        self.finish_reason = "length" if capped else "stop"
        tools = body.get("tools")
        choice = body.get("tool_choice")
        fmt = _dict(body.get("response_format"))
        if type(tools) is list and tools and choice != "none":
            tool = _dict(tools[0])
            if type(choice) is dict:
                wanted = _dict(choice.get("function")).get("name")
                tool = next(
                    (
                        t
                        for t in map(_dict, tools)
                        if _dict(t.get("function")).get("name") == wanted
                    ),
                    tool,
                )
            fn = _dict(tool.get("function"))
            name = fn.get("name")
            self.tool_name = name if type(name) is str else "tool"
            self.content_pieces = _pieces(_json_text(sample_from_schema(fn.get("parameters"))))
            self.finish_reason = "tool_calls"
        elif fmt.get("type") in ("json_object", "json_schema"):
            if fmt["type"] == "json_schema":
                value = sample_from_schema(_dict(fmt.get("json_schema")).get("schema"))
            else:
                value = {"reply": "".join(self._words(body, 8)).strip()}
            self.content_pieces = _pieces(_json_text(value))
            self.finish_reason = "stop"
        else:
            words = self._words(body, n)
            words[0] = words[0].lstrip()
            self.content_pieces = words

    @staticmethod
    def _words(body: dict[str, Any], n: int) -> list[str]:
        seed = _seed(body)
        return [WORDS[(seed + i * 7) % len(WORDS)] for i in range(n)]

    @property
    def completion_tokens(self) -> int:
        return len(self.content_pieces)

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }


def chat_completion(plan: ChatPlan, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "annotations": [],
    }
    if plan.tool_name is not None:
        message["tool_calls"] = [
            {
                "id": plan.call_id,
                "type": "function",
                "function": {"name": plan.tool_name, "arguments": "".join(plan.content_pieces)},
            }
        ]
    else:
        message["content"] = "".join(plan.content_pieces)
    return {
        "id": "chatcmpl-sim" + secrets.token_hex(12),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": plan.finish_reason}
        ],
        "usage": plan.usage(),
        "service_tier": "default",
        "system_fingerprint": "fp_sim",
    }


async def chat_stream(
    plan: ChatPlan, model: str, ttft_ms: float, tokens_per_second: float, include_usage: bool
) -> AsyncIterator[bytes]:
    """The SSE bytes of a streamed reply, paced like a real model. The plan's
    `pieces_sent`, `first_content_at` and `finished` follow its progress."""
    head = (
        orjson.dumps(
            {
                "id": "chatcmpl-sim" + secrets.token_hex(12),
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "system_fingerprint": "fp_sim",
            }
        )[:-1]
        + b',"choices":[{"index":0,"delta":'
    )
    tail = (
        b',"logprobs":null,"finish_reason":null}]'
        + (b',"usage":null' if include_usage else b"")
        + b"}\n\n"
    )
    start = time.monotonic()
    if ttft_ms > 0:
        await asyncio.sleep(ttft_ms / 1000.0)
    if plan.tool_name is not None:
        first = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "index": 0,
                    "id": plan.call_id,
                    "type": "function",
                    "function": {"name": plan.tool_name, "arguments": ""},
                }
            ],
        }
        yield b"data: " + head + orjson.dumps(first) + tail
        piece_delta = b'{"tool_calls":[{"index":0,"function":{"arguments":'
        piece_end = b"}}]}"
    else:
        yield b"data: " + head + b'{"role":"assistant","content":"","refusal":null}' + tail
        piece_delta = b'{"content":'
        piece_end = b"}"
    first_at = time.monotonic() - start
    for i, piece in enumerate(plan.content_pieces):
        if tokens_per_second > 0:
            due = start + first_at + (i + 1) / tokens_per_second
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        plan.pieces_sent = i + 1
        if i == 0:
            plan.first_content_at = time.perf_counter()
        yield b"data: " + head + piece_delta + orjson.dumps(piece) + piece_end + tail
    finish = orjson.dumps(plan.finish_reason)
    yield (
        b"data: "
        + head
        + b'{},"logprobs":null,"finish_reason":'
        + finish
        + b"}]"
        + (b',"usage":null' if include_usage else b"")
        + b"}\n\n"
    )
    if include_usage:
        yield (
            b"data: "
            + head[: head.index(b',"choices"')]
            + b',"choices":[],"usage":'
            + orjson.dumps(plan.usage())
            + b"}\n\n"
        )
    plan.finished = True
    yield b"data: [DONE]\n\n"
