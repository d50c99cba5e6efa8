"""Calling an alias's deployments in turn until one takes the request.

`call_upstream` tries the deployments in `deployment_order` and moves on when
one is down, times out, answers 5xx, rejects our upstream credentials, or is
rate limited. A client error (other 4xx) would be the same on every
deployment and goes straight back to the client. `read_body` reads a
non-stream reply, turning upstream failures into the errors the client sees.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from proxy.config.model import AliasRoute, Deployment
from proxy.http import errors
from proxy.http.errors import GatewayError
from proxy.providers.base import Provider, Reply, UpstreamTimeout, UpstreamUnavailable
from proxy.routing.router import deployment_order

Operation = Callable[[Provider, Deployment], Awaitable[Reply]]


def _moves_on(status: int) -> bool:
    """Another deployment may succeed where this one answered `status`."""
    return status == 429 or status >= 500 or status in (401, 403)


async def call_upstream(
    providers: dict[str, Provider], route: AliasRoute, operation: Operation
) -> tuple[Reply, Deployment]:
    """The first deployment's reply that is not an error, or the error to send back."""
    last: GatewayError | None = None
    for dep in deployment_order(route):
        try:
            reply = await operation(providers[dep.provider], dep)
        except UpstreamTimeout:
            last = errors.upstream_timeout()
            continue
        except UpstreamUnavailable as exc:
            last = errors.upstream_unavailable(str(exc))
            continue
        if reply.error is None:
            return reply, dep
        if not _moves_on(reply.status):
            raise reply.error
        last = reply.error
    assert last is not None
    raise last


async def read_body(reply: Reply) -> bytes:
    """The whole body of a non-stream reply, or the error to send back."""
    try:
        return await reply.body()
    except UpstreamTimeout:
        raise errors.upstream_timeout() from None
    except UpstreamUnavailable as exc:
        raise errors.upstream_unavailable(str(exc)) from None
