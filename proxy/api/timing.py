"""The headers a reply gets from the way it was served: `Server-Timing` and the
upstream's rate-limit headers.

`Server-Timing` lets a user see the gateway's own cost:
`gateway;dur=` is the time in the gateway before the upstream call began
(parsing, auth, routing), `upstream;dur=` the upstream's time to its answer's
headers (every attempt included), and `deployment;desc=` the deployment that
served it. Stream replies carry it on their headers.
"""

from __future__ import annotations

from time import perf_counter

from aiohttp import web

from proxy.config.model import Deployment
from proxy.providers.base import Reply


def served_headers(
    request: web.Request, called_at: float, deployment: Deployment, reply: Reply
) -> dict[str, str]:
    """Headers for the client's reply; call right after the upstream answered."""
    before = (called_at - request["t0"]) * 1000.0
    upstream = (perf_counter() - called_at) * 1000.0
    timing = (
        f'gateway;dur={before:.2f}, upstream;dur={upstream:.2f};desc="headers", '
        f'deployment;desc="{deployment.name}"'
    )
    headers = {"Server-Timing": timing}
    if reply.client_headers:
        headers.update(reply.client_headers)
    return headers
