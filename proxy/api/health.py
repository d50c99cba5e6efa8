"""GET /healthz: 200 without a key while the process can serve."""

from __future__ import annotations

from aiohttp import web

from proxy.http.bodies import json_response
from proxy.server.state import STATE


async def healthz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return json_response({"status": "ok", "aliases": len(state.routes)})
