"""The one small interface every provider adapter implements.

The route handlers (`proxy.routes.*`) pick a deployment, call
`provider.send(deployment, endpoint, body, stream)` and get an
`UpstreamReply`: an HTTP-like status, the raw body (OpenAI shape), or the
raw SSE bytes of a stream in OpenAI's chunk format. The handlers then do the
same thing whatever the provider: rewrite `model`, meter, relay. Adapters for
non-OpenAI upstreams translate to and from OpenAI shapes inside `send`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from proxy.config import Deployment


class UpstreamUnavailable(Exception):
    """The upstream could not be reached or broke the connection."""


class UpstreamTimeout(Exception):
    """The upstream did not answer in time."""


class UpstreamReply(Protocol):
    status: int
    retry_after: str | None

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None:
        """Stop the upstream work now (client gone, or we are done)."""


class Provider(Protocol):
    async def send(
        self, deployment: Deployment, endpoint: str, body: dict[str, Any], stream: bool
    ) -> UpstreamReply: ...

    async def close(self) -> None: ...
