"""Sending a chat request to Anthropic's Messages API.

The client's OpenAI body is translated (`request.translate`; a body that has
no Messages form is the client's 400 before anything is sent) and posted to
`{base_url}/v1/messages` (`base_url` may end in `/v1` or not) with the
deployment's own key as `x-api-key` and `anthropic-version`. The answer comes
back as a `replies.MessagesReply` or `MessagesStreamReply`, or a
`FailedReply` (`errors.upstream_error`). Anthropic has no embeddings: that
operation is a 400 saying so.

The transport is `proxy.providers.upstream_http`, the OpenAI provider's too:
one session per process, redirects not followed, the deployment's timeouts,
and a stream request answered with anything but an event stream is a bad
reply.
"""

from __future__ import annotations

from collections.abc import Awaitable

import orjson
from yarl import URL

from proxy.config.model import Deployment
from proxy.http import errors
from proxy.http.errors import GatewayError
from proxy.providers.anthropic.errors import upstream_error
from proxy.providers.anthropic.replies import MessagesReply, MessagesStreamReply
from proxy.providers.anthropic.request import Untranslatable, translate
from proxy.providers.base import (
    ChatRequest,
    EmbeddingsRequest,
    FailedReply,
    Reply,
    TranscriptionRequest,
    UpstreamAnswer,
)
from proxy.providers.upstream_http import UpstreamHttp, failed_reply, not_an_event_stream

API_VERSION = "2023-06-01"


def messages_url(base_url: str) -> URL:
    base = base_url.rstrip("/")
    return URL(f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages")


def _headers(deployment: Deployment) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "anthropic-version": API_VERSION,
        "x-api-key": deployment.api_key,
    }


class AnthropicProvider:
    def __init__(self) -> None:
        self._http = UpstreamHttp(_headers)
        self._urls: dict[str, URL] = {}

    def _post(self, deployment: Deployment, payload: bytes) -> Awaitable[UpstreamAnswer]:
        url = self._urls.get(deployment.base_url)
        if url is None:
            url = self._urls[deployment.base_url] = messages_url(deployment.base_url)
        return self._http.post(deployment, url, payload)

    @staticmethod
    async def _failed(resp: UpstreamAnswer, deployment: Deployment) -> FailedReply:
        return await failed_reply(resp, deployment, upstream_error)

    async def chat(self, deployment: Deployment, request: ChatRequest) -> Reply:
        try:
            translated = translate(request.body, deployment.model)
        except Untranslatable as exc:
            return FailedReply(400, errors.invalid_param(exc.param, exc.message))
        resp = await self._post(deployment, orjson.dumps(translated.body))
        if not 200 <= resp.status < 300:
            return await self._failed(resp, deployment)
        if not request.stream:
            return MessagesReply(resp, request.alias, deployment, translated.json_tool)
        return not_an_event_stream(resp) or MessagesStreamReply(
            resp, request.alias, deployment, translated.json_tool, request.include_usage
        )

    async def embeddings(self, deployment: Deployment, request: EmbeddingsRequest) -> Reply:
        message = (
            f"The model '{request.alias}' is served by Anthropic, which has no embeddings "
            "endpoint: use an embeddings model."
        )
        err = GatewayError(400, message, code="model_not_supported", param="model")
        return FailedReply(400, err)

    async def transcription(self, deployment: Deployment, request: TranscriptionRequest) -> Reply:
        message = (
            f"The model '{request.alias}' is served by Anthropic, which has no transcription "
            "endpoint: use a transcription model."
        )
        err = GatewayError(400, message, code="model_not_supported", param="model")
        return FailedReply(400, err)

    async def close(self) -> None:
        await self._http.close()
