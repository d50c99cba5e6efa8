"""Calling an alias's deployments in turn until one takes the request.

`call_upstream` tries the deployments in `deployment_order` and moves on when
one is down, times out, answers 5xx, rejects our upstream credentials, or is
rate limited. A client error (other 4xx) would be the same on every
deployment and goes straight back to the client. When all fail, a rate limit
is what the client hears of (with its Retry-After), before an outage. `read_body` reads a
non-stream reply, turning upstream failures into the errors the client sees.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from proxy.config.model import AliasRoute, Deployment
from proxy.http import errors
from proxy.http.errors import GatewayError
from proxy.providers.base import (
    Provider,
    Reply,
    UpstreamBadReply,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.routing.router import deployment_order

Operation = Callable[[Provider, Deployment], Awaitable[Reply]]


def _moves_on(status: int) -> bool:
    """Another deployment may succeed where this one answered `status`."""
    return status == 429 or status >= 500 or status in (401, 403)


def upstream_failure(exc: UpstreamTimeout | UpstreamUnavailable) -> GatewayError:
    """What the client sees when an upstream could not be used; the detail is logged."""
    if isinstance(exc, UpstreamTimeout):
        return errors.upstream_timeout(str(exc))
    if isinstance(exc, UpstreamBadReply):
        return errors.upstream_bad_reply(str(exc))
    return errors.upstream_unavailable(str(exc))


def _worth_more(err: GatewayError, last: GatewayError | None) -> bool:
    """Which failure the client hears of when every deployment failed: a rate
    limit (the client may retry after Retry-After) over an outage."""
    return last is None or err.status == 429 or last.status != 429


async def call_upstream(
    providers: dict[str, Provider], route: AliasRoute, operation: Operation
) -> tuple[Reply, Deployment]:
    """The first deployment's reply that is not an error, or the error to send back."""
    last: GatewayError | None = None
    for dep in deployment_order(route):
        try:
            reply = await operation(providers[dep.provider], dep)
        except (UpstreamTimeout, UpstreamUnavailable) as exc:
            err = upstream_failure(exc)
        else:
            if reply.error is None:
                return reply, dep
            if not _moves_on(reply.status):
                raise reply.error
            err = reply.error
        if _worth_more(err, last):
            last = err
    assert last is not None
    raise last


async def read_body(reply: Reply) -> bytes:
    """The whole body of a non-stream reply, or the error to send back."""
    try:
        return await reply.body()
    except (UpstreamTimeout, UpstreamUnavailable) as exc:
        raise upstream_failure(exc) from None
