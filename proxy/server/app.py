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
"""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from proxy import storage
from proxy.admin import api as admin
from proxy.admin import health as admin_health
from proxy.admin.dashboard import assets as dashboard_assets
from proxy.admin.dashboard import data as dashboard
from proxy.api import audio, chat, docs, embeddings, health, models, openapi, usage
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


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/llms.txt", docs.llms_txt)
    app.router.add_post("/v1/chat/completions", chat.chat_completions)
    app.router.add_post("/v1/embeddings", embeddings.create_embeddings)
    app.router.add_post("/v1/audio/transcriptions", audio.create_transcription)
    app.router.add_get("/v1/models", models.list_models)
    app.router.add_get("/v1/models/{model_id}", models.get_model)
    app.router.add_get("/v1/usage", usage.own_usage)
    app.router.add_get("/openapi.json", openapi.spec)
    app.router.add_post("/admin/keys", admin.create_key)
    app.router.add_get("/admin/keys", admin.list_keys)
    app.router.add_get("/admin/keys/{key_id}", admin.get_key)
    app.router.add_patch("/admin/keys/{key_id}", admin.update_key)
    app.router.add_delete("/admin/keys/{key_id}", admin.delete_key)
    app.router.add_post("/admin/keys/{key_id}/rotate", admin.rotate_key)
    app.router.add_post("/admin/keys/{key_id}/revoke", admin.revoke_key)
    app.router.add_get("/admin/usage", admin.usage)
    app.router.add_get("/admin/health", admin_health.health)
    app.router.add_get("/metrics", metrics.endpoint)
    app.router.add_get("/dashboard", dashboard_assets.page)
    app.router.add_get("/dashboard/static/{name}", dashboard_assets.static)
    app.router.add_get("/dashboard/vendor/plotly.min.js", dashboard_assets.plotly_js)
    app.router.add_post("/dashboard/session", dashboard.create_session)
    app.router.add_delete("/dashboard/session", dashboard.delete_session)
    app.router.add_get("/dashboard/api/usage", dashboard.usage)
    app.router.add_get("/dashboard/api/keys", dashboard.keys)
    app.router.add_get("/dashboard/api/requests", dashboard.recent_requests)


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
