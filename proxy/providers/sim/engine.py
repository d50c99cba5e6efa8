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
simulator needs no tokenizer in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

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
PIECE = re.compile(r"\w+|[^\w\s]")


class SimError(Exception):
    """A request the simulator refuses, as OpenAI would (400 and a message)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def body(self) -> bytes:
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": "invalid_request_error",
                    "param": self.param,
                    "code": None,
                }
            }
        )


def _text_of(content: Any) -> tuple[str, int]:
    """(text, number of images) of a message's content."""
    if isinstance(content, str):
        return content, 0
    text, images = [], 0
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                if part.get("type") == "text":
                    text.append(str(part.get("text", "")))
                elif part.get("type") == "image_url":
                    images += 1
    return " ".join(text), images


def prompt_tokens(messages: list[Any]) -> int:
    total = 3
    for msg in messages:
        if isinstance(msg, dict):
            text, images = _text_of(msg.get("content"))
            total += 3 + len(PIECE.findall(text)) + 85 * images
    return total


def _seed(body: dict[str, Any]) -> int:
    last = ""
    for msg in body.get("messages") or ():
        if isinstance(msg, dict) and msg.get("role") == "user":
            last = _text_of(msg.get("content"))[0]
    return int.from_bytes(hashlib.sha256(last.encode()).digest()[:4], "little")


def sample_from_schema(schema: Any, depth: int = 0) -> Any:
    """A value that satisfies a (simple) JSON schema: enough for tool arguments."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return sample_from_schema(schema[key][0], depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
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

    def __init__(self, body: dict[str, Any]) -> None:
        # progress of a stream of this plan: read by the provider's reply
        self.pieces_sent = 0
        self.first_content_at: float | None = None
        self.finished = False
        self.prompt_tokens = prompt_tokens(body.get("messages") or [])
        self.tool_name: str | None = None
        self.call_id = "call_" + secrets.token_hex(12)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        n = int(limit) if isinstance(limit, int) and limit > 0 else DEFAULT_REPLY_TOKENS
        self.finish_reason = "length" if isinstance(limit, int) and limit > 0 else "stop"
        tools = body.get("tools")
        choice = body.get("tool_choice")
        fmt = body.get("response_format")
        tools = [t for t in tools if isinstance(t, dict)] if isinstance(tools, list) else None
        if tools and choice != "none":
            tool = tools[0]
            if isinstance(choice, dict):
                wanted = (choice.get("function") or {}).get("name")
                tool = next(
                    (t for t in tools if (t.get("function") or {}).get("name") == wanted), tool
                )
            fn = tool.get("function") or {}
            self.tool_name = str(fn.get("name", "tool"))
            args = orjson.dumps(sample_from_schema(fn.get("parameters") or {})).decode()
            self.content_pieces = _pieces(args)
            self.finish_reason = "tool_calls"
        elif isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
            if fmt["type"] == "json_schema":
                schema = (fmt.get("json_schema") or {}).get("schema") or {}
                value = sample_from_schema(schema)
            else:
                value = {"reply": "".join(self._words(body, 8)).strip()}
            self.content_pieces = _pieces(orjson.dumps(value).decode())
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


def validate_chat(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise SimError("'messages' must be a non-empty array", "messages")


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
