"""Which alias a request is for, and whether this key may call it.

Handlers call `resolve_route` once the body names an alias: known? allowed for
this key? the right kind of endpoint? `proxy.routing.failover` then walks the
alias's deployments in the order `proxy.routing.health` gives.
"""

from __future__ import annotations

from proxy.auth.keys import KeyInfo
from proxy.config.model import AliasRoute
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
