"""An Anthropic-shaped upstream for tests/test_anthropic.py: `POST /v1/messages`.

It checks what it receives the way Anthropic's Messages API does, and answers
a request it would refuse with Anthropic's 400 (`invalid_request_error`),
noting the reason in `.problems` (the tests assert it stays empty):
headers (`x-api-key`, else 401; `anthropic-version`; JSON; no bearer
`Authorization`), no unknown top-level field, `model`, `max_tokens`, turns
that alternate starting with a user turn, non-empty content, known block
types in the right turn (`tool_use` from the assistant, `tool_result` in the
next user turn naming a `tool_use` id, first in that turn), image sources,
`system`, `tools`/`tool_choice`, ranges of `temperature`/`top_p`,
`stop_sequences`, and `thinking` (budget >= 1024 and < `max_tokens`, never
with a forced tool, a temperature but 1 or a top_p under 0.95). It records
every request (path, headers, body).

Replies are real-shaped: the text is `REPLY_WORDS` words (cut by
`max_tokens`, or before a word that is a stop sequence); with tools, a text
block and a `tool_use` block (`TOOL_ID`, input `TOOL_INPUT`); a forced tool
answers with that tool (`JSON_INPUT`); with `thinking`, a thinking block
first. Streams are the real event sequence (`message_start`, pings,
`content_block_*`, `input_json_delta` fragments, `message_delta`,
`message_stop`), each event written in two pieces cut mid-event, with pauses.

Magic words in the last user text: `__status_NNN__` (529, 429 with
`retry-after: 13`, 400, 401, 500) answers that error; `__slow_first__` sends
the stream's start at once and its text after `SLOW_FIRST_S`; `__cache__` reports
`CACHE_READ` cache reads and `CACHE_WRITE` cache writes; `__stream_error__`
sends an `overloaded_error` event after two words; `__cut__` drops the
connection after two words; `__hold_after_3__` streams three words (and,
with tools, the tool call's start and its first fragment `HOLD_FRAGMENT`),
then nothing until the client leaves. The model `claude-overloaded` always
answers 529.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import orjson
from aiohttp import web
from threaded_server import ThreadedServer

ANTHROPIC_KEY = "sk-ant-test-secret-0123"
API_VERSION = "2023-06-01"
REPLY_WORDS = 12
CACHE_READ, CACHE_WRITE = 100, 20
TOOL_ID = "toolu_01A09q90qw90lq917835lq9"
TOOL_TEXT = "Let me check."
TOOL_INPUT = {"city": "Paris", "days": 3}
TOOL_FRAGMENTS = ('{"city": ', '"Paris", "da', 'ys": 3}')
HOLD_FRAGMENT = TOOL_FRAGMENTS[0]
JSON_INPUT = {"answer": "forty-two"}
THINKING = "The user wants words; words it is."
PAUSE_S = 0.002
HOLD_MAX_S = 60.0

TOP_LEVEL = {
    "model",
    "messages",
    "max_tokens",
    "system",
    "tools",
    "tool_choice",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "stream",
    "metadata",
    "thinking",
}
MEDIA_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}


def reply_words(n: int) -> list[str]:
    vocab = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    return [("" if i == 0 else " ") + vocab[i % len(vocab)] for i in range(n)]


def input_tokens(body: dict[str, Any]) -> int:
    """Words of every text block and of the system prompt, plus 7."""
    words = 0
    for turn in body.get("messages") or ():
        for block in turn.get("content") or ():
            if isinstance(block, dict) and block.get("type") == "text":
                words += len(block["text"].split())
    for block in body.get("system") or ():
        if isinstance(block, dict):
            words += len(str(block.get("text", "")).split())
    return words + 7


SLOW_FIRST_S = 1.0


class Invalid(Exception):
    pass


def _check(cond: bool, why: str) -> None:
    if not cond:
        raise Invalid(why)


def _check_block(block: Any, role: str, prior_tool_ids: set[str], where: str) -> None:
    _check(isinstance(block, dict), f"{where}: a block must be an object")
    kind = block.get("type")
    if kind == "text":
        _check(isinstance(block.get("text"), str) and block["text"] != "", f"{where}: empty text")
    elif kind == "image":
        src = block.get("source") or {}
        if src.get("type") == "base64":
            _check(src.get("media_type") in MEDIA_TYPES, f"{where}: media_type")
            _check(isinstance(src.get("data"), str) and src["data"], f"{where}: data")
        else:
            _check(src.get("type") == "url", f"{where}: image source type")
            _check(str(src.get("url", "")).startswith(("http://", "https://")), f"{where}: url")
    elif kind == "document":
        _check((block.get("source") or {}).get("media_type") == "application/pdf", where)
    elif kind == "tool_use":
        _check(role == "assistant", f"{where}: tool_use outside an assistant turn")
        _check(isinstance(block.get("id"), str) and isinstance(block.get("name"), str), where)
        _check(isinstance(block.get("input"), dict), f"{where}: input must be an object")
    elif kind == "tool_result":
        _check(role == "user", f"{where}: tool_result outside a user turn")
        _check(block.get("tool_use_id") in prior_tool_ids, f"{where}: unknown tool_use_id")
    else:
        raise Invalid(f"{where}: unknown block type {kind!r}")


def validate(body: dict[str, Any]) -> None:
    extra = set(body) - TOP_LEVEL
    _check(not extra, f"{sorted(extra)}: Extra inputs are not permitted")
    _check(isinstance(body.get("model"), str) and body["model"] != "", "model: required")
    max_tokens = body.get("max_tokens")
    _check(type(max_tokens) is int and max_tokens >= 1, "max_tokens: required, >= 1")
    turns = body.get("messages")
    _check(isinstance(turns, list) and len(turns) > 0, "messages: at least one message")
    tool_ids: set[str] = set()
    for i, turn in enumerate(turns):
        role = turn.get("role")
        _check(role in ("user", "assistant"), f"messages.{i}.role")
        _check(i > 0 or role == "user", "messages: the first message must use the user role")
        _check(i == 0 or turns[i - 1]["role"] != role, f"messages.{i}: roles must alternate")
        content = turn.get("content")
        if isinstance(content, str):
            _check(content != "", f"messages.{i}: empty content")
            continue
        _check(isinstance(content, list) and content, f"messages.{i}: content must be non-empty")
        kinds = [b.get("type") for b in content if isinstance(b, dict)]
        if "tool_result" in kinds:
            first_other = next((k for k in kinds if k != "tool_result"), None)
            _check(
                first_other is None or kinds.index(first_other) > kinds.index("tool_result"),
                f"messages.{i}: tool_result blocks must come first",
            )
        for j, block in enumerate(content):
            _check_block(block, role, tool_ids, f"messages.{i}.content.{j}")
        tool_ids = {b["id"] for b in content if b.get("type") == "tool_use"}
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        _check(isinstance(system, list), "system: string or list of text blocks")
        for block in system:
            _check(block.get("type") == "text" and block.get("text"), "system: text blocks")
    tools = body.get("tools")
    names = set()
    if tools is not None:
        _check(isinstance(tools, list), "tools: list")
        for tool in tools:
            _check(set(tool) <= {"name", "description", "input_schema"}, "tools: extra fields")
            _check(isinstance(tool.get("name"), str), "tools: name")
            _check((tool.get("input_schema") or {}).get("type") == "object", "input_schema")
            names.add(tool["name"])
    choice = body.get("tool_choice")
    if choice is not None:
        _check(tools is not None, "tool_choice: only with tools")
        kind = choice.get("type")
        _check(kind in ("auto", "any", "tool", "none"), "tool_choice.type")
        _check(kind != "tool" or choice.get("name") in names, "tool_choice.name")
        _check(
            "disable_parallel_tool_use" not in choice or kind != "none",
            "tool_choice: disable_parallel_tool_use with none",
        )
        _check(set(choice) <= {"type", "name", "disable_parallel_tool_use"}, "tool_choice")
    for name in ("temperature", "top_p"):
        value = body.get(name)
        _check(value is None or 0 <= value <= 1, f"{name}: between 0 and 1")
    stops = body.get("stop_sequences")
    if stops is not None:
        _check(all(isinstance(s, str) and s.strip() for s in stops), "stop_sequences")
    thinking = body.get("thinking")
    if thinking is not None:
        budget = thinking.get("budget_tokens")
        _check(thinking.get("type") == "enabled", "thinking.type")
        _check(type(budget) is int and 1024 <= budget < max_tokens, "thinking.budget_tokens")
        forced = (choice or {}).get("type") in ("any", "tool")
        _check(not forced, "Thinking may not be enabled when tool_choice forces tool use.")
        _check(body.get("temperature") in (None, 1), "temperature may only be 1 with thinking")
        _check(body.get("top_p") is None or body["top_p"] >= 0.95, "top_p with thinking")


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Any:
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_1"}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _last_user_text(body: dict[str, Any]) -> str:
    for turn in reversed(body.get("messages") or []):
        if turn.get("role") == "user":
            return " ".join(
                b.get("text", "") for b in turn.get("content") or () if isinstance(b, dict)
            )
    return ""


def plan(body: dict[str, Any]) -> dict[str, Any]:
    """What the reply holds: blocks, stop reason, usage."""
    words = reply_words(REPLY_WORDS)
    stop_reason = "end_turn"
    for i, word in enumerate(words):
        if word.strip() in (body.get("stop_sequences") or ()):
            words, stop_reason = words[:i], "stop_sequence"
            break
    if len(words) > body["max_tokens"]:
        words, stop_reason = words[: body["max_tokens"]], "max_tokens"
    blocks: list[dict[str, Any]] = []
    if body.get("thinking"):
        blocks.append({"type": "thinking", "thinking": THINKING, "signature": "sig-abc"})
    choice = body.get("tool_choice") or {}
    if choice.get("type") == "tool":
        blocks.append(
            {"type": "tool_use", "id": TOOL_ID, "name": choice["name"], "input": JSON_INPUT}
        )
        stop_reason = "tool_use"
    elif body.get("tools") and choice.get("type") != "none":
        name = body["tools"][0]["name"]
        blocks.append({"type": "text", "text": TOOL_TEXT})
        blocks.append({"type": "tool_use", "id": TOOL_ID, "name": name, "input": TOOL_INPUT})
        stop_reason = "tool_use"
    else:
        blocks.append({"type": "text", "text": "".join(words)})
    magic = _last_user_text(body)
    cached = "__cache__" in magic
    out_tokens = sum(len(b.get("text", "").split()) for b in blocks) + 5 * (len(blocks) - 1)
    usage = {
        "input_tokens": input_tokens(body),
        "cache_creation_input_tokens": CACHE_WRITE if cached else 0,
        "cache_read_input_tokens": CACHE_READ if cached else 0,
        "output_tokens": out_tokens,
    }
    return {"blocks": blocks, "stop_reason": stop_reason, "usage": usage, "magic": magic}


def sse(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class AnthropicUpstream(ThreadedServer):
    """start() in a thread, read `.requests` and `.problems`, stop()."""

    NAME = "anthropic-upstream"

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.disconnects = 0
        self._lock = threading.Lock()

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/messages", self._messages)
        return app

    def start(self) -> AnthropicUpstream:  # type: ignore[override]  # chained in fixtures
        super().start()
        return self

    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.requests)

    def last(self) -> dict[str, Any]:
        with self._lock:
            return self.requests[-1]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.problems.clear()
            self.disconnects = 0

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        headers = dict(request.headers)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        with self._lock:
            self.requests.append({"path": request.path, "headers": headers, "body": body})
        if request.headers.get("x-api-key") != ANTHROPIC_KEY:
            return _error(401, "authentication_error", "invalid x-api-key")
        try:
            _check("authorization" not in {h.lower() for h in headers}, "a bearer header")
            _check(request.headers.get("anthropic-version") == API_VERSION, "anthropic-version")
            _check(request.content_type == "application/json", "content-type")
            _check(isinstance(body, dict), "the body must be a JSON object")
            validate(body)
        except Invalid as exc:
            with self._lock:
                self.problems.append(str(exc))
            return _error(400, "invalid_request_error", str(exc))
        reply = plan(body)
        failure = self._failure(body, reply["magic"])
        if failure is not None:
            return failure
        if body.get("stream"):
            return await self._stream(request, body, reply)
        message = {
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": reply["blocks"],
            "stop_reason": reply["stop_reason"],
            "stop_sequence": None,
            "usage": reply["usage"],
        }
        return web.Response(body=orjson.dumps(message), content_type="application/json")

    @staticmethod
    def _failure(body: dict[str, Any], magic: str) -> web.Response | None:
        if body["model"] == "claude-overloaded" or "__status_529__" in magic:
            return _error(529, "overloaded_error", "Overloaded (upstream 10.1.2.3 node 7)")
        if "__status_429__" in magic:
            headers = {"retry-after": "13"}
            return _error(429, "rate_limit_error", "Number of requests exceeded", headers)
        if "__status_400__" in magic:
            return _error(400, "invalid_request_error", "prompt is too long: 210000 tokens")
        if "__status_401__" in magic:
            return _error(401, "authentication_error", "invalid x-api-key")
        if "__status_500__" in magic:
            return _error(500, "api_error", "Internal server error at 10.1.2.3")
        return None

    async def _stream(
        self, request: web.Request, body: dict[str, Any], reply: dict[str, Any]
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        magic = reply["magic"]
        usage = reply["usage"]
        start_usage = dict(usage, output_tokens=1)
        events: list[bytes] = [
            sse(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": "msg_01StreamedReply",
                        "type": "message",
                        "role": "assistant",
                        "model": body["model"],
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": start_usage,
                    },
                },
            ),
            sse("ping", {"type": "ping"}),
        ]
        words_sent = 0
        held = False
        try:
            if "__slow_first__" in magic:  # the start and a ping at once, the text later
                await self._send(resp, events)
                await asyncio.sleep(SLOW_FIRST_S)
            for index, block in enumerate(reply["blocks"]):
                for event in self._block_events(index, block):
                    events.append(event)
                    if block["type"] == "text" and b"text_delta" in event:
                        words_sent += 1
                    if words_sent == 2 and "__stream_error__" in magic:
                        events.append(self._overloaded())
                        await self._send(resp, events)
                        await resp.write_eof()
                        return resp
                    if words_sent == 2 and "__cut__" in magic:
                        await self._send(resp, events)
                        assert request.transport is not None
                        request.transport.abort()
                        return resp
                    if (
                        "__hold_after_3__" in magic
                        and not held
                        and self._hold_here(body, words_sent, event)
                    ):
                        held = True
                        await self._send(resp, events)
                        await _until_the_client_leaves(request)
                await self._send(resp, events)
            events.append(
                sse(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": reply["stop_reason"], "stop_sequence": None},
                        "usage": {"output_tokens": usage["output_tokens"]},
                    },
                )
            )
            events.append(sse("message_stop", {"type": "message_stop"}))
            await self._send(resp, events)
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            with self._lock:
                self.disconnects += 1
            raise
        return resp

    @staticmethod
    def _hold_here(body: dict[str, Any], words_sent: int, event: bytes) -> bool:
        """After three words; with tools, after the tool call's first fragment."""
        if body.get("tools"):
            return b'"partial_json":"{' in event
        return words_sent == 3

    @staticmethod
    def _overloaded() -> bytes:
        error = {"type": "overloaded_error", "message": "Overloaded"}
        return sse("error", {"type": "error", "error": error})

    @staticmethod
    def _block_events(index: int, block: dict[str, Any]) -> list[bytes]:
        kind = block["type"]
        start = dict(block)
        deltas: list[dict[str, Any]] = []
        if kind == "text":
            start["text"] = ""
            words = block["text"].split(" ")
            deltas = [
                {"type": "text_delta", "text": ("" if i == 0 else " ") + w}
                for i, w in enumerate(words)
            ]
        elif kind == "thinking":
            start.update(thinking="", signature="")
            deltas = [
                {"type": "thinking_delta", "thinking": block["thinking"]},
                {"type": "signature_delta", "signature": block["signature"]},
            ]
        elif kind == "tool_use":
            start["input"] = {}
            text = orjson.dumps(block["input"]).decode()
            if block["input"] == TOOL_INPUT:
                assert "".join(TOOL_FRAGMENTS) == '{"city": "Paris", "days": 3}'
                parts = ["", *TOOL_FRAGMENTS]
            else:
                parts = ["", text[:7], text[7:]]
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in parts]
        events = [
            sse(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
        ]
        for i, delta in enumerate(deltas):
            events.append(
                sse(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            )
            if i == 1:
                events.append(sse("ping", {"type": "ping"}))
        events.append(sse("content_block_stop", {"type": "content_block_stop", "index": index}))
        return events

    @staticmethod
    async def _send(resp: web.StreamResponse, events: list[bytes]) -> None:
        """Write the pending events, each in two pieces cut mid-event, with pauses."""
        for event in events:
            cut = max(1, len(event) // 3)
            await resp.write(event[:cut])
            await asyncio.sleep(PAUSE_S)
            await resp.write(event[cut:])
        events.clear()


async def _until_the_client_leaves(request: web.Request) -> None:
    deadline = time.monotonic() + HOLD_MAX_S
    while time.monotonic() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(0.01)
