"""What the simulator refuses, before `engine` or `embeddings` does any work.

Both the in-process provider and the standalone server (`prometheus-gateway
sim`, which has no gateway in front of it) call `validate_chat` and
`validate_embeddings` first: the same parameter checks as the gateway
(`proxy.api.chat_params`, `proxy.api.embeddings_params`: the simulator plays
OpenAI, whose checks those are), then OpenAI's limits for one model, so that
no request makes the simulator work without bound:

- at most 16,384 completion tokens (`max_tokens`, `max_completion_tokens`)
  and a 128,000-token context;
- embeddings: at most 2,048 inputs (checked with the types), `dimensions` up
  to 3,072, 8,192 tokens per input and 300,000 in the whole request.

A refusal is a `SimError`: a 400 with OpenAI's message, `param` and `code`.
Token counts are the simulator's cheap ones (words and punctuation marks) and
stop as soon as a limit is passed, so a huge prompt is never split in full.
"""

from __future__ import annotations

import re
from itertools import islice
from typing import Any

import orjson

from proxy.api.chat_params import check_chat
from proxy.api.embeddings_params import check_embeddings
from proxy.http.errors import GatewayError

PIECE = re.compile(r"\w+|[^\w\s]")
MAX_COMPLETION_TOKENS = 16_384
CONTEXT_TOKENS = 128_000
MAX_DIMENSIONS = 3072
DEFAULT_DIMENSIONS = 1536
MAX_INPUT_TOKENS = 8192  # per embeddings input
MAX_REQUEST_TOKENS = 300_000  # all embeddings inputs together


class SimError(Exception):
    """A request the simulator refuses, as OpenAI would (400 and a message)."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        status: int = 400,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers: dict[str, str] = {}

    @classmethod
    def of(cls, err: GatewayError) -> SimError:
        refusal = cls(err.message, err.param, err.status, err.code)
        refusal.headers = err.headers
        return refusal

    def body(self) -> bytes:
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": "invalid_request_error",
                    "param": self.param,
                    "code": self.code,
                }
            }
        )


def count_pieces(text: str, limit: int) -> int:
    """Words and punctuation marks in `text`, counted up to `limit` + 1 at most."""
    if len(text) <= limit:  # every piece is at least one character
        return len(PIECE.findall(text))
    return sum(1 for _ in islice(PIECE.finditer(text), limit + 1))


def text_of(content: Any) -> tuple[str, int]:
    """(text, number of images) of a message's content; anything else counts nothing."""
    if type(content) is str:
        return content, 0
    text, images = [], 0
    if type(content) is list:
        for part in content:
            if type(part) is dict:
                kind = part.get("type")
                if kind == "text" and type(part.get("text")) is str:
                    text.append(part["text"])
                elif kind == "image_url":
                    images += 1
    return " ".join(text), images


def prompt_tokens(messages: Any, limit: int = CONTEXT_TOKENS) -> int:
    """The prompt's tokens (3 per message, 3 to prime, 85 per image), up to just past `limit`."""
    total = 3
    for msg in messages if type(messages) is list else ():
        if type(msg) is dict:
            text, images = text_of(msg.get("content"))
            total += 3 + 85 * images + count_pieces(text, max(0, limit - total))
            if total > limit:
                break
    return total


def validate_chat(body: dict[str, Any]) -> int:
    """Raise `SimError` for a request OpenAI would refuse; else its prompt tokens."""
    model = body.get("model")
    if model is not None and type(model) is not str:
        raise SimError("'model' must be a string.", "model", code="invalid_type")
    try:
        check_chat(body)
    except GatewayError as err:
        raise SimError.of(err) from None
    for key in ("max_completion_tokens", "max_tokens"):
        wanted = body.get(key)
        if wanted is not None and wanted > MAX_COMPLETION_TOKENS:
            raise SimError(
                f"{key} is too large: {wanted}. This model supports at most "
                f"{MAX_COMPLETION_TOKENS} completion tokens, whereas you provided {wanted}.",
                key,
                code="invalid_value",
            )
    tokens = prompt_tokens(body["messages"])
    if tokens > CONTEXT_TOKENS:
        raise SimError(
            f"This model's maximum context length is {CONTEXT_TOKENS} tokens. However, "
            "your messages resulted in more tokens. Please reduce the length of the messages.",
            "messages",
            code="context_length_exceeded",
        )
    return tokens


def validate_embeddings(body: dict[str, Any]) -> tuple[list[Any], list[int], int]:
    """Raise `SimError` for a request OpenAI would refuse; else its inputs, the
    tokens of each, and the dimensions."""
    try:
        check_embeddings(body)
    except GatewayError as err:
        raise SimError.of(err) from None
    dims = body.get("dimensions")
    if dims is None:
        dims = DEFAULT_DIMENSIONS
    elif dims > MAX_DIMENSIONS:
        raise SimError(
            f"Invalid 'dimensions': this model supports at most {MAX_DIMENSIONS} "
            f"dimensions, but got {dims} instead.",
            "dimensions",
            code="invalid_value",
        )
    inp = body["input"]
    items = [inp] if type(inp) is str or type(inp[0]) is int else inp
    counts, total = [], 0
    for item in items:
        n = count_pieces(item, MAX_INPUT_TOKENS) if type(item) is str else len(item)
        if n > MAX_INPUT_TOKENS:
            raise SimError(
                f"This model's maximum context length is {MAX_INPUT_TOKENS} tokens, "
                "however you requested more tokens in one input. Please reduce your input.",
                "input",
                code="context_length_exceeded",
            )
        total += n
        if total > MAX_REQUEST_TOKENS:
            raise SimError(
                f"Requested more than {MAX_REQUEST_TOKENS} tokens, "
                f"max {MAX_REQUEST_TOKENS} tokens per request.",
                "input",
                code="max_tokens_per_request",
            )
        counts.append(max(1, n))
    return items, counts, dims
