"""The sidecar's own /metrics (`[ship] metrics_port`): rows waiting to ship,
ship lag, rows shipped and failed batches per sink.

A registry of its own (the sidecar is one process; the gateway's multiprocess
files are not its business), served by a small aiohttp app on loopback-or-any
as the port is configured.
"""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)
WAITING = Gauge(
    "prometheus_gateway_ship_rows_waiting",
    "Usage rows in local SQLite not yet confirmed by every sink",
    registry=REGISTRY,
)
LAG = Gauge(
    "prometheus_gateway_ship_lag_seconds",
    "Age of the oldest usage row waiting to ship (0 when none waits)",
    registry=REGISTRY,
)
SHIPPED = Counter(
    "prometheus_gateway_ship_rows",
    "Usage rows confirmed by a sink",
    ["sink"],
    registry=REGISTRY,
)
FAILED = Counter(
    "prometheus_gateway_ship_failures",
    "Batches a sink did not confirm (retried)",
    ["sink"],
    registry=REGISTRY,
)


def shipped(sink: str, rows: int) -> None:
    SHIPPED.labels(sink).inc(rows)


def failed(sink: str) -> None:
    FAILED.labels(sink).inc()


def backlog(rows: int, oldest_ts: float | None) -> None:
    WAITING.set(rows)
    LAG.set(0.0 if oldest_ts is None else max(0.0, time.time() - oldest_ts))


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def serve(port: int, host: str = "0.0.0.0") -> web.AppRunner | None:
    """Serve /metrics on `port` (none when 0); the runner, to clean up."""
    if not port:
        return None
    app = web.Application()
    app.router.add_get("/metrics", _metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
