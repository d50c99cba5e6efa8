"""Anthropic's error answers, as the client will see them.

Called by `proxy.providers.anthropic.provider` for every upstream status >= 400
(`upstream_error`) and by `stream.py` for an `error` event inside a stream
(`stream_error`, its status taken from the error's type). The rules are the
OpenAI provider's: a rate limit keeps its message and Retry-After; a
rejection of the gateway's own credentials (401, 403) is a 502
`upstream_auth_failed`; overloaded (529) is a 503 `upstream_overloaded`, a
timeout a 504, other 5xx a 502 `upstream_error`, their messages only in the
log line (`detail`); other 4xx reach the client with Anthropic's message,
the deployment's key cut out of it. `proxy.routing.failover` sees the
upstream's own status, so 429, 401/403 and every 5xx (529 too) move on to
the alias's next deployment.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.http import errors
from proxy.http.errors import GatewayError

MAX_MESSAGE = 2000  # characters of an upstream's message passed on to the client
OVERLOADED = 529
STATUS_OF_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": OVERLOADED,
}


def _message_of(raw: bytes) -> tuple[str | None, str | None]:
    """(message, error type) of an Anthropic error body, when it is one."""
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, None
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return None, None
    message, kind = err.get("message"), err.get("type")
    return (
        str(message) if message is not None else None,
        str(kind)[:200] if kind is not None else None,
    )


def _mapped(status: int, message: str, kind: str | None, retry_after: str | None) -> GatewayError:
    detail = f"upstream answered {status} ({kind}): {message}"
    if status == 429:
        headers = {"Retry-After": retry_after} if retry_after else None
        return GatewayError(
            429, message, type="rate_limit_error", code="rate_limit_exceeded", headers=headers
        )
    if status in (401, 402, 403):
        return GatewayError(
            502,
            "The upstream provider rejected the gateway's credentials.",
            type="api_error",
            code="upstream_auth_failed",
            detail=detail,
        )
    if status == OVERLOADED:
        return GatewayError(
            503,
            "The upstream provider is overloaded; try again shortly.",
            type="api_error",
            code="upstream_overloaded",
            detail=detail,
        )
    if status == 504:
        return errors.upstream_timeout(detail)
    if status >= 500:
        return errors.upstream_error(detail)
    return GatewayError(status, message, type="invalid_request_error", code=None)


def upstream_error(
    status: int, raw: bytes, retry_after: str | None, credential: str = ""
) -> GatewayError:
    message, kind = _message_of(raw)
    message = message or f"upstream answered {status}"
    if credential:
        message = message.replace(credential, "[redacted]")
    return _mapped(status, message[:MAX_MESSAGE], kind, retry_after)


def stream_error(kind: Any, message: Any) -> GatewayError:
    """An `error` event that ended a stream, as the error event the client gets."""
    kind = str(kind) if kind is not None else "api_error"
    status = STATUS_OF_TYPE.get(kind, 500)
    text = str(message)[:MAX_MESSAGE] if message is not None else f"upstream {kind}"
    return _mapped(status, text, kind, None)
