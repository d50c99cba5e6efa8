"""What one gateway process holds while it serves: built at start by
`proxy.server.app.build_app`, read by the middleware and the handlers."""

from __future__ import annotations

from dataclasses import dataclass

import aiosqlite
from aiohttp import web
from structlog.typing import FilteringBoundLogger

from proxy.auth.key_table import KeyTable
from proxy.config.model import AliasRoute, GatewayConfig
from proxy.providers.base import Provider
from proxy.routing.health import HealthBoard
from proxy.usage.writer import UsageWriter


@dataclass(slots=True)
class GatewayState:
    config: GatewayConfig
    routes: dict[str, AliasRoute]
    providers: dict[str, Provider]
    keys: KeyTable
    usage: UsageWriter
    db: aiosqlite.Connection
    admin_key: str | None
    health: HealthBoard
    log: FilteringBoundLogger


STATE: web.AppKey[GatewayState] = web.AppKey("gateway_state", GatewayState)

ENDED_BY_SHUTDOWN = "ended_by_shutdown"
"""Request key set (True) by `proxy.server.runner` on a request still in flight when
the shutdown's grace ran out, just before it cancels the request's handler."""
