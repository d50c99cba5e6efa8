"""The HTTP transport every HTTP provider (openai, anthropic) sends through.

JSON posts (chat, embeddings) go through `proxy.providers.http1`, a lean
keep-alive HTTP/1.1 client with the request head built once per deployment;
multipart uploads (transcription) through one `aiohttp.ClientSession`. Each
keeps upstream connections alive (at most `MAX_CONNECTIONS` per provider per
process). Both answer with the same surface (`UpstreamAnswer`). A post never follows a
redirect (a 307 would re-send the prompt elsewhere); an answer that does not
begin within the deployment's `first_byte_timeout_s` is an `UpstreamTimeout`,
a connection failure an `UpstreamUnavailable`; `total_timeout_s`, the idle
`timeout_s` and `connect_timeout_s` bound the rest. What is sent, and how an
error body is read, is the provider's: it passes its headers per deployment
and its error mapper.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from yarl import URL

from proxy.config.model import Deployment
from proxy.http import errors
from proxy.http.errors import GatewayError
from proxy.providers.base import (
    FailedReply,
    UpstreamAnswer,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.providers.http1 import Head, Http1Pool
from proxy.providers.openai.replies import MIB, read_all

MAX_CONNECTIONS = 1024  # upstream connections per provider per process
ERROR_BODY_LIMIT = 1 * MIB  # an error answer is read up to this, no further

ErrorMapper = Callable[[int, bytes, "str | None", str], GatewayError]
"""(status, body, Retry-After, the deployment's credential) -> what the client sees."""


class _Prepared:
    """What a post needs per deployment that never changes: built once."""

    __slots__ = ("deployment", "headers", "timeout", "heads", "max_body")

    def __init__(self, deployment: Deployment, headers: dict[str, str]) -> None:
        self.deployment = deployment  # held so that the id() key stays this object's
        self.headers = headers
        self.timeout = aiohttp.ClientTimeout(
            total=deployment.total_timeout_s,
            sock_connect=deployment.connect_timeout_s,
            sock_read=deployment.timeout_s,
        )
        self.heads: dict[URL, Head] = {}
        self.max_body = int(deployment.max_reply_mb * MIB)

    def head(self, url: URL) -> Head:
        head = self.heads.get(url)
        if head is None:
            head = self.heads[url] = Head(url, self.headers)
        return head


class UpstreamHttp:
    def __init__(self, headers_for: Callable[[Deployment], dict[str, str]]) -> None:
        self._headers_for = headers_for
        self._session: aiohttp.ClientSession | None = None
        self._pool: Http1Pool | None = None
        self._prepared: dict[int, _Prepared] = {}

    def _prepare(self, deployment: Deployment) -> _Prepared:
        prep = self._prepared.get(id(deployment))
        if prep is None or prep.deployment is not deployment:
            prep = _Prepared(deployment, self._headers_for(deployment))
            self._prepared[id(deployment)] = prep
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

    def post(
        self,
        deployment: Deployment,
        url: URL,
        data: Any,
        headers: dict[str, str] | None = None,
    ) -> Awaitable[UpstreamAnswer]:
        """The upstream's answer once its status and headers arrived (awaitable;
        `UpstreamTimeout` or `UpstreamUnavailable` when there is none)."""
        prep = self._prepare(deployment)
        if isinstance(data, bytes) and headers is None:
            pool = self._pool
            if pool is None:
                pool = self._pool = Http1Pool(MAX_CONNECTIONS)
            return pool.post(  # no coroutine of this method's own: one await level less
                prep.head(url),
                data,
                connect_s=deployment.connect_timeout_s,
                head_s=deployment.first_byte_timeout_s,
                read_s=deployment.timeout_s,
                total_s=deployment.total_timeout_s,
                max_body=prep.max_body,
            )
        return self._post_form(prep, url, data, headers)

    async def _post_form(
        self, prep: _Prepared, url: URL, data: Any, headers: dict[str, str] | None
    ) -> UpstreamAnswer:
        deployment = prep.deployment
        try:
            async with asyncio.timeout(deployment.first_byte_timeout_s):
                return await self._get_session().post(
                    url,
                    data=data,
                    headers=prep.headers if headers is None else headers,
                    timeout=prep.timeout,
                    allow_redirects=False,
                )
        except TimeoutError as exc:
            raise UpstreamTimeout(f"no answer within {deployment.first_byte_timeout_s} s") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(str(exc) or type(exc).__name__) from exc

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._session is not None:
            await self._session.close()


async def failed_reply(
    resp: UpstreamAnswer, deployment: Deployment, mapper: ErrorMapper
) -> FailedReply:
    """An answer that is not a success: what the client sees if no other
    deployment takes the request."""
    if resp.status < 400:  # a redirect (not followed) or an informational status
        resp.close()
        err = errors.upstream_error(f"upstream answered {resp.status} (not followed)")
        return FailedReply(502, err)
    retry_after = resp.headers.get("Retry-After")
    raw = await read_all(resp, ERROR_BODY_LIMIT)
    failed = FailedReply(
        resp.status, mapper(resp.status, raw, retry_after, deployment.api_key), retry_after
    )
    millis = resp.headers.get("retry-after-ms")
    if millis is not None:
        failed.client_headers = {"retry-after-ms": millis}
    return failed


def not_an_event_stream(resp: UpstreamAnswer) -> FailedReply | None:
    """A stream request answered with anything but SSE is a bad reply."""
    if resp.content_type == "text/event-stream":
        return None
    resp.close()
    detail = f"a stream request answered with {resp.content_type}"
    return FailedReply(502, errors.upstream_bad_reply(detail))
