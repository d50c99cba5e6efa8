"""OpenAI-shaped error responses, the only way the gateway says no.

Raised as `GatewayError` anywhere on the request path; `proxy.http.middleware`'s
middleware turns each into `{"error": {"message", "type", "param", "code"}}`
with its HTTP status (CONTRACT.md lists them).

A client-facing message never carries an upstream's address, an exception's
text or an upstream's 5xx message: those go in `detail`, which only the
request's log line shows (with its request id).
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
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.detail = detail  # for the log line only, never sent
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


def unreadable_body(encoding: str) -> GatewayError:
    """A body that is not what its Content-Encoding says: the connection closes
    after this answer, since the rest of the body cannot be read past."""
    return GatewayError(
        400,
        f"We could not parse the JSON body of your request: it is not valid '{encoding}' data",
        code="invalid_json",
        headers={"Connection": "close"},
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


def invalid_type(param: str, expected: str, got: str) -> GatewayError:
    """A value of the wrong JSON type, in OpenAI's words ("expected a string, but
    got an integer instead")."""
    return GatewayError(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {got} instead.",
        code="invalid_type",
        param=param,
    )


def unsupported_value(param: str, value: str, supported: tuple[str, ...]) -> GatewayError:
    """A string outside its enum, listing the values that are accepted."""
    names = [f"'{s}'" for s in supported]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + ", and " + names[-1]
    return GatewayError(
        400,
        f"Invalid value: '{value}'. Supported values are: {listed}.",
        code="invalid_value",
        param=param,
    )


def out_of_range(
    param: str, value: float, bound: float, *, above: bool, integer: bool
) -> GatewayError:
    """A number past its minimum or maximum: OpenAI's `integer_below_min_value`,
    `decimal_above_max_value` and the like (`integer`: the parameter's type)."""
    kind = "integer" if integer else "decimal"
    side, op, edge = ("above", "<=", "max") if above else ("below", ">=", "min")
    return GatewayError(
        400,
        f"Invalid '{param}': {kind} {side} {edge}imum value. "
        f"Expected a value {op} {bound}, but got {value} instead.",
        code=f"{kind}_{side}_{edge}_value",
        param=param,
    )


def empty_array(param: str) -> GatewayError:
    return GatewayError(
        400,
        f"Invalid '{param}': empty array. "
        "Expected an array with minimum length 1, but got an empty array instead.",
        code="empty_array",
        param=param,
    )


def array_too_long(param: str, length: int, limit: int) -> GatewayError:
    return GatewayError(
        400,
        f"Invalid '{param}': array too long. Expected an array with maximum length "
        f"{limit}, but got an array with length {length} instead.",
        code="array_above_max_length",
        param=param,
    )


def body_too_large(limit: int) -> GatewayError:
    return GatewayError(
        413,
        f"Request body too large: the limit is {limit} bytes.",
        code="request_too_large",
    )


def upstream_unavailable(detail: str) -> GatewayError:
    return GatewayError(
        502,
        "The upstream provider is unavailable.",
        type="api_error",
        code="upstream_unavailable",
        detail=detail,
    )


def upstream_bad_reply(detail: str) -> GatewayError:
    return GatewayError(
        502,
        "The upstream provider sent a reply the gateway could not use.",
        type="api_error",
        code="upstream_bad_reply",
        detail=detail,
    )


def upstream_error(detail: str) -> GatewayError:
    return GatewayError(
        502, "The upstream provider failed.", type="api_error", code="upstream_error", detail=detail
    )


def upstream_timeout(detail: str = "") -> GatewayError:
    return GatewayError(
        504,
        "The upstream provider timed out.",
        type="api_error",
        code="upstream_timeout",
        detail=detail or None,
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
