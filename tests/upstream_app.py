"""A small OpenAI-compatible upstream for the end-to-end tests.

It answers `POST /v1/chat/completions` (plain and SSE, with pauses between
chunks), `POST /v1/embeddings`, and records every request it received
(headers and JSON body) so tests can check what the gateway sent upstream.
It runs on its own event loop in a background thread, on a free loopback port.

Behaviour is chosen by the request, the way a real upstream's would be:
- the reply text is `REPLY_WORDS` words long (or `max_tokens`, if smaller);
  the prompt's usage is the word count of all messages plus 7;
- `tools` in the request -> a tool call reply (finish_reason "tool_calls");
- `response_format` json_object/json_schema -> JSON text content;
- magic words in the last user message pick a failure:
  `__status_500__`, `__status_401__`, `__status_429__`, `__status_400__`
  answer that status in OpenAI's error shape;
  `__cut_after_3__` streams three content chunks, then drops the connection;
  `__no_usage__` never sends usage (neither in JSON nor in the stream);
  `__hold_after_3__` streams three content chunks, then sends nothing more
  until the client hangs up (at most `HOLD_MAX_S`): a client that leaves
  mid-stream has certainly been sent exactly three words;
  `__hold_until_released__` streams three content chunks, then waits until the
  test calls `Upstream.release_held()` (or the client leaves, or `HOLD_MAX_S`
  pass), then streams the rest; a non-stream reply waits likewise before it
  is sent.

`POST /v1/audio/transcriptions` answers like whisper-1 in json or
verbose_json (see `Upstream._transcriptions` for its magic words).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import math
import re
import struct
import threading
import time
from typing import Any

import mutagen
import orjson
from aiohttp import BodyPartReader, web
from threaded_server import ThreadedServer

REPLY_WORDS = 12
CHUNK_PAUSE_S = 0.004
HOLD_MAX_S = 60.0
UPSTREAM_KEY = "sk-upstream-secret"


def reply_words(n: int) -> list[str]:
    """The deterministic words of a reply of n tokens."""
    vocab = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    return [("" if i == 0 else " ") + vocab[i % len(vocab)] for i in range(n)]


def prompt_tokens(body: dict[str, Any]) -> int:
    words = 0
    for msg in body.get("messages") or []:
        content = msg.get("content")
        if isinstance(content, str):
            words += len(content.split())
    return words + 7


def _last_user_text(body: dict[str, Any]) -> str:
    for msg in reversed(body.get("messages") or []):
        if msg.get("role") == "user" and isinstance(msg.get("content"), str):
            return str(msg["content"])
    return ""


def _error(
    status: int,
    message: str,
    code: str,
    kind: str = "invalid_request_error",
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


class Upstream(ThreadedServer):
    """The fake upstream: start() in a thread, read `.requests`, stop()."""

    NAME = "fake-upstream"
    URL_SUFFIX = "/v1"

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []
        self.disconnects = 0  # streams whose client (the gateway) went away
        self._lock = threading.Lock()
        self._released: asyncio.Event | None = None  # holds of __hold_until_released__

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        return app

    # -- recording -------------------------------------------------------
    def received(self, path_suffix: str = "") -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["path"].endswith(path_suffix)]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.disconnects = 0

    async def _record(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        body = orjson.loads(raw)
        with self._lock:
            self.requests.append(
                {"path": request.path, "headers": dict(request.headers), "body": body, "raw": raw}
            )
        return body

    # -- handlers --------------------------------------------------------
    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        magic = _last_user_text(body)
        for status, code in (
            (500, "server_error"),
            (401, "invalid_api_key"),
            (429, "rate_limit_exceeded"),
            (400, "context_length_exceeded"),
        ):
            if f"__status_{status}__" in magic:
                headers = {"Retry-After": "7"} if status == 429 else None
                kind = "server_error" if status == 500 else "invalid_request_error"
                return _error(status, f"upstream says {status}", code, kind, headers)
        if "__hold_until_released__" in magic and not body.get("stream"):
            await self._until_released(request)
        n = REPLY_WORDS
        if isinstance(body.get("max_tokens"), int):
            n = min(n, body["max_tokens"])
        words = reply_words(n)
        tool_call = None
        if body.get("tools"):
            fn = body["tools"][0]["function"]["name"]
            tool_call = {
                "id": "call_abc123",
                "type": "function",
                "function": {"name": fn, "arguments": '{"city": "Paris"}'},
            }
        fmt = (body.get("response_format") or {}).get("type")
        if fmt in ("json_object", "json_schema"):
            words = ['{"answer"', ": ", '"', "forty", "-two", '"}']
        usage = {
            "prompt_tokens": prompt_tokens(body),
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens(body) + len(words),
        }
        send_usage = "__no_usage__" not in magic
        created = int(time.time())
        if not body.get("stream"):
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(words),
                "refusal": None,
            }
            finish = "stop"
            if tool_call:
                message = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [tool_call],
                    "refusal": None,
                }
                finish = "tool_calls"
            reply = {
                "id": "chatcmpl-upstream1",
                "object": "chat.completion",
                "created": created,
                "model": body["model"],
                "system_fingerprint": "fp_test",
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
                ],
                "usage": usage if send_usage else None,
            }
            if not send_usage:
                del reply["usage"]
            return web.Response(body=orjson.dumps(reply), content_type="application/json")
        return await self._stream(
            request, body, words, tool_call, usage, send_usage, magic, created
        )

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        words: list[str],
        tool_call: dict[str, Any] | None,
        usage: dict[str, int],
        send_usage: bool,
        magic: str,
        created: int,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        pause = CHUNK_PAUSE_S
        base = {
            "id": "chatcmpl-upstream2",
            "object": "chat.completion.chunk",
            "created": created,
            "model": body["model"],
            "system_fingerprint": "fp_test",
        }
        include_usage = (body.get("stream_options") or {}).get("include_usage") is True

        def event(choices: list[dict[str, Any]], usage_value: Any = None) -> bytes:
            chunk = dict(base, choices=choices)
            if include_usage:
                chunk["usage"] = usage_value
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        try:
            await resp.write(
                event(
                    [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
            )
            if tool_call:
                await resp.write(
                    event(
                        [
                            {
                                "index": 0,
                                "delta": {
                                    "tool_calls": [
                                        {
                                            "index": 0,
                                            "id": tool_call["id"],
                                            "type": "function",
                                            "function": {
                                                "name": tool_call["function"]["name"],
                                                "arguments": "",
                                            },
                                        }
                                    ]
                                },
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ]
                    )
                )
                for part in ('{"city": ', '"Paris"}'):
                    await asyncio.sleep(pause)
                    await resp.write(
                        event(
                            [
                                {
                                    "index": 0,
                                    "delta": {
                                        "tool_calls": [
                                            {"index": 0, "function": {"arguments": part}}
                                        ]
                                    },
                                    "logprobs": None,
                                    "finish_reason": None,
                                }
                            ]
                        )
                    )
                finish = "tool_calls"
            else:
                for i, word in enumerate(words):
                    await asyncio.sleep(pause)
                    if "__cut_after_3__" in magic and i == 3:
                        # drop the connection mid-stream, as a crashing upstream would
                        assert request.transport is not None
                        request.transport.abort()
                        return resp
                    if "__hold_after_3__" in magic and i == 3:
                        await _until_the_client_leaves(request)  # then the write fails
                    if "__hold_until_released__" in magic and i == 3:
                        await self._until_released(request)
                    await resp.write(
                        event(
                            [
                                {
                                    "index": 0,
                                    "delta": {"content": word},
                                    "logprobs": None,
                                    "finish_reason": None,
                                }
                            ]
                        )
                    )
                finish = "stop"
            await resp.write(
                event([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}])
            )
            if include_usage and send_usage:
                await resp.write(event([], usage))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            with self._lock:
                self.disconnects += 1
            raise
        return resp

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        inp = body["input"]
        if isinstance(inp, str) or (isinstance(inp, list) and inp and isinstance(inp[0], int)):
            inputs: list[Any] = [inp]
        else:
            inputs = list(inp)
        dims = body.get("dimensions") or 8
        data = []
        tokens = 0
        for i, item in enumerate(inputs):
            tokens += len(item.split()) if isinstance(item, str) else len(item)
            vec = [round((i + 1) * 0.001 * (j + 1), 6) for j in range(dims)]
            emb: Any = vec
            if body.get("encoding_format") == "base64":
                emb = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        reply = {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return web.Response(body=orjson.dumps(reply), content_type="application/json")

    # -- __hold_until_released__ ---------------------------------------------
    def release_held(self) -> None:
        """Let every stream held by `__hold_until_released__` go on (from any thread)."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._release)

    def _release(self) -> None:
        if self._released is not None:
            self._released.set()
        self._released = None  # streams held from now on wait for the next release

    async def _until_released(self, request: web.Request) -> None:
        if self._released is None:
            self._released = asyncio.Event()
        released = self._released
        deadline = time.monotonic() + HOLD_MAX_S
        while not released.is_set() and time.monotonic() < deadline:
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            try:
                await asyncio.wait_for(released.wait(), 0.05)
            except TimeoutError:
                continue

    async def _transcriptions(self, request: web.Request) -> web.Response:
        """Like OpenAI's whisper-1, answering json or verbose_json only (anything
        else is a 400: the gateway must make text, srt and vtt itself). Records
        the form's fields and what the file was (name, type, size, sha256),
        never holding the file: only its first `TRANSCRIPTION_HEAD` bytes are
        kept, to read its duration with mutagen. Magic words in `prompt`:
        `__status_NNN__` answers that status; `__duration_X__` reports X
        seconds whatever the file is; `__no_duration__` reports none. The model
        `whisper-broken` reads the whole file, then answers 500."""
        fields, file_info, head = await _read_transcription_form(request)
        with self._lock:
            self.requests.append(
                {
                    "path": request.path,
                    "headers": dict(request.headers),
                    "body": {"fields": fields, "file": file_info},
                    "raw": b"",
                }
            )
        form = dict(fields)
        if form.get("model") == "whisper-broken":  # a deployment that fails after the upload
            return _error(500, "upstream broke", "server_error", "server_error")
        magic = form.get("prompt", "")
        for status in (500, 401, 429, 400):
            if f"__status_{status}__" in magic:
                return _error(status, f"upstream says {status}", "audio_error")
        fmt = form.get("response_format", "json")
        if fmt not in ("json", "verbose_json"):
            return _error(400, f"this upstream does not do {fmt}", "unsupported_response_format")
        duration = _magic_duration(magic)
        if duration is None:
            duration = await asyncio.to_thread(_head_duration, head)
        words = [w.strip() for w in reply_words(6)]
        text = " ".join(words).capitalize() + "."
        usage = {"type": "duration", "seconds": math.ceil(duration)}
        if fmt == "json":
            reply: dict[str, Any] = {"text": text, "usage": usage}
        else:
            cut = [0, 2, 4, 6]
            segments = [
                {
                    "id": i,
                    "seek": 0,
                    "start": round(duration * cut[i] / 6, 3),
                    "end": round(duration * cut[i + 1] / 6, 3),
                    "text": " " + " ".join(words[cut[i] : cut[i + 1]]),
                    "tokens": [50364 + i],
                    "temperature": 0.0,
                    "avg_logprob": -0.3,
                    "compression_ratio": 1.1,
                    "no_speech_prob": 0.02,
                }
                for i in range(3)
            ]
            reply = {
                "task": "transcribe",
                "language": "english",
                "duration": duration,
                "text": text,
                "segments": segments,
                "usage": usage,
            }
            granularities = [v for k, v in fields if k == "timestamp_granularities[]"]
            if "word" in granularities:
                reply["words"] = [
                    {
                        "word": w,
                        "start": round(duration * i / 6, 3),
                        "end": round(duration * (i + 1) / 6, 3),
                    }
                    for i, w in enumerate(words)
                ]
        if "__no_duration__" in magic:
            reply.pop("duration", None)
            reply.pop("usage", None)
        return web.Response(body=orjson.dumps(reply), content_type="application/json")


TRANSCRIPTION_HEAD = 256 * 1024


async def _read_transcription_form(
    request: web.Request,
) -> tuple[list[tuple[str, str]], dict[str, Any] | None, bytes]:
    fields: list[tuple[str, str]] = []
    file_info = None
    head = bytearray()
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        assert isinstance(part, BodyPartReader)
        if part.name != "file":
            fields.append((str(part.name), await part.text()))
            continue
        size, digest = 0, hashlib.sha256()
        while chunk := await part.read_chunk(256 * 1024):
            size += len(chunk)
            digest.update(chunk)
            if len(head) < TRANSCRIPTION_HEAD:
                head += chunk[: TRANSCRIPTION_HEAD - len(head)]
        file_info = {
            "filename": part.filename,
            "content_type": part.headers.get("Content-Type"),
            "size": size,
            "sha256": digest.hexdigest(),
        }
    return fields, file_info, bytes(head)


def _magic_duration(prompt: str) -> float | None:
    found = re.search(r"__duration_([0-9.]+)__", prompt)
    return float(found.group(1)) if found else None


def _head_duration(head: bytes) -> float:
    """The duration mutagen reads from the file's first bytes (0 where it cannot)."""
    try:
        found = mutagen.File(io.BytesIO(head))
    except Exception:  # noqa: BLE001 - a test upstream: no duration is an answer too
        return 0.0
    return float(found.info.length) if found is not None else 0.0


async def _until_the_client_leaves(request: web.Request) -> None:
    """Send nothing until the client closes the connection, or HOLD_MAX_S pass."""
    deadline = time.monotonic() + HOLD_MAX_S
    while time.monotonic() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(0.01)
