"""Sending a request to an OpenAI-compatible upstream.

A pass-through: the request body keeps every field the client sent, only
`model` becomes the deployment's upstream name, and streams get
`stream_options.include_usage = true` so that usage is always reported. The
upstream gets the deployment's own key, never the client's. Requests go
through `proxy.providers.upstream_http` (one session, no redirects, the
deployment's timeouts); the answer goes back as one of
`proxy.providers.openai.replies`, or a `FailedReply` (a stream request
answered with anything but an event stream is a bad reply).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import orjson
from yarl import URL

from proxy.config.model import Deployment
from proxy.providers.base import (
    ChatRequest,
    EmbeddingsRequest,
    FailedReply,
    Reply,
    TranscriptionRequest,
    UpstreamAnswer,
)
from proxy.providers.openai.errors import upstream_error
from proxy.providers.openai.replies import EmbeddingsReply, JsonChatReply, SseChatReply
from proxy.providers.openai.transcription import post_transcription
from proxy.providers.upstream_http import UpstreamHttp, failed_reply, not_an_event_stream


def _headers(deployment: Deployment) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if deployment.api_key:
        headers["Authorization"] = f"Bearer {deployment.api_key}"
    return headers


class OpenAIProvider:
    def __init__(self) -> None:
        self._http = UpstreamHttp(_headers)
        self._urls: dict[tuple[str, str], URL] = {}

    def _url(self, deployment: Deployment, endpoint: str) -> URL:
        key = (deployment.base_url, endpoint)
        url = self._urls.get(key)
        if url is None:
            url = self._urls[key] = URL(f"{deployment.base_url}/{endpoint}")
        return url

    def _post(
        self, deployment: Deployment, endpoint: str, body: dict[str, Any]
    ) -> Awaitable[UpstreamAnswer]:
        return self._http.post(deployment, self._url(deployment, endpoint), orjson.dumps(body))

    @staticmethod
    async def _failed(resp: UpstreamAnswer, deployment: Deployment) -> FailedReply:
        return await failed_reply(resp, deployment, upstream_error)

    async def chat(self, deployment: Deployment, request: ChatRequest) -> Reply:
        body = dict(request.body)
        body["model"] = deployment.model
        if request.stream:
            opts = body.get("stream_options")
            body["stream_options"] = {
                **(opts if isinstance(opts, dict) else {}),
                "include_usage": True,
            }
        resp = await self._post(deployment, "chat/completions", body)
        if not 200 <= resp.status < 300:
            return await self._failed(resp, deployment)
        if request.stream:
            return not_an_event_stream(resp) or SseChatReply(
                resp, request.alias, deployment, request.include_usage
            )
        return JsonChatReply(resp, request.alias, deployment)

    async def embeddings(self, deployment: Deployment, request: EmbeddingsRequest) -> Reply:
        body = dict(request.body)
        body["model"] = deployment.model
        resp = await self._post(deployment, "embeddings", body)
        if not 200 <= resp.status < 300:
            return await self._failed(resp, deployment)
        return EmbeddingsReply(resp, request.alias, deployment)

    async def transcription(self, deployment: Deployment, request: TranscriptionRequest) -> Reply:
        url = self._url(deployment, "audio/transcriptions")
        return await post_transcription(self._http, url, deployment, request, self._failed)

    async def close(self) -> None:
        await self._http.close()
