"""OpenAI-shaped error responses, the only way the gateway says no.

Raised as `GatewayError` anywhere on the request path; `proxy.http.middleware`'s
middleware turns each into `{"error": {"message", "type", "param", "code"}}`
with its HTTP status (CONTRACT.md lists them).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web


class GatewayError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> web.Response:
        return web.Response(
            status=self.status,
            body=orjson.dumps(self.body()),
            content_type="application/json",
            headers=self.headers,
        )


def missing_key() -> GatewayError:
    return GatewayError(
        401,
        "You didn't provide an API key. Send it as 'Authorization: Bearer prom_sk_...'.",
        code="missing_api_key",
    )


def invalid_key() -> GatewayError:
    return GatewayError(401, "Incorrect API key provided.", code="invalid_api_key")


def revoked_key() -> GatewayError:
    return GatewayError(401, "This API key has been revoked.", code="revoked_api_key")


def unknown_model(model: str) -> GatewayError:
    return GatewayError(
        404,
        f"The model '{model}' does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


def model_not_allowed(model: str) -> GatewayError:
    return GatewayError(
        403,
        f"This API key is not allowed to use the model '{model}'.",
        type="permission_error",
        code="model_not_allowed",
        param="model",
    )


def wrong_endpoint(model: str, kind: str) -> GatewayError:
    return GatewayError(
        400,
        f"The model '{model}' is a {kind} model and cannot be used with this endpoint.",
        code="model_not_supported",
        param="model",
    )


def bad_json(detail: str) -> GatewayError:
    return GatewayError(
        400, f"We could not parse the JSON body of your request: {detail}", code="invalid_json"
    )


def missing_param(param: str) -> GatewayError:
    return GatewayError(
        400,
        f"Missing required parameter: '{param}'.",
        code="missing_required_parameter",
        param=param,
    )


def invalid_param(param: str, message: str) -> GatewayError:
    return GatewayError(400, message, code="invalid_value", param=param)


def body_too_large(limit: int) -> GatewayError:
    return GatewayError(
        413,
        f"Request body too large: the limit is {limit} bytes.",
        code="request_too_large",
    )


def upstream_unavailable(detail: str) -> GatewayError:
    return GatewayError(
        502,
        f"The upstream provider is unavailable: {detail}",
        type="api_error",
        code="upstream_unavailable",
    )


def upstream_timeout() -> GatewayError:
    return GatewayError(
        504, "The upstream provider timed out.", type="api_error", code="upstream_timeout"
    )


def internal_error() -> GatewayError:
    return GatewayError(
        500, "The gateway failed to handle the request.", type="api_error", code="internal_error"
    )


def shutting_down() -> GatewayError:
    return GatewayError(
        503,
        "The gateway is shutting down and ended this request; send it again.",
        type="api_error",
        code="server_shutting_down",
    )
