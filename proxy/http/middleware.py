"""The one middleware every request passes, first in the flow.

`gateway_middleware` stamps a request id, answers 413 before reading an
oversized body, has `proxy.auth.bearer` check the key for `/v1/*`, turns every
failure into OpenAI's error shape, and writes the request's one log line
(the usage record when the meter made one). Handlers live in `proxy.api` and
`proxy.admin`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from proxy.auth.admission import release
from proxy.auth.bearer import authenticate
from proxy.auth.keys import mask_keys
from proxy.http import errors
from proxy.http.errors import GatewayError
from proxy.http.multipart import MAX_FORM_BYTES, TRANSCRIPTIONS_PATH
from proxy.observability.logs import request_line
from proxy.server.state import ENDED_BY_SHUTDOWN, STATE, GatewayState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def new_request_id(now: float) -> str:
    """`req_` + 24 hex digits: 12 of the time in microseconds, 12 random.

    Time first, so that ids written in one batch sort together: the usage
    table's primary key then grows at its end instead of at random places.
    """
    # ids need to be unique, not secret: the PRNG (re-seeded from os.urandom in
    # every forked worker) spares a getrandom() syscall per request
    return f"req_{int(now * 1e6) & 0xFFFFFFFFFFFF:012x}{random.getrandbits(48):012x}"


def _http_error(exc: web.HTTPException, max_body_bytes: int) -> GatewayError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return errors.body_too_large(max_body_bytes)
    if exc.status == 404:
        return GatewayError(404, f"Unknown path: {exc.reason}", code="not_found")
    if exc.status == 405:
        allowed = getattr(exc, "allowed_methods", None) or ()
        return GatewayError(
            405,
            "Method not allowed for this path.",
            code="method_not_allowed",
            headers={"Allow": ", ".join(sorted(allowed))} if allowed else None,
        )
    kind = "invalid_request_error" if exc.status < 500 else "api_error"
    return GatewayError(exc.status, exc.text or exc.reason, type=kind)


def _error_response(request: web.Request, err: GatewayError) -> web.Response:
    request["error"] = err.code
    if err.detail:
        request["error_detail"] = err.detail
    return err.response()


@web.middleware
async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    request["t0"] = time.perf_counter()
    request["ts"] = now = time.time()
    request["rid"] = rid = new_request_id(now)
    response: web.StreamResponse
    try:
        if request.path.startswith("/v1/"):
            limit = state.config.max_body_bytes
            if request.path == TRANSCRIPTIONS_PATH:  # a multipart upload has its own bound
                limit = MAX_FORM_BYTES
            length = request.content_length  # a property that parses the header
            if length is not None and length > limit:
                raise errors.body_too_large(limit)
            await authenticate(request, state.keys)
        response = await handler(request)
    except asyncio.CancelledError:
        if not (request.get(ENDED_BY_SHUTDOWN) and request.writer.output_size == 0):
            # the client left (handler cancellation): log it all the same
            request["error"] = request.get("error") or "client_disconnected"
            log_request(state, request, 499)
            raise
        # the shutdown's grace ran out before an answer began: say so
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        response = _error_response(request, errors.shutting_down())
    except GatewayError as refusal:
        response = _error_response(request, refusal)
    except web.HTTPException as exc:
        response = _error_response(request, _http_error(exc, state.config.max_body_bytes))
    except Exception:  # a bug must still answer in OpenAI's shape
        state.log.exception("unhandled", request_id=rid)
        response = _error_response(request, errors.internal_error())
    finally:
        release(request)  # a key's reservation that no usage record settled
    if not response.prepared:  # a handler that streams sets it itself, before prepare()
        response.headers["x-request-id"] = rid
    log_request(state, request, response.status)
    return response


def log_request(state: GatewayState, request: web.Request, status: int) -> None:
    """The request's one log line: its usage record when the meter made one."""
    usage = request.get("usage")
    if usage is not None:
        request_line(
            {
                "request_id": usage["request_id"],
                "key_id": usage["key_id"],
                "model": usage["model"],
                "deployment": usage["deployment"],
                "status": usage["status"],
                "stream": bool(usage["stream"]),
                "input_tokens": usage["input_tokens"],
                "output_tokens": usage["output_tokens"],
                "latency_ms": usage["latency_ms"],
                "ttft_ms": usage["ttft_ms"],
                "usage_source": usage["usage_source"],
                "error": usage["error"],
                # only an error has a detail (asking for a missing one raises inside aiohttp)
                "detail": request.get("error_detail") if usage["status"] >= 400 else None,
            }
        )
        return
    if request.path == "/healthz":
        return
    key = request.get("key")
    request_line(
        {
            "request_id": request["rid"],
            "key_id": key.id if key else None,
            "method": request.method,
            "path": mask_keys(request.path),  # a key pasted into a URL stays out of the log
            "status": status,
            "latency_ms": round((time.perf_counter() - request["t0"]) * 1000.0, 3),
            "error": request.get("error"),
            "detail": request.get("error_detail"),
        }
    )
