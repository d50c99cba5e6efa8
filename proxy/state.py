"""What one gateway process holds while it serves: built at start by
`proxy.app.build_app`, read by the middleware and the route handlers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from proxy.config import AliasRoute, GatewayConfig
from proxy.keys import KeyTable
from proxy.providers import Provider
from proxy.usage_journal import UsageJournal


@dataclass(slots=True)
class GatewayState:
    config: GatewayConfig
    routes: dict[str, AliasRoute]
    providers: dict[str, Provider]
    keys: KeyTable
    journal: UsageJournal
    db: Any
    admin_key: str | None
    log: Any


STATE: web.AppKey[GatewayState] = web.AppKey("gateway_state", GatewayState)
