"""GET /admin/health: every alias's deployments and their circuit breakers.

Read from the worker that answers (each process keeps its own breakers, from
the requests it sent); behind `PROMETHEUS_ADMIN_KEY` like the rest of /admin.
"""

from __future__ import annotations

from aiohttp import web

from proxy.admin.api import _check_admin
from proxy.http.bodies import json_response


async def health(request: web.Request) -> web.Response:
    state = _check_admin(request)
    return json_response({"object": "list", "data": state.health.snapshot(state.routes)})
