"""An Anthropic Messages reply, as an OpenAI chat completion.

`proxy.providers.anthropic.replies` hands the upstream's JSON here; out come
the `chat.completion` bytes the client gets (the alias as `model`), the usage
and the text produced (for a local count when the usage cannot be trusted).
Text blocks become `message.content`, `tool_use` blocks `message.tool_calls`
(Anthropic's ids kept), thinking blocks are left out; the forced tool that
stands for `response_format` json_schema becomes the content again.
`stream.py` shares the finish-reason and usage rules below.

Usage: Anthropic counts cache reads and writes apart from `input_tokens`;
OpenAI's `prompt_tokens` holds them all, with the reads also in
`prompt_tokens_details.cached_tokens`. Cache writes are ordinary prompt tokens.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from proxy.providers.base import UpstreamBadReply, Usage, sane_count

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens")
_CACHE_WRITE = "cache_creation_input_tokens"


def finish_reason(stop_reason: Any, json_answer: bool) -> str:
    reason = FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"
    # the forced tool of a json_schema answer is the answer itself, not a call
    return "stop" if json_answer and reason == "tool_calls" else reason


def usage_of(raw: Any) -> Usage | None:
    """Anthropic's usage object as counts, or None when a count is not sane."""
    if not isinstance(raw, dict):
        return None
    counts = []
    for name in (*_USAGE_FIELDS, _CACHE_WRITE):
        value = raw.get(name)
        if value is None and name != "input_tokens":
            value = 0
        if not sane_count(value):
            return None
        counts.append(value)
    fresh, output, reads, writes = counts
    return Usage(fresh + reads + writes, output, cached_tokens=reads)


def openai_usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": usage.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def completion_id(message_id: Any) -> str:
    tail = message_id[4:] if isinstance(message_id, str) and message_id.startswith("msg_") else ""
    return f"chatcmpl-{tail or int(time.time() * 1000)}"


class Completion:
    """One Messages reply read: `body` for the client, `usage` and `text`."""

    __slots__ = ("body", "usage", "usage_rejected", "text")

    def __init__(self, raw: bytes, alias: str, json_tool: str | None) -> None:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UpstreamBadReply(f"not JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("content"), list):
            raise UpstreamBadReply("not a Messages reply (no content list)")
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        answered_in_json = False
        for block in data["content"]:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                texts.append(str(block.get("text") or ""))
            elif kind == "tool_use":
                arguments = orjson.dumps(block.get("input") or {}).decode()
                if json_tool is not None and block.get("name") == json_tool:
                    texts.append(arguments)
                    answered_in_json = True
                    continue
                fn = {"name": str(block.get("name")), "arguments": arguments}
                calls.append({"id": str(block.get("id")), "type": "function", "function": fn})
        content = "".join(texts)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": content if texts or not calls else None,
            "refusal": None,
        }
        if calls:
            message["tool_calls"] = calls
        reason = finish_reason(data.get("stop_reason"), answered_in_json)
        self.usage = usage_of(data.get("usage"))
        self.usage_rejected = self.usage is None and data.get("usage") is not None
        self.text = content + "".join(c["function"]["arguments"] for c in calls)
        out: dict[str, Any] = {
            "id": completion_id(data.get("id")),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": alias,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}
            ],
        }
        if self.usage is not None:
            out["usage"] = openai_usage(self.usage)
        self.body = orjson.dumps(out)
