"""Provider `sim` in-process: the engine's answers as `Reply` objects, directly.

The engine writes the alias as `model` and emits the usage chunk only when the
client asked for it, so nothing is parsed or rewritten on the way; usage,
text so far and the first-content moment come from the engine's plan.
`deployment.ttft_ms` and `tokens_per_second` set its pace. Transcriptions come
from `proxy.providers.sim.transcription`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson

from proxy.config.model import Deployment
from proxy.http.errors import GatewayError
from proxy.providers.base import (
    ChatRequest,
    EmbeddingsRequest,
    FailedReply,
    Reply,
    TranscriptionReply,
    TranscriptionRequest,
    Usage,
)
from proxy.providers.sim.embeddings import embed
from proxy.providers.sim.engine import (
    ChatPlan,
    SimError,
    chat_completion,
    chat_stream,
    validate_chat,
)
from proxy.providers.sim.transcription import reply_object


def _refused(err: SimError) -> FailedReply:
    return FailedReply(
        err.status, GatewayError(err.status, err.message, code=err.code, param=err.param)
    )


class SimBodyReply(Reply):
    def __init__(self, payload: bytes, usage: Usage) -> None:
        self._payload = payload
        self.usage = usage

    async def body(self) -> bytes:
        return self._payload


class SimStreamReply(Reply):
    def __init__(self, plan: ChatPlan, stream: AsyncIterator[bytes]) -> None:
        self._plan = plan
        self._stream = stream

    async def chunks(self) -> AsyncIterator[bytes]:
        plan = self._plan
        async for chunk in self._stream:
            if self.first_content_at is None:
                self.first_content_at = plan.first_content_at
            if plan.finished:
                self.ended = self.complete = True
                self.usage = Usage(plan.prompt_tokens, plan.completion_tokens)
            yield chunk

    def text(self) -> str:
        return "".join(self._plan.content_pieces[: self._plan.pieces_sent])

    def close(self) -> None:
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            asyncio.ensure_future(aclose())


class SimTranscriptionReply(TranscriptionReply):
    def __init__(self, payload: bytes, seconds: float) -> None:
        self._payload = payload
        self.audio_seconds = seconds

    async def body(self) -> bytes:
        return self._payload


class SimProvider:
    async def chat(self, deployment: Deployment, request: ChatRequest) -> Reply:
        try:
            prompt_tokens = validate_chat(request.body)
        except SimError as err:
            return _refused(err)
        plan = ChatPlan(request.body, prompt_tokens)
        if request.stream:
            stream = chat_stream(
                plan,
                request.alias,
                deployment.ttft_ms,
                deployment.tokens_per_second,
                request.include_usage,
            )
            return SimStreamReply(plan, stream)
        delay = deployment.ttft_ms / 1000.0
        if deployment.tokens_per_second > 0:
            delay += plan.completion_tokens / deployment.tokens_per_second
        if delay > 0:
            await asyncio.sleep(delay)
        payload = orjson.dumps(chat_completion(plan, request.alias))
        return SimBodyReply(payload, Usage(plan.prompt_tokens, plan.completion_tokens))

    async def embeddings(self, deployment: Deployment, request: EmbeddingsRequest) -> Reply:
        if deployment.ttft_ms > 0:
            await asyncio.sleep(deployment.ttft_ms / 1000.0)
        try:
            # up to a second of work at OpenAI's limits: not on the event loop
            payload, tokens = await asyncio.to_thread(embed, request.body, request.alias)
        except SimError as err:
            return _refused(err)
        return SimBodyReply(payload, Usage(tokens, 0))

    async def transcription(self, deployment: Deployment, request: TranscriptionRequest) -> Reply:
        if deployment.ttft_ms > 0:
            await asyncio.sleep(deployment.ttft_ms / 1000.0)
        data, seconds = reply_object(request)
        return SimTranscriptionReply(orjson.dumps(data), seconds)

    async def close(self) -> None:
        return None
