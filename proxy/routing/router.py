"""Which alias, and which of its deployments to try first.

Handlers call `resolve_route` once the body names an alias: known? allowed for
this key? the right kind of endpoint? `proxy.routing.failover` then walks
`deployment_order`: weighted random order without repeats.
"""

from __future__ import annotations

import random

from proxy.auth.keys import KeyInfo
from proxy.config.model import AliasRoute, Deployment
from proxy.http import errors


def resolve_route(routes: dict[str, AliasRoute], key: KeyInfo, alias: str, kind: str) -> AliasRoute:
    route = routes.get(alias)
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
