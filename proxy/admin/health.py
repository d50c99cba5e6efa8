"""GET /admin/health: every alias's deployments and their circuit breakers.

Read from the worker that answers (each process keeps its own breakers, from
the requests it sent); behind `PROMETHEUS_ADMIN_KEY` like the rest of /admin.
`limits` says where per-key limits are enforced: `local` (this machine's
table), `redis`, or `local_fallback` (Redis configured but unreachable).
"""

from __future__ import annotations

from aiohttp import web

from proxy.admin.api import _check_admin
from proxy.auth.admission import LIMITS
from proxy.http.bodies import json_response


async def health(request: web.Request) -> web.Response:
    state = await _check_admin(request)
    return json_response(
        {
            "object": "list",
            "data": state.health.snapshot(state.routes),
            "limits": request.app[LIMITS].mode(),
        }
    )
