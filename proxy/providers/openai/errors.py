"""An OpenAI-compatible upstream's error answer, as the client will see it.

Called by `proxy.providers.openai.provider` for every upstream status >= 400.
Rate limits keep their Retry-After; a rejection of the gateway's own
credentials or an upstream failure is the gateway's problem (502), never the
client's, and its message goes to the log only (it may name hosts or
internals); other 4xx answers reach the client with the upstream's message,
with the deployment's own credential cut out of it.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.http import errors
from proxy.http.errors import GatewayError

MAX_MESSAGE = 2000  # characters of an upstream's message passed on to the client


def _text(value: Any) -> str | None:
    return None if value is None else str(value)[:200]


def upstream_error(
    status: int, raw: bytes, retry_after: str | None, credential: str = ""
) -> GatewayError:
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
    if credential:
        message = message.replace(credential, "[redacted]")
    message = message[:MAX_MESSAGE]
    detail = f"upstream answered {status}: {message}"
    if status == 429:
        headers = {"Retry-After": retry_after} if retry_after else None
        return GatewayError(
            429,
            message,
            type=_text(kind) or "rate_limit_error",
            code=_text(code) or "rate_limit_exceeded",
            headers=headers,
        )
    if status in (401, 403):
        return GatewayError(
            502,
            "The upstream provider rejected the gateway's credentials.",
            type="api_error",
            code="upstream_auth_failed",
            detail=detail,
        )
    if status >= 500:
        return errors.upstream_error(detail)
    return GatewayError(
        status,
        message,
        type=_text(kind) or "invalid_request_error",
        code=_text(code),
        param=_text(param),
    )
