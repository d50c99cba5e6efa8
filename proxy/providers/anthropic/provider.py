"""Sending a chat request to Anthropic's Messages API.

The client's OpenAI body is translated (`request.translate`; a body that has
no Messages form is the client's 400 before anything is sent) and posted to
`{base_url}/v1/messages` (`base_url` may end in `/v1` or not) with the
deployment's own key as `x-api-key` and `anthropic-version`. The answer comes
back as a `replies.MessagesReply` or `MessagesStreamReply`, or a
`FailedReply` (`errors.upstream_error`). Anthropic has no embeddings: that
operation is a 400 saying so.

The transport rules are the OpenAI provider's: one shared session per process
(at most `MAX_CONNECTIONS`), redirects not followed, `first_byte_timeout_s`
until the answer begins and `total_timeout_s` for the whole exchange, a stream
request answered with anything but an event stream is a bad reply.
"""

from __future__ import annotations

import asyncio

import aiohttp
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
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.providers.openai.replies import MIB, read_all

API_VERSION = "2023-06-01"
MAX_CONNECTIONS = 1024  # upstream connections per process, all deployments together
ERROR_BODY_LIMIT = 1 * MIB


def messages_url(base_url: str) -> URL:
    base = base_url.rstrip("/")
    return URL(f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages")


class _Prepared:
    """What never changes per deployment: built once."""

    __slots__ = ("deployment", "headers", "timeout", "url")

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment  # held so that the id() key stays this object's
        self.headers = {
            "Content-Type": "application/json",
            "anthropic-version": API_VERSION,
            "x-api-key": deployment.api_key,
        }
        self.timeout = aiohttp.ClientTimeout(
            total=deployment.total_timeout_s, sock_connect=10, sock_read=deployment.timeout_s
        )
        self.url = messages_url(deployment.base_url)


class AnthropicProvider:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._prepared: dict[int, _Prepared] = {}

    def _prepare(self, deployment: Deployment) -> _Prepared:
        prep = self._prepared.get(id(deployment))
        if prep is None or prep.deployment is not deployment:
            prep = self._prepared[id(deployment)] = _Prepared(deployment)
        return prep

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=MAX_CONNECTIONS, ttl_dns_cache=300, keepalive_timeout=60
                ),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def _post(self, deployment: Deployment, payload: bytes) -> aiohttp.ClientResponse:
        prep = self._prepare(deployment)
        try:
            async with asyncio.timeout(deployment.first_byte_timeout_s):
                return await self._get_session().post(
                    prep.url,
                    data=payload,
                    headers=prep.headers,
                    timeout=prep.timeout,
                    allow_redirects=False,
                )
        except TimeoutError as exc:
            raise UpstreamTimeout(f"no answer within {deployment.first_byte_timeout_s} s") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(str(exc) or type(exc).__name__) from exc

    @staticmethod
    async def _failed(resp: aiohttp.ClientResponse, deployment: Deployment) -> FailedReply:
        if resp.status < 400:  # a redirect (not followed) or an informational status
            resp.close()
            err = errors.upstream_error(f"upstream answered {resp.status} (not followed)")
            return FailedReply(502, err)
        retry_after = resp.headers.get("retry-after")
        raw = await read_all(resp, ERROR_BODY_LIMIT)
        err = upstream_error(resp.status, raw, retry_after, deployment.api_key)
        return FailedReply(resp.status, err, retry_after)

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
        if resp.content_type != "text/event-stream":
            resp.close()
            detail = f"a stream request answered with {resp.content_type}"
            return FailedReply(502, errors.upstream_bad_reply(detail))
        return MessagesStreamReply(
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
        if self._session is not None:
            await self._session.close()
