"""From an alias to an upstream reply: route lookup, deployment choice, failover.

Handlers call `resolve_route` (alias known? allowed for this key? right kind
of endpoint?) and then `open_upstream`, which tries the alias's deployments
in weighted random order and moves on when one is down, times out, answers
5xx, rejects our upstream credentials, or is rate limited. A client error
(4xx) is the same on every deployment and goes straight back to the client.
"""

from __future__ import annotations

import random
from typing import Any

import orjson

from proxy import errors
from proxy.config import AliasRoute, Deployment
from proxy.errors import GatewayError
from proxy.keys import KeyInfo
from proxy.providers import UpstreamReply, UpstreamTimeout, UpstreamUnavailable
from proxy.state import GatewayState


def resolve_route(state: GatewayState, key: KeyInfo, alias: str, kind: str) -> AliasRoute:
    route = state.routes.get(alias)
    if route is None:
        raise errors.unknown_model(alias)
    if not key.allows(alias):
        raise errors.model_not_allowed(alias)
    if route.kind != kind:
        raise errors.wrong_endpoint(alias, route.kind)
    return route


def deployment_order(route: AliasRoute) -> list[Deployment]:
    deps = route.deployments
    if len(deps) == 1:
        return [deps[0]]
    remaining = list(deps)
    order = []
    while remaining:
        pick = random.choices(remaining, weights=[max(d.weight, 0.0001) for d in remaining])[0]
        order.append(pick)
        remaining.remove(pick)
    return order


def upstream_error(status: int, raw: bytes, retry_after: str | None) -> GatewayError:
    """Map an upstream error reply to what the client sees."""
    message, kind, code, param = f"upstream answered {status}", None, None, None
    try:
        body: Any = orjson.loads(raw)
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            kind, code, param = err.get("type"), err.get("code"), err.get("param")
        elif isinstance(err, str):
            message = err
    except orjson.JSONDecodeError:
        pass
    if status == 429:
        headers = {"Retry-After": retry_after} if retry_after else None
        return GatewayError(429, message, type=str(kind or "rate_limit_error"),
                            code=str(code or "rate_limit_exceeded"), headers=headers)
    if status in (401, 403):
        return GatewayError(502, "The upstream provider rejected the gateway's credentials.",
                            type="api_error", code="upstream_auth_failed")
    if status >= 500:
        return GatewayError(502, f"The upstream provider failed: {message}", type="api_error",
                            code="upstream_error")
    return GatewayError(status, message, type=str(kind or "invalid_request_error"),
                        code=None if code is None else str(code),
                        param=None if param is None else str(param))


async def read_reply(reply: UpstreamReply) -> bytes:
    """The whole body of a non-stream upstream reply, or the error to send back."""
    try:
        return await reply.read()
    except UpstreamTimeout:
        raise errors.upstream_timeout() from None
    except UpstreamUnavailable as exc:
        raise errors.upstream_unavailable(f"bad reply ({exc})") from None


async def open_upstream(
    state: GatewayState, route: AliasRoute, endpoint: str, body: dict[str, Any], stream: bool
) -> tuple[UpstreamReply, Deployment]:
    """The first deployment that accepts the request, or the error to send back."""
    last: GatewayError | None = None
    for dep in deployment_order(route):
        provider = state.providers[dep.provider]
        try:
            reply = await provider.send(dep, endpoint, body, stream)
            if reply.status < 400:
                return reply, dep
            raw = await reply.read()
        except UpstreamTimeout:
            last = errors.upstream_timeout()
            continue
        except UpstreamUnavailable as exc:
            last = errors.upstream_unavailable(str(exc))
            continue
        err = upstream_error(reply.status, raw, reply.retry_after)
        if reply.status == 429 or reply.status >= 500 or reply.status in (401, 403):
            last = err
            continue
        raise err
    assert last is not None
    raise last
