"""The one interface every provider implements, and the reply every handler reads.

The handlers in `proxy.api` build a request object (`ChatRequest`,
`EmbeddingsRequest`), `proxy.routing.failover` picks a deployment and calls the
provider's method for that operation, and gets a `Reply`. The handler reads
every reply the same way, whatever the provider: `status` and `error` (what the
client sees when the upstream said no), `body()` or `chunks()` (bytes already
in OpenAI's shape with the alias as `model`), `first_content_at` (TTFT),
`usage` once the upstream reported it, `text()` (what was produced so far, for
local counting when it did not) and `close()`. How the bytes got that shape is
the provider's business: handlers never see a wire format.

Adding an operation adds a request type and a method; the `Reply` stays as
it is. Transcription did so: `TranscriptionRequest` (the upload is read from
its spool, never whole) and `transcription()`, whose reply is a
`TranscriptionReply` (a `Reply` that may also know the upstream's
`audio_seconds`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeGuard

from multidict import CIMultiDictProxy

from proxy.config.model import Deployment
from proxy.http.errors import GatewayError


class UpstreamUnavailable(Exception):
    """The upstream could not be reached, broke the connection, or sent nonsense."""


class UpstreamBadReply(UpstreamUnavailable):
    """The upstream answered with something the gateway cannot use (not JSON, not
    SSE, over a size cap)."""


class UpstreamTimeout(Exception):
    """The upstream did not answer in time."""


class Body(Protocol):
    def iter_any(self) -> AsyncIterator[bytes]: ...


class UpstreamAnswer(Protocol):
    """What the replies read of an upstream's answer: `aiohttp.ClientResponse`
    or `proxy.providers.http1.Http1Response`."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> CIMultiDictProxy[str]: ...
    @property
    def content_type(self) -> str: ...
    @property
    def content_length(self) -> int | None: ...
    @property
    def content(self) -> Body: ...
    def release(self) -> Any: ...
    def close(self) -> None: ...


MAX_COUNT = 2**31
"""Token counts at or above this (or negative, or not integers) are no report."""


def sane_count(value: object) -> TypeGuard[int]:
    return type(value) is int and 0 <= value < MAX_COUNT


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """POST /v1/chat/completions, validated: the body as the client sent it."""

    alias: str
    body: dict[str, Any]
    stream: bool
    include_usage: bool  # the client asked for the final usage chunk


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    """POST /v1/embeddings, validated."""

    alias: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens as the upstream reported them. Cached tokens are part of the input,
    reasoning tokens part of the output (OpenAI's `*_tokens_details`)."""

    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0


class Reply:
    """An upstream's answer to one operation, as the handlers read it.

    Providers subclass it and fill in what they know; the defaults are those
    of a reply that has produced nothing yet.
    """

    status: int = 200  # the upstream's HTTP-like status
    error: GatewayError | None = None  # set when status >= 400: what the client sees
    retry_after: str | None = None
    usage: Usage | None = None  # once the upstream reported it
    usage_rejected: bool = False  # the upstream reported usage the gateway cannot trust
    first_content_at: float | None = None  # perf_counter() of the first content (streams)
    client_headers: dict[str, str] | None = None  # upstream headers the client gets too
    ended: bool = False  # stream: no more bytes will come after the current piece
    complete: bool = False  # stream: the upstream ended it properly

    async def body(self) -> bytes:
        """The whole reply for the client (non-stream operations)."""
        raise NotImplementedError

    def chunks(self) -> AsyncIterator[bytes]:
        """The reply for the client as it comes (streams)."""
        raise NotImplementedError

    def text(self) -> str:
        """The text produced so far (for local counting when `usage` is None)."""
        return ""

    def close(self) -> None:
        """Stop the upstream work now (client gone, or a failure)."""


class FailedReply(Reply):
    """The upstream said no: `error` is what the client sees if no other deployment
    can take the request."""

    def __init__(self, status: int, error: GatewayError, retry_after: str | None = None) -> None:
        self.status = status
        self.error = error
        self.retry_after = retry_after


class Provider(Protocol):
    async def chat(self, deployment: Deployment, request: ChatRequest) -> Reply: ...

    async def embeddings(self, deployment: Deployment, request: EmbeddingsRequest) -> Reply: ...

    async def close(self) -> None: ...

    async def transcription(
        self, deployment: Deployment, request: TranscriptionRequest
    ) -> Reply: ...


class AudioUpload(Protocol):
    """The uploaded audio file as providers read it (`proxy.http.multipart.Upload`)."""

    filename: str
    content_type: str
    size: int

    def chunks(self) -> AsyncIterator[bytes]:
        """The file from its first byte, piece by piece (each call starts over)."""
        ...


@dataclass(frozen=True, slots=True)
class TranscriptionRequest:
    """POST /v1/audio/transcriptions, validated.

    `fields` are the form's other fields in the client's order (`model`
    left out: providers put the deployment's own); `upstream_format` is what
    the provider asks the upstream for (`json` or `verbose_json`, see
    `proxy.api.transcript_formats`); `file_seconds` is the duration read from
    the file itself, None where its container does not say.
    """

    alias: str
    fields: tuple[tuple[str, str], ...]
    upload: AudioUpload
    response_format: str
    upstream_format: str
    file_seconds: float | None


class TranscriptionReply(Reply):
    """A transcription: `body()` is OpenAI's json or verbose_json object, and
    `audio_seconds` the duration the upstream reported (None if it did not)."""

    audio_seconds: float | None = None
