"""An OpenAI-compatible upstream's error answer, as the client will see it.

Called by `proxy.providers.openai.provider` for every upstream status >= 400.
Rate limits keep their Retry-After; a rejection of the gateway's own
credentials or an upstream failure is the gateway's problem (502), never the
client's; other 4xx answers reach the client with the upstream's message.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.http.errors import GatewayError


def upstream_error(status: int, raw: bytes, retry_after: str | None) -> GatewayError:
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
        return GatewayError(
            429,
            message,
            type=str(kind or "rate_limit_error"),
            code=str(code or "rate_limit_exceeded"),
            headers=headers,
        )
    if status in (401, 403):
        return GatewayError(
            502,
            "The upstream provider rejected the gateway's credentials.",
            type="api_error",
            code="upstream_auth_failed",
        )
    if status >= 500:
        return GatewayError(
            502, f"The upstream provider failed: {message}", type="api_error", code="upstream_error"
        )
    return GatewayError(
        status,
        message,
        type=str(kind or "invalid_request_error"),
        code=None if code is None else str(code),
        param=None if param is None else str(param),
    )
