"""Sending a request to an OpenAI-compatible upstream.

A pass-through: the request body keeps every field the client sent, only
`model` becomes the deployment's upstream name, and streams get
`stream_options.include_usage = true` so that usage is always reported. The
upstream gets the deployment's own key, never the client's. One shared
`aiohttp.ClientSession` per process keeps connections alive (at most
`MAX_CONNECTIONS`). The answer goes back as one of
`proxy.providers.openai.replies`, or a `FailedReply`.

Redirects are not followed (a 307 would re-send the prompt elsewhere); an
answer that does not begin within `first_byte_timeout_s` is a timeout, and
`total_timeout_s` bounds the whole exchange; a stream request answered with
anything but an event stream is a bad reply.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
from yarl import URL

from proxy.config.model import Deployment
from proxy.http import errors
from proxy.providers.base import (
    ChatRequest,
    EmbeddingsRequest,
    FailedReply,
    Reply,
    TranscriptionRequest,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.providers.openai.errors import upstream_error
from proxy.providers.openai.replies import (
    MIB,
    EmbeddingsReply,
    JsonChatReply,
    SseChatReply,
    read_all,
)
from proxy.providers.openai.transcription import post_transcription

MAX_CONNECTIONS = 1024  # upstream connections per process, all deployments together
ERROR_BODY_LIMIT = 1 * MIB  # an error answer is read up to this, no further


class _Prepared:
    """What a request needs per deployment and endpoint that never changes: built once."""

    __slots__ = ("deployment", "headers", "timeout", "urls")

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment  # held so that the id() key stays this object's
        headers = {"Content-Type": "application/json"}
        if deployment.api_key:
            headers["Authorization"] = f"Bearer {deployment.api_key}"
        self.headers = headers
        self.timeout = aiohttp.ClientTimeout(
            total=deployment.total_timeout_s,
            sock_connect=deployment.connect_timeout_s,
            sock_read=deployment.timeout_s,
        )
        self.urls: dict[str, URL] = {}

    def url(self, endpoint: str) -> URL:
        url = self.urls.get(endpoint)
        if url is None:
            url = self.urls[endpoint] = URL(f"{self.deployment.base_url}/{endpoint}")
        return url


class OpenAIProvider:
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

    async def _post(
        self, deployment: Deployment, endpoint: str, body: dict[str, Any]
    ) -> aiohttp.ClientResponse:
        prep = self._prepare(deployment)
        try:
            async with asyncio.timeout(deployment.first_byte_timeout_s):
                return await self._get_session().post(
                    prep.url(endpoint),
                    data=orjson.dumps(body),
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
        """An answer that is not a success: what the client sees if no other
        deployment takes the request."""
        if resp.status < 400:  # a redirect (not followed) or an informational status
            resp.close()
            err = errors.upstream_error(f"upstream answered {resp.status} (not followed)")
            return FailedReply(502, err)
        retry_after = resp.headers.get("Retry-After")
        raw = await read_all(resp, ERROR_BODY_LIMIT)
        err = upstream_error(resp.status, raw, retry_after, deployment.api_key)
        failed = FailedReply(resp.status, err, retry_after)
        millis = resp.headers.get("retry-after-ms")
        if millis is not None:
            failed.client_headers = {"retry-after-ms": millis}
        return failed

    @staticmethod
    def _not_sse(resp: aiohttp.ClientResponse) -> FailedReply | None:
        if resp.content_type == "text/event-stream":
            return None
        resp.close()
        detail = f"a stream request answered with {resp.content_type}"
        return FailedReply(502, errors.upstream_bad_reply(detail))

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
            return self._not_sse(resp) or SseChatReply(
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
        prep = self._prepare(deployment)
        url = prep.url("audio/transcriptions")
        session = self._get_session()
        return await post_transcription(
            session, url, prep.timeout, deployment, request, self._failed
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
