"""Reading request bodies and writing JSON replies, shared by the handlers."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from proxy.http import errors


async def read_json_body(request: web.Request) -> dict[str, Any]:
    """The body parsed once with orjson; a JSON object or a 400."""
    raw = await request.read()
    if not raw:
        raise errors.bad_json("the body is empty")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise errors.bad_json(str(exc)) from None
    if not isinstance(body, dict):
        raise errors.bad_json("the body must be a JSON object")
    return body


def require_alias(body: dict[str, Any]) -> str:
    alias = body.get("model")
    if alias is None:
        raise errors.missing_param("model")
    if not isinstance(alias, str) or not alias:
        raise errors.invalid_param("model", "'model' must be a non-empty string.")
    return alias


def json_response(payload: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")
