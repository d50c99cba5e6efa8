"""Provider `openai`: any OpenAI-compatible upstream (OpenAI, vLLM, Ollama, ...).

A pass-through: the request body keeps every field the client sent, only
`model` becomes the deployment's upstream name, and streams get
`stream_options.include_usage = true` so that usage is always reported. The
upstream gets the deployment's own key, never the client's. One shared
`aiohttp.ClientSession` per process keeps connections alive.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from yarl import URL

from proxy.config import Deployment
from proxy.providers.base import UpstreamTimeout, UpstreamUnavailable


class HttpReply:
    __slots__ = ("_resp", "status", "retry_after")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.retry_after = resp.headers.get("Retry-After")

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except asyncio.TimeoutError as exc:
            raise UpstreamTimeout() from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(str(exc) or type(exc).__name__) from exc
        finally:
            self._resp.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except asyncio.TimeoutError as exc:
            raise UpstreamTimeout() from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(str(exc) or type(exc).__name__) from exc

    def close(self) -> None:
        self._resp.close()


class _Prepared:
    """What `send` needs per deployment and endpoint that never changes: built once."""

    __slots__ = ("deployment", "headers", "timeout", "urls")

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment  # held so that the id() key stays this object's
        headers = {"Content-Type": "application/json"}
        if deployment.api_key:
            headers["Authorization"] = f"Bearer {deployment.api_key}"
        self.headers = headers
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=10, sock_read=deployment.timeout_s
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
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60),
                json_serialize=lambda o: orjson.dumps(o).decode(),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def send(
        self, deployment: Deployment, endpoint: str, body: dict[str, Any], stream: bool
    ) -> HttpReply:
        upstream_body = dict(body)
        upstream_body["model"] = deployment.model
        if stream:
            opts = body.get("stream_options")
            upstream_body["stream_options"] = {
                **(opts if isinstance(opts, dict) else {}),
                "include_usage": True,
            }
        prep = self._prepare(deployment)
        try:
            resp = await self._get_session().post(
                prep.url(endpoint),
                data=orjson.dumps(upstream_body),
                headers=prep.headers,
                timeout=prep.timeout,
            )
        except asyncio.TimeoutError as exc:
            raise UpstreamTimeout() from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(str(exc) or type(exc).__name__) from exc
        return HttpReply(resp)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
