"""Reading request bodies and writing JSON replies, shared by the handlers."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from proxy.http import errors

# orjson.loads accepts 1024 levels of arrays and objects, orjson.dumps only 254,
# and a body is encoded again on its way upstream: deeper ones are refused here.
MAX_DEPTH = 254


async def read_raw_body(request: web.Request) -> bytes:
    """The body's bytes, decoded as its Content-Encoding says; a 400 if they are not."""
    try:
        return await request.read()
    except web.RequestPayloadError:
        # aiohttp would try to drain the rest after the answer, and log that it
        # cannot: the connection closes after the 400 instead
        request.content.feed_eof()
        request.protocol.close()
        raise errors.unreadable_body(request.headers.get("Content-Encoding", "")) from None


async def read_json_body(request: web.Request) -> dict[str, Any]:
    """The body parsed once with orjson; a JSON object or a 400."""
    raw = await read_raw_body(request)
    if not raw:
        raise errors.bad_json("the body is empty")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise errors.bad_json(str(exc)) from None
    if not isinstance(body, dict):
        raise errors.bad_json("the body must be a JSON object")
    check_depth(raw, body)
    return body


def check_depth(raw: bytes, body: object) -> None:
    """A 400 for a body that nests arrays and objects deeper than `MAX_DEPTH`.

    A body with no more brackets than that cannot be deeper, and counting them
    costs two passes of `bytes.count`; only one with more (a long conversation,
    say) is encoded once more, in C, to see whether orjson can encode it.
    """
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return
    try:
        orjson.dumps(body)
    except orjson.JSONEncodeError:
        raise errors.bad_json(
            f"it nests arrays and objects more than {MAX_DEPTH} levels deep"
        ) from None


def require_alias(body: dict[str, Any]) -> str:
    alias = body.get("model")
    if alias is None:
        raise errors.missing_param("model")
    if not isinstance(alias, str) or not alias:
        raise errors.invalid_param("model", "'model' must be a non-empty string.")
    return alias


def json_response(payload: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")
