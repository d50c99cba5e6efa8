"""The aiohttp application: middleware, routes, and process start/stop.

Every request passes `gateway_middleware`: it stamps a request id, answers
413 before reading an oversized body, checks the bearer key against the
in-memory `KeyTable` for `/v1/*`, turns every failure into OpenAI's error
shape, and writes the request's one log line. Handlers live in
`proxy.routes`.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import os
import random
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from proxy import errors, storage
from proxy.config import GatewayConfig
from proxy.errors import GatewayError
from proxy.keys import KeyTable
from proxy.providers import build_providers
from proxy.request_log import get_logger
from proxy.routes import admin, chat, embeddings, health, models
from proxy.state import STATE, GatewayState
from proxy.usage_journal import UsageJournal

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Garbage collector tuning for a long-running server (measured, not folklore):
# with CPython's default first threshold (700) a busy worker ran a young
# collection every ~18 requests and a full one every few seconds, walking the
# whole start-up heap (aiohttp, structlog, config...) each time: ~16 us of
# every ~270 us request. Start-up objects are frozen out of the collector's
# view once the app is up, and the first threshold is raised: requests free
# almost everything by reference counting, so the young generation hardly
# grows and collections become rare. Cyclic garbage stays bounded by it.
GC_THRESHOLDS = (10_000, 10, 10)

# Returning freed heap memory to the OS. glibc's malloc keeps what a burst
# freed whenever a live block sits above it in the heap: after 64-client load
# a worker held ~20 MiB of free heap (malloc_trim gave it back: 71 -> 52 MiB)
# and RSS only ever went up. Trimming every TRIM_INTERVAL_S (a few ms of
# work at most) keeps RSS what the process actually uses. No-op off glibc.
TRIM_INTERVAL_S = 10.0


def _malloc_trim() -> Callable[[], object] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


async def _trim_forever(trim: Callable[[], object]) -> None:
    while True:
        await asyncio.sleep(TRIM_INTERVAL_S)
        trim()


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def _authenticate(request: web.Request, state: GatewayState) -> None:
    token = _bearer(request)
    if token is None:
        raise errors.missing_key()
    info = state.keys.lookup(token) or await state.keys.lookup_or_refresh(token)
    if info is None:
        raise errors.invalid_key()
    if info.revoked:
        raise errors.revoked_key()
    request["key"] = info


def _http_error(exc: web.HTTPException) -> GatewayError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return errors.body_too_large(exc.max_size if hasattr(exc, "max_size") else 0)
    if exc.status == 404:
        return GatewayError(404, f"Unknown path: {exc.reason}", code="not_found")
    if exc.status == 405:
        return GatewayError(405, "Method not allowed for this path.", code="method_not_allowed")
    kind = "invalid_request_error" if exc.status < 500 else "api_error"
    return GatewayError(exc.status, exc.text or exc.reason, type=kind)


def new_request_id(now: float) -> str:
    """`req_` + 24 hex digits: 12 of the time in microseconds, 12 random.

    Time first, so that ids written in one batch sort together: the usage
    table's primary key then grows at its end instead of at random places.
    """
    # ids need to be unique, not secret: the PRNG (re-seeded from os.urandom in
    # every forked worker) spares a getrandom() syscall per request
    return f"req_{int(now * 1e6) & 0xFFFFFFFFFFFF:012x}{random.getrandbits(48):012x}"


@web.middleware
async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    request["t0"] = time.perf_counter()
    request["ts"] = now = time.time()
    request["rid"] = rid = new_request_id(now)
    try:
        if request.path.startswith("/v1/"):
            limit = state.config.max_body_bytes
            if request.content_length is not None and request.content_length > limit:
                raise errors.body_too_large(limit)
            await _authenticate(request, state)
        response = await handler(request)
    except asyncio.CancelledError:  # the client left (handler cancellation): log it all the same
        request["error"] = request.get("error") or "client_disconnected"
        _log_request(state, request, 499)
        raise
    except GatewayError as err:
        response = err.response()
        request["error"] = err.code
    except web.HTTPException as exc:
        if isinstance(exc, web.HTTPRequestEntityTooLarge):
            err = errors.body_too_large(state.config.max_body_bytes)
        else:
            err = _http_error(exc)
        response = err.response()
        request["error"] = err.code
    except Exception:  # noqa: BLE001 - a bug must still answer in OpenAI's shape
        state.log.exception("unhandled", request_id=rid)
        err = GatewayError(500, "The gateway failed to handle the request.", type="api_error",
                           code="internal_error")
        response = err.response()
        request["error"] = err.code
    if not response.prepared:  # a handler that streams sets it itself, before prepare()
        response.headers["x-request-id"] = rid
    _log_request(state, request, response.status)
    return response


def _log_request(state: GatewayState, request: web.Request, status: int) -> None:
    usage = request.get("usage")
    if usage is not None:
        state.log.info(
            "request", request_id=usage["request_id"], key_id=usage["key_id"],
            model=usage["model"], deployment=usage["deployment"], status=usage["status"],
            stream=bool(usage["stream"]), input_tokens=usage["input_tokens"],
            output_tokens=usage["output_tokens"], latency_ms=usage["latency_ms"],
            ttft_ms=usage["ttft_ms"], usage_source=usage["usage_source"], error=usage["error"],
        )
        return
    if request.path == "/healthz":
        return
    key = request.get("key")
    state.log.info(
        "request", request_id=request["rid"], key_id=key.id if key else None,
        method=request.method, path=request.path, status=status,
        latency_ms=round((time.perf_counter() - request["t0"]) * 1000.0, 3),
        error=request.get("error"),
    )


def build_app(config: GatewayConfig) -> web.Application:
    app = web.Application(
        middlewares=[gateway_middleware],
        client_max_size=config.max_body_bytes,
    )
    app.router.add_get("/healthz", health.healthz)
    app.router.add_post("/v1/chat/completions", chat.chat_completions)
    app.router.add_post("/v1/embeddings", embeddings.create_embeddings)
    app.router.add_get("/v1/models", models.list_models)
    app.router.add_get("/v1/models/{model_id}", models.get_model)
    app.router.add_post("/admin/keys", admin.create_key)
    app.router.add_get("/admin/keys", admin.list_keys)
    app.router.add_post("/admin/keys/{key_id}/revoke", admin.revoke_key)
    app.router.add_get("/admin/usage", admin.usage)

    async def startup(app: web.Application) -> None:
        db = await storage.connect_async(config.db_path)
        keys = KeyTable(db)
        await keys.start()
        journal = UsageJournal(config.journal_dir, db, config.db_path)
        journal.start()
        app[STATE] = GatewayState(
            config=config,
            routes=config.routes,
            providers=build_providers(),
            keys=keys,
            journal=journal,
            db=db,
            admin_key=os.environ.get("PROMETHEUS_ADMIN_KEY") or None,
            log=get_logger(),
        )

    async def cleanup(app: web.Application) -> None:
        for task in trim_task:
            task.cancel()
        state = app[STATE]
        await state.keys.stop()
        await state.journal.close()
        for provider in state.providers.values():
            await provider.close()
        await state.db.close()

    trim_task: list[asyncio.Task[None]] = []

    async def tune_memory(app: web.Application) -> None:
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        trim = _malloc_trim()
        if trim is not None:
            trim_task.append(asyncio.create_task(_trim_forever(trim)))

    app.on_startup.append(startup)
    app.on_startup.append(tune_memory)
    app.on_cleanup.append(cleanup)
    return app

