"""What a request is expected to use, before it is sent: the `tpm` reservation
and the budget's in-flight estimate that `proxy.auth.admission` makes.

Prompt tokens are counted with tiktoken (the deployment's encoding) and images
by OpenAI's tile formula, both by `proxy.metering.tokens.count_chat_input`
(which the meter's local counts use too); the reply is expected to use what
the request asks at most (`max_completion_tokens`, `max_tokens`, times `n`),
else `DEFAULT_OUTPUT_TOKENS`. The meter settles the reservation with the real
usage afterwards, so an estimate only has to be close.

Counting runs on the event loop once the encoding is loaded and the prompt is
short (a few microseconds; the estimate is returned at once, no coroutine),
on a worker thread otherwise (returned as an awaitable: the first count of a
process loads the encoding, ~0.5 s; a long prompt takes longer to encode).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from proxy.metering import tokens

DEFAULT_OUTPUT_TOKENS = 256
INLINE_CHARS = 8192  # prompts up to this size are counted on the loop
_loaded: set[str] = set()  # encodings this process has loaded


@dataclass(frozen=True, slots=True)
class Estimate:
    input_tokens: int = 0
    output_tokens: int = 0
    audio_seconds: float = 0.0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def output_tokens(body: dict[str, Any]) -> int:
    most = _int(body.get("max_completion_tokens")) or _int(body.get("max_tokens"))
    choices = _int(body.get("n")) or 1
    return (most or DEFAULT_OUTPUT_TOKENS) * choices


def _inline(size: int, encoding: str) -> bool:
    return encoding in _loaded and size <= INLINE_CHARS


async def _in_thread(work: Callable[[], int], encoding: str) -> int:
    counted = await asyncio.to_thread(work)
    _loaded.add(encoding)
    return counted


def _content_size(body: dict[str, Any]) -> int:
    size = 0
    for msg in body.get("messages") or ():
        content = msg.get("content") if isinstance(msg, dict) else None
        size += len(content) if isinstance(content, str) else len(str(content or ""))
    return size


def chat_estimate(body: dict[str, Any], encoding: str) -> Estimate | Awaitable[Estimate]:
    """The estimate at once (a short prompt, the encoding loaded), else an
    awaitable that counts on a worker thread."""
    if _inline(_content_size(body), encoding):
        prompt = tokens.count_chat_input(body, encoding)
        return Estimate(prompt, output_tokens(body))

    async def in_thread() -> Estimate:
        prompt = await _in_thread(lambda: tokens.count_chat_input(body, encoding), encoding)
        return Estimate(prompt, output_tokens(body))

    return in_thread()


def embeddings_estimate(inp: Any, encoding: str) -> Estimate | Awaitable[Estimate]:
    size = len(inp) if isinstance(inp, str) else sum(len(str(x)) for x in inp)
    if _inline(size, encoding):
        return Estimate(tokens.count_embedding_input(inp, encoding), 0)

    async def in_thread() -> Estimate:
        count = await _in_thread(lambda: tokens.count_embedding_input(inp, encoding), encoding)
        return Estimate(count, 0)

    return in_thread()
