"""GET /v1/models and /v1/models/{id}: the aliases this gateway serves."""

from __future__ import annotations

from aiohttp import web

from proxy.http import errors
from proxy.http.bodies import json_response
from proxy.server.state import STATE

CREATED = 1735689600  # 2025-01-01: the day the alias line was fixed


def _model(alias: str) -> dict[str, object]:
    return {"id": alias, "object": "model", "created": CREATED, "owned_by": "prometheus"}


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    key = request["key"]
    data = [_model(alias) for alias in state.routes if key.allows(alias)]
    return json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    state = request.app[STATE]
    alias = request.match_info["model_id"]
    if alias not in state.routes or not request["key"].allows(alias):
        raise errors.unknown_model(alias)
    return json_response(_model(alias))
