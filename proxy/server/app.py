"""The aiohttp application: routes wired to their handlers, and what a process
opens at start and closes at stop.

Built by `proxy.server.worker.serve_app` in each serving process. Start-up opens the
SQLite file, loads the key mirror (`proxy.auth.key_table`), maps the machine's
limits table (`proxy.auth.limits`, seeded by the first worker; Redis too with
`[cluster] redis_url`), starts the usage writer (`proxy.usage`), builds the
providers, and leaves all of it in one `GatewayState` that the middleware and
the handlers read (the limits under `proxy.auth.admission.LIMITS`). A limited
key's `x-ratelimit-*` headers go on every one of its responses, streams and
errors included, as each response is prepared.

The handlers of the hot and the cheap routes are imported with this module;
those of the rarer ones (transcription, `/v1/usage`, the admin API, the
dashboard, `/openapi.json`, `/llms.txt`) at their route's first request
(`later`), so that an idle worker does not hold their modules (the usage
report's time zones, `zipfile` behind `importlib.resources`...).
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Awaitable, Callable
from typing import cast

from aiohttp import web

from proxy import storage
from proxy.api import chat, embeddings, health, models
from proxy.auth.admission import HEADERS, LIMITS, Limits
from proxy.auth.budgets import recorded_spend
from proxy.auth.key_table import KeyTable
from proxy.auth.limits import LocalLimits
from proxy.config.model import GatewayConfig
from proxy.http.middleware import gateway_middleware
from proxy.observability import loop_lag, metrics
from proxy.observability.logs import get_logger
from proxy.providers import build_providers
from proxy.routing.health import HealthBoard
from proxy.server.state import STATE, GatewayState
from proxy.server.tuning import tune_memory
from proxy.usage.writer import UsageWriter

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ADMIN = "proxy.admin.api"
DASHBOARD = "proxy.admin.dashboard.data"
ASSETS = "proxy.admin.dashboard.assets"


def later(module: str, name: str) -> Handler:
    """The handler `module.name`, its module imported at the route's first request
    (a few ms once, on the loop) instead of at start; it carries that module and
    name as its own (tests/test_idle_imports.py resolves every route's)."""
    found: list[Handler] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        if not found:
            found.append(cast(Handler, getattr(importlib.import_module(module), name)))
        return await found[0](request)

    handle.__module__, handle.__qualname__, handle.__name__ = module, name, name
    return handle


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/llms.txt", later("proxy.api.docs", "llms_txt"))
    app.router.add_post("/v1/chat/completions", chat.chat_completions)
    app.router.add_post("/v1/embeddings", embeddings.create_embeddings)
    app.router.add_post(
        "/v1/audio/transcriptions", later("proxy.api.audio", "create_transcription")
    )
    app.router.add_get("/v1/models", models.list_models)
    app.router.add_get("/v1/models/{model_id}", models.get_model)
    app.router.add_get("/v1/usage", later("proxy.api.usage", "own_usage"))
    app.router.add_get("/openapi.json", later("proxy.api.openapi", "spec"))
    app.router.add_post("/admin/keys", later(ADMIN, "create_key"))
    app.router.add_get("/admin/keys", later(ADMIN, "list_keys"))
    app.router.add_get("/admin/keys/{key_id}", later(ADMIN, "get_key"))
    app.router.add_patch("/admin/keys/{key_id}", later(ADMIN, "update_key"))
    app.router.add_delete("/admin/keys/{key_id}", later(ADMIN, "delete_key"))
    app.router.add_post("/admin/keys/{key_id}/rotate", later(ADMIN, "rotate_key"))
    app.router.add_post("/admin/keys/{key_id}/revoke", later(ADMIN, "revoke_key"))
    app.router.add_get("/admin/usage", later(ADMIN, "usage"))
    app.router.add_get("/admin/health", later("proxy.admin.health", "health"))
    app.router.add_get("/metrics", metrics.endpoint)
    app.router.add_get("/dashboard", later(ASSETS, "page"))
    app.router.add_get("/dashboard/static/{name}", later(ASSETS, "static"))
    app.router.add_get("/dashboard/vendor/plotly.min.js", later(ASSETS, "plotly_js"))
    app.router.add_post("/dashboard/session", later(DASHBOARD, "create_session"))
    app.router.add_delete("/dashboard/session", later(DASHBOARD, "delete_session"))
    app.router.add_get("/dashboard/api/usage", later(DASHBOARD, "usage"))
    app.router.add_get("/dashboard/api/keys", later(DASHBOARD, "keys"))
    app.router.add_get("/dashboard/api/requests", later(DASHBOARD, "recent_requests"))


def build_app(config: GatewayConfig) -> web.Application:
    app = web.Application(middlewares=[gateway_middleware], client_max_size=config.max_body_bytes)
    add_routes(app)
    loop_lag.install(app)  # only with PROMETHEUS_LOOP_LAG_PROBE=1 (the bench's probe)
    background: list[asyncio.Task[None]] = []

    async def startup(app: web.Application) -> None:
        db = await storage.connect_async(config.db_path)
        keys = await KeyTable.open(config.db_path)  # its own connection, not the writer's
        await keys.start()
        log = get_logger()
        local = LocalLimits(config.journal_dir / "limits.shm")
        local.attach(lambda now: recorded_spend(config.db_path, now))
        remote = None
        if config.redis_url:
            from proxy.auth.redis_limits import RedisLimits  # redis-py only when configured

            remote = RedisLimits(config.redis_url, config.redis_prefix, log)
            await remote.start()
        app[LIMITS] = Limits(local, remote, log)
        usage = UsageWriter(config.journal_dir, db, config.db_path)
        usage.start()
        app[STATE] = GatewayState(
            config=config,
            routes=config.routes,
            providers=build_providers(),
            keys=keys,
            usage=usage,
            db=db,
            admin_key=os.environ.get("PROMETHEUS_ADMIN_KEY") or None,
            health=HealthBoard(),
            log=log,
        )

    async def start_tuning(app: web.Application) -> None:
        task = tune_memory()
        if task is not None:
            background.append(task)

    async def cleanup(app: web.Application) -> None:
        for task in background:
            task.cancel()
        state = app[STATE]
        await state.keys.stop()
        await state.usage.close()
        for provider in state.providers.values():
            await provider.close()
        await state.db.close()
        limits = app[LIMITS]
        if limits.remote is not None:
            await limits.remote.close()
        limits.close()  # the spend gathered in this worker, then the table

    app.on_startup.append(startup)
    app.on_response_prepare.append(_ratelimit_headers)
    app.on_startup.append(start_tuning)
    app.on_cleanup.append(cleanup)
    return app


async def _ratelimit_headers(request: web.Request, response: web.StreamResponse) -> None:
    """A limited key's own x-ratelimit-* headers, over any the upstream sent."""
    key = request.get("key")
    if key is None or not key.limited:
        return
    headers = request.get(HEADERS)
    if headers is None:
        headers = request.app[LIMITS].headers_now(key)
    response.headers.update(headers)
