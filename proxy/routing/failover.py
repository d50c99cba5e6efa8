"""Calling an alias's deployments in turn until one takes the request.

`call_upstream` tries the deployments in the order the `HealthBoard` gives
(weights, circuit breakers) and moves on when one is down, times out, answers
5xx, rejects our upstream credentials, or is rate limited; then it retries
once after a jittered back-off (or the upstream's Retry-After, when short).
This all happens before the first byte reaches the client: after it, nothing
is retried. A client error (other 4xx) would be the same on every
deployment and goes straight back to the client. When all fail, a rate limit
is what the client hears of (with its Retry-After), before an outage. `read_body` reads a
non-stream reply, turning upstream failures into the errors the client sees.
"""

from __future__ import annotations

import asyncio
import random
import time
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
from proxy.routing.health import HealthBoard

Operation = Callable[[Provider, Deployment], Awaitable[Reply]]

RETRIES = 1  # extra attempts after every deployment had one
RETRY_BASE_S = 0.1  # back-off before a retry: up to this x 2^attempt, jittered
MAX_RETRY_WAIT_S = 1.0  # a Retry-After longer than this goes back to the client


def moves_on(status: int) -> bool:
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


def wait_asked(reply: Reply) -> str | None:
    """The wait the upstream asked for, in seconds: `retry-after-ms` (OpenAI's
    finer header) when present, else `Retry-After`."""
    headers = reply.client_headers or {}
    millis = next((v for k, v in headers.items() if k.lower() == "retry-after-ms"), None)
    if millis is not None:
        try:
            return str(float(millis) / 1000.0)
        except ValueError:
            pass
    return reply.retry_after


def _retry_wait(attempt: int, retry_after: str | None) -> float | None:
    """Seconds to wait before trying a deployment again, or None if not worth it:
    exponential back-off with full jitter, or the upstream's Retry-After when it
    asked for a wait short enough to spend inside one request."""
    backoff = random.uniform(0, RETRY_BASE_S * 2**attempt)
    if retry_after is None:
        return backoff
    try:
        asked = float(retry_after)
    except ValueError:
        return None
    return max(asked, backoff) if 0 <= asked <= MAX_RETRY_WAIT_S else None


async def call_upstream(
    providers: dict[str, Provider],
    route: AliasRoute,
    operation: Operation,
    board: HealthBoard,
    skip: frozenset[int] | set[int] = frozenset(),
) -> tuple[Reply, Deployment]:
    """The first deployment's reply that is not an error, or the error to send back.

    Each deployment in the health board's order gets one attempt; then, while
    attempts remain (`RETRIES`), the ones that failed in a way worth retrying
    are tried again after a back-off. Every outcome goes to the breakers.
    Deployments whose index is in `skip` were tried already (by a hedge)."""
    last: GatewayError | None = None
    order = [(i, dep) for i, dep in board.order(route) if i not in skip]
    again: list[tuple[int, Deployment, float]] = []
    plan = [(i, dep, 0.0) for i, dep in order]
    retries = RETRIES
    while plan:
        for attempt, (index, dep, wait_first) in enumerate(plan):
            breaker = board.breaker(route.alias, index)
            if wait_first > 0:
                await asyncio.sleep(wait_first)
            retry_after: str | None = None
            try:
                reply = await operation(providers[dep.provider], dep)
            except (UpstreamTimeout, UpstreamUnavailable) as exc:
                err = upstream_failure(exc)
            else:
                if reply.error is None:
                    breaker.succeeded()
                    return reply, dep
                if not moves_on(reply.status):
                    breaker.succeeded()  # the upstream works; the request was bad
                    raise reply.error
                err, retry_after = reply.error, wait_asked(reply)
            breaker.failed(time.monotonic(), err.code)
            if _worth_more(err, last):
                last = err
            wait = _retry_wait(attempt, retry_after)
            if wait is not None:
                again.append((index, dep, wait))
        plan, again = again[:retries], []
        retries -= len(plan)
    assert last is not None
    raise last


async def read_body(reply: Reply) -> bytes:
    """The whole body of a non-stream reply, or the error to send back."""
    try:
        return await reply.body()
    except (UpstreamTimeout, UpstreamUnavailable) as exc:
        raise upstream_failure(exc) from None
